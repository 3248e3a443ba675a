"""`gba grid run|table|status`: run a TOML grid of recovery runs resumably, gather its table."""

from __future__ import annotations

import argparse
from pathlib import Path

from theory.validation import ConfigError


def register(parser) -> None:
    parser.description = ("Grids of recovery runs. Each finished point is written atomically under a hash of its "
                          "full config, so re-running a spec skips finished points.")
    actions = parser.add_subparsers(dest="grid_action", required=True, parser_class=type(parser))

    run = actions.add_parser("run", help="run every unfinished point of SPEC",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("spec", type=Path, help="grid spec, a TOML file")
    run.add_argument("--out", type=Path, required=True, help="output directory (points/, grid.json, results.*)")
    run.add_argument("--jobs", type=int, default=1,
                     help="parallel points: 1 = this process with --threads torch threads (big points); "
                     "N > 1 = N loky workers with one thread each (many small points)")
    run.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="torch threads when --jobs 1 (default: torch's choice)")
    run.add_argument("--backend", choices=["loky", "dask"], default="loky",
                     help="where --jobs > 1 runs: loky worker processes here, or a Dask cluster at --scheduler")
    run.add_argument("--scheduler", default=argparse.SUPPRESS,
                     help="Dask scheduler address for --backend dask (tcp://HOST:PORT) (default: a local cluster)")
    run.add_argument("--reuse", type=Path, nargs="+", default=[], metavar="DIR",
                     help="other grids' output directories whose finished points with the same config are copied, not re-run")
    run.add_argument("--stack", type=int, default=1,
                     help="up to this many points of equal shapes train as one batched computation (for GPUs: "
                     "on the 2-core CPU it measured no faster than one point per worker, see `gba bench`); 1 = each alone")
    run.add_argument("--time-limit", type=float, default=argparse.SUPPRESS, metavar="SECONDS",
                     help="start no group of points after this many seconds (those in flight finish); run again to "
                     "continue (default: none)")
    run.add_argument("--no-table", action="store_true", help="do not write results.csv/.parquet at the end")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(handler=handle_run)

    table = actions.add_parser("table", help="write DIR/results.csv, DIR/results.parquet and DIR/history.csv")
    table.add_argument("out", type=Path, help="a grid's output directory")
    table.set_defaults(handler=handle_table)

    status = actions.add_parser("status", help="how many points of DIR are finished")
    status.add_argument("out", type=Path, help="a grid's output directory")
    status.set_defaults(handler=handle_status)

    settle = actions.add_parser("settle", help="add the convergence columns (settled, ...) to tables from their history.csv")
    settle.add_argument("tables", type=Path, nargs="+", metavar="DIR", help="directories with results.csv and history.csv")
    settle.set_defaults(handler=handle_settle)


def handle_run(args) -> int:
    from simulations.experiments.grid import GridSpec, run_grid, write_table

    spec = GridSpec.from_toml(args.spec)
    counts = run_grid(spec, args.out, jobs=args.jobs, backend=args.backend, scheduler=getattr(args, "scheduler", None),
                      threads=getattr(args, "threads", None), progress=not args.quiet, reuse=tuple(args.reuse),
                      stack=args.stack, time_limit=getattr(args, "time_limit", None))
    print(f"{spec.name}: {counts['total']} points, {counts['skipped']} already done, {counts['reused']} reused, "
          f"{counts['ran']} ran" + (f", {counts['left']} left at the time limit (run again to continue)" if counts["left"] else ""))
    if not args.no_table:
        csv, _, _ = write_table(args.out)
        print(f"table: {csv}")
    return 0


def handle_table(args) -> int:
    from simulations.experiments.grid import write_table

    for path in write_table(args.out):
        print(path)
    return 0


def handle_settle(args) -> int:
    from simulations.experiments.grid import settle_table

    missing = [str(directory) for directory in args.tables if not (directory / "results.csv").is_file()]
    if missing:
        raise ConfigError(f"tables: no results.csv in {', '.join(missing)}")
    for directory in args.tables:
        print(settle_table(directory))
    return 0


def handle_status(args) -> int:
    from simulations.experiments.grid import grid_status

    status = grid_status(args.out)
    print(f"{status['name']}: {status['done']}/{status['total']} points done, {status['remaining']} remaining, "
          f"{status['wall_seconds_done']:.0f} s of training done")
    return 0
