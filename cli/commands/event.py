"""`dstack event [list] [NAME]`: the lifecycle events the runner records in the state store (submitted, each offer
tried and why it failed, provisioned, started, exit, teardown steps, the final status), oldest first.

dstack's filters are taken: `--target-run`/`--within-run` (a run's events; its jobs' are the run's here),
`--within-fleet` (the runs that ran on the fleet's hosts), `--include-target-type`. Only runs have events here: a
fleet, volume, gateway or secret target selects none, and says so."""

from __future__ import annotations

import time
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cli.helpers import print_events, since_time

LAST_EVENTS = 100  # shown without a run or --since, as dstack does
WATCH_INTERVAL_S = 1.0
RUN_TARGET_TYPES = ("run", "job")  # the targets of the events recorded here
LIST_SUBCOMMAND = "list"  # `dstack event list`: dstack's subcommand, the same listing


NamesOption = Optional[List[str]]


def event(
    words: Annotated[Optional[List[str]], typer.Argument(metavar="[list] [NAME]", show_default=False,
                                                         help="Only this run's events (as --target-run NAME); "
                                                         "`list` is dstack's subcommand: the same listing")] = None,
    since: Annotated[
        Optional[str],
        typer.Option("--since", metavar="SINCE", help="Only events newer than this: a duration (10s, 5m, 1d) or an "
                     "RFC 3339 time; without it (and a run), the last 100"),
    ] = None,
    watch: Annotated[bool, typer.Option("-w", "--watch", help="Keep printing new events until Ctrl-C")] = False,
    target_run: Annotated[NamesOption, typer.Option("--target-run", metavar="NAME", help="Only these runs' events "
                                                    "(repeatable)")] = None,
    within_run: Annotated[NamesOption, typer.Option("--within-run", metavar="NAME", help="Only events of these runs "
                                                    "and their jobs (repeatable)")] = None,
    within_fleet: Annotated[NamesOption, typer.Option("--within-fleet", metavar="NAME", help="Only events of runs "
                                                      "that ran on these fleets (repeatable)")] = None,
    target_fleet: Annotated[NamesOption, typer.Option("--target-fleet", metavar="NAME", help="Events of these "
                                                      "fleets: none are recorded here (runs' only)")] = None,
    target_volume: Annotated[NamesOption, typer.Option("--target-volume", metavar="NAME", help="Events of these "
                                                       "volumes: none are recorded here (runs' only)")] = None,
    target_gateway: Annotated[NamesOption, typer.Option("--target-gateway", metavar="NAME", hidden=True)] = None,
    target_secret: Annotated[NamesOption, typer.Option("--target-secret", metavar="NAME", hidden=True)] = None,
    within_gateway: Annotated[NamesOption, typer.Option("--within-gateway", metavar="NAME", hidden=True)] = None,
    include_target_type: Annotated[
        NamesOption, typer.Option("--include-target-type", metavar="TYPE", help="Only events whose target is of "
                                  "these types (repeatable): run and job have events here")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
) -> None:
    """Show runs' lifecycle events: submitted, offers tried, provisioned, started, exit, teardown."""
    from cli.output import warn

    words = list(words or [])
    if words[:1] == [LIST_SUBCOMMAND]:
        words.pop(0)
    if len(words) > 1:
        raise typer.BadParameter(f"one run name, not {len(words)}: {' '.join(words)}", param_hint="'NAME'")
    name = words[0] if words else None
    targets = {"--target-run": target_run, "--target-fleet": target_fleet, "--target-volume": target_volume,
               "--target-gateway": target_gateway, "--target-secret": target_secret}
    withins = {"--within-run": within_run, "--within-fleet": within_fleet, "--within-gateway": within_gateway}
    for group in (targets, withins):
        given = [flag for flag, values in group.items() if values]
        if len(given) > 1:
            raise typer.BadParameter(f"{' and '.join(given)} exclude each other; give one", param_hint=f"'{given[0]}'")
    other = [flag for flag, values in {**targets, **withins}.items() if values and flag not in
             ("--target-run", "--within-run", "--within-fleet")]
    types = set(include_target_type or RUN_TARGET_TYPES)
    unknown_types = types - set(RUN_TARGET_TYPES)
    runs = _selected_runs(name, target_run, within_run, within_fleet)
    if other or not types & set(RUN_TARGET_TYPES):
        why = other[0] if other else f"--include-target-type {', '.join(sorted(unknown_types))}"
        warn(f"{why}: only runs (and their jobs) have events here; there is no server recording fleets', volumes', "
             "gateways' or secrets'")
        runs = []
    start = since_time(since) if since is not None else None
    shown = print_events(runs, as_json, since=start, last=None if runs is not None or since else LAST_EVENTS)
    try:
        while watch:
            time.sleep(WATCH_INTERVAL_S)
            shown = print_events(runs, as_json, after_id=shown, header=False) or shown
    except KeyboardInterrupt:
        pass


def _selected_runs(name: Optional[str], target_run, within_run, within_fleet) -> Optional[List[str]]:
    """The runs whose events to show (None: every run's); several selections keep the runs all of them name."""
    selections = [set(names) for names in ([name] if name else None, target_run, within_run) if names]
    if within_fleet:
        selections.append(_runs_on_fleets(set(within_fleet)))
    if not selections:
        return None
    return sorted(set.intersection(*selections))


def _runs_on_fleets(fleets: set) -> set:
    """The runs that took a host of one of the fleets: an SSH fleet's (its name is their region), or a cloud fleet's
    instance they reused or added to it."""
    from provisioner.store.store import StateStore

    offer = lambda record: record.offer or {}  # noqa: E731
    return {record.name for record in StateStore().list_runs()
            if (record.backend == "ssh" and record.region in fleets)
            or (offer(record).get("reused") or offer(record).get("grows") or {}).get("fleet") in fleets}
