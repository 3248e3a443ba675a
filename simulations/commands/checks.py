"""`gba checks`: regenerate paper_checks.md from the committed result tables."""

from __future__ import annotations

import sys
from pathlib import Path

from simulations.reports.tables import RESULTS, check_results_directory
from simulations.experiments.files import check_output_file, write_atomically
from theory.validation import ConfigError

SPECS = Path("simulations/specs")


def register(parser) -> None:
    parser.description = "Measure every registered claim (simulations/reports/claims/) on the result tables and write paper_checks.md."
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"result tables (default {RESULTS})")
    parser.add_argument("--out", type=Path, default=Path("paper_checks.md"), help="file to write (default paper_checks.md)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out differs from what would be written")
    parser.add_argument("--verify", nargs="*", metavar="GRID",
                        help="write nothing; re-run the cheapest committed point of each grid under --results (or of the "
                        "GRIDs named) with the code in this tree and exit 1 unless every measured column is identical (on the "
                        "processor that made the row; within CROSS_PROCESSOR_TOLERANCE of grid/verify.py on another) (default: off; GRIDs "
                        "default to every grid)")
    parser.add_argument("--points", type=int, default=1, help="points per grid for --verify (default 1)")
    parser.add_argument("--specs", type=Path, default=SPECS, help=f"grid specs for --verify (default {SPECS})")
    parser.set_defaults(handler=handle)


def verify(args) -> int:
    """Re-run committed points and report, per point, identical or the columns that differ."""
    from simulations.experiments.grid import verify_grid
    from simulations.experiments.grid.verify import CROSS_PROCESSOR_TOLERANCE

    available = sorted(path.parent.name for path in args.results.glob("*/results.csv"))
    names = args.verify or available
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ConfigError(f"verify: no committed table for {', '.join(unknown)} under {args.results} (have: {', '.join(available)})")
    if args.points < 1:
        raise ConfigError(f"points: must be an integer >= 1, got {args.points}")
    failed = 0
    for name in names:
        for result in verify_grid(args.specs, args.results, name, args.points):
            added = f" ({len(result.added)} metric columns newer than the table)" if result.added else ""
            same = "identical" if result.exact else f"equal within {CROSS_PROCESSOR_TOLERANCE} (the table was made on another processor)"
            if result.identical:
                print(f"{name} {result.key} {result.method}: {same}{added}")
            else:
                failed += 1
                listed = "; ".join(f"{column} {committed!r} -> {rerun!r}" for column, committed, rerun in result.differences)
                where = "" if result.exact else (" (the table was made on another processor, whose rounding can move a "
                                                 "chaotic run by a few features; verify on the row's processor)")
                print(f"{name} {result.key} {result.method}: DIFFERS in {len(result.differences)} columns: {listed}{where}")
    return 1 if failed else 0


def handle(args) -> int:
    check_results_directory(args.results)
    if args.verify is not None:
        return verify(args)
    if not args.check:
        check_output_file("out", args.out)
    from simulations.experiments.grid.convergence import RULE, SCOPE
    from simulations.reports.claims import render

    text = render(args.results, rules=((RULE, SCOPE),))
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date: run `gba checks`", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    write_atomically(args.out, text)
    print(f"wrote {args.out}")
    return 0
