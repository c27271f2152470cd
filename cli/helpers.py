"""What several commands share: the run session and its lookups, `--since`, events, and removing a run, a fleet, a
volume or a schedule (the commands import this module, never each other)."""

from __future__ import annotations

import datetime
import sys
import time
from typing import Optional

from cli.output import print_json, stderr_console, stdout_console


WATCH_INTERVAL_S = 2.0


def repeat_until_ctrl_c(render, interval: float = WATCH_INTERVAL_S) -> None:
    """`-w`: the listing printed again every `interval` seconds (the screen cleared first on a terminal) until
    Ctrl-C, which exits 0."""
    console = stdout_console()
    try:
        while True:
            if console.is_terminal:
                console.clear()
            render()
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


def run_session(store=None):
    from cli.run_session import session_for
    from configuration.backends import load_config
    from provisioner.store.store import StateStore

    return session_for(load_config(), store or StateStore())


def find_run(session, name: str):
    from configuration.errors import ConfigurationError

    record = session.store.get_run(name)
    if record is None:
        raise ConfigurationError(f"no run named {name} (see `dstack ps -a`)")
    return record


def node_host(session, record, rank: int) -> Optional[dict]:
    """How to reach node `rank` of the run (its first node's host for a run that records no jobs)."""
    from provisioner.jobs.run_jobs import run_jobs

    jobs = run_jobs(session.store, record)
    return jobs[rank].host if rank < len(jobs) else record.host


def jobs_json(store, record) -> list:
    """A run's jobs, one per node: where each runs, its status and exit code; ports are forwarded from node 0.
    A run that never got a host has one job, without one."""
    from provisioner.host.access import HostAccess
    from provisioner.store.records import JobRecord

    jobs = store.recorded_jobs(record) or [
        JobRecord(run=record.name, rank=0, status=record.status, exit_code=record.exit_code)]
    return [{**job.summary(HostAccess.from_json(job.host).description if job.host else None),
             "ports": (record.ports or []) if job.rank == 0 else [], "attempts": record.attempts} for job in jobs]


def run_json(store, record, now: float) -> dict:
    """One run as `dstack ps --json` and `dstack run get NAME --json` print it."""
    from provisioner.runs.listing import submissions, with_dev_environment

    return with_dev_environment({**record.summary(now), "gpu": _gpu_or_none(record.offer),
                                 "jobs": jobs_json(store, record),
                                 "submissions": submissions(store, record)}, record)


def gpu_cell(offer: Optional[dict]) -> str:
    """The run's GPUs as dstack's GPU column writes them: NAME:MEMORY:COUNT, or `-`."""
    gpus = (((offer or {}).get("instance") or {}).get("resources") or {}).get("gpus") or []
    if not gpus:
        return "-"
    memory_gb = round((gpus[0].get("memory_mib") or 0) / 1024)
    return ":".join([gpus[0].get("name") or "gpu", *([f"{memory_gb}GB"] if memory_gb else []), str(len(gpus))])


def _gpu_or_none(offer: Optional[dict]) -> Optional[str]:
    cell = gpu_cell(offer)
    return None if cell == "-" else cell


def since_time(text: str) -> float:
    """`--since`: a duration back from now, or an RFC 3339 time."""
    from configuration.fields import parse_duration

    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        import typer

        raise typer.BadParameter(f"{text!r} is neither a duration (10s, 5m, 1d) nor an RFC 3339 time "
                                 "(2025-09-24T15:30:00Z)", param_hint="'--since'") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time, as the user reads it
    return moment.timestamp()


def delete_run(session, name: str) -> None:
    from configuration.errors import ConfigurationError

    record = find_run(session, name)
    if record.active or not session.store.delete_run(name):
        record = find_run(session, name)  # submitted again, or deleted, since it was read
        raise ConfigurationError(f"{name} is {record.status}: `dstack stop {name}` first")
    from provisioner.store.run_files import remove_run_folder

    remove_run_folder(name)  # its output, arrival times and diagnostics: the next run of the name has its own alone


def expire_idle_fleets(ask_cloud: bool = False, store=None) -> None:
    """What the next `dstack` command does for cloud fleets (no server does it): first each fleet is repaired and
    kept at its `nodes` minimum (provisioner.backends.fleet_upkeep; `ask_cloud`: whether each idle instance's VM is
    asked about), then instances idle past their idle_duration are destroyed. Without a cloud fleet there is
    nothing to do: the configuration and the cloud backend are not imported (`dstack ps`'s start-up)."""
    from provisioner.store.store import StateStore

    store = store or StateStore()
    if not store.list_cloud_fleets():
        return
    from cli.run_session import make_reporter
    from configuration.backends import load_config
    from provisioner.backends.cloud_fleets import expire_idle_fleets as expire
    from provisioner.backends.fleet_upkeep import keep_fleets

    reporter = make_reporter()
    config = load_config()
    keep_fleets(store, config, reporter.step, reporter.info, ask_cloud)
    expire(store, config, reporter.step, reporter.info)


def destroy_cloud_fleet(name: str) -> None:
    from cli.run_session import make_reporter
    from configuration.backends import load_config
    from provisioner.backends.cloud_fleets import destroy_cloud_fleet as destroy
    from provisioner.store.store import StateStore

    destroy(StateStore(), load_config(), name, make_reporter().step)
    stderr_console().print(f"Fleet {name} destroyed")


def forget_fleet(name: str) -> None:
    from configuration.errors import ConfigurationError
    from provisioner.store.store import StateStore

    store = StateStore()
    busy = [r.name for r in store.list_runs() if r.active and r.backend == "ssh" and r.region == name]
    if busy:
        raise ConfigurationError(f"fleet {name} is in use by {', '.join(busy)}; stop them first")
    if not store.delete_fleet(name):
        raise ConfigurationError(f"no fleet named {name} (see `dstack fleet list`)")
    stderr_console().print(f"Fleet {name} forgotten (its hosts are untouched)")


def print_events(runs, as_json: bool, since: Optional[float] = None, after_id: int = 0,
                 last: Optional[int] = None, header: bool = True) -> int:
    """Prints the events of `runs` (a run's name, several, or None: every run's); returns the id of the last one
    (0 when there were none)."""
    from configuration.errors import ConfigurationError
    from provisioner.store.store import StateStore

    store = StateStore()
    names = [runs] if isinstance(runs, str) else runs
    if names is not None and after_id == 0:
        for name in names:
            if store.get_run(name) is None:
                raise ConfigurationError(f"no run named {name} (see `dstack ps -a`)")
    if names is not None and len(names) == 1:
        events = store.list_events(names[0], since=since, after_id=after_id)
    else:
        events = [event for event in store.list_events(None, since=since, after_id=after_id)
                  if names is None or event["run"] in names]
    if last is not None:
        events = events[-last:]
    if as_json:
        if events or header:
            print_json({"events": events})
    else:
        _print_events_table(events, header)
    return events[-1]["id"] if events else after_id


def _print_events_table(events: list, header: bool) -> None:
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


def remove_volume(name: str, yes: bool) -> None:
    """`dstack volume delete NAME`, `dstack delete -f volume.dstack.yml`."""
    from cli.run_session import make_reporter
    from configuration.backends import load_config
    from provisioner.backends.volume_stacks import delete_volume
    from provisioner.store.store import StateStore

    record = find_volume(name)
    what = f"Forget volume {name} (the disk stays)" if record.external else f"Delete volume {name} and its data"
    if not yes and sys.stdin.isatty():
        import typer

        if not typer.confirm(f"{what}?", default=False, err=True):
            raise typer.Exit(1)
    delete_volume(StateStore(), load_config(), name, make_reporter().step)
    stderr_console().print(f"Volume {name} {'forgotten' if record.external else 'deleted'}")


def find_volume(name: str):
    from configuration.errors import ConfigurationError
    from provisioner.store.store import StateStore

    record = StateStore().get_volume(name)
    if record is None:
        raise ConfigurationError(f"no volume named {name} (see `dstack volume list`)")
    return record


def utc(at: Optional[float]) -> str:
    if at is None:
        return "never (no date matches)"
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def remove_schedule(name: str) -> bool:
    """`dstack stop NAME` / `dstack delete NAME` of a scheduled task: the schedule goes (its runs stay as they are)."""
    from provisioner.runs.schedules import unregister

    if not unregister(name):
        return False
    stderr_console().print(f"Removed the schedule of {name}; its runs (`{name}-N` in `dstack ps -a`) are left as "
                           "they are", highlight=False)
    return True
