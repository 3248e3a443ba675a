"""Every `gba` help line states its default exactly once; the light help pages do not import torch."""

import argparse
import re
import subprocess
import sys

import pytest

from simulations.commands.gba import build_parser


def _options(parser, name="gba"):
    """(command, option strings, rendered help) of every option that takes a value, in every subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _options(subparser, f"{name} {sub}")
        elif action.option_strings and action.nargs != 0:  # on/off flags default to off by nature
            yield name, action.option_strings, parser._get_formatter()._expand_help(action) if action.help else ""


@pytest.mark.parametrize("command, flags, text", list(_options(build_parser())), ids=lambda value: value if isinstance(value, str) and value.startswith("gba") else None)
def test_every_option_states_its_default_once(command, flags, text):
    assert len(re.findall(r"\(default", text)) == 1, (command, flags, text)


@pytest.mark.parametrize("command", ["", "grid", "figures", "checks", "bench", "export"])
def test_help_does_not_wait_for_torch(command):
    # torch takes over a second to import; these help pages need none of it
    probe = ("import sys; from simulations.commands.gba import main\n"
             f"try:\n    main({[command] if command else []} + ['--help'])\nexcept SystemExit:\n    pass\n"
             "sys.stderr.write(str('torch' in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "usage: gba" in result.stdout and result.stderr.endswith("False"), result.stderr
