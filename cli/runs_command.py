"""`dstack ps`, `dstack logs`, `dstack attach`, `dstack stop`: the runs after `apply`."""

from __future__ import annotations

import time

import typer
from typing_extensions import Annotated

from cli.output import print_json, stderr_console, stdout_console

NameArgument = Annotated[str, typer.Argument(help="The run name")]


def _session():
    from cli.run_session import session_for
    from configuration.backends import load_config
    from provisioner.state import StateStore

    return session_for(load_config(), StateStore())


def _record(session, name: str):
    from configuration.errors import ConfigurationError

    record = session.store.get_run(name)
    if record is None:
        raise ConfigurationError(f"no run named {name} (see `dstack ps -a`)")
    return record


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def ps(
    all_runs: Annotated[bool, typer.Option("-a", "--all", help="Show finished runs too")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
) -> None:
    """List runs: status, where they run, what they cost. Finishes what an interrupted dstack left."""
    from provisioner.runner import reconcile

    session = _session()
    now = time.time()
    every = reconcile(session)
    _warn_of_unknown_jobs(session.store, every)
    records = [r for r in every if all_runs or r.active]
    if as_json:
        print_json({"runs": [r.summary(now) for r in records]})
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("NAME", "STATUS", "BACKEND", "REGION", "INSTANCE", "$/HOUR", "COST", "AGE"):
        table.add_column(column)
    for r in records:
        status = r.status + (f" ({r.reason})" if r.reason else "")
        table.add_row(r.name, status, r.backend or "-", r.region or "-", r.instance or "-",
                      f"${r.price:.4f}" if r.price is not None else "-", f"${r.cost(now):.4f}",
                      _age(now - r.submitted_at))
    console = stdout_console()
    if records:
        console.print(table)
    else:
        console.print("No runs." if all_runs else "No active runs (`dstack ps -a` shows finished ones).")


def _warn_of_unknown_jobs(store, records) -> None:
    """Jobs running on this machine that no active run knows (the store was lost, or a record went): named, so
    that `No runs.` never hides a running job."""
    from provisioner.access import HostAccess
    from provisioner.orphan_jobs import describe, search

    active = {r.name for r in records if r.active}
    jobs, _ = search([HostAccess(kind="local")])
    for access, name, pgid in jobs:
        if name in active:
            continue
        record = store.get_run(name)  # a run submitted since the list was read is no stranger
        if record is None or not record.active:
            stderr_console().print(f"warning: {describe(access, name, pgid)}, but no active run in "
                                   f"{store.path} knows it", markup=False)


def logs(
    name: NameArgument,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep following until the job ends")] = False,
) -> None:
    """Print a run's output, from the start."""
    _print_logs(_session(), name, follow)


def _print_logs(session, name: str, follow: bool) -> None:
    from configuration.errors import DstackError
    from provisioner.access import HostAccess
    from provisioner.follow import LogFollower, kept_run_hint
    from provisioner.job import log_exists
    from provisioner.runner import local_log_path, write_stdout
    from provisioner.transport import HostUnreachable, TransportError

    record = _record(session, name)
    reachable = record.host and (record.active or record.backend in ("local", "ssh"))
    missing = f"its {record.backend} host was removed with the run"
    shown, lost = 0, False
    if reachable:
        access = HostAccess.from_json(record.host)
        follower = LogFollower(access.connect, name, log=session.reporter.info, host=access.description)
        try:
            if follow and record.active:
                follower.follow(write_stdout)
            else:
                follower.poll(write_stdout)
            if follower.offset or log_exists(follower.transport, name):
                return
            missing = f"its job folder on {access.description} holds no log any more"
        except TransportError as e:
            shown, lost = follower.offset, True  # the local copy goes on from there
            session.reporter.info(f"the host is not reachable ({e}); showing the copy kept locally")
            missing = f"{access.description} is not reachable"
    path = local_log_path(name)
    if path.exists():
        write_stdout(path.read_bytes()[shown:])
    if lost and follow and record.active:
        raise HostUnreachable(kept_run_hint(name))
    if not path.exists():
        if not record.host:
            session.reporter.info(f"{name} has no output: it never started ({record.reason or record.status})")
        else:
            raise DstackError(f"the output of {name} is gone: {missing}, and the copy dstack keeps ({path}) does "
                              "not exist")


def attach(name: NameArgument) -> None:
    """Follow a running run's output and forward its ports again, until it ends (Ctrl-C detaches)."""
    from configuration.errors import ConfigurationError
    from provisioner.access import HostAccess
    from provisioner.follow import LogFollower, kept_run_hint
    from provisioner.runner import forward_ports, write_stdout
    from provisioner.transport import HostUnreachable

    session = _session()
    record = _record(session, name)
    if not record.active or not record.host:
        raise ConfigurationError(f"{name} is {record.status}; nothing to attach to (`dstack logs {name}` shows its output)")
    access = HostAccess.from_json(record.host)
    follower = LogFollower(access.connect, name, log=session.reporter.info, host=access.description)
    from configuration.fields import PortMapping

    ports = [PortMapping.model_validate(p) for p in (record.configuration or {}).get("ports", [])]
    forwarder = forward_ports(session, name, access, ports, lambda: follower.transport)
    try:
        follower.follow(write_stdout)
    except KeyboardInterrupt:
        session.reporter.info(f"Detached; {name} goes on (`dstack stop {name}` ends it)")
    except HostUnreachable as e:
        raise HostUnreachable(f"{e}\n{kept_run_hint(name)}") from None
    finally:
        if forwarder is not None:
            forwarder.close()


def stop(
    name: NameArgument,
    abort: Annotated[bool, typer.Option("--abort", help="Kill at once, without the grace period")] = False,
) -> None:
    """Stop a run (SIGTERM, then SIGKILL after 10s) and remove everything it created."""
    from provisioner.runner import stop_run

    session = _session()
    _record(session, name)
    record = stop_run(session, name, abort=abort)
    session.reporter.info(f"{name} {record.status}" + (f" ({record.reason})" if record.reason else ""))


def delete_run(session, name: str) -> None:
    from configuration.errors import ConfigurationError

    record = _record(session, name)
    if record.active:
        raise ConfigurationError(f"{name} is {record.status}: `dstack stop {name}` first")
    session.store.delete_run(name)

