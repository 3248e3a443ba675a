"""`gba checks`: regenerate paper_checks.md from the committed result tables."""

from __future__ import annotations

import sys
from pathlib import Path

from simulations.reports.claims import render
from simulations.reports.tables import RESULTS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "checks",
        help="regenerate paper_checks.md (the paper's claims against our measurements) from the result tables",
        description="Measure every registered claim (simulations/reports/claims/) on the result tables and write paper_checks.md.",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"result tables (default {RESULTS})")
    parser.add_argument("--out", type=Path, default=Path("paper_checks.md"), help="file to write (default paper_checks.md)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out differs from what would be written")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    text = render(args.results)
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date: run `gba checks`", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0
