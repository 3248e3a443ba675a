"""Running a grid: every unfinished point of a spec, resumably, in this process, on loky workers or on Dask.

A finished point is written atomically to `DIR/points/KEY.json` (KEY hashes the point's full
resolved config), so re-running a spec skips what is done; a point trained alone saves its
training state beside it (`KEY.checkpoint.pt`) ten times a run, so a killed run loses at most a
tenth of each point in flight (a stacked group, all of its own). Points of equal shapes may train
in stacked groups (`--stack`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from simulations.engine.progress import progress_bar
from simulations.experiments.files import write_atomically
from simulations.experiments.grid.spec import MANIFEST, POINTS, GridPoint, GridSpec, config_key
from simulations.experiments.recover import RecoverConfig, check_memory, run, run_stack, stackable
from theory.bounds import theory_columns
from theory.conditions import check_data
from theory.validation import ConfigError


def run_points(
    points: list[tuple[dict, dict]], conditions_samples: int, threads: int | None, progress: bool = False,
    checkpoints: str | None = None,
) -> list[dict]:
    """Train a group of points and measure each: metrics, its instance's conditions, the theorem's columns.

    `points` are (settings, config dict) pairs; a group of more than one is trained as one stacked
    computation (`recover.run_stack`), a single point by `recover.run`, which saves its training
    state in the folder `checkpoints` (`checkpoint_path`) when given and resumes from it.
    Runs in a worker process (loky, dask) or in the calling one (where `progress` shows the training steps);
    returns JSON-ready records.
    """
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    configs = [RecoverConfig.from_dict(config_dict) for _, config_dict in points]
    if len(configs) > 1:
        results = run_stack(configs, progress)
    else:
        checkpoint = None if checkpoints is None else checkpoint_path(Path(checkpoints), config_key(configs[0]))
        results = [run(configs[0], progress=progress, checkpoint=checkpoint)]
    conditions_of: dict = {}  # points on the same instance and seed share their conditions
    records = []
    for (settings, config_dict), config, result in zip(points, configs, results):
        instance = (config.model, config.data, config.seed)
        if instance not in conditions_of:
            conditions_of[instance] = check_data(result.data, num_samples=conditions_samples, seed=config.seed).as_columns()
        records.append(point_record(settings, config_dict, config, result, conditions_of[instance], len(configs)))
    return records


def checkpoint_path(folder: Path, key: str) -> Path:
    """Where a point saves its training state while it runs (beside the finished points' records)."""
    return folder / f"{key}.checkpoint.pt"


def point_record(settings, config_dict, config, result, conditions: dict, stacked: int) -> dict:
    """The JSON-ready record of one finished point (wall seconds: its run's, or its share of its stack's)."""
    import torch

    metrics = dict(result.metrics)
    groups = metrics.pop("groups", None)
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
        "device": device_name(result.sae.weight.device),
        "threads": torch.get_num_threads(),
        "versions": library_versions(),
        "code": LOADED_CODE,
    }


def point_groups(points: list[GridPoint], stack: int) -> list[list[GridPoint]]:
    """The spec's points in the groups that train together: up to `stack` stackable points
    (`recover.stackable`), those on the same instance and seed side by side.

    The partition depends on the spec and `stack` alone, never on what is already done, so a
    resumed grid trains every group exactly as an uninterrupted one (bit-identical results)."""
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


def _plain(value):
    """numpy scalars to Python ones, for JSON."""
    return value.item() if isinstance(value, np.generic) else value


def processor_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), since floating-point kernels and
    hence the last bits of a result differ between processors."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device) -> str:
    """"cuda:<GPU name>" or "cpu:<processor model>"."""
    import torch

    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{processor_name()}"


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


@functools.cache
def code_revision() -> dict:
    """The git commit of the code that made a record, and whether its source (theory/, simulations/
    less the specs and results) differed from that commit; "unknown" outside a git checkout."""
    root = Path(__file__).resolve().parents[3]
    source = ["theory", "simulations", ":(exclude)simulations/results", ":(exclude)simulations/specs"]
    try:
        def git(*arguments):
            return subprocess.run(["git", "-C", str(root), *arguments], capture_output=True, text=True, check=True,
                                  timeout=30).stdout.strip()

        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", *source))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


LOADED_CODE = code_revision()
"""The revision of the code this process imported, read once at import: a commit or an edit made
while a grid runs is not credited to the points that this process goes on to train."""


UNREADABLE = "unreadable"
"""Subdirectory of `points/` where point files that do not parse are moved, so that their points run again."""


def read_record(path: Path) -> dict | None:
    """The point record in `path`, or None when it does not parse as the record of its own key."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("key") == Path(path).stem else None


def read_manifest(out: Path) -> dict:
    """The manifest of the grid run into `out`; a clear error when it is missing or does not parse."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"out: {str(out)!r} has no {MANIFEST}; run `gba grid run SPEC --out {out}` first")
    try:
        manifest = json.loads(path.read_text())
        if isinstance(manifest, dict) and isinstance(manifest.get("keys"), list) and isinstance(manifest.get("spec"), dict):
            return manifest
    except (OSError, UnicodeDecodeError, ValueError):
        pass
    raise ConfigError(f"out: {path} does not parse; `gba grid run SPEC --out {out}` writes it again")


def finished_keys(out: Path, repair: bool = False) -> set[str]:
    """Keys of the points finished under `out`. A point file that does not parse is an error naming it,
    or with `repair` is moved to points/unreadable/ (said on stderr) so that its point runs again."""
    folder = Path(out) / POINTS
    keys = set()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if read_record(path) is not None:
            keys.add(path.stem)
        elif repair:
            aside = folder / UNREADABLE / path.name
            aside.parent.mkdir(exist_ok=True)
            os.replace(path, aside)
            print(f"{path}: does not parse as a finished point; moved to {aside}, the point runs again", file=sys.stderr)
        else:
            raise ConfigError(f"out: {path} does not parse as a finished point; `gba grid run SPEC --out {out}` "
                              "moves it aside and runs the point again")
    return keys


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
    time_limit: float | None = None,
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
    With `time_limit` (seconds) no group starts once that much time has passed (the groups in
    flight finish), so a run fits a lease of a machine; running the spec again continues it.
    Returns counts: total, skipped (already done), reused, ran, left (not started).
    """
    started = time.monotonic()
    from joblib import Parallel, delayed, parallel_config

    if backend not in ("loky", "dask"):
        raise ConfigError(f"backend: must be one of 'loky', 'dask', got {backend!r}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs: must be an integer >= 1, got {jobs!r}")
    if not isinstance(stack, int) or stack < 1:
        raise ConfigError(f"stack: must be an integer >= 1, got {stack!r}")
    if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, (int, float))
                                   or not time_limit >= 0):
        raise ConfigError(f"time_limit: must be a number of seconds >= 0, got {time_limit!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads: must be an integer >= 1, got {threads!r}")
    if backend == "dask" and not scheduler:
        raise ConfigError("scheduler: --backend dask needs --scheduler ADDRESS (e.g. tcp://127.0.0.1:8786)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {str(out)!r} is a file, not a directory")
    missing = [str(directory) for directory in reuse if not (Path(directory) / POINTS).is_dir()]
    if missing:
        raise ConfigError(f"reuse: {', '.join(missing)} holds no grid points (no points/ folder)")
    points = spec.points()
    for point in points:
        try:
            check_memory(point.config, copies=jobs if backend == "loky" else 1)
        except ConfigError as error:
            raise ConfigError(f"spec {spec.name!r}, point {point.settings}: {error}") from None
    client = dask_client(scheduler) if backend == "dask" else None
    if (out / MANIFEST).is_file():
        try:
            read_manifest(out)
        except ConfigError:
            print(f"{out / MANIFEST}: does not parse; written again from spec {spec.name!r}", file=sys.stderr)
    manifest = {"spec": dataclasses.asdict(spec), "keys": [point.key for point in points]}
    write_atomically(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    done = finished_keys(out, repair=True)
    todo = [point for point in points if point.key not in done]
    counts = {"total": len(points), "skipped": len(points) - len(todo), "reused": 0, "ran": 0, "left": 0}
    for point in list(todo):
        record = next(filter(None, (read_record(Path(d) / POINTS / f"{point.key}.json") for d in reuse)), None)
        if record is not None:
            record["settings"] = point.settings  # as this spec writes them
            write_atomically(out / POINTS / f"{point.key}.json", json.dumps(record) + "\n")
            todo.remove(point)
            counts["reused"] += 1
    if not todo:
        if client is not None:
            client.close()
        return counts
    # Workers (loky, dask) get one torch thread per point: more would oversubscribe the cores.
    point_threads = threads if jobs == 1 and backend == "loky" else 1
    unfinished = {point.key for point in todo}
    groups = [group for group in point_groups(points, stack) if any(point.key in unfinished for point in group)]

    def tasks():
        for number, group in enumerate(groups):
            if time_limit is not None and time.monotonic() - started >= time_limit:
                counts["left"] = sum(point.key in unfinished for later in groups[number:] for point in later)
                return
            yield delayed(run_points)([(point.settings, point.config.to_dict()) for point in group], spec.conditions_samples,
                                      point_threads, checkpoints=str(out / POINTS))

    bar = progress_bar(total=len(points), initial=counts["skipped"] + counts["reused"], desc=spec.name, unit="points", enabled=progress)

    def store(records: list[dict]) -> None:
        for record in records:
            if record["key"] in unfinished:
                write_atomically(out / POINTS / f"{record['key']}.json", json.dumps(record) + "\n")
                checkpoint_path(out / POINTS, record["key"]).unlink(missing_ok=True)
                counts["ran"] += 1
                bar.update(1)

    try:
        if backend == "dask":
            with client, parallel_config(backend="dask"):
                for record in Parallel(n_jobs=jobs, return_as="generator_unordered")(tasks()):
                    store(record)
        elif jobs == 1:
            for task in tasks():
                function, args, kwargs = task
                store(function(*args, **kwargs, progress=progress))
        else:
            for record in Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")(tasks()):
                store(record)
    finally:
        bar.close()
    return counts


DASK_CONNECT_SECONDS = 5
"""How long `run_grid` waits for a Dask scheduler to answer before it gives up."""


def dask_client(address: str):
    """A client of the Dask scheduler at `address`; one that does not answer in time is a ConfigError."""
    from dask.distributed import Client

    try:
        return Client(address, timeout=DASK_CONNECT_SECONDS)
    except (OSError, TimeoutError, ValueError) as error:
        raise ConfigError(
            f"scheduler: no Dask scheduler answered at {address!r} within {DASK_CONNECT_SECONDS} s ({error})"
        ) from None
