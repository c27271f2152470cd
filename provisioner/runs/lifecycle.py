"""A run from submission to teardown: provision with failover (provisioner.runs.failover), start the jobs, stream
their logs and forward the ports, and tear down whatever happens (job end, failure, Ctrl-C, `dstack stop`:
provisioner.runs.teardown).

State is written before each step (provisioner.store), so `reconcile` can finish what a killed process left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from configuration.backends import CLOUD_BACKENDS
from configuration.errors import ConfigurationError, DstackError
from configuration.home import append_private
from configuration.node_groups import node_groups
from offers.offer import Offer
from provisioner.host.access import HostAccess
from provisioner.host.ports import LOOPBACK, PortForwarder, local_opener, ssh_opener
from provisioner.host.transport import HostUnreachable
from provisioner.jobs.cluster_ssh import ClusterKeys
from provisioner.jobs.control import OUTPUT_WAIT_S
from provisioner.jobs.follow import LogFollower, kept_run_hint
from provisioner.jobs.layout import TIMED_OUT, EndedByDstack
from provisioner.jobs.node_logs import NodeLines
from provisioner.jobs.nodes import Cluster, member_offers, node_count
from provisioner.jobs.run_jobs import NodeFailed, RunJobs, exit_status, run_outcome
from provisioner.jobs.team_keys import require_team_key
from provisioner.jobs.uploads import UploadPlan, check_size, plan_uploads
from provisioner.planning.field_support import check_fields
from provisioner.planning.task_volumes import claim_volumes, job_mounts
from provisioner.runs import dev_environments
from provisioner.runs.failover import RunFailed, StopRequested, provision_with_retry, retry_deadline
from provisioner.runs.interruptions import (ATTEMPT_VARIABLE, Interrupted, ZoneBlocks, back_to_submitted, end_lost,
                                            lost_instances, notice_losses, raise_if_lost, record_loss,
                                            retries_interruption)
from provisioner.runs.job_specs import job_spec, recorded_stop_grace
from provisioner.host.owner import current_owner
from provisioner.runs.plan import configuration_json
from provisioner.runs.session import InterruptAction, RunSession
from provisioner.runs.teardown import finish_run, one_line, stop_jobs, wait_final
from provisioner.store.errors import StoreDamaged
from provisioner.store.records import RunRecord
from provisioner.store.run_files import local_log_path, mark_output
from provisioner.store.statuses import RUNNING, STARTED, RunStatus

POLL_INTERVAL_S = 0.2  # between a read of a node's log that brought output and the next: how often a log that
# grows fast is read (one that has nothing new is waited on by the host instead: control.OUTPUT_WAIT_S)


def submit(session: RunSession, run_name: str, resolved, offers: Sequence[Offer], source: Optional[Path],
           detach: bool, upload_repo: bool = True) -> RunRecord:
    """Runs a task: one job per node. Attached: until the run's jobs end (provisioner.jobs.run_jobs), then tears down.
    Detached: returns once every job is running. `source` is the configuration file: its repo (unless not
    `upload_repo`: `--no-repo`) and `files` are listed and size-checked before provisioning. A dev environment's
    job runs `init` and waits (provisioner.runs.dev_environments): detached, this returns once `init` is done and
    `ssh NAME` works; attached, that is announced while its output streams."""
    configuration = resolved.configuration
    if configuration.type not in ("task", "dev-environment"):
        raise ConfigurationError(f"running a {configuration.type} is not supported")
    dev = configuration.type == "dev-environment"
    offered = {(o.region, o.instance.name) for o in member_offers(offers) if o.backend == "ssh"}
    session = dataclasses.replace(session, fleet_hosts={key: access for key, access in session.fleet_hosts.items()
                                                        if key in offered})  # a cluster's hosts must fit too
    offers = check_fields(configuration, offers, run_name)
    cluster_keys = ClusterKeys(run_name, begin=node_count(configuration) > 1 and not configuration.image)
    uploads = UploadPlan() if source is None else plan_uploads(configuration, source.parent, str(source),
                                                               include_repos=upload_repo)
    check_size(uploads)
    store = session.store
    if dev and not any(offer.backend in CLOUD_BACKENDS for offer in offers):  # a cloud's passphrase may come later
        require_team_key(store, f"run {run_name}")  # its key is made once a host is claimed: asked first
    if store.get_cloud_fleet(run_name) is not None:  # a run's stack, resources and tags are named after the run
        raise ConfigurationError(f"a cloud fleet named {run_name} exists, and a run's cloud stack would take its "
                                 "stack's name (and a teardown its resources): pick another run name (`-n`)")
    max_duration = configuration.max_duration if isinstance(configuration.max_duration, int) else None
    owner_pid, owner_started = current_owner()
    store.create_run(RunRecord(name=run_name, status=RunStatus.SUBMITTED, submitted_at=time.time(), owner_pid=owner_pid,
                               owner_started=owner_started, detached=detach, max_duration=max_duration,
                               configuration=configuration_json(resolved)))
    store.add_event(run_name, RunStatus.SUBMITTED, f"{len(offers)} offer{'' if len(offers) == 1 else 's'} to try")
    jobs: Optional[RunJobs] = None
    forwarder = attachment = None
    say = session.reporter.info
    try:
        claim_volumes(store, configuration, run_name)
        attempt, blocks = 1, ZoneBlocks()
        while True:
            offer, hosts = provision_with_retry(session, run_name, blocks.open_offers(offers), configuration)
            store.set_jobs(run_name, [host.to_json() for host in hosts])
            store.update_run(run_name, host=hosts[0].to_json())
            jobs = RunJobs(store, run_name, hosts)
            ssh = line = None
            if len(hosts) > 1 and not configuration.image:  # an image's container has no sshd of its own to reach
                ssh, line = cluster_keys.for_hosts(hosts)
            say(f"Connecting to {', '.join(host.description for host in hosts)}")
            jobs.connect(say, cluster_line=line)  # each node gets the line as soon as it is connected to
            # a port that is taken fails the run before its job starts (its teardown removes the cluster's line)
            if not detach and forwarder is None:
                forwarder = forward_ports(session, run_name, hosts[0], node_groups(configuration)[0].ports,
                                          lambda: jobs.transports[0])
            mounts = job_mounts(store, configuration, offer)
            dev_key = dev_environments.make_key(run_name, store) if dev else None
            specs = [dataclasses.replace(job_spec(run_name, configuration, offer, uploads.repo,
                                                  Cluster(hosts, rank) if len(hosts) > 1 else None, dev_key),
                                         uploads=uploads, cluster_ssh=ssh,
                                         mounts=mounts) for rank in range(len(hosts))]
            claimed = []

            def record_started(started: Dict[int, float]) -> None:  # the jobs, the run, its event: one commit
                claimed.append(store.run_started(
                    run_name, started, (RunStatus.PROVISIONING,),
                    RunStatus.PULLING if configuration.image else RunStatus.RUNNING,
                    f"job started on {', '.join(host.description for host in hosts)}"
                    + (f" (attempt {attempt})" if attempt > 1 else ""), started_at=time.time()))

            jobs.start(_numbered(specs, attempt), configuration.startup_order, session.reporter.upload, record_started)
            if not claimed[0]:
                jobs.stop(range(jobs.size), 0, say)
                raise StopRequested
            if configuration.image:
                store.claim_run(run_name, (RunStatus.PULLING,), RunStatus.RUNNING)
            if dev and detach:
                folder = dev_environments.wait_ready(hosts[0], run_name, say)
                dev_environments.open_entry(run_name, hosts[0], configuration_json(resolved), folder, say)
            elif dev:
                attachment = dev_environments.Attachment(hosts[0], run_name, configuration_json(resolved), say, True)
            if detach:
                jobs.close()
                return store.get_run(run_name)
            try:
                status, reason, code = _follow(session, jobs, run_name, configuration)
                error_deadline = retry_deadline(configuration, "error", store.get_run(run_name).submitted_at)
                while status is RunStatus.FAILED and code is not None and error_deadline is not None and \
                        time.time() < error_deadline:
                    say(f"the job failed with exit code {code}; running it again (retry on error)")
                    store.add_event(run_name, "retry", f"exit code {code}; running the job again")
                    attempt += 1
                    jobs.start(_numbered(specs, attempt), configuration.startup_order, session.reporter.upload)
                    status, reason, code = _follow(session, jobs, run_name, configuration)
                break
            except (HostUnreachable, Interrupted) as e:
                lost = e if isinstance(e, Interrupted) else Interrupted(lost_instances(session, run_name))
                if not lost.losses:
                    raise
            jobs.close()
            record_loss(session, run_name, lost.losses, attempt)
            if not lost.interruption or not retries_interruption(configuration, store.get_run(run_name)):
                return end_lost(session, run_name, lost.losses) or wait_final(store, run_name)
            if not back_to_submitted(session, run_name, offer, blocks, attempt, lost.losses):
                return wait_final(store, run_name)  # `dstack stop` from elsewhere is finishing it
            attempt += 1
        store.add_event(run_name, "exited", "the job went away" if code is None else f"exit code {code}")
        if store.claim_run(run_name, RUNNING, RunStatus.TERMINATING):
            return finish_run(session, run_name, status, reason, code)
        return wait_final(store, run_name)  # `dstack stop` from elsewhere is finishing it
    except StopRequested:
        return finish_run(session, run_name, RunStatus.TERMINATED, store.get_run(run_name).reason)
    except KeyboardInterrupt as interrupt:
        action = _interrupt_action(session, run_name, interrupt, detach)
        if action == InterruptAction.DETACH:
            store.update_run(run_name, detached=True)  # from now on `dstack ps` finishes it when its job ends
            store.add_event(run_name, "detached", "interrupted; the job goes on")
            say(f"Detached; {run_name} goes on (`dstack attach {run_name}` follows it again, `dstack stop {run_name}` "
                "ends it)")
            return store.get_run(run_name)
        aborted = action == InterruptAction.ABORT
        say(f"{'Aborting' if aborted else 'Interrupted'}: stopping the run{' at once' if aborted else ''} and "
            f"removing what it created (Ctrl-C again to leave now; `dstack stop {run_name}` finishes it later)")
        if store.claim_run(run_name, STARTED, RunStatus.TERMINATING):
            stop_jobs(session, run_name, jobs, grace=0 if aborted else -1)
            finish_run(session, run_name, RunStatus.TERMINATED, "aborted" if aborted else "interrupted")
        raise
    except StoreDamaged:
        raise  # nothing can be recorded any more; its message names the job if it is still running
    except HostUnreachable as e:  # its job runs on in its own session if the host is up: keep the run
        raise HostUnreachable(f"{e}\n{kept_run_hint(run_name)}") from None
    except (DstackError, NodeFailed) as e:
        stop_jobs(session, run_name, jobs)
        finish_run(session, run_name, RunStatus.FAILED, one_line(str(e)))
        if isinstance(e, NodeFailed):
            raise RunFailed(f"{run_name}: {e}") from None
        raise
    except Exception as e:
        stop_jobs(session, run_name, jobs)
        finish_run(session, run_name, RunStatus.FAILED, f"{type(e).__name__}: {e}")
        raise
    finally:
        if attachment is not None:
            attachment.close()
        if forwarder is not None:
            forwarder.close()
        if jobs is not None:
            jobs.close()


def _numbered(specs, attempt: int) -> list:
    """The jobs' specs with the attempt's number in their environment (interruptions.ATTEMPT_VARIABLE)."""
    return [dataclasses.replace(spec, env={**spec.env, ATTEMPT_VARIABLE: str(attempt)}) for spec in specs]


def _interrupt_action(session: RunSession, run_name: str, interrupt: KeyboardInterrupt, detach: bool
                      ) -> InterruptAction:
    """An interrupt while the job runs attached asks the session (Ctrl-C: detach, or stop, as dstack does); before
    the job runs, or while a detached run is being started, the run is stopped: no process would finish it."""
    record = session.store.get_run(run_name)
    if detach or session.on_interrupt is None or record is None or record.status not in RUNNING:
        return InterruptAction.STOP
    try:
        return session.on_interrupt(run_name, interrupt)
    except KeyboardInterrupt:  # a second Ctrl-C while asked
        return InterruptAction.ABORT


def _follow(session: RunSession, jobs: RunJobs, run_name: str, configuration
            ) -> Tuple[str, Optional[str], Optional[int]]:
    """Writes every node's output as it comes (a copy of each kept under $DSTACK_HOME) until the run is over by
    its `stop_criteria` or a node's failure, then stops the nodes still running; returns (status, reason, exit
    code). Past max_duration (with a margin for the host's own timeout) the jobs are stopped. A cluster's nodes are
    each read in a thread of its own (_read_node), so a node that waits on its host for its first line holds up no
    other."""
    store = session.store
    record = store.get_run(run_name)
    grace = recorded_stop_grace(record)
    deadline = (record.started_at or time.time()) + record.max_duration + 15 if record.max_duration else None
    lines = NodeLines(jobs.size, session.reporter.output)
    codes: Dict[int, Optional[int]] = {}
    followers, noticed = {}, set()
    read: "queue.Queue[tuple]" = queue.Queue()
    done = threading.Event()
    with contextlib.ExitStack() as stack:
        stack.callback(done.set)
        for rank, host in enumerate(jobs.hosts):
            followers[rank] = LogFollower(host.connect, run_name, log=session.reporter.info, host=host.description,
                                          on_lost=lambda: raise_if_lost(session, run_name))
            followers[rank].transport = jobs.transports.get(rank)
        alone = jobs.size == 1  # read in this thread: Ctrl-C meets the read itself, as it meets everything else
        for rank, follower in followers.items():
            if not alone:
                threading.Thread(target=_read_node, args=(rank, follower, read, done), daemon=True,
                                 name=f"follow-{rank}").start()
        # the local copies opened while the first reads wait on the hosts (making a new file took ~3 ms each here
        # under a 16-node start, one after the other, before any read began)
        copies = {rank: stack.enter_context(append_private(local_log_path(run_name, rank))) for rank in followers}
        outcome = None
        while outcome is None:
            if alone:
                time.sleep(followers[0].pause(POLL_INTERVAL_S))
                new: list = []
                rank, code, error = 0, followers[0].poll(new.append, wait=OUTPUT_WAIT_S), None
                data = b"".join(new)
            else:
                try:
                    rank, data, code, error = read.get(timeout=0.5)
                except queue.Empty:
                    rank = None
            if rank is not None:
                if error is not None:
                    raise error
                if data:
                    if rank == 0:
                        mark_output(run_name, copies[0].tell())  # for `dstack logs --since`
                    copies[rank].write(data)
                    copies[rank].flush()
                    lines.add(rank, data)
                jobs.transports[rank] = followers[rank].transport
                _raise_on_notice(session, run_name, followers, noticed)
                if code is not None:
                    codes[rank] = code
                    lines.flush(rank)
                    jobs.record_end(rank, code)
            outcome = run_outcome(codes, jobs.size, configuration.stop_criteria)
            if outcome is None and deadline is not None and time.time() > deadline:
                outcome = (*exit_status(EndedByDstack(TIMED_OUT)), TIMED_OUT)
    remaining = [rank for rank in followers if rank not in codes]
    if remaining:
        session.reporter.info(f"stopping node{'s' if len(remaining) > 1 else ''} "
                              f"{', '.join(map(str, remaining))}: {outcome[1] or 'the master is done'}")
        jobs.stop(remaining, grace, session.reporter.info)
    return outcome


def _raise_on_notice(session: RunSession, run_name: str, followers: Dict[int, LogFollower], noticed: set) -> None:
    """Interrupted once a node's host has had its cloud's spot interruption notice (its line is written by now):
    the run ends or starts again while the VM still runs, not once the cloud has taken it back. `noticed`: the
    ranks whose notice was looked at (a run on hosts of its own, whose notice ends nothing, is let run on)."""
    notices = {rank: follower.notice for rank, follower in followers.items() if follower.notice and rank not in noticed}
    noticed.update(notices)
    losses = notice_losses(session, run_name, notices) if notices else []
    if losses:
        raise Interrupted(losses)


def _read_node(rank: int, follower: LogFollower, read: "queue.Queue[tuple]", done: threading.Event) -> None:
    """Puts (rank, new output, exit code or None, error or None) on `read` until the node's job ends, an error, or
    `done`: a read that has nothing new waits on the host for the next bytes, one that brought output is followed
    by the next POLL_INTERVAL_S later (LogFollower.pause). Ctrl-C and
    SIGTERM are blocked here, so the kernel hands them to the main thread: one that reached this thread would leave
    the main thread's question (detach or stop?) waiting on its read."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        while not done.is_set():
            new: list = []
            code = follower.poll(new.append, wait=OUTPUT_WAIT_S)
            read.put((rank, b"".join(new), code, None))
            if code is not None:
                return
            done.wait(follower.pause(POLL_INTERVAL_S))
    except BaseException as e:  # noqa: B036 - raised in the run's thread
        read.put((rank, b"", None, e))


def forward_ports(session: RunSession, run_name: str, access: HostAccess, ports, ssh_transport,
                  address: str = LOOPBACK):
    """Forwards each task port to `address` (this machine's loopback unless told); returns the forwarder (None when
    nothing needs forwarding)."""
    if not ports:
        return None

    if access.kind == "local":
        needed = [p for p in ports if p.local_port not in (None, p.container_port) or address != LOOPBACK]
        forwarder = PortForwarder(local_opener, address)
    else:
        needed = list(ports)
        forwarder = PortForwarder(ssh_opener(lambda: ssh_transport().transport), address)
    bound = []
    shown = "localhost" if address == LOOPBACK else address
    for mapping in ports:
        if mapping in needed:
            local = forwarder.forward(mapping.local_port, mapping.container_port)
        else:
            local = mapping.container_port
        bound.append([local, mapping.container_port])
        session.reporter.info(f"Port {mapping.container_port} is at http://{shown}:{local}")
    session.store.update_run(run_name, ports=bound)
    return forwarder
