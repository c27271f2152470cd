"""The `dstack` command line: cli.main dispatches, cli.app is the typer app of every command."""

VERSION = "0.1.0"
PROG_NAME = "dstack"
COMPLETE_VAR = "_DSTACK_COMPLETE"  # set by the script `dstack completion SHELL` prints
