"""`dstack run get NAME [--json]`: show one run, as dstack 0.22.5's `run` command does. `run` reads; it never
submits (`dstack apply` does)."""

from __future__ import annotations

import time
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cli.helpers import find_run, run_json, run_session
from cli.output import print_json, stdout_console


def run(
    action: Annotated[Optional[str], typer.Argument(help="get", show_default=False)] = None,
    name: Annotated[Optional[str], typer.Argument(help="The run name", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
    rest: Annotated[Optional[List[str]], typer.Argument(hidden=True)] = None,
) -> None:
    """Show a run: `dstack run get NAME` (`--json` for scripts). To submit a run, `dstack apply`."""
    from configuration.errors import ConfigurationError

    if action != "get" or name is None or rest:
        raise ConfigurationError("`dstack run` shows a run (`dstack run get NAME [--json]`), as dstack's does; a run "
                                 "is submitted with `dstack apply [-f FILE]`")
    session = run_session()
    from provisioner.runs.reconcile import reconcile

    reconcile(session)  # as `dstack ps` does: a run whose job ended shows as ended
    record = find_run(session, name)
    document = run_json(session, record, time.time())
    if as_json:
        print_json({"run": document})
        return
    from rich.table import Table

    table = Table(box=None, show_header=False)
    table.add_column(no_wrap=True)
    table.add_column()
    for key in ("name", "type", "status", "reason", "backend", "region", "instance", "price", "cost", "exit_code"):
        value = document.get(key)
        if value not in (None, ""):
            table.add_row(f"[bold]{key.replace('_', ' ').capitalize()}[/]", str(value))
    stdout_console().print(table)
