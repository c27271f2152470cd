"""`dstack ps`'s listing, shared by the typer command (cli.commands.ps) and the plain path that cli.main takes for
the common command lines without starting typer (`answer_ps`: what typer's parameters cost is a fifth of the
command's start-up). Anything else (help, an unknown or malformed flag) is left to the typer app, which answers it."""

from __future__ import annotations

import re
import time
from typing import List, Optional

from cli.helpers import expire_idle_fleets, gpu_cell, jobs_json, repeat_until_ctrl_c, run_json, run_session
from cli.output import print_json, stdout_console, warn
from cli.plain_flags import FLAG, VALUE, parse_flags

FORMATS = ("plain", "json")
PIPED_WIDTH = 10_000
# The flags of cli.commands.ps by every name: name -> (its parameter, whether it takes a value, whether it repeats)
FLAGS = {"-a": ("all_runs", FLAG, False), "--all": ("all_runs", FLAG, False), "-n": ("last", VALUE, False),
         "--last": ("last", VALUE, False), "-v": ("verbose", FLAG, False), "--verbose": ("verbose", FLAG, False),
         "-w": ("watch", FLAG, False), "--watch": ("watch", FLAG, False), "--format": ("output", VALUE, False),
         "--json": ("as_json", FLAG, False), "--mine": ("mine", FLAG, False)}
_COUNT = re.compile(r"[1-9][0-9]{0,8}\Z")


def answer_ps(argv: List[str]) -> bool:
    """Lists the runs for `dstack ps ARGV` and returns True, or returns False, having done nothing, for typer."""
    values = parse_flags(argv, FLAGS)
    if values is None or values.get("output") not in (None, *FORMATS) or not _COUNT.match(values.get("last", "1")):
        return False
    last = int(values["last"]) if "last" in values else None
    list_runs(values.get("all_runs", False), last, values.get("verbose", False), values.get("watch", False),
              values.get("as_json", False) or values.get("output") == "json", values.get("mine", False))
    return True


def list_runs(all_runs: bool, last: Optional[int], verbose: bool, watch: bool, as_json: bool, mine: bool) -> None:
    from provisioner.store.store import StateStore

    store = StateStore()
    if watch:
        repeat_until_ctrl_c(lambda: _print_runs(store, all_runs, last, verbose, as_json, mine))
    else:
        _print_runs(store, all_runs, last, verbose, as_json, mine)


def _active_runs(store) -> list:
    """The active runs, newest first, once reconciled (provisioner.runs.reconcile): only when one of them is looked
    after by no live dstack process are the reconciliation's modules (teardown, the cloud backend, the run session's
    configuration) imported; a `ps` with nothing to finish reads the store alone."""
    from provisioner.runs.looked_after import looked_after

    active = store.list_runs(active_only=True)
    if all(looked_after(record) for record in active):
        return active
    from provisioner.runs.reconcile import reconcile

    return [record for record in reconcile(run_session(store)) if record.active]


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


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


def _print_runs(store, all_runs: bool, last: Optional[int], verbose: bool, as_json: bool, mine: bool) -> None:
    now = time.time()
    active = _active_runs(store)
    expire_idle_fleets(store=store)  # after reconcile, whose teardowns hand instances back idle
    _warn_of_unknown_jobs(store, active)
    records = _runs(store, active, all_runs, last, mine, as_json)
    if as_json:  # our contract: the active runs unless -a or -n
        print_json({"runs": [run_json(store, r, now) for r in records]})
        return
    from rich.table import Table
    from rich.text import Text

    if verbose:
        from provisioner.runs.listing import submissions
    table = Table(box=None, header_style="bold")
    team = store.team is not None  # a team database: whose each run is
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
        for job in jobs_json(store, r):  # the run's row, then one row per further node
            table.add_row(*row, str(job["node"]), job["host"] or "-", job["status"],
                          ", ".join(f"localhost:{a}->{b}" for a, b in job["ports"]) or "-",
                          "-" if job["exit_code"] is None else str(job["exit_code"]))
            row = [""] * (len(columns) + 1)
        for earlier in submissions(store, r)[:-1]:  # attempts that lost their instances, one row each
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
