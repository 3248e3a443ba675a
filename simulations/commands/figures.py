"""`gba figures`: redraw every registered figure from the committed result tables (no training)."""

from __future__ import annotations

import time
from pathlib import Path

from simulations.reports.tables import RESULTS, MissingTable, check_results_directory
from simulations.experiments.files import check_output_directory
from theory.validation import ConfigError


def register(parser) -> None:
    parser.description = "Redraw every registered figure (simulations/reports/plots/) from the result tables; nothing is trained."
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"result tables (default {RESULTS})")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="where the PNGs go (default figures)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="draw only these figures (default: every registered figure)")
    parser.add_argument("--list", action="store_true", help="list the registered figures and exit")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a figure's table is missing")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from simulations.reports.plots import load_all

    figures = load_all()
    if args.list:
        print("\n".join(sorted(figures)))
        return 0
    check_results_directory(args.results)
    names = sorted(figures) if args.only is None else args.only
    unknown = [name for name in names if name not in figures]
    if unknown:
        raise ConfigError(f"only: unknown figure(s) {', '.join(unknown)} (registered: {', '.join(sorted(figures))})")
    check_output_directory("out", args.out, overwrite=True)  # figures are redrawn in place
    import matplotlib

    matplotlib.use("Agg")
    args.out.mkdir(parents=True, exist_ok=True)
    missing = 0
    for name in names:
        started = time.perf_counter()
        try:
            path = figures[name](args.results, args.out)
        except MissingTable as error:
            missing += 1
            print(f"skipped {name}: {error}")
            continue
        print(f"{path}  ({time.perf_counter() - started:.1f} s)")
    return 1 if missing and args.strict else 0
