"""Parameter grids of recovery runs: TOML specs, resumable parallel execution, one tidy table.

A spec (`simulations/grids/*.toml`) names fixed settings, axes (each a list; their cartesian
product), optional variants (tables merged over the fixed settings, for settings that apply to
some points only) and seeds. Every point is one `simulations.recover.run`; BA/GBA points of
equal shapes may train in stacked groups (`simulations.batched.train_many`, up to `stack` at once).
A finished point is written atomically to `DIR/points/KEY.json`, where KEY hashes the point's
full resolved config, so re-running a spec skips what is done and a killed run loses only the
groups in flight.

    name = "example"
    description = "what it measures, at which scale"
    seeds = [0, 1]
    [fixed]
    n = 256
    width = "4n"
    [axes]
    d = [24, 48]
    target_frequency = ["1f", "2f"]
    [[variants]]            # optional; each is merged over [fixed]
    learning_rate = 0.003
    [[variants]]
    learning_rate = 0.001
    seeds = [0]             # a variant may run its own seeds
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import platform
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from simulations.recover import RecoverConfig
from theory.bounds import theory_columns
from theory.conditions import check_data
from theory.validation import ConfigError

POINTS = "points"
"""Subdirectory of a grid's output directory holding one JSON file per finished point."""
MANIFEST = "grid.json"
"""The spec and the keys of all its points, written when a run starts (read by `status`)."""


@dataclass(frozen=True)
class GridSpec:
    """A parsed grid spec: settings common to all points, axes, variants and seeds."""

    name: str
    """Short name of the grid (used in tables and figure titles)."""
    description: str = ""
    """What the grid measures and at which scale."""
    seeds: tuple[int, ...] = (0,)
    """Run seeds; every (axes x variants) combination runs once per seed."""
    fixed: dict = field(default_factory=dict)
    """Settings shared by every point (flat keys of `RecoverConfig.from_settings`)."""
    axes: dict = field(default_factory=dict)
    """Setting -> list of values; the grid is their cartesian product."""
    variants: tuple[dict, ...] = ({},)
    """Tables merged over `fixed` (product with the axes); a variant may set its own `seeds` list."""
    conditions_samples: int = 100_000
    """Fresh samples on which each point's identifiability conditions H1-H3 are measured."""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name: a grid spec needs a non-empty string name")
        if not self.seeds or not all(isinstance(seed, int) and seed >= 0 for seed in self.seeds):
            raise ConfigError(f"seeds: must be a non-empty list of integers >= 0, got {list(self.seeds)!r}")
        for axis, values in self.axes.items():
            if not isinstance(values, (list, tuple)) or len(values) == 0:
                raise ConfigError(f"axes.{axis}: must be a non-empty list of values, got {values!r}")
        if "seed" in self.fixed or "seed" in self.axes:
            raise ConfigError("seed: give run seeds in the top-level 'seeds' list, not as a setting")
        if not isinstance(self.conditions_samples, int) or self.conditions_samples < 1:
            raise ConfigError(f"conditions_samples: must be an integer >= 1, got {self.conditions_samples!r}")

    @classmethod
    def from_toml(cls, path: str | Path) -> "GridSpec":
        """Read and validate a spec file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"spec: no such file {str(path)!r}")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"spec: {path} is not valid TOML ({error})") from None
        known = {"name", "description", "seeds", "fixed", "axes", "variants", "conditions_samples"}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"spec: unknown top-level key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(known))})")
        return cls(
            name=raw.get("name", ""),
            description=raw.get("description", ""),
            seeds=tuple(raw.get("seeds", [0])),
            fixed=dict(raw.get("fixed", {})),
            axes=dict(raw.get("axes", {})),
            variants=tuple(raw.get("variants", [{}])) or ({},),
            conditions_samples=raw.get("conditions_samples", 100_000),
        )

    def points(self) -> list["GridPoint"]:
        """Every point of the grid, each validated (a bad setting fails here, before any work)."""
        points, seen = [], set()
        names = list(self.axes)
        for variant in self.variants:
            variant = dict(variant)
            seeds = variant.pop("seeds", self.seeds)
            for values in itertools.product(*(self.axes[name] for name in names)):
                for seed in seeds:
                    settings = {**self.fixed, **variant, **dict(zip(names, values)), "seed": seed}
                    try:
                        config = RecoverConfig.from_settings(settings)
                    except (ConfigError, TypeError, ValueError) as error:
                        raise ConfigError(f"spec {self.name!r}, point {settings}: {error}") from None
                    point = GridPoint(settings=settings, config=config)
                    if point.key not in seen:
                        seen.add(point.key)
                        points.append(point)
        return points


@dataclass(frozen=True)
class GridPoint:
    """One run of a grid: the settings as the spec wrote them and the resolved config."""

    settings: dict
    config: RecoverConfig

    @property
    def key(self) -> str:
        """Hash of the full resolved config: equal configs share a key, whichever spec made them."""
        return config_key(self.config)


def config_key(config: RecoverConfig) -> str:
    """First 16 hex digits of the SHA-256 of the config's canonical JSON."""
    canonical = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def run_points(points: list[tuple[dict, dict]], conditions_samples: int, threads: int | None) -> list[dict]:
    """Train a group of points and measure each: metrics, its instance's conditions, the theorem's columns.

    `points` are (settings, config dict) pairs; a group of more than one is trained as one stacked
    computation (`simulations.batched.train_many`), a single point by `simulations.recover.run`.
    Runs in a worker process (loky, dask) or in the calling one; returns JSON-ready records.
    """
    import torch

    from simulations.batched import train_many
    from simulations.recover import run

    if threads is not None:
        torch.set_num_threads(threads)
    configs = [RecoverConfig.from_dict(config_dict) for _, config_dict in points]
    results = train_many(configs) if len(configs) > 1 else [run(configs[0])]
    conditions_of: dict = {}  # points on the same instance and seed share their conditions
    records = []
    for (settings, config_dict), config, result in zip(points, configs, results):
        instance = (config.model, config.seed)
        if instance not in conditions_of:
            conditions_of[instance] = check_data(result.data, num_samples=conditions_samples, seed=config.seed).as_columns()
        records.append(point_record(settings, config_dict, config, result, conditions_of[instance], len(configs)))
    return records


def point_record(settings, config_dict, config, result, conditions: dict, stacked: int) -> dict:
    """The JSON-ready record of one finished point (wall seconds: its run's, or its share of its stack's)."""
    import torch

    metrics = dict(result.metrics)
    groups = metrics.pop("groups", None)
    metrics.update(_frequency_metrics(result, groups))
    theory = {}
    if config.method == "ba":
        model = config.model
        p = float(config.method_config.targets()[0])
        theory = theory_columns(model.n, model.d, model.mean_sparsity, p, config.sae.width)
    return {
        "key": config_key(config),
        "settings": settings,
        "config": config_dict,
        "metrics": metrics,
        "groups": [{k: v for k, v in group.items() if k != "frequencies"} for group in groups or []],
        "conditions": {k: _plain(v) for k, v in conditions.items()},
        "theory": {k: _plain(v) for k, v in theory.items()},
        "history": result.history.to_dict(orient="list"),
        "wall_seconds": metrics["wall_seconds"],
        "stacked": stacked,
        "device": _device_name(result.sae.weight.device),
        "threads": torch.get_num_threads(),
        "versions": library_versions(),
    }


def point_groups(points: list[GridPoint], stack: int) -> list[list[GridPoint]]:
    """The spec's points in the groups that train together: up to `stack` stackable points
    (`simulations.batched.stackable`), those on the same instance and seed side by side.

    The partition depends on the spec and `stack` alone, never on what is already done, so a
    resumed grid trains every group exactly as an uninterrupted one (bit-identical results)."""
    from simulations.batched import stackable

    families: list[list[GridPoint]] = []
    for point in points:
        family = next((f for f in families if stack > 1 and stackable(f[0].config, point.config)), None)
        if family is None:
            families.append([point])
        else:
            family.append(point)
    groups = []
    for family in families:
        family.sort(key=lambda point: (repr(point.config.model), point.config.seed))
        groups += [family[start : start + stack] for start in range(0, len(family), stack)]
    return groups


def _frequency_metrics(result, groups) -> dict:
    """Realised activation frequencies: of all neurons, of the live ones, and of the neurons that learned a feature.

    The controller keeps each neuron at or below its target, so the realised frequency is the
    other candidate for the heatmap's p axis; `matched_frequency` is the median frequency of each
    feature's best-aligned neuron, the neurons that actually carry features. Also per planted
    co-occurring pair, the recovery of the paired features alone.
    """
    from theory.metrics import max_cosine

    features = result.data.features
    decoder = result.sae.decoder_weight.detach().cpu().numpy()
    best, best_neuron = max_cosine(features, decoder)
    model = result.config.model
    out = {}
    paired = 2 * model.cooccurring_pairs
    if paired:
        out["frr_0.9_paired"] = float(np.mean(best[:paired] >= 0.9))
        out["frr_0.9_unpaired"] = float(np.mean(best[paired:] >= 0.9)) if paired < model.n else float("nan")
    if not groups:
        return out
    frequency = np.concatenate([np.asarray(group["frequencies"]) for group in groups])
    target = np.concatenate([np.full(len(group["frequencies"]), group["target_frequency"]) for group in groups])
    live = frequency > 0
    f = model.feature_frequency
    out["median_live_frequency"] = float(np.median(frequency[live])) if live.any() else 0.0
    out["matched_frequency"] = float(np.median(frequency[best_neuron]))
    out["matched_frequency_over_f"] = out["matched_frequency"] / f
    if len(groups) > 1:
        # Which groups carry the recovered features (best neuron at cosine >= 0.9), by group index.
        group_of = np.concatenate([np.full(len(group["frequencies"]), k) for k, group in enumerate(groups)])
        recovered = group_of[best_neuron[best >= 0.9]]
        out["recovered_per_group"] = np.bincount(recovered, minlength=len(groups)).tolist()
    bias = getattr(result.method, "bias", None)
    if bias is not None:
        bias = bias.detach().cpu().numpy()
        unclamped = bias > -1.0
        # 4 binomial standard deviations of the evaluation sample.
        limit = target + 4 * np.sqrt(target / result.config.eval_samples)
        out["fraction_above_target"] = float(np.mean(frequency[unclamped] > limit[unclamped])) if unclamped.any() else 0.0
        out["biases_in_range"] = bool(np.all((bias >= -1.0) & (bias <= 0.0)))
    return out


def _plain(value):
    """numpy scalars to Python ones, for JSON."""
    return value.item() if isinstance(value, np.generic) else value


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()}"


def library_versions() -> dict:
    """Versions of the libraries a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("gba-sae", "torch", "numpy", "scipy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def write_atomically(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and os.replace, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def finished_keys(out: Path) -> set[str]:
    """Keys of the points already written under `out`."""
    folder = Path(out) / POINTS
    return {path.stem for path in folder.glob("*.json")} if folder.is_dir() else set()


def run_grid(
    spec: GridSpec,
    out: str | Path,
    jobs: int = 1,
    backend: str = "loky",
    scheduler: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    reuse: tuple[str | Path, ...] = (),
    stack: int = 1,
) -> dict:
    """Run every unfinished point of `spec`, writing each to `out/points/KEY.json` as it finishes.

    jobs = 1 runs in this process with `threads` torch threads (default: torch's, all cores),
    the right choice for big points. jobs > 1 runs that many loky workers with one thread each
    (more threads per worker oversubscribes the cores). backend 'dask' sends the points to the
    Dask cluster at `scheduler` through joblib's dask backend, one thread per task.
    Up to `stack` points that share their shapes (BA/GBA) train as one stacked computation
    (`point_groups`); stack = 1 trains every point alone. A group with an unfinished point is
    trained whole and its unfinished points are written.
    Points already finished under a directory in `reuse` (other grids' outputs) are copied
    instead of re-run: equal keys mean equal configs, hence equal results.
    Returns counts: total, skipped (already done), reused, ran.
    """
    from joblib import Parallel, delayed, parallel_config
    from tqdm.auto import tqdm

    if backend not in ("loky", "dask"):
        raise ConfigError(f"backend: must be one of 'loky', 'dask', got {backend!r}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs: must be an integer >= 1, got {jobs!r}")
    if not isinstance(stack, int) or stack < 1:
        raise ConfigError(f"stack: must be an integer >= 1, got {stack!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads: must be an integer >= 1, got {threads!r}")
    if backend == "dask" and not scheduler:
        raise ConfigError("scheduler: --backend dask needs --scheduler ADDRESS (e.g. tcp://127.0.0.1:8786)")
    out = Path(out)
    points = spec.points()
    manifest = {"spec": dataclasses.asdict(spec), "keys": [point.key for point in points]}
    write_atomically(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    done = finished_keys(out)
    todo = [point for point in points if point.key not in done]
    counts = {"total": len(points), "skipped": len(points) - len(todo), "reused": 0, "ran": 0}
    for point in list(todo):
        source = next((Path(d) / POINTS / f"{point.key}.json" for d in reuse if (Path(d) / POINTS / f"{point.key}.json").is_file()), None)
        if source is not None:
            record = json.loads(source.read_text())
            record["settings"] = point.settings  # as this spec writes them
            write_atomically(out / POINTS / f"{point.key}.json", json.dumps(record) + "\n")
            todo.remove(point)
            counts["reused"] += 1
    if not todo:
        return counts
    # Workers (loky, dask) get one torch thread per point: more would oversubscribe the cores.
    point_threads = threads if jobs == 1 and backend == "loky" else 1
    unfinished = {point.key for point in todo}
    groups = [group for group in point_groups(points, stack) if any(point.key in unfinished for point in group)]
    tasks = (
        delayed(run_points)([(point.settings, point.config.to_dict()) for point in group], spec.conditions_samples, point_threads)
        for group in groups
    )
    bar = tqdm(total=len(points), initial=counts["skipped"] + counts["reused"], desc=spec.name, unit="point", disable=not progress)

    def store(records: list[dict]) -> None:
        for record in records:
            if record["key"] in unfinished:
                write_atomically(out / POINTS / f"{record['key']}.json", json.dumps(record) + "\n")
                counts["ran"] += 1
                bar.update(1)

    try:
        if backend == "dask":
            from dask.distributed import Client

            with Client(scheduler), parallel_config(backend="dask"):
                for record in Parallel(n_jobs=jobs, return_as="generator_unordered")(tasks):
                    store(record)
        elif jobs == 1:
            for task in tasks:
                function, args, kwargs = task
                store(function(*args, **kwargs))
        else:
            for record in Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")(tasks):
                store(record)
    finally:
        bar.close()
    return counts


def load_records(out: str | Path) -> list[dict]:
    """The finished points of the spec last run into `out`, in the manifest's order.

    Points left there by an earlier version of the spec stay on disk (a later run may reuse them)
    but are not part of the table.
    """
    out = Path(out)
    folder = out / POINTS
    if not folder.is_dir() or not (out / MANIFEST).is_file():
        raise ConfigError(f"out: {str(out)!r} has no finished points; run `gba grid run SPEC --out {out}` first")
    keys = json.loads((out / MANIFEST).read_text())["keys"]
    paths = [folder / f"{key}.json" for key in keys]
    return [json.loads(path.read_text()) for path in paths if path.is_file()]


def flat_config(config: dict) -> dict:
    """A resolved config as flat columns: the fields of each part by name (the model's seed is `feature_seed`)."""
    columns = {"method": config["method"], "seed": config["seed"], "eval_samples": config["eval_samples"]}
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
    row["stacked"] = record.get("stacked", 1)  # points trained together (records from before stacking: alone)
    row["device"] = record["device"]
    row.update({f"version_{name}": value for name, value in record["versions"].items()})
    return {name: json.dumps(value) if isinstance(value, (list, tuple, dict)) else value for name, value in row.items()}


def grid_table(out: str | Path) -> pd.DataFrame:
    """The tidy table of all finished points under `out` (one row per point)."""
    records = load_records(out)
    spec = json.loads((Path(out) / MANIFEST).read_text())["spec"]
    varied = set(spec["axes"]) | {name for variant in spec["variants"] for name in variant} - {"seeds"}
    return pd.DataFrame([record_row(record, spec["name"], varied) for record in records])


def grid_history(out: str | Path) -> pd.DataFrame:
    """Training histories of all finished points, long format, keyed by `key`."""
    frames = []
    for record in load_records(out):
        frame = pd.DataFrame(record["history"])
        frame.insert(0, "key", record["key"])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def write_table(out: str | Path) -> tuple[Path, Path, Path]:
    """Write `results.csv`, `results.parquet` and `history.csv` under `out`."""
    out = Path(out)
    table = grid_table(out)
    csv, parquet, history = out / "results.csv", out / "results.parquet", out / "history.csv"
    write_atomically(csv, table.to_csv(index=False))
    table.to_parquet(parquet, index=False)
    write_atomically(history, grid_history(out).to_csv(index=False))
    return csv, parquet, history


def grid_status(out: str | Path) -> dict:
    """How many of the manifest's points are finished, and their total wall time."""
    out = Path(out)
    if not (out / MANIFEST).is_file():
        raise ConfigError(f"out: {str(out)!r} has no {MANIFEST}; run `gba grid run SPEC --out {out}` first")
    manifest = json.loads((out / MANIFEST).read_text())
    keys = manifest["keys"]
    done = finished_keys(out) & set(keys)
    wall = sum(json.loads((out / POINTS / f"{key}.json").read_text())["wall_seconds"] for key in done)
    return {"name": manifest["spec"]["name"], "total": len(keys), "done": len(done), "remaining": len(keys) - len(done),
            "wall_seconds_done": wall}


RESULTS = Path("simulations/results")
"""Where the committed result tables live: RESULTS/NAME/results.csv (and history.csv)."""


class MissingTable(ConfigError):
    """A figure or check needs a result table that has not been made yet."""


def load_results(results: str | Path, name: str, table: str = "results.csv") -> pd.DataFrame:
    """The committed table `results/NAME/TABLE`; raises MissingTable naming the command that makes it."""
    path = Path(results) / name / table
    if not path.is_file():
        raise MissingTable(f"{path} is missing: run `gba grid run simulations/grids/{name}.toml --out {Path(results) / name}`")
    return pd.read_csv(path)
