"""Parameter grids of recovery runs: a TOML spec (`spec`), its resumable runner (`runner`), one tidy table (`table`)."""

from simulations.experiments.grid.runner import point_groups, point_record, run_grid, run_points
from simulations.experiments.grid.spec import MANIFEST, POINTS, GridPoint, GridSpec, config_key
from simulations.experiments.grid.table import (
    grid_history, grid_status, grid_table, load_records, record_row, settle_table, varied_settings, write_table,
)
from simulations.experiments.grid.verify import Verification, verify_grid

__all__ = [
    "MANIFEST", "POINTS", "GridPoint", "GridSpec", "config_key", "point_groups", "point_record", "run_grid",
    "run_points", "grid_history", "grid_status", "grid_table", "load_records", "record_row", "settle_table", "varied_settings",
    "write_table", "Verification", "verify_grid",
]
