"""The `gba` command. Each subcommand is a module of this package with `register(subparsers)`."""

from __future__ import annotations

import argparse
import sys

from theory.validation import ConfigError

from simulations.commands import bench, checks, export, figures, grid, llm, recover

COMMANDS = [recover, grid, figures, checks, bench, export, llm]
"""Modules with `register(subparsers)`; each sets `handler` on its parser."""


class OneLineErrors(argparse.ArgumentParser):
    """Argument errors as one line ("gba recover: error: argument --n: ..."), without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="gba",
        description="Provable feature recovery with sparse autoencoders: (Group) Bias Adaptation.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrors)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except ConfigError as error:
        # Bad settings are reported in one line naming the setting and its range, never a traceback.
        print(f"gba {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
