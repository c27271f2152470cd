"""`dstack ps`: the runs, as dstack lists them: the active ones, or the last one when none is active (`-a` all),
one GPU column, a run's error only under `-v`. Listing finishes what an interrupted dstack left."""

from __future__ import annotations

import time
from typing import Optional

import typer
from typing_extensions import Annotated

from cli.helpers import expire_idle_fleets, gpu_cell, jobs_json, repeat_until_ctrl_c, run_json, run_session
from cli.output import print_json, stdout_console, warn

FORMATS = ("plain", "json")
PIPED_WIDTH = 10_000


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def output_format(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in FORMATS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(FORMATS)}")
    return value


FormatOption = Annotated[
    Optional[str], typer.Option("--format", metavar="[plain|json]", callback=output_format,
                                help="Output format: plain (a table, the default) or json (as --json)")
]


def ps(
    all_runs: Annotated[bool, typer.Option("-a", "--all", help="Show finished runs too (without it: the active "
                                                             "runs, or the last run when none is active)")] = False,
    last: Annotated[
        Optional[int], typer.Option("-n", "--last", metavar="N", min=1, help="Show only the last N runs (implies "
                                    "--all)")
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Show each run's error and jobs (one per node): "
                                                                  "host, status, ports, exit code")] = False,
    watch: Annotated[bool, typer.Option("-w", "--watch", help="Refresh every 2s until Ctrl-C")] = False,
    output: FormatOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts (as --format json)")] = False,
    mine: Annotated[bool, typer.Option("--mine", help="Only this home's runs (with a team database, the team's "
                                                      "are listed, with a USER column)")] = False,
) -> None:
    """List runs: status, where they run, what they cost. Finishes what an interrupted dstack left."""
    as_json = as_json or output == "json"
    session = run_session()
    if watch:
        repeat_until_ctrl_c(lambda: _print_runs(session, all_runs, last, verbose, as_json, mine))
    else:
        _print_runs(session, all_runs, last, verbose, as_json, mine)


def _runs(store, active: list, all_runs: bool, last: Optional[int], mine: bool, as_json: bool) -> list:
    """The runs to list, newest first: all of them (`-a`), the last N (`-n`), else the active ones or, when none is,
    the last run (dstack's default; `--json` lists none then). The store reads only those (a query's filter and
    limit): finished runs are read only when asked for."""
    from configuration.owner import another_homes

    def owned(records: list) -> list:
        return [r for r in records if not another_homes(r.owner_id)] if mine else records

    if all_runs or last:
        return owned(store.list_runs(limit=None if mine else last))[:last]
    active = owned(active)
    if active or as_json:
        return active
    return owned(store.list_runs(limit=None if mine else 1))[:1]


def _print_runs(session, all_runs: bool, last: Optional[int], verbose: bool, as_json: bool, mine: bool) -> None:
    from provisioner.runs.interruptions import submissions
    from provisioner.runs.reconcile import reconcile

    now = time.time()
    active = [record for record in reconcile(session) if record.active]
    expire_idle_fleets()  # after reconcile, whose teardowns hand instances back idle
    _warn_of_unknown_jobs(session.store, active)
    records = _runs(session.store, active, all_runs, last, mine, as_json)
    if as_json:  # our contract: the active runs unless -a or -n
        print_json({"runs": [run_json(session, r, now) for r in records]})
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold")
    team = session.store.team is not None  # a team database: whose each run is
    columns = ["NAME"] + (["USER"] if team else []) + ["STATUS", "BACKEND", "REGION", "INSTANCE", "GPU", "$/HOUR",
                                                       "COST", "AGE"]
    for column in columns + (["ERROR", "JOB", "HOST", "JOB STATUS", "PORTS", "EXIT"] if verbose else []):
        table.add_column(column)
    for r in records:
        row = [r.name] + ([Text(r.user_name or "-")] if team else []) + [
            r.status, r.backend or "-", r.region or "-", r.instance or "-", gpu_cell(r.offer),
            f"${r.price:.4f}" if r.price is not None else "-", f"${r.cost(now):.4f}", _age(now - r.submitted_at)]
        if not verbose:
            table.add_row(*row)
            continue
        row.append(Text(r.reason or "-"))  # as written: no markup, no :emoji: codes
        for job in jobs_json(session, r):  # the run's row, then one row per further node
            table.add_row(*row, str(job["node"]), job["host"] or "-", job["status"],
                          ", ".join(f"localhost:{a}->{b}" for a, b in job["ports"]) or "-",
                          "-" if job["exit_code"] is None else str(job["exit_code"]))
            row = [""] * (len(columns) + 1)
        for earlier in submissions(session.store, r)[:-1]:  # attempts that lost their instances, one row each
            table.add_row(*row, f"attempt {earlier['submission']}", Text(earlier["hosts"] or "-"),
                          Text(f"{earlier['status']} ({earlier['reason']})"), "-", "-")
    console = stdout_console()
    if not console.is_terminal:
        console.width = PIPED_WIDTH  # each row on one line, a long error whole (the table is as wide as it needs)
    if records:
        console.print(table)
    else:
        console.print("No runs." if all_runs or last else "No runs (`dstack apply` starts one).")


def _warn_of_unknown_jobs(store, records) -> None:
    """Jobs running on this machine that no active run knows (the store was lost, or a record went): named, so
    that `No runs.` never hides a running job. `records`: the active runs."""
    from provisioner.host.access import HostAccess
    from provisioner.jobs.orphans import describe, search

    active = {r.name for r in records}
    jobs, _ = search([HostAccess(kind="local")])
    for access, name, pgid in jobs:
        if name in active:
            continue
        record = store.get_run(name)  # a run submitted since the list was read is no stranger
        if record is None or not record.active:
            warn(f"{describe(access, name, pgid)}, but no active run in {store.where} knows it")  # a path: unwrapped
