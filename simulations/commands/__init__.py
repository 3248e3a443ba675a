"""The `gba` command line: one thin module per subcommand (`gba.main` is the entry point)."""
