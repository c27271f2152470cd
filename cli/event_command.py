"""`dstack event [NAME]`: the lifecycle events the runner records in the state store (submitted, each offer tried
and why it failed, provisioned, started, exit, teardown steps, the final status), oldest first."""

from __future__ import annotations

import time
from typing import Optional

import typer
from typing_extensions import Annotated

from cli.output import print_json, stdout_console

LAST_EVENTS = 100  # shown without NAME or --since, as dstack does
WATCH_INTERVAL_S = 1.0


def event(
    name: Annotated[Optional[str], typer.Argument(help="Only this run's events")] = None,
    since: Annotated[
        Optional[str],
        typer.Option("--since", metavar="SINCE", help="Only events newer than this: a duration (10s, 5m, 1d) or an "
                     "RFC 3339 time"),
    ] = None,
    watch: Annotated[bool, typer.Option("-w", "--watch", help="Keep printing new events until Ctrl-C")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
) -> None:
    """Show runs' lifecycle events: submitted, offers tried, provisioned, started, exit, teardown."""
    from cli.runs_command import _since_time

    start = _since_time(since) if since is not None else None
    shown = print_events(name, as_json, since=start, last=None if name or since else LAST_EVENTS)
    try:
        while watch:
            time.sleep(WATCH_INTERVAL_S)
            shown = print_events(name, as_json, after_id=shown, header=False) or shown
    except KeyboardInterrupt:
        pass


def print_events(name: Optional[str], as_json: bool, since: Optional[float] = None, after_id: int = 0,
                 last: Optional[int] = None, header: bool = True) -> int:
    """Prints the events; returns the id of the last one (0 when there were none)."""
    from configuration.errors import ConfigurationError
    from provisioner.state import StateStore

    store = StateStore()
    if name is not None and after_id == 0 and store.get_run(name) is None:
        raise ConfigurationError(f"no run named {name} (see `dstack ps -a`)")
    events = store.list_events(name, since=since, after_id=after_id)
    if last is not None:
        events = events[-last:]
    if as_json:
        if events or header:
            print_json({"events": events})
    else:
        _print_table(events, header)
    return events[-1]["id"] if events else after_id


def _print_table(events: list, header: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = stdout_console()
    if not events:
        if header:
            console.print("No events.")
        return
    table = Table(box=None, header_style="bold", show_header=header)
    for column in ("TIME", "RUN", "EVENT", "DETAIL"):
        table.add_column(column)
    for item in events:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item["at"]))
        table.add_row(at, item["run"], item["kind"], escape(item["message"]))
    console.print(table)
