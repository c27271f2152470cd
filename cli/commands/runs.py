"""`dstack logs`, `dstack stop`, `dstack run get`: the runs after `apply` (`dstack ps` and `dstack attach` have
modules of their own). `run` reads, as dstack 0.22.5's does; it never submits (`dstack apply` does)."""

from __future__ import annotations

import sys
import time
from typing import Iterator, List, Optional

import typer
from typing_extensions import Annotated

from cli.helpers import find_run, node_host, print_events, remove_schedule, run_json, run_session, since_time
from cli.output import copy_to_stdout, file_chunks, print_json, stderr_console, stdout_console, write_stdout

NameArgument = Annotated[str, typer.Argument(help="The run name")]


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
        _print_logs_since(session, record, since_time(since), node or 0)
    elif size > 1 and node is None:
        _print_every_node(session, record, follow)
    else:
        _print_logs(session, name, follow, node or 0)


def _print_logs_since(session, record, since: float, rank: int) -> None:
    """Node `rank`'s output that arrived at or after `since`: from the local copy where arrival times are kept beside
    it (an attached run's, as dstack streamed it; a run that ended unattended, copied from its host), else from the
    host, which records when each piece of every job's output arrives."""
    from configuration.errors import DstackError
    from provisioner.host.access import HostAccess
    from provisioner.host.transport import TransportError
    from provisioner.jobs.control import log_pieces, read_output_times
    from provisioner.store.run_files import first_offset_since, local_log_path, offset_since

    offset = offset_since(record.name, since, rank)
    path = local_log_path(record.name, rank)
    if offset is not None and path.exists():
        copy_to_stdout(path, offset)
        return
    host = node_host(session, record, rank)
    why = "its host did not record them (a job started by an older dstack)"
    if host and (record.active or record.backend in ("local", "ssh")):
        try:
            transport = HostAccess.from_json(host).connect(total_wait=30)
            try:
                times = read_output_times(transport, record.name)
                if times is not None:
                    offset = first_offset_since(times, since)
                    if offset < sys.maxsize:
                        for data in log_pieces(transport, record.name, offset):
                            write_stdout(data)
                    return
            finally:
                transport.close()
        except TransportError as e:
            why = f"its host is not reachable ({e})"
    raise DstackError(f"{record.name}'s output has no arrival times here and {why}: `dstack logs {record.name}` "
                      "shows all of it")


def _print_diagnostics(record) -> None:
    """The progress lines dstack printed while it provisioned, started and tore down the run, then its events."""
    from provisioner.store.run_files import diagnostics_path

    path = diagnostics_path(record.name)
    if path.exists():
        copy_to_stdout(path)
    else:
        stderr_console().print(f"{record.name} has no provisioning log (it was started by a dstack that did not "
                               "keep one); its events follow", markup=False)

    print_events(record.name, as_json=False)


def _print_every_node(session, record, follow: bool) -> None:
    """Every node's output, line by line with its rank in front: as it comes (`-f`), else each node's whole log
    (from its host, or the copy kept locally) taken in turn a line at a time."""
    from provisioner.host.access import HostAccess
    from provisioner.jobs.follow import LogFollower
    from provisioner.jobs.node_logs import NodeLines, interleave_chunks
    from provisioner.jobs.run_jobs import run_jobs

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
    outputs = [_node_output(session, record.name, rank, host if reachable else None) for rank, host in enumerate(hosts)]
    batch, size = [], 0
    for line in interleave_chunks(outputs):  # written a megabyte or so at a time, not a line at a time
        batch.append(line)
        size += len(line)
        if size >= 1 << 20:
            write_stdout(b"".join(batch))
            batch, size = [], 0
    write_stdout(b"".join(batch))


def _node_output(session, name: str, rank: int, host) -> Iterator[bytes]:
    """Node `rank`'s whole log in chunks: from its host where it can be reached (`host` not None) and holds one,
    else (or from where the host stopped answering) from the copy kept locally."""
    from provisioner.host.transport import TransportError
    from provisioner.jobs.control import log_pieces
    from provisioner.store.run_files import local_log_path

    shown = 0
    if host is not None:
        try:
            transport = host.connect(total_wait=30)
            try:
                for data in log_pieces(transport, name, 0):
                    yield data
                    shown += len(data)
            finally:
                transport.close()
            if shown:
                return
        except TransportError as e:
            session.reporter.info(f"node {rank}'s host is not reachable ({e}); showing the copy kept locally")
    path = local_log_path(name, rank)
    if path.exists():
        yield from file_chunks(path, shown)


def _print_logs(session, name: str, follow: bool, rank: int = 0) -> None:
    from configuration.errors import DstackError
    from provisioner.host.access import HostAccess
    from provisioner.host.transport import HostUnreachable, TransportError
    from provisioner.jobs.control import log_exists
    from provisioner.jobs.follow import LogFollower, kept_run_hint
    from provisioner.runs.lifecycle import local_log_path

    record = find_run(session, name)
    host = node_host(session, record, rank)
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
        copy_to_stdout(path, shown)
    if lost and follow and record.active:
        raise HostUnreachable(kept_run_hint(name))
    if not path.exists():
        if not record.host:
            session.reporter.info(f"{name} has no output: it never started ({record.reason or record.status})")
        else:
            raise DstackError(f"the output of {name} is gone: {missing}, and the copy dstack keeps ({path}) does "
                              "not exist")


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


def run(
    action: Annotated[Optional[str], typer.Argument(help="get", show_default=False)] = None,
    name: Annotated[Optional[str], typer.Argument(help="The run name", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
    rest: Annotated[Optional[List[str]], typer.Argument(hidden=True)] = None,
) -> None:
    """Show a run: `dstack run get NAME` (`--json` for scripts). To submit a run, `dstack apply`."""
    from configuration.errors import ConfigurationError

    if action != "get" or name is None or rest:
        raise ConfigurationError("`dstack run` shows a run (`dstack run get NAME [--json]`), as dstack's does; a run "
                                 "is submitted with `dstack apply [-f FILE]`")
    session = run_session()
    from provisioner.runs.reconcile import reconcile

    reconcile(session)  # as `dstack ps` does: a run whose job ended shows as ended
    record = find_run(session, name)
    document = run_json(session.store, record, time.time())
    if as_json:
        print_json({"run": document})
        return
    from rich.table import Table

    table = Table(box=None, show_header=False)
    table.add_column(no_wrap=True)
    table.add_column()
    for key in ("name", "type", "status", "reason", "backend", "region", "instance", "price", "cost", "exit_code"):
        value = document.get(key)
        if value not in (None, ""):
            table.add_row(f"[bold]{key.replace('_', ' ').capitalize()}[/]", str(value))
    stdout_console().print(table)
