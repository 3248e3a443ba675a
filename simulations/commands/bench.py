"""`gba bench`: time the training step, controller, sampler, stacked grids, bf16 and SAELens."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from simulations.experiments.files import check_output_file, write_atomically


def register(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="two shapes, GBA only, short grid and bf16 runs (~1-2 min idle)")
    parser.add_argument("--json", type=Path, default=None, help="write the records to this JSON file (default: print them only)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from simulations.benchmark.run import run_bench, table

    if args.json is not None:
        check_output_file("json", args.json)
    records = run_bench(args.quick)
    print(table(records))
    if args.json is not None:
        write_atomically(args.json, json.dumps(records, indent=1) + "\n")
    return 0
