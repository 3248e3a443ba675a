"""The `gba` command. Each subcommand is a module of this package with `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys

from theory.validation import ConfigError

COMMANDS = {
    "recover": "train one SAE on planted features and report the feature recovery rate",
    "grid": "run a grid spec (simulations/specs/*.toml) resumably, tabulate it, show its status",
    "figures": "redraw the figures from the committed result tables",
    "checks": "regenerate paper_checks.md (the paper's claims against our measurements) from the result tables",
    "bench": "time the training step, controller, sampler, batched grids, bf16 and SAELens",
    "export": "convert a saved SAE to SAELens's format",
    "llm": "SAEs on language-model activations (extract, train, eval, frontier)",
}
"""Subcommand -> its one-line summary. Each is the module simulations.commands.<name> with `register(parser)`,
which adds the arguments and sets `handler`; it is imported only when its command runs, so that
`gba --help` does not wait for torch."""


class OneLineErrors(argparse.ArgumentParser):
    """Argument errors as one line ("gba recover: error: argument --n: ..."), without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The `gba` parser with the arguments of `commands` (default: all); the others are listed only."""
    parser = OneLineErrors(
        prog="gba",
        description="Provable feature recovery with sparse autoencoders: (Group) Bias Adaptation.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrors)
    for name, summary in COMMANDS.items():
        command = subparsers.add_parser(name, help=summary)
        if commands is None or name in commands:
            importlib.import_module(f"simulations.commands.{name}").register(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(commands=argv[:1])
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except ConfigError as error:
        # Bad settings are reported in one line naming the setting and its range, never a traceback.
        print(f"gba {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
