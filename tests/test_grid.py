import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulations.commands.gba import main
from simulations.experiments.grid import MANIFEST, POINTS, GridSpec, grid_table, run_grid, write_table
from theory.validation import ConfigError

TINY = """
name = "tiny"
description = "test grid"
seeds = [0, 1, 2]
conditions_samples = 2000
[fixed]
n = 16
d = 8
s = 2
width = "4n"
steps = 40
batch_size = 128
log_every = 20
eval_samples = 1024
device = "cpu"
[axes]
target_frequency = ["1f", "2f"]
"""

STACK = 2
"""Points per stacked group in these tests."""

TIMING = ["wall_seconds"]
"""Columns that measure time, not results."""


def write_spec(tmp_path, text=TINY, name="tiny.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def results(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=TIMING).sort_values("key").reset_index(drop=True)


def test_spec_expands_axes_variants_and_seeds(tmp_path):
    spec = GridSpec.from_toml(write_spec(tmp_path, TINY + '[[variants]]\nlearning_rate = 0.003\n[[variants]]\nlearning_rate = 0.001\n'))
    points = spec.points()
    assert len(points) == 2 * 2 * 3
    assert len({point.key for point in points}) == len(points)
    rates = sorted({point.config.train.learning_rate for point in points})
    assert rates == [0.001, 0.003]
    assert {point.config.sae.width for point in points} == {64}
    f = 2 / 16
    assert sorted({round(point.config.method_config.targets()[0] / f, 9) for point in points}) == [1.0, 2.0]
    # The key is a function of the resolved config: "2f" and its value give the same point.
    same = GridSpec.from_toml(write_spec(tmp_path, TINY.replace('["1f", "2f"]', "[0.25]"), "same.toml")).points()
    assert {p.key for p in same} <= {p.key for p in points}


@pytest.mark.parametrize(
    "text, message",
    [
        (TINY.replace("n = 16", "n = 0"), "point .*n: must lie in"),
        (TINY.replace("steps = 40", "stepz = 40"), "unknown setting.*stepz"),
        ("bogus = 1\n" + TINY, "unknown top-level key.*bogus"),
        (TINY.replace("seeds = [0, 1, 2]", "seeds = []"), "seeds"),
        (TINY.replace('["1f", "2f"]', "[]"), "axes.target_frequency"),
        ("name = ", "not valid TOML"),
    ],
)
def test_bad_specs_fail_before_any_work_with_one_clear_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        GridSpec.from_toml(write_spec(tmp_path, text)).points()


def test_cli_reports_a_bad_spec_in_one_line(tmp_path, capsys):
    assert main(["grid", "run", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    spec_path = write_spec(out)
    # Stacks of 2 (3 groups), so that a kill can land between groups.
    counts = run_grid(GridSpec.from_toml(spec_path), out / "grid", jobs=1, threads=1, progress=False, stack=STACK)
    assert counts == {"total": 6, "skipped": 0, "reused": 0, "ran": 6, "left": 0}
    return spec_path, out / "grid", grid_table(out / "grid")


def test_table_has_settings_metrics_conditions_theory_and_provenance(uninterrupted):
    _, out, table = uninterrupted
    assert len(table) == 6
    for column in ("n", "d", "width", "highest_target", "axis_target_frequency", "seed", "frr_0.9", "mcc", "l0",
                   "matched_frequency", "fraction_above_target", "H1_holds", "H3_value", "V1_value",
                   "in_stated_band", "in_simplified_band", "width_condition_holds", "regime", "wall_seconds",
                   "version_torch", "device"):
        assert column in table.columns, column
    assert set(table["axis_target_frequency"]) == {"1f", "2f"}
    # The code that made each point: this checkout's commit, and whether its source had uncommitted changes.
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert set(table["code_commit"]) == {head} and table["code_dirty"].isin([True, False]).all()
    csv, parquet, history = write_table(out)
    assert len(pd.read_parquet(parquet)) == 6 and len(pd.read_csv(csv)) == 6
    assert set(pd.read_csv(history)["key"]) == set(table["key"])


def test_rerun_skips_finished_points(uninterrupted):
    spec_path, out, _ = uninterrupted
    counts = run_grid(GridSpec.from_toml(spec_path), out, jobs=1, progress=False, stack=STACK)
    assert counts == {"total": 6, "skipped": 6, "reused": 0, "ran": 0, "left": 0}


def test_points_of_another_grid_with_the_same_config_are_reused(uninterrupted, tmp_path):
    _, out, expected = uninterrupted
    # Same points written differently ("2f" -> its value), plus one new point (3f).
    other = write_spec(tmp_path, TINY.replace('["1f", "2f"]', '[0.125, 0.25, "3f"]'), "other.toml")
    counts = run_grid(GridSpec.from_toml(other), tmp_path / "other", jobs=1, threads=1, progress=False, reuse=(out,))
    assert counts == {"total": 9, "skipped": 0, "reused": 6, "ran": 3, "left": 0}
    table = grid_table(tmp_path / "other")
    assert set(table["axis_target_frequency"]) == {"0.125", "0.25", "3f"}
    # A narrower spec run into the same directory tabulates only its own points.
    narrower = write_spec(tmp_path, TINY.replace('["1f", "2f"]', '["3f"]'), "narrower.toml")
    assert run_grid(GridSpec.from_toml(narrower), tmp_path / "other", jobs=1, progress=False)["ran"] == 0
    assert set(grid_table(tmp_path / "other")["axis_target_frequency"]) == {"3f"}
    shared = results(table[table["key"].isin(expected["key"])]).drop(columns="axis_target_frequency")
    pd.testing.assert_frame_equal(shared, results(expected).drop(columns="axis_target_frequency"))


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_table(uninterrupted, tmp_path):
    spec_path, _, expected = uninterrupted
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "simulations.commands.gba", "grid", "run", str(spec_path), "--out", str(out),
               "--jobs", "1", "--threads", "1", "--stack", str(STACK), "--quiet", "--no-table"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((out / POINTS).glob("*.json"))) < 2:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list((out / POINTS).glob("*.json")))
    assert 2 <= finished < 6, "the kill must land mid-run"
    for path in (out / POINTS).glob("*.json"):
        json.loads(path.read_text())  # every file that is there is complete
    assert json.loads((out / MANIFEST).read_text())["keys"]
    counts = run_grid(GridSpec.from_toml(spec_path), out, jobs=1, threads=1, progress=False, stack=STACK)
    assert counts["skipped"] == finished and counts["ran"] == 6 - finished
    pd.testing.assert_frame_equal(results(grid_table(out)), results(expected))


def test_a_point_killed_after_a_checkpoint_resumes_from_it_to_the_uninterrupted_result(tmp_path, monkeypatch):
    import simulations.experiments.recover as recover

    spec = GridSpec.from_toml(write_spec(tmp_path, TINY.replace("seeds = [0, 1, 2]", "seeds = [0]").replace('["1f", "2f"]', '["2f"]')))
    run_grid(spec, tmp_path / "whole", jobs=1, threads=1, progress=False)
    real_save, saved_steps = recover.save_atomically, []

    def killed_after_saving(state, path):
        real_save(state, path)
        saved_steps.append(state["step"])
        raise KeyboardInterrupt

    monkeypatch.setattr(recover, "save_atomically", killed_after_saving)
    with pytest.raises(KeyboardInterrupt):
        run_grid(spec, tmp_path / "killed", jobs=1, threads=1, progress=False)
    (checkpoint,) = (tmp_path / "killed" / POINTS).glob("*.checkpoint.pt")
    assert saved_steps == [20] and not list((tmp_path / "killed" / POINTS).glob("*.json"))
    monkeypatch.setattr(recover, "save_atomically", real_save)
    assert run_grid(spec, tmp_path / "killed", jobs=1, threads=1, progress=False)["ran"] == 1
    assert not checkpoint.exists()
    resumed, whole = grid_table(tmp_path / "killed"), grid_table(tmp_path / "whole")
    pd.testing.assert_frame_equal(results(resumed), results(whole))


def test_a_time_limit_starts_no_group_after_it_and_a_rerun_continues(uninterrupted, tmp_path, monkeypatch, capsys):
    import simulations.experiments.grid.runner as runner

    spec_path, _, expected = uninterrupted
    spec, out = GridSpec.from_toml(spec_path), tmp_path / "limited"
    # The clock reads 0 when the run starts and before the first group, then 100 s: one group of 2 runs.
    readings = iter([0.0, 0.0])
    monkeypatch.setattr(runner.time, "monotonic", lambda: next(readings, 100.0))
    counts = run_grid(spec, out, jobs=1, threads=1, progress=False, stack=STACK, time_limit=50)
    assert counts == {"total": 6, "skipped": 0, "reused": 0, "ran": STACK, "left": 6 - STACK}
    monkeypatch.undo()
    assert main(["grid", "run", str(spec_path), "--out", str(out), "--stack", str(STACK), "--threads", "1",
                 "--quiet", "--time-limit", "0"]) == 0
    assert f"{6 - STACK} left at the time limit" in capsys.readouterr().out
    assert run_grid(spec, out, jobs=1, threads=1, progress=False, stack=STACK)["ran"] == 6 - STACK
    pd.testing.assert_frame_equal(results(grid_table(out)), results(expected))


def test_loky_workers_give_the_same_table(uninterrupted, tmp_path):
    spec_path, _, expected = uninterrupted
    run_grid(GridSpec.from_toml(spec_path), tmp_path / "loky", jobs=2, progress=False, stack=STACK)
    table = grid_table(tmp_path / "loky")
    assert set(table["threads"]) == {1}
    pd.testing.assert_frame_equal(results(table).drop(columns="threads"), results(expected).drop(columns="threads"))


def test_dask_backend_on_a_local_cluster_gives_the_same_table(uninterrupted, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    spec_path, _, expected = uninterrupted
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        assert main(["grid", "run", str(spec_path), "--out", str(tmp_path / "dask"), "--backend", "dask",
                     "--scheduler", cluster.scheduler_address, "--jobs", "2", "--stack", str(STACK), "--quiet"]) == 0
    table = pd.read_parquet(tmp_path / "dask" / "results.parquet")
    assert len(table) == 6
    pd.testing.assert_frame_equal(results(table).drop(columns="threads"), results(expected).drop(columns="threads"),
                                  check_dtype=False)


def test_status_counts_finished_points(uninterrupted, capsys):
    _, out, _ = uninterrupted
    assert main(["grid", "status", str(out)]) == 0
    assert "6/6 points done" in capsys.readouterr().out


def test_a_truncated_point_and_a_corrupt_manifest_are_named_and_repaired_by_a_rerun(uninterrupted, tmp_path, capsys):
    import shutil

    spec_path, out, table = uninterrupted
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    point = sorted((broken / "points").glob("*.json"))[0]
    point.write_text(point.read_text()[:100])  # a full disk or a bad copy
    (broken / "grid.json").write_text("{not json")
    assert main(["grid", "table", str(broken)]) == 2
    assert "grid.json does not parse" in capsys.readouterr().err
    assert main(["grid", "run", str(spec_path), "--out", str(broken), "--quiet", "--threads", "1", "--stack", str(STACK)]) == 0
    err = capsys.readouterr()
    assert str(broken / "grid.json") in err.err and str(point) in err.err
    assert "6 points, 5 already done, 0 reused, 1 ran" in err.out
    assert (broken / "points" / "unreadable" / point.name).is_file()
    # The re-run point is the uninterrupted run's, bit for bit.
    repaired = grid_table(broken)
    columns = [c for c in table.columns if c not in TIMING and not c.startswith("code_")]
    pd.testing.assert_frame_equal(results(repaired)[columns], results(table)[columns])


def test_tabulating_a_grid_with_nothing_finished_is_an_error(tmp_path, capsys):
    spec_path = write_spec(tmp_path)
    (tmp_path / "empty" / "points").mkdir(parents=True)
    (tmp_path / "empty" / "grid.json").write_text('{"spec": {"name": "tiny", "axes": {}, "variants": [{}]}, "keys": ["a"]}')
    assert main(["grid", "table", str(tmp_path / "empty")]) == 2
    assert "has no finished points" in capsys.readouterr().err
    assert spec_path.is_file()


def test_a_column_of_numbers_and_words_is_written_to_parquet_as_text(tmp_path):
    from simulations.experiments.grid.table import write_parquet

    table = pd.DataFrame({"initial_bias": [0.0, "calibrated", None], "frr_0.9": [1.0, 0.9, np.nan]})
    write_parquet(table, tmp_path / "results.parquet")
    back = pd.read_parquet(tmp_path / "results.parquet")
    assert back["initial_bias"].tolist()[:2] == ["0.0", "calibrated"] and pd.isna(back["initial_bias"].iloc[2])
    assert back["frr_0.9"].tolist()[:2] == [1.0, 0.9]


PLANTED_SPECS = sorted(path for path in Path("simulations/specs").glob("*.toml") if "synthsaebench" not in path.read_text())
"""The specs on the planted model (resolving a world's points builds the world: minutes for the 16k one)."""


@pytest.mark.parametrize("path", PLANTED_SPECS, ids=lambda path: path.stem)
def test_every_committed_spec_resolves_its_points(path):
    """Including the specs no table has come from yet (the paper-scale and GPU ones): every point's
    settings build a valid config, and the spec's name is its file's."""
    spec = GridSpec.from_toml(path)
    assert spec.name == path.stem and len({point.key for point in spec.points()}) == len(spec.points()) > 0
