"""`dstack attach NAME`: as dstack's, it forwards the run's ports again (`-p` remaps them, `--host` binds another
address) and writes its `Host NAME` entry (`ssh NAME`, an IDE's Remote-SSH; a dev environment's link too), then
waits until the run ends or Ctrl-C detaches. The run's output is shown only with `--logs` (from `--since`)."""

from __future__ import annotations

from typing import List, Optional

import typer
from typing_extensions import Annotated

from cli.helpers import find_run, node_host, run_session, since_time
from cli.output import warn, write_stdout


def attach(
    name: Annotated[str, typer.Argument(help="The run name")],
    logs: Annotated[bool, typer.Option("--logs", help="Print the run's output as it comes (without it, none)")] = False,
    since: Annotated[
        Optional[str],
        typer.Option("--since", metavar="SINCE", help="With --logs, only output newer than this: a duration (10s, 5m, "
                     "1d) or an RFC 3339 time (2025-09-24T15:30:00Z)"),
    ] = None,
    job: Annotated[int, typer.Option("--job", metavar="K", min=0, help="The node to attach to (default 0, the "
                                     "master)")] = 0,
    ports: Annotated[
        Optional[List[str]],
        typer.Option("-p", "--port", metavar="MAPPING", help="A port mapping over the configuration's (repeatable): "
                     "LOCAL:REMOTE, *:REMOTE (any free local port) or PORT"),
    ] = None,
    host: Annotated[Optional[str], typer.Option("--host", metavar="HOST", help="The local address to bind the "
                                                "ports to (default localhost)")] = None,
    ssh_identity: Annotated[
        Optional[str], typer.Option("--ssh-identity", metavar="SSH_PRIVATE_KEY", help="The private key to reach the "
                                    "host with (and that `ssh NAME` uses), instead of the one dstack keeps")
    ] = None,
) -> None:
    """Forward a running run's ports again and write its `ssh NAME` entry, until it ends (Ctrl-C detaches);
    `--logs` shows its output."""
    from configuration.errors import ConfigurationError
    from provisioner.host.access import HostAccess
    from provisioner.host.ports import LOOPBACK
    from provisioner.host.transport import HostUnreachable
    from provisioner.jobs.follow import LogFollower, kept_run_hint
    from provisioner.jobs.run_jobs import run_jobs
    from provisioner.runs.attach import with_identity
    from provisioner.runs.lifecycle import forward_ports

    session = run_session()
    record = find_run(session, name)
    if not record.active or not record.host:
        raise ConfigurationError(f"{name} is {record.status}; nothing to attach to (`dstack logs {name}` shows its "
                                 "output)")
    size = max(1, len(run_jobs(session.store, record)))
    if job >= size:
        raise typer.BadParameter(f"{name} has {'one node, 0' if size == 1 else f'nodes 0 to {size - 1}'}",
                                 param_hint="'--job'")
    if since is not None and not logs:
        raise typer.BadParameter("--since selects the output --logs shows: add --logs", param_hint="'--since'")
    mappings = _port_mappings(record.configuration or {}, ports or [])
    address = LOOPBACK if host in (None, "localhost") else host
    access = with_identity(HostAccess.from_json(node_host(session, record, job)), ssh_identity)
    follower = LogFollower(access.connect, name, log=session.reporter.info, host=access.description)
    follower.offset = _start_offset(access, record, job, logs, since)
    attachment = forwarder = code = None
    try:  # Ctrl-C detaches from here on, while the entry or the ports are being set up too
        attachment = _open_entry(session, record, access)
        forwarder = forward_ports(session, name, access, mappings, lambda: follower.transport, address)
        if not logs:
            session.reporter.info(f"Attached to {name}; Ctrl-C detaches (`dstack attach {name} --logs` shows its "
                                  "output)")
        code = follower.follow(write_stdout if logs else lambda data: None)
    except KeyboardInterrupt:
        session.reporter.info(f"Detached; {name} goes on (`dstack stop {name}` ends it)")
    except HostUnreachable as e:
        raise HostUnreachable(f"{e}\n{kept_run_hint(name)}") from None
    finally:
        if attachment is not None:
            attachment.close()
        if forwarder is not None:
            forwarder.close()
    if code is not None:
        session.reporter.info(f"{name}'s job ended (exit code {code})")
        if logs and code:
            raise typer.Exit(code if 0 < code < 256 else 1)  # as dstack's `attach --logs`: the run's exit code


def _port_mappings(configuration: dict, flags: List[str]) -> list:
    """The configuration's ports (with `groups`, rank 0's group's: the run's), each replaced by a `-p` for the same
    remote port; a `-p` for another port adds one."""
    from pydantic import ValidationError

    from configuration.fields import PortMapping

    recorded = (configuration.get("groups") or [configuration])[0]
    mappings = {m.container_port: m for m in (PortMapping.model_validate(p) for p in recorded.get("ports") or [])}
    for text in flags:
        try:
            mapping = PortMapping.model_validate(text)
        except ValidationError as e:
            raise typer.BadParameter(e.errors()[0]["msg"].removeprefix("Value error, "), param_hint="'-p/--port'")
        mappings[mapping.container_port] = mapping
    return list(mappings.values())


def _start_offset(access, record, rank: int, logs: bool, since: Optional[str]) -> int:
    """Where the output shown starts: nothing of what is there already without --logs, all of it with --logs, and
    what arrived after --since (arrival times are kept for node 0's output while dstack streamed it)."""
    from provisioner.jobs.control import log_size
    from provisioner.store.run_files import offset_since

    if logs and since is None:
        return 0
    transport = access.connect(total_wait=30)
    try:
        size = log_size(transport, record.name)
    finally:
        transport.close()
    if not logs:
        return size
    offset = offset_since(record.name, since_time(since)) if rank == 0 else None
    if offset is None:
        warn(f"{record.name}'s output has no arrival times (dstack records them while it streams an attached run); "
             "showing all of it")
        return 0
    return min(offset, size)


def _open_entry(session, record, access):
    """The run's `Host NAME` entry written (again); a dev environment's link shown too. Returns the dev
    environment's session held while attached."""
    from provisioner.runs import dev_environments
    from provisioner.runs.attach import open_task_entry
    from provisioner.runs.listing import is_dev_environment

    if not is_dev_environment(record.configuration or {}):
        open_task_entry(record.name, access, session.reporter.info)
        return None
    dev_environments.reopen_entry(session.store, record, access, session.reporter.info)
    return dev_environments.Attachment(access, record.name, record.configuration, session.reporter.info,
                                       announce=False)
