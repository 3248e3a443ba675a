"""The committed experiment tables are what their specs produce, and their condition columns are true."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulations.commands.gba import main
from simulations.experiments.grid import GridSpec
from simulations.experiments.grid.runner import processor_name
from simulations.experiments.recover import make_data
from theory.conditions import check_data

RESULTS = Path("simulations/results")
TABLES = sorted(RESULTS.glob("*/results.csv"))


@pytest.mark.parametrize("table_path", TABLES, ids=lambda path: path.parent.name)
def test_a_committed_table_matches_its_spec_and_its_instances_conditions(table_path):
    name = table_path.parent.name
    spec = GridSpec.from_toml(Path("simulations/specs") / f"{name}.toml")
    points = {point.key: point for point in spec.points()}
    table = pd.read_csv(table_path)
    assert set(table["key"]) == set(points), (
        f"{table_path} does not hold exactly the points of simulations/specs/{name}.toml. If a config field was added, "
        "pin the value that reproduces the committed runs in the spec's [fixed] table (as sparse_step = false) and "
        "re-key the stored points, or re-run the spec; then `gba grid table`, `gba figures`, `gba checks`.")
    # Re-measure H1-H3 and V1 on the instance of two points of the table: the stored columns must match,
    # to the last bits on the processor that made the row; another rounds V1's float32 cosines differently.
    for _, row in table.iloc[[0, -1]].iterrows():
        config = points[row["key"]].config
        report = check_data(make_data(config), num_samples=spec.conditions_samples, seed=config.seed)
        same_processor = row["device"] == f"cpu:{processor_name()}"
        for column, value in report.as_columns().items():
            if isinstance(value, (bool, np.bool_)):
                assert str(row[column]) == str(value), column
            else:
                assert row[column] == pytest.approx(value, rel=1e-9 if same_processor else 1e-5), column


def test_the_heatmap_instances_break_incoherence_below_root_n_and_keep_it_well_above():
    # What the resonance figure and claims 3, 5 and 7 say: at the heatmap's n (far below the paper's 65,536)
    # the theorem is silent for d <= sqrt(n), and covers the largest d.
    table = pd.read_csv(RESULTS / "resonance" / "results.csv")
    root_n = np.sqrt(table["n"].iloc[0])
    assert not table.loc[table["d"] <= root_n, "V1_holds"].any()
    assert table.loc[table["d"] >= 2.8 * root_n, "V1_holds"].all()
    assert table[["H1_holds", "H2_holds", "H3_holds"]].all().all()


def made_here(name: str) -> bool:
    """Whether the committed table `name` was made on this machine's processor."""
    return bool((pd.read_csv(RESULTS / name / "results.csv")["device"] == f"cpu:{processor_name()}").all())


def test_the_cheapest_committed_points_made_on_this_processor_rerun_bit_for_bit(capsys):
    # Training is chaotic enough that another processor's rounding can move a run by a few features, so a
    # committed number is reproducible exactly only on the processor that made it (the row's device).
    grids = [name for name in ("frontier", "width", "toy_baselines") if made_here(name)]
    if not grids:
        pytest.skip(f"no committed grid table was made on this processor ({processor_name()})")
    assert main(["checks", "--verify", *grids]) == 0
    assert capsys.readouterr().out.count(": identical") == len(grids)


SMALL_GRID = """name = "small"
seeds = [0]
conditions_samples = 2000
[fixed]
n = 32
d = 16
s = 2
width = "2n"
steps = 60
batch_size = 256
log_every = 20
device = "cpu"
method = "ba"
"""


def test_verify_reports_a_committed_value_the_code_does_not_reproduce(tmp_path, capsys):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "small.toml").write_text(SMALL_GRID)
    assert main(["grid", "run", str(tmp_path / "specs" / "small.toml"), "--out", str(tmp_path / "results" / "small"),
                 "--jobs", "1", "--threads", "1"]) == 0
    verify = ["checks", "--verify", "small", "--results", str(tmp_path / "results"), "--specs", str(tmp_path / "specs")]
    assert main(verify) == 0
    assert ": identical" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "results" / "small" / "results.csv")
    table.loc[0, "frr_0.9"] = table.loc[0, "frr_0.9"] - 1 / 32  # one feature fewer than measured
    table.to_csv(tmp_path / "results" / "small" / "results.csv", index=False)
    assert main(verify) == 1
    assert "DIFFERS in 1 columns: frr_0.9" in capsys.readouterr().out
