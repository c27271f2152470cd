"""What `dstack apply` of a task settles before anything is created or a plan is printed, as dstack does it: a run of
the same name (a finished one is submitted again and the earlier one kept apart as `NAME@N`, its events and files
with it; an active one is stopped and overridden after a question, or at once with `--force`), a cloud fleet of the
name, cron for a `schedule`, and what a cloud run needs on this machine (extra, Pulumi CLI, credentials)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import List, Optional

import typer

from cli.output import stderr_console, warn


@dataclass
class NameCheck:
    """How the run's name stands: `active` is the run to stop before this one is submitted (None: there is none);
    `finished` says a finished run of the name is kept apart when this one is submitted; `notes` are for the plan."""

    active: Optional[str] = None
    finished: bool = False
    notes: List[str] = None


def check_name(store, name: Optional[str], source: str, force: bool, yes: bool, dry_run: bool) -> NameCheck:
    """Refuses what a run of `name` cannot be submitted over, before anything is printed or written."""
    from configuration.errors import ConfigurationError

    check = NameCheck(notes=[])
    if name is None:  # a generated name meets no other run
        return check
    if store.get_cloud_fleet(name) is not None:  # a run's stack, resources and tags are named after the run
        raise ConfigurationError(f"{source}: a cloud fleet named {name} exists, and a run's cloud stack would take its "
                                 "stack's name (and a teardown its resources): pick another run name (`-n`)")
    record = store.get_run(name)
    if record is None:
        return check
    if not record.active:
        check.finished = True
        check.notes.append(f"run {name} ended earlier ({record.status}): applying submits it again; the earlier run "
                           f"stays in `dstack ps -a` and `dstack event` as {name}@N")
        return check
    check.active = name
    if dry_run:
        check.notes.append(f"run {name} is {record.status}: applying stops it and submits this one (after a "
                           "question, or at once with --force)")
    elif not force and (yes or not sys.stdin.isatty()):
        raise ConfigurationError(f"run {name} is {record.status}: --force stops it and submits this one (or "
                                 f"`dstack stop {name}` first, or another name with -n)")
    return check


def confirm_submit(check: NameCheck, yes: bool, force: bool) -> bool:
    """dstack's question: "Stop and override the run?" for an active run of the name (unless --force or -y, which
    check_name allowed only with --force), else "Submit the run?" (unless -y)."""
    if check.active is not None and not force:
        stderr_console().print(f"Active run {check.active} already exists.", markup=False)
        return typer.confirm("Stop and override the run?", default=False, err=True)
    return yes or typer.confirm("Submit the run?", default=True, err=True)


def make_room(session, check: NameCheck, name: str) -> None:
    """Right before the run is submitted: the active run of the name stopped (and torn down), a finished one kept
    apart as NAME@N with its files, so that the new run's logs, events and files are its own."""
    from configuration.errors import ConfigurationError
    from provisioner.runs.teardown import stop_run
    from provisioner.store.run_files import move_run_folder

    say = session.reporter.info
    if check.active is not None:
        say(f"Stopping {name} to submit it again")
        stopped = stop_run(session, name)
        if stopped.active:
            raise ConfigurationError(f"{name} is still {stopped.status}: `dstack stop {name}` finishes it; apply again "
                                     "then")
        _wait_owner_gone(stopped)
    if check.active is not None or check.finished:
        kept = session.store.archive_run(name)
        if kept is not None:
            move_run_folder(name, kept)
            say(f"The earlier run {name} is kept as {kept} (`dstack ps -a`, `dstack logs {kept}`)")


def _wait_owner_gone(record, timeout: float = 30) -> None:
    """An attached `apply` that owned the stopped run writes its last lines under the run's name as it leaves: the
    name is taken over only once it is gone (or after `timeout`)."""
    import time

    from provisioner.runs.looked_after import run_owner_alive

    deadline = time.monotonic() + timeout
    while run_owner_alive(record) and time.monotonic() < deadline:
        time.sleep(0.2)


def setup_failures(plan, dry_run: bool) -> List[str]:
    """What the run would fail on before creating anything (provisioner.runs.planner.setup_problems): an error
    before the plan for a run, warnings before the plan for a dry run (returned, for its JSON)."""
    from configuration.errors import ConfigurationError
    from provisioner.runs.planner import setup_problems

    problems = setup_problems(plan)
    if problems and not dry_run:
        raise ConfigurationError("\n".join(problems))
    for problem in problems:
        warn(f"a run would fail: {problem}")
    return problems


def check_cron(schedule, scheduled_start: bool, dry_run: bool) -> None:
    """A `schedule` needs cron: said before the plan, and nothing is registered without it."""
    if schedule is None or scheduled_start:
        return
    from provisioner.runs.schedules import cron_missing

    missing = cron_missing()
    if missing is None:
        return
    if dry_run:
        warn(missing)
        return
    from configuration.errors import ConfigurationError

    raise ConfigurationError(missing)
