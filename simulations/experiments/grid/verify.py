"""Re-run committed grid points with the code in the tree and compare them with their table: bit for bit on
the processor that made the row, within `CROSS_PROCESSOR_TOLERANCE` on any other."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from simulations.experiments.grid.runner import run_points
from simulations.experiments.grid.spec import GridSpec
from simulations.experiments.grid.convergence import convergence_columns
from simulations.experiments.grid.table import histories, record_row, varied_settings

CIRCUMSTANCES = ("wall_seconds", "threads", "device", "stacked", "code_commit", "code_dirty")
"""Columns that record how a point ran, not what it measured."""

CROSS_PROCESSOR_TOLERANCE = 5e-3
"""Largest absolute difference a measured number may show when the re-run's processor is not the one
named in the row's `device` column (or the row names none): another processor's BLAS kernels round
differently and training carries that forward: a few 1e-4 on most cheap points, but a run near a
chaotic edge can move by whole features (the frontier's cheapest GBA point: FRR(0.9) 0.984 on an Intel
Xeon, 0.938 on an AMD EPYC). So only a same-processor comparison is a test of the code; across
processors a difference is reported with that caveat."""


@dataclass(frozen=True)
class Verification:
    """One re-run point against its committed row."""

    grid: str
    key: str
    method: str
    differences: tuple[tuple[str, object, object], ...]
    """(column, committed value, re-run value) for every measured column that differs."""
    exact: bool
    """True when compared bit for bit (same processor), False when within `CROSS_PROCESSOR_TOLERANCE`."""
    added: tuple[str, ...]
    """Columns the re-run measures that the committed row left empty (metrics newer than the table)."""

    @property
    def identical(self) -> bool:
        return not self.differences


def _empty(value) -> bool:
    """None or NaN: a column a row does not fill."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _same(committed, rerun, tolerance: float) -> bool:
    if pd.isna(committed) and _empty(rerun):
        return True
    if str(committed) == str(rerun):
        return True
    try:
        return abs(float(committed) - float(rerun)) <= tolerance
    except (TypeError, ValueError):
        return False


def verify_row(spec: GridSpec, row: pd.Series) -> Verification:
    """Re-run the point of `spec` whose committed table row is `row` (with the thread count it was run
    with) and compare every measured column."""
    import torch

    point = next((point for point in spec.points() if point.key == row["key"]), None)
    if point is None:
        raise ValueError(f"key {row['key']} is not a point of spec {spec.name!r}")
    threads = torch.get_num_threads()
    record, = run_points([(point.settings, point.config.to_dict())], spec.conditions_samples, int(row["threads"]))
    torch.set_num_threads(threads)
    row_of_record = pd.DataFrame([record_row(record, spec.name, varied_settings(spec))])
    rerun = convergence_columns(row_of_record, histories([record])).iloc[0].to_dict()
    exact = row["device"] == rerun["device"]
    tolerance = 0.0 if exact else CROSS_PROCESSOR_TOLERANCE
    differences, added = [], []
    for column, committed in row.items():
        if column in CIRCUMSTANCES or column.startswith("version_"):
            continue
        value = rerun.get(column)
        if pd.isna(committed) and not _empty(value):
            added.append(column)
        elif not _same(committed, value, tolerance):
            differences.append((column, committed, value))
    return Verification(spec.name, row["key"], row["method"], tuple(differences), exact, tuple(added))


def cheapest_rows(table: pd.DataFrame, count: int = 1) -> pd.DataFrame:
    """The `count` rows of a table that took the least wall time."""
    return table.nsmallest(count, "wall_seconds")


def verify_grid(specs: Path, results: Path, name: str, count: int = 1) -> list[Verification]:
    """Re-run the `count` cheapest committed points of grid `name` and compare them with its table."""
    spec = GridSpec.from_toml(Path(specs) / f"{name}.toml")
    table = pd.read_csv(Path(results) / name / "results.csv")
    return [verify_row(spec, row) for _, row in cheapest_rows(table, count).iterrows()]
