"""`dstack ps`, `dstack logs`, `dstack attach`, `dstack stop`: the runs after `apply`."""

from __future__ import annotations

import time
from typing import Optional

import typer
from typing_extensions import Annotated

from cli.helpers import expire_idle_fleets, find_run, print_events, remove_schedule, run_session, since_time
from cli.output import print_json, stderr_console, stdout_console, warn, write_stdout

NameArgument = Annotated[str, typer.Argument(help="The run name")]


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


WATCH_INTERVAL_S = 2.0


def ps(
    all_runs: Annotated[bool, typer.Option("-a", "--all", help="Show finished runs too")] = False,
    last: Annotated[
        Optional[int], typer.Option("-n", "--last", min=1, help="Show only the last N runs (implies --all)")
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Show each run's jobs (one per node): host, status, "
                                                                  "ports, exit code")] = False,
    watch: Annotated[bool, typer.Option("-w", "--watch", help="Refresh every 2s until Ctrl-C")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
    mine: Annotated[bool, typer.Option("--mine", help="Only this home's runs (with a team database, the team's "
                                                      "are listed, with a USER column)")] = False,
) -> None:
    """List runs: status, where they run, what they cost. Finishes what an interrupted dstack left."""
    session = run_session()
    if not watch:
        _print_runs(session, all_runs, last, verbose, as_json, mine)
        return
    console = stdout_console()
    try:
        while True:
            if console.is_terminal:
                console.clear()
            _print_runs(session, all_runs, last, verbose, as_json, mine)
            time.sleep(WATCH_INTERVAL_S)
    except KeyboardInterrupt:
        pass


def _print_runs(session, all_runs: bool, last: Optional[int], verbose: bool, as_json: bool, mine: bool) -> None:
    from configuration.owner import another_homes
    from provisioner.runs.reconcile import reconcile

    now = time.time()
    every = reconcile(session)
    expire_idle_fleets()  # after reconcile, whose teardowns hand instances back idle
    _warn_of_unknown_jobs(session.store, every)
    records = [r for r in every if (all_runs or last or r.active) and not (mine and another_homes(r.owner_id))][:last]
    if as_json:
        print_json({"runs": [_run_json(session, r, now) for r in records]})
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold")
    team = session.store.team is not None  # a team database: whose each run is
    columns = ["NAME"] + (["USER"] if team else []) + ["STATUS", "BACKEND", "REGION", "INSTANCE", "$/HOUR", "COST",
                                                       "AGE"]
    for column in columns + (["JOB", "HOST", "JOB STATUS", "PORTS", "EXIT"] if verbose else []):
        table.add_column(column)
    for r in records:
        status = Text(r.status + (f" ({r.reason})" if r.reason else ""))  # as it is: no markup, no :emoji: codes
        row = [r.name] + ([Text(r.user_name or "-")] if team else []) + [
            status, r.backend or "-", r.region or "-", r.instance or "-",
            f"${r.price:.4f}" if r.price is not None else "-", f"${r.cost(now):.4f}", _age(now - r.submitted_at)]
        if not verbose:
            table.add_row(*row)
            continue
        for job in _jobs_json(session, r):  # the run's row, then one row per further node
            table.add_row(*row, str(job["node"]), job["host"] or "-", job["status"],
                          ", ".join(f"localhost:{a}->{b}" for a, b in job["ports"]) or "-",
                          "-" if job["exit_code"] is None else str(job["exit_code"]))
            row = [""] * len(columns)
    console = stdout_console()
    if records:
        console.print(table)
    else:
        console.print("No runs." if all_runs or last else "No active runs (`dstack ps -a` shows finished ones).")


def _jobs_json(session, record) -> list:
    """A run's jobs, one per node: where each runs, its status and exit code; ports are forwarded from node 0.
    A run that never got a host has one job, without one."""
    from provisioner.host.access import HostAccess
    from provisioner.jobs.run_jobs import run_jobs
    from provisioner.store.records import JobRecord

    jobs = run_jobs(session.store, record, to_reach=False) or [
        JobRecord(run=record.name, rank=0, status=record.status, exit_code=record.exit_code)]
    return [{**job.summary(HostAccess.from_json(job.host).description if job.host else None),
             "ports": (record.ports or []) if job.rank == 0 else [], "attempts": record.attempts} for job in jobs]


def _run_json(session, record, now: float) -> dict:
    from provisioner.runs.dev_environments import with_dev_environment

    return with_dev_environment({**record.summary(now), "jobs": _jobs_json(session, record)}, record)


def _warn_of_unknown_jobs(store, records) -> None:
    """Jobs running on this machine that no active run knows (the store was lost, or a record went): named, so
    that `No runs.` never hides a running job."""
    from provisioner.host.access import HostAccess
    from provisioner.jobs.orphans import describe, search

    active = {r.name for r in records if r.active}
    jobs, _ = search([HostAccess(kind="local")])
    for access, name, pgid in jobs:
        if name in active:
            continue
        record = store.get_run(name)  # a run submitted since the list was read is no stranger
        if record is None or not record.active:
            warn(f"{describe(access, name, pgid)}, but no active run in {store.where} knows it")  # a path: unwrapped


def logs(
    name: NameArgument,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep following until the job ends")] = False,
    since: Annotated[
        Optional[str],
        typer.Option("--since", metavar="SINCE", help="Only output newer than this: a duration (10s, 5m, 1d) or an "
                     "RFC 3339 time (2025-09-24T15:30:00Z)"),
    ] = None,
    diagnose: Annotated[
        bool, typer.Option("-d", "--diagnose", help="Show the run's provisioning and bootstrap log instead")
    ] = False,
    node: Annotated[
        Optional[int], typer.Option("--job", "--node", metavar="K", min=0,
                                    help="Only node K's output, as dstack's --job (a multi-node run shows every "
                                    "node's, each line after its node's rank: [K])")
    ] = None,
) -> None:
    """Print a run's output, from the start."""
    from provisioner.jobs.run_jobs import run_jobs

    session = run_session()
    record = find_run(session, name)
    size = max(1, len(run_jobs(session.store, record)))
    if node is not None and node >= size:
        raise typer.BadParameter(f"{name} has {'one node, 0' if size == 1 else f'nodes 0 to {size - 1}'}",
                                 param_hint="'--job/--node'")
    if diagnose:
        _print_diagnostics(record)
    elif since is not None:
        if size > 1 and node is None:
            raise typer.BadParameter(f"{name} has {size} nodes: --since shows one node's output; add --node K",
                                     param_hint="'--since'")
        _print_logs_since(record, since_time(since), node or 0)
    elif size > 1 and node is None:
        _print_every_node(session, record, follow)
    else:
        _print_logs(session, name, follow, node or 0)


def _print_logs_since(record, since: float, rank: int) -> None:
    """Arrival times are kept for node 0's output; another node's are not."""
    from configuration.errors import DstackError
    from provisioner.runs.lifecycle import local_log_path
    from provisioner.store.run_files import offset_since

    offset = offset_since(record.name, since) if rank == 0 else None
    path = local_log_path(record.name, rank)
    if offset is None or not path.exists():
        raise DstackError(f"{record.name}'s output has no arrival times (dstack records them while it streams an "
                          f"attached run): `dstack logs {record.name}` shows all of it")
    with open(path, "rb") as f:
        f.seek(min(offset, path.stat().st_size))
        write_stdout(f.read())


def _print_diagnostics(record) -> None:
    """The progress lines dstack printed while it provisioned, started and tore down the run, then its events."""
    from provisioner.store.run_files import diagnostics_path

    path = diagnostics_path(record.name)
    if path.exists():
        write_stdout(path.read_bytes())
    else:
        stderr_console().print(f"{record.name} has no provisioning log (it was started by a dstack that did not "
                               "keep one); its events follow", markup=False)

    print_events(record.name, as_json=False)


def _node_host(session, record, rank: int) -> Optional[dict]:
    from provisioner.jobs.run_jobs import run_jobs

    jobs = run_jobs(session.store, record)
    return jobs[rank].host if rank < len(jobs) else record.host


def _print_every_node(session, record, follow: bool) -> None:
    """Every node's output, line by line with its rank in front: as it comes (`-f`), else each node's whole log
    (from its host, or the copy kept locally) taken in turn a line at a time."""
    from provisioner.host.access import HostAccess
    from provisioner.host.transport import TransportError
    from provisioner.jobs.control import read_log
    from provisioner.jobs.follow import LogFollower
    from provisioner.jobs.node_logs import NodeLines, interleave
    from provisioner.jobs.run_jobs import run_jobs
    from provisioner.store.run_files import local_log_path

    jobs = run_jobs(session.store, record)
    hosts = [HostAccess.from_json(job.host) for job in jobs]
    if follow and record.active:
        followers = [LogFollower(host.connect, record.name, log=session.reporter.info, host=host.description)
                     for host in hosts]
        lines, ended = NodeLines(len(jobs), write_stdout), set()
        while len(ended) < len(jobs):
            for rank, follower in enumerate(followers):
                if rank not in ended and follower.poll(lambda data, rank=rank: lines.add(rank, data)) is not None:
                    lines.flush(rank)
                    ended.add(rank)
            time.sleep(0.2)
        return
    reachable = record.active or record.backend in ("local", "ssh")
    outputs = []
    for rank, host in enumerate(hosts):
        data, path = b"", local_log_path(record.name, rank)
        if reachable:
            try:
                transport = host.connect(total_wait=30)
                try:
                    data = read_log(transport, record.name, 0).data
                finally:
                    transport.close()
            except TransportError as e:
                session.reporter.info(f"node {rank}'s host is not reachable ({e}); showing the copy kept locally")
        if not data and path.exists():
            data = path.read_bytes()
        outputs.append(data)
    write_stdout(interleave(outputs))


def _print_logs(session, name: str, follow: bool, rank: int = 0) -> None:
    from configuration.errors import DstackError
    from provisioner.host.access import HostAccess
    from provisioner.host.transport import HostUnreachable, TransportError
    from provisioner.jobs.control import log_exists
    from provisioner.jobs.follow import LogFollower, kept_run_hint
    from provisioner.runs.lifecycle import local_log_path

    record = find_run(session, name)
    host = _node_host(session, record, rank)
    reachable = host and (record.active or record.backend in ("local", "ssh"))
    missing = f"its {record.backend} host was removed with the run"
    shown, lost = 0, False
    if reachable:
        access = HostAccess.from_json(host)
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
    path = local_log_path(name, rank)
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
    """Follow a running run's output and forward its ports again, until it ends (Ctrl-C detaches); a dev
    environment's `ssh NAME` entry too."""
    from configuration.errors import ConfigurationError
    from provisioner.host.access import HostAccess
    from provisioner.host.transport import HostUnreachable
    from provisioner.jobs.follow import LogFollower, kept_run_hint
    from provisioner.runs.lifecycle import forward_ports

    session = run_session()
    record = find_run(session, name)
    if not record.active or not record.host:
        raise ConfigurationError(f"{name} is {record.status}; nothing to attach to (`dstack logs {name}` shows its output)")
    access = HostAccess.from_json(record.host)
    follower = LogFollower(access.connect, name, log=session.reporter.info, host=access.description)
    from configuration.fields import PortMapping

    ports = [PortMapping.model_validate(p) for p in (record.configuration or {}).get("ports", [])]
    attachment = _reattach_dev_environment(session, record, access)
    forwarder = forward_ports(session, name, access, ports, lambda: follower.transport)
    try:
        follower.follow(write_stdout)
    except KeyboardInterrupt:
        session.reporter.info(f"Detached; {name} goes on (`dstack stop {name}` ends it)")
    except HostUnreachable as e:
        raise HostUnreachable(f"{e}\n{kept_run_hint(name)}") from None
    finally:
        if attachment is not None:
            attachment.close()
        if forwarder is not None:
            forwarder.close()


def _reattach_dev_environment(session, record, access):
    """A dev environment's entry written again and its link shown; returns the session held while attached."""
    from provisioner.runs import dev_environments

    if not dev_environments.is_dev_environment(record.configuration or {}):
        return None
    dev_environments.reopen_entry(record.name, access, record.configuration, session.reporter.info)
    return dev_environments.Attachment(access, record.name, record.configuration, session.reporter.info,
                                       announce=False)


def stop(
    name: NameArgument,
    abort: Annotated[bool, typer.Option("-x", "--abort", help="Kill at once, without the grace period")] = False,
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation")] = False,
) -> None:
    """Stop a run (SIGTERM, then SIGKILL after 10s) and remove everything it created."""
    from cli.output import confirm
    from provisioner.runs.teardown import stop_run

    session = run_session()
    if session.store.get_run(name) is None and remove_schedule(name):
        return
    record = find_run(session, name)
    if record.active and not confirm(f"Stop {name}?", yes):
        raise typer.Exit(1)
    record = stop_run(session, name, abort=abort)
    session.reporter.info(f"{name} {record.status}" + (f" ({record.reason})" if record.reason else ""))
