"""`dstack event [NAME]`: the lifecycle events the runner records in the state store (submitted, each offer tried
and why it failed, provisioned, started, exit, teardown steps, the final status), oldest first."""

from __future__ import annotations

import time
from typing import Optional

import typer
from typing_extensions import Annotated

from cli.helpers import print_events, since_time

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

    start = since_time(since) if since is not None else None
    shown = print_events(name, as_json, since=start, last=None if name or since else LAST_EVENTS)
    try:
        while watch:
            time.sleep(WATCH_INTERVAL_S)
            shown = print_events(name, as_json, after_id=shown, header=False) or shown
    except KeyboardInterrupt:
        pass
