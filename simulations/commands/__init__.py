"""The `gba` command line: one thin module per subcommand (`gba.main` is the entry point)."""

import os

# OpenMP threads that wait for work spin for a while before they sleep (libgomp: 300,000 spins).
# When another process holds a core, the spinning thread steals it from the one doing the work:
# `gba recover` took 2.4x its quiet time beside a busy loop. Sleeping after 1,000 spins costs
# nothing measurable on a quiet machine (`gba bench`: busy_machine). Read when torch loads, so
# it is set here, before any subcommand imports torch; a value in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
