"""The result tables the reports read: where they live, how to load them, and the shared views of
them that claims and figures both use (labelled rows, per-method summaries)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from simulations.reports.paper import TOY_FRR
from theory.model import FeatureModel
from theory.validation import ConfigError

RESULTS = Path("simulations/results")
"""Where the committed result tables live: RESULTS/NAME/results.csv (and history.csv)."""

LLM_COMMAND = "gba llm frontier --threads 2"
"""The command that makes the LLM tables under RESULTS/llm."""
LLM_LENGTH_COMMAND = ("gba llm frontier --threads 2 --tokens 1000000 --steps 6400 --snapshots 400 1600 --topk 8 16 --l1 --ba "
                      "--results simulations/results/llm_length")
"""The command that makes the training-length tables under RESULTS/llm_length: GBA and TopK over 3 seeds,
each run evaluated after 0.4M, 1.6M and 6.6M tokens."""
LLM_COMMANDS = {"llm": LLM_COMMAND, "llm_length": LLM_LENGTH_COMMAND}

SWEPT = {"topk": "k", "batchtopk": "k", "relu-l1": "l1_coefficient", "jumprelu": "l0_coefficient"}
"""Each baseline's key hyper-parameter, swept in the frontier grid."""


class MissingTable(ConfigError):
    """A figure or check needs a result table that has not been made yet."""


def check_results_directory(results: Path) -> None:
    """A directory of result tables given by the user must exist (a clear error, not silence)."""
    if not Path(results).is_dir():
        raise ConfigError(f"results: {str(results)!r} is not a directory of result tables")


def grid_command(name: str, parallel: str = "--jobs 2") -> str:
    """The command that makes (or completes) the table `name`, with the parallelism it was made with."""
    return f"gba grid run simulations/specs/{name}.toml --out simulations/results/{name} {parallel}"


_loads: list[dict] | None = None
"""Where `load_results` reports each results table it loads, inside `recording_loads`."""


@contextlib.contextmanager
def recording_loads() -> Iterator[list[dict]]:
    """Collect, for every results table loaded inside the block, its grid and how many of its BA/GBA
    points are unsettled (`convergence.RULE`)."""
    global _loads
    outer, _loads = _loads, []
    try:
        yield _loads
    finally:
        _loads = outer


def load_results(results: str | Path, name: str, table: str = "results.csv",
                 methods: tuple[str, ...] | None = None, where: dict | None = None,
                 rows: Callable[[pd.DataFrame], pd.Series] | None = None) -> pd.DataFrame:
    """The committed table `results/NAME/TABLE`; raises MissingTable naming the command that makes it.
    A grid's results table must carry the convergence columns (`settled`: True/False for BA/GBA points,
    empty for the others). `methods` keeps only those methods' rows, `where` ({column: value or
    tuple of values}) only the rows with one of those values (numbers compared to float precision) or
    none (a setting of other methods), and `rows` (a function of the table) the rows where it is true,
    so that a reader of some rows is judged by their settledness alone."""
    path = Path(results) / name / table
    if not path.is_file():
        raise MissingTable(f"{path} is missing: run `gba grid run simulations/specs/{name}.toml --out {Path(results) / name}`")
    frame = pd.read_csv(path)
    if table != "results.csv" or "method" not in frame:
        return frame
    if "settled" not in frame:
        raise MissingTable(f"{path} has no convergence columns: run `gba grid settle {path.parent}`")
    if methods is not None:
        frame = frame[frame["method"].isin(methods)].reset_index(drop=True)
    for column, values in (where or {}).items():
        keep = frame[column].isna()
        for value in values if isinstance(values, tuple) else (values,):
            if isinstance(value, (int, float)) and pd.api.types.is_numeric_dtype(frame[column]):
                keep |= np.isclose(frame[column], value)
            else:
                keep |= frame[column].eq(value)
        frame = frame[keep].reset_index(drop=True)
    if rows is not None:
        frame = frame[rows(frame).to_numpy(dtype=bool)].reset_index(drop=True)
    if _loads is not None:
        judged = frame["settled"].dropna().astype(str)
        _loads.append({"grid": name, "points": len(judged), "unsettled": int((judged != "True").sum())})
    return frame


def load_llm_table(results: Path, table: str, experiment: str = "llm") -> pd.DataFrame:
    """A table of an LLM experiment (a key of LLM_COMMANDS); raises MissingTable naming the command that makes it."""
    path = Path(results) / experiment / table
    if not path.is_file():
        raise MissingTable(f"{path} is missing: run `{LLM_COMMANDS[experiment]}`")
    return pd.read_csv(path)


def load_llm_meta(results: Path, experiment: str = "llm") -> dict:
    """An LLM experiment's meta.json (settings, scale, stage times); MissingTable names the command that makes it."""
    path = Path(results) / experiment / "meta.json"
    if not path.is_file():
        raise MissingTable(f"{path} is missing: run `{LLM_COMMANDS[experiment]}`")
    return json.loads(path.read_text())


def token_count(tokens: float) -> str:
    """'410k', '6.55M': a number of tokens as the LLM rows print it."""
    return f"{tokens / 1e6:.2f}M" if tokens >= 1e6 else f"{tokens / 1e3:.0f}k"


def at_full_length(frontier: pd.DataFrame) -> pd.DataFrame:
    """The rows of an LLM frontier table at its runs' full length (a table without snapshots has only those)."""
    if "steps" not in frontier:
        return frontier
    return frontier[frontier["steps"] == frontier["steps"].max()].reset_index(drop=True)


def method_label(row) -> str:
    """'TopK k=20', 'GBA full coverage' (targets bracket f), 'GBA wrong coverage', 'BA p=2f', ..."""
    if row["method"] in ("topk", "batchtopk"):
        return f"{'TopK' if row['method'] == 'topk' else 'BatchTopK'} k={int(row['k'])}"
    if row["method"] == "gba":
        f = row["feature_frequency"]
        covers = row["lowest_target"] <= f <= row["highest_target"]
        return f"GBA {'full' if covers else 'wrong'} coverage"
    if row["method"] == "ba":
        return f"BA p={row['highest_target'] / row['feature_frequency']:.3g}f"
    return f"{row['method']} {SWEPT[row['method']]}={row[SWEPT[row['method']]]:g}"


def scale_text(table: pd.DataFrame) -> str:
    """The scale of a table's points, read from it: 'n = 128, d = 42, s = [3, 20], tied SAE width 4n,
    2400 steps of 512' (several values of a setting are joined by '/')."""
    table = table[["n", "d", "sparsity", "width", "tied", "steps", "batch_size"]]
    table = table.assign(width_over_n=table["width"] / table["n"], tying=table["tied"].map(lambda tied: "tied" if str(tied) == "True" else "untied"))

    def values(column, show=str):
        return "/".join(show(value) for value in sorted(table[column].dropna().unique()))

    return (f"n = {values('n')}, d = {values('d')}, s = {values('sparsity')}, {values('tying')} SAE width "
            f"{values('width_over_n', lambda ratio: f'{ratio:g}n')}, {values('steps')} steps of {values('batch_size')}")


def toy_table(results: Path, methods: tuple[str, ...] | None = None) -> pd.DataFrame:
    """FRR(0.8), FRR(0.9) mean and sd over seeds per method of the toy grid (those of `methods`, or
    all), beside the paper's."""
    table = load_results(results, "toy_baselines", methods=methods)
    table = table.assign(label=table.apply(method_label, axis=1))
    summary = table.groupby("label").agg(
        seeds=("seed", "nunique"),
        frr_08_mean=("frr_0.8", "mean"),
        frr_08_sd=("frr_0.8", "std"),
        frr_09_mean=("frr_0.9", "mean"),
        frr_09_sd=("frr_0.9", "std"),
        l0=("l0", "mean"),
    )
    summary["paper_frr_08"] = [TOY_FRR.get(label, (np.nan, np.nan))[0] for label in summary.index]
    summary["paper_frr_09"] = [TOY_FRR.get(label, (np.nan, np.nan))[1] for label in summary.index]
    return summary.reindex([label for label in TOY_FRR if label in summary.index])


def frontier_table(results: Path, methods: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Frontier grid rows (of `methods`, or all) with a label, the swept value and FVU = 1 - explained variance."""
    table = load_results(results, "frontier", methods=methods).copy()  # a wide CSV reads fragmented
    return table.assign(label=table.apply(method_label, axis=1), fvu=1 - table["explained_variance"])


def world_table(results: Path, name: str = "synthsaebench", methods: tuple[str, ...] | None = None,
                where: dict | None = None) -> pd.DataFrame:
    """Rows of a SynthSAEBench-world grid (`load_results`'s filters) with a label per configuration:
    the baselines by their swept value, BA/GBA by targets and controller."""
    table = load_results(results, name, methods=methods, where=where).copy()  # a wide CSV reads fragmented

    def label(row) -> str:
        if row["method"] in SWEPT:
            return method_label(row)
        targets = (f"p={row['highest_target']:.3g}" if row["method"] == "ba"
                   else f"{row['highest_target']:.3g}→{row['lowest_target']:.3g}")
        tying = ", untied" if str(row["tied"]) == "False" else ""
        start = ", calibrated start" if str(row.get("initial_bias")) == "calibrated" else ""
        return f"{row['method'].upper()} {targets} ({row['controller']}{tying}{start})"

    return table.assign(label=table.apply(label, axis=1))


OPENS_AT = 0.9
"""Mean FRR(0.9) over seeds from which a dimension counts as recovering (the opening law)."""


def opening_dimensions(table: pd.DataFrame) -> pd.DataFrame:
    """Per n: `opening`, the smallest d of the grid from which on every larger d has mean FRR(0.9) over
    seeds ≥ OPENS_AT (NaN where the largest d fails), and `below`, the grid d under it (NaN if none)."""
    rows = []
    for n, rows_n in table.groupby("n"):
        frr = rows_n.groupby("d")["frr_0.9"].mean().sort_index()
        failing = frr.index[frr < OPENS_AT]
        recovering = frr.index[frr.index > failing.max()] if len(failing) else frr.index
        rows.append({"n": int(n), "opening": float(recovering.min()) if len(recovering) else np.nan,
                     "below": float(failing.max()) if len(failing) else np.nan})
    return pd.DataFrame(rows)


ON_TARGET = 0.7
"""The share of its target a group must reach to count as landing on it (claim 1b, the controller figure)."""


def _setting(value):
    """A model setting as a table stores it: a number, a list written as JSON ('[3, 20]'), or empty."""
    if pd.isna(value):
        return None
    parsed = json.loads(str(value))
    return tuple(parsed) if isinstance(parsed, list) else parsed


def group_settling(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (GBA run, group): its target, the group's mean realised frequency, their ratio and
    whether the data can reach the target at all (a target at most the most frequent feature's
    expected frequency: a neuron can fire that often by firing on part of one feature's samples)."""
    rows = []
    for _, run in table[table["method"] == "gba"].iterrows():
        targets = np.geomspace(run["highest_target"], run["lowest_target"], int(run["groups"]))
        model = FeatureModel(n=int(run["n"]), d=int(run["d"]), sparsity=_setting(run["sparsity"]),
                             sparsity_weights=_setting(run["sparsity_weights"]), frequency_decay=float(run["frequency_decay"]))
        largest = float(model.expected_frequencies().max())
        for group, target in enumerate(targets):
            realised = run[f"group{group}_mean_frequency"]
            rows.append({"key": run["key"], "group": group, "target": target, "target_over_f": target / run["feature_frequency"],
                         "realised": realised, "ratio": realised / target, "reachable": target <= largest})
    return pd.DataFrame(rows).merge(table.drop(columns=[c for c in table if c.startswith("group")]), on="key")
