"""A grid's finished points as tidy tables: one row per point, and the training histories."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from simulations.experiments.files import atomic_path, write_atomically
from simulations.experiments.grid.convergence import convergence_columns
from simulations.experiments.grid.runner import finished_keys, read_manifest, read_record
from simulations.experiments.grid.spec import POINTS
from theory.validation import ConfigError


def load_records(out: str | Path) -> list[dict]:
    """The finished points of the spec last run into `out`, in the manifest's order.

    Points left there by an earlier version of the spec stay on disk (a later run may reuse them)
    but are not part of the table.
    """
    out = Path(out)
    keys = read_manifest(out)["keys"]
    done = finished_keys(out)
    if not done & set(keys):
        raise ConfigError(f"out: {str(out)!r} has no finished points; run `gba grid run SPEC --out {out}` first")
    return [read_record(out / POINTS / f"{key}.json") for key in keys if key in done]


def flat_config(config: dict) -> dict:
    """A resolved config as flat columns: the fields of each part by name (the model's seed is
    `feature_seed`), and the data source where it is not the planted model."""
    columns = {"method": config["method"], "seed": config["seed"], "eval_samples": config["eval_samples"]}
    if "data" in config:
        columns["data"] = config["data"]
    for part in ("model", "sae", "method_config", "train"):
        for name, value in config[part].items():
            columns["feature_seed" if (part, name) == ("model", "seed") else name] = value
    return columns


def record_row(record: dict, grid: str, varied: set[str]) -> dict:
    """One table row: every setting, every metric, conditions, theorem columns, wall time, versions, device.

    `axis_NAME` columns keep the varied settings as the spec wrote them (e.g. "2f"); the other
    columns hold resolved values (`device_setting` is the config's choice, `device` the one used).
    """
    config = flat_config(record["config"])
    config["device_setting"] = config.pop("device")
    row = {"grid": grid, "key": record["key"]}
    row.update({f"axis_{name}": str(value) for name, value in record["settings"].items() if name in varied})
    row.update(config)
    f = record["metrics"]["feature_frequency"]
    row["highest_target_over_f"] = config["highest_target"] / f if "highest_target" in config else np.nan
    row.update(record["metrics"])
    for k, group in enumerate(record.get("groups", [])):
        row[f"group{k}_mean_frequency"] = group["mean_frequency"]
    row.update(record["conditions"])
    row.update(record["theory"])
    row["wall_seconds"] = record["wall_seconds"]
    row["threads"] = record["threads"]
    row["stacked"] = record.get("stacked", 1)  # points trained together (1 where a record does not say)
    row["device"] = record["device"]
    row.update({f"version_{name}": value for name, value in record["versions"].items()})
    code = record.get("code", {})  # records made before the revision was recorded leave it empty
    row["code_commit"], row["code_dirty"] = code.get("commit"), code.get("dirty")
    return {name: json.dumps(value) if isinstance(value, (list, tuple, dict)) else value for name, value in row.items()}


def grid_table(out: str | Path) -> pd.DataFrame:
    """The tidy table of all finished points under `out` (one row per point), with the convergence
    columns of `convergence.RULE`."""
    records = load_records(out)
    return _table_of(records, read_manifest(out)["spec"], histories(records))


def _table_of(records: list[dict], spec: dict, history: pd.DataFrame) -> pd.DataFrame:
    rows = pd.DataFrame([record_row(record, spec["name"], varied_settings(spec)) for record in records])
    return convergence_columns(rows, history)


def varied_settings(spec) -> set[str]:
    """The settings a spec (a `GridSpec` or its manifest dict) varies: its axes and its variants' keys."""
    spec = spec if isinstance(spec, dict) else dataclasses.asdict(spec)
    return set(spec["axes"]) | {name for variant in spec["variants"] for name in variant} - {"seeds"}


def histories(records: list[dict]) -> pd.DataFrame:
    """The training histories of `records`, long format, keyed by `key`."""
    frames = []
    for record in records:
        frame = pd.DataFrame(record["history"])
        frame.insert(0, "key", record["key"])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def grid_history(out: str | Path) -> pd.DataFrame:
    """Training histories of all finished points, long format, keyed by `key`."""
    return histories(load_records(out))


def write_parquet(table: pd.DataFrame, path: Path) -> None:
    """`table` as parquet: a column holding numbers and words (initial_bias 0 or 'calibrated') is
    stored as text, which parquet needs; the CSV keeps the values as they are."""
    mixed = [column for column in table.columns if table[column].dtype == object
             and len({type(value) for value in table[column].dropna()}) > 1]
    table = table.assign(**{column: table[column].map(lambda value: None if pd.isna(value) else str(value)) for column in mixed})
    with atomic_path(path) as partial:
        table.to_parquet(partial, index=False)


def write_table(out: str | Path) -> tuple[Path, Path, Path]:
    """Write `results.csv` (with the convergence columns of `convergence.RULE`), `results.parquet` and
    `history.csv` under `out`."""
    out = Path(out)
    records = load_records(out)  # every point file read once for both tables
    history_table = histories(records)
    table = _table_of(records, read_manifest(out)["spec"], history_table)
    csv, parquet, history = out / "results.csv", out / "results.parquet", out / "history.csv"
    write_atomically(csv, table.to_csv(index=False))
    write_atomically(history, history_table.to_csv(index=False))
    write_parquet(table, parquet)
    return csv, parquet, history


def settle_table(directory: str | Path) -> Path:
    """Add (or refresh) the convergence columns of `directory/results.csv` from `directory/history.csv`,
    for tables whose points are no longer on disk; rewrites results.csv and results.parquet."""
    directory = Path(directory)
    csv = directory / "results.csv"
    if not csv.is_file():
        raise ConfigError(f"out: {str(directory)!r} has no results.csv")
    history = directory / "history.csv"
    table = convergence_columns(pd.read_csv(csv), pd.read_csv(history) if history.is_file() else None)
    write_atomically(csv, table.to_csv(index=False))
    write_parquet(table, directory / "results.parquet")
    return csv


def grid_status(out: str | Path) -> dict:
    """How many of the manifest's points are finished, and their total wall time."""
    out = Path(out)
    manifest = read_manifest(out)
    keys = manifest["keys"]
    done = finished_keys(out) & set(keys)
    wall = sum(read_record(out / POINTS / f"{key}.json")["wall_seconds"] for key in done)
    return {"name": manifest["spec"]["name"], "total": len(keys), "done": len(done), "remaining": len(keys) - len(done),
            "wall_seconds_done": wall}
