"""`dstack schedule list|tick|run`, and what `apply`, `stop` and `delete` do for a task with `schedule:`
(provisioner.runs.schedules says how starts happen without a server: the user's cron, or `dstack schedule run`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from cli import run_options as opt
from cli.helpers import utc
from cli.output import TYPER_SETTINGS, print_json, stderr_console, stdout_console, warn

schedule_app = typer.Typer(help="Scheduled runs: list them, or start those that are due", no_args_is_help=True,
                           **TYPER_SETTINGS)

TICK_S = 60


def start_scheduled(entry) -> None:
    """A start: `dstack apply -f FILE -y -d` as its own process, as a person would type it."""
    import os
    import subprocess

    from configuration.errors import ConfigurationError
    from provisioner.runs.schedules import code_root

    run_name = f"{entry.name}-{entry.starts}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [code_root(), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "cli.main", "apply", "-f", entry.source, "-y", "-d", "-n", run_name,
                           "--scheduled-start"], cwd=str(Path(entry.source).parent), stdin=subprocess.DEVNULL, env=env)
    if done.returncode != 0:
        raise ConfigurationError(f"`dstack apply` of {entry.source} as {run_name} exited with {done.returncode}")


def _busy(name: str) -> bool:
    from provisioner.runs.schedules import ScheduleBook
    from provisioner.store.store import StateStore

    entry = ScheduleBook().entries().get(name)
    if entry is None or entry.starts == 0:
        return False
    record = StateStore().get_run(f"{name}-{entry.starts}")
    return record is not None and record.active


def _say(message: str) -> None:
    stderr_console().print(f"{utc(time.time())} {message}", highlight=False)


@schedule_app.command("tick")
def tick() -> None:
    """Start the scheduled runs that are due (the user's crontab runs this every minute)."""
    from provisioner.runs.schedules import tick as tick_once

    tick_once(time.time(), start=start_scheduled, busy=_busy, say=_say)


@schedule_app.command("run")
def run() -> None:
    """Tick every minute in the foreground, for machines without cron (Ctrl-C ends it)."""
    from provisioner.runs.schedules import tick as tick_once

    _say("starting scheduled runs when they are due; Ctrl-C ends this")
    while True:
        tick_once(time.time(), start=start_scheduled, busy=_busy, say=_say)
        time.sleep(TICK_S - time.time() % TICK_S + 1)


@schedule_app.command("list")
def list_schedules(as_json: opt.JsonOption = False) -> None:
    """List the scheduled runs: their cron expressions, next start and how many times they started; and whether the
    crontab holds the line that starts them (`ticking` in the JSON)."""
    from provisioner.runs.schedules import ScheduleBook, tick_missing

    entries = sorted(ScheduleBook().entries().values(), key=lambda e: e.name)
    not_ticking = tick_missing() if entries else None
    if as_json:
        print_json({"schedules": [dict(e.__dict__, ticking=not_ticking is None) for e in entries]})
        return
    console = stdout_console()
    if not entries:
        console.print("No scheduled runs.")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("NAME", "CRON (UTC)", "NEXT START", "STARTS", "FILE"):
        table.add_column(column)
    for entry in entries:
        next_at = utc(entry.next_at) + (" (no tick line: never starts)" if not_ticking else "")
        table.add_row(entry.name, ", ".join(entry.crons), next_at, str(entry.starts), entry.source)
    console.print(table)
    if not_ticking:
        warn(f"{not_ticking}, so these schedules never start: `dstack apply` one of them again to put the line "
             "back, or keep `dstack schedule run` running")
