"""A run from submission to teardown: pick offers in price order, provision with failover, start the job, stream
its log and forward its ports, and tear down whatever happens (job end, failure, Ctrl-C, `dstack stop`).

State is written before each step (provisioner.state), so `reconcile` can finish what a killed process left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from configuration.backends import DstackConfig
from configuration.errors import ConfigurationError, DstackError
from configuration.home import append_private
from offers.offer import Offer
from provisioner.access import HostAccess
from provisioner.backends import Backend, backend_for
from provisioner.field_support import check_fields
from provisioner.events import mark_output
from provisioner.follow import LogFollower, kept_run_hint
from provisioner.cluster import Cluster, cluster_env, node_count
from provisioner.cluster_ssh import cluster_ssh, revoke_everywhere
from provisioner.job import TIMED_OUT, JobSpec
from provisioner.node_logs import NodeLines, local_log_path
from provisioner.instances import power_off_minutes
from provisioner.owner import current_owner, owner_alive
from provisioner.plan import configuration_json
from provisioner.repo_archive import UploadPlan, check_size, plan_uploads
from provisioner.run_jobs import (NodeFailed, RunJobs, copy_log, exit_status, run_jobs, run_outcome,
                                  settled_job_state)
from provisioner.state import RunRecord, StateStore
from provisioner.store_errors import StoreDamaged
from provisioner.volumes import claim_volumes, job_mounts
from provisioner.transport import HostUnreachable
from stacks.errors import StackFailure

STARTED = ("submitted", "provisioning", "pulling", "running")
STARTING = ("submitted", "provisioning")  # the job is not started yet: it may be starting while its owner lives
RUNNING = ("pulling", "running")  # the job's pid file exists
MAX_OFFERS_TRIED = 5
STOP_GRACE_S = 10


RETRY_INTERVAL_S = 60
DEFAULT_RETRY_DURATION_S = 3600


class RunFailed(ConfigurationError):
    """The run could not be provisioned or started; the message says why, per offer tried."""


class NoCapacity(RunFailed):
    """Every offer tried failed for capacity or quota: `retry: {on_events: [no-capacity]}` tries again later."""


class StopRequested(Exception):
    """`dstack stop` claimed the run while its owner was starting it: the owner stops what it started."""


@dataclass
class Reporter:
    info: Callable[[str], None] = lambda message: None
    step: Callable = lambda progress: None
    output: Callable[[bytes], None] = lambda data: None
    upload: Callable[[int, int], None] = lambda done, total: None  # bytes packed, bytes in all


@dataclass
class RunSession:
    store: StateStore
    config: DstackConfig
    reporter: Reporter = field(default_factory=Reporter)
    fleet_hosts: Dict[Tuple[str, str], HostAccess] = field(default_factory=dict)

    def backend(self, name: str) -> Backend:
        return backend_for(name, self.config, self.store, self.fleet_hosts)


def repo_id(repo: Optional[str]) -> str:
    """DSTACK_REPO_ID: the repo's name and a digest of its folder or URL, stable across runs of one repo."""
    if not repo:
        return ""
    name = repo.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    name = name[:-4] if name.endswith(".git") else name
    return f"{name}-{hashlib.sha256(repo.encode()).hexdigest()[:8]}"


def system_env(run_name: str, offer: Offer, repo: Optional[str], cluster: Optional[Cluster] = None
               ) -> Dict[str, str]:
    """dstack's system variables of one node's job (provisioner.cluster.cluster_env)."""
    return {"DSTACK_RUN_NAME": run_name, "DSTACK_REPO_ID": repo_id(repo),
            **cluster_env(cluster, offer.instance.gpu_count)}


def stop_grace(stop_duration) -> Optional[int]:
    """Seconds between SIGTERM and SIGKILL: `stop_duration`, STOP_GRACE_S without it, None with `off`."""
    if stop_duration == "off":
        return None
    return STOP_GRACE_S if stop_duration is None else stop_duration


def recorded_stop_grace(record: RunRecord) -> Optional[int]:
    return stop_grace((record.configuration or {}).get("stop_duration"))


def job_spec(run_name: str, configuration, offer: Offer, repo: Optional[str] = None,
             cluster: Optional[Cluster] = None) -> JobSpec:
    auth = configuration.registry_auth
    resources = configuration.resources
    policy = configuration.utilization_policy
    return JobSpec(
        run_name=run_name,
        commands=[*configuration.setup, *configuration.commands],
        env={**system_env(run_name, offer, repo, cluster), **configuration.env},
        image=configuration.image,
        python=configuration.python,
        entrypoint=configuration.entrypoint,
        working_dir=configuration.working_dir,
        shm_size_gb=resources.shm_size,
        nvidia_gpus=offer.instance.gpu_vendor == "nvidia" and offer.instance.gpu_count > 0,
        registry_username=auth.username if auth else None,
        registry_password=auth.password.get_secret_value() if auth else None,
        max_duration_s=configuration.max_duration if isinstance(configuration.max_duration, int) else None,
        power_off_after_exit_min=power_off_minutes(configuration, offer),
        shell=configuration.shell,
        user=configuration.user,
        privileged=configuration.privileged,
        home_dir=configuration.home_dir,
        docker=bool(configuration.docker),
        nvcc=bool(configuration.nvcc),
        may_install=offer.backend != "local",
        gpus=offer.instance.gpu_count,
        utilization=(policy.min_gpu_utilization, policy.time_window) if policy else None,
    )


def _scope_key(offer: Offer, scope: str) -> tuple:
    """What a failure of `scope` rules out for the next tries: the cloud, a region, a zone, or an instance type."""
    zone = offer.zones[0] if offer.zones else ""
    return {"cloud": (offer.backend,), "region": (offer.backend, offer.region),
            "zone": (offer.backend, offer.region, zone), "type": (offer.backend, "type", offer.instance.name)}[scope]


def _ruled_out(offer: Offer, blocked: set) -> Optional[str]:
    for why in ("cloud", "region", "zone", "type"):
        key = _scope_key(offer, why)
        if key in blocked:
            return why
    return None


def zone_offers(offer: Offer) -> List[Offer]:
    """The offer once per zone of its region, in the catalogue's order: a capacity error in one zone moves to the
    next zone of the same region before the next offer."""
    if len(offer.zones) <= 1:
        return [offer]
    return [dataclasses.replace(offer, zones=(zone,)) for zone in offer.zones]


def provision_with_failover(session: RunSession, run_name: str, offers: Sequence[Offer], configuration
                            ) -> Tuple[Offer, List[HostAccess]]:
    """Tries offers in price order, each in every zone of its region: a capacity error rules out its zone, a quota
    error its region (or the cloud for a global GPU quota); configuration and credential errors stop at once. At
    most MAX_OFFERS_TRIED offers (their zones count as one). Returns the offer and its hosts, one per node: a
    backend provisions all of them or none (it removes what it made when one fails)."""
    store, say = session.store, session.reporter.info
    attempts: List[dict] = []
    blocked: set = set()
    tried = 0
    nodes = node_count(configuration)
    for whole_offer in offers:
        if tried >= MAX_OFFERS_TRIED:
            break
        counted = False
        for offer in zone_offers(whole_offer):
            if _ruled_out(offer, blocked):
                continue
            if not counted:
                tried, counted = tried + 1, True
            zone = offer.zones[0] if offer.zones else ""
            label = f"{offer.backend} {offer.region} {offer.instance.name}{' (spot)' if offer.spot else ''}"
            if not store.claim_run(run_name, STARTING, "provisioning", backend=offer.backend, region=offer.region,
                                   instance=offer.instance.name, price=offer.total_price * nodes,
                                   offer=offer.to_json()):
                raise StopRequested
            each = f"{nodes} x " if nodes > 1 else ""
            say(f"Provisioning {each}{label}{f' in {zone}' if zone else ''} at ${offer.total_price:.4f}/hour"
                + (f" each (${offer.total_price * nodes:.4f}/hour)" if nodes > 1 else ""))
            store.add_event(run_name, "offer", f"trying {label}{f' in {zone}' if zone else ''} "
                                               f"at ${offer.total_price:.4f}/hour")
            try:
                hosts = session.backend(offer.backend).provision(run_name, offer, configuration,
                                                                 session.reporter.step)
            except StackFailure as failure:
                attempts.append({"offer": label, "zone": zone, "kind": failure.kind, "error": failure.message})
                store.update_run(run_name, attempts=attempts)
                store.add_event(run_name, "offer-failed", f"{label}{f' in {zone}' if zone else ''}: "
                                                          f"{failure.kind}: {failure.message}")
                if not failure.retryable:
                    raise RunFailed(f"{label}: {failure.kind} error, not retrying: {failure.message}") from None
                blocked.add(_scope_key(offer, failure.scope))
                say(f"{label}: {failure.kind} ({failure.message}); trying the next "
                    f"{'zone' if failure.scope == 'zone' else 'offer'}")
                continue
            store.add_event(run_name, "provisioned", ", ".join(host.description for host in hosts))
            if len(hosts) != nodes:  # never a smaller cluster than asked for; submit tears down what was made
                raise RunFailed(f"{label}: the {offer.backend} backend brought up {len(hosts)} "
                                f"host{'' if len(hosts) == 1 else 's'} for `nodes: {nodes}`")
            return offer, hosts
    lines = "\n".join(f"  {a['offer']}{' in ' + a['zone'] if a.get('zone') else ''}: {a['kind']}: {a['error']}"
                      for a in attempts) or "  (none could be tried)"
    raise NoCapacity(f"no offer could be provisioned; tried {tried}:\n{lines}")


def retry_deadline(configuration, event: str, since: float) -> Optional[float]:
    """When retrying for `event` (no-capacity, error) must stop, or None when the run does not retry on it."""
    retry = configuration.retry
    if retry is None or event not in retry.on_events:
        return None
    return since + (retry.duration if retry.duration is not None else DEFAULT_RETRY_DURATION_S)


def provision_with_retry(session: RunSession, run_name: str, offers: Sequence[Offer], configuration
                         ) -> Tuple[Offer, List[HostAccess]]:
    deadline = retry_deadline(configuration, "no-capacity", time.time())
    while True:
        try:
            return provision_with_failover(session, run_name, offers, configuration)
        except NoCapacity as e:
            if deadline is None or time.time() + RETRY_INTERVAL_S > deadline:
                raise
            session.store.add_event(run_name, "retry", f"no capacity; retrying in {RETRY_INTERVAL_S}s")
            session.reporter.info(f"{str(e).splitlines()[0]}; retrying in {RETRY_INTERVAL_S}s "
                                  f"(retry on no-capacity until {time.strftime('%H:%M:%S', time.localtime(deadline))})")
            time.sleep(RETRY_INTERVAL_S)


def finish_run(session: RunSession, name: str, status: str, reason: Optional[str] = None,
               exit_code: Optional[int] = None) -> RunRecord:
    """Tears down what the run created, then records its final state (and its jobs' that had not ended). A failed
    teardown leaves the run `terminating`, so the next `dstack ps` or `dstack stop` tries again."""
    store = session.store
    record = store.get_run(name)
    store.update_run(name, status="terminating", reason=reason, exit_code=exit_code)
    store.add_event(name, "terminating", reason or "")
    jobs = store.list_jobs(name)
    # the user's hosts, and VMs a fleet keeps after the run, keep nothing of it (a VM destroyed goes whole)
    if len(jobs) > 1 and (record.backend == "ssh" or any(i.run == name for i in store.list_instances())):
        revoke_everywhere(name, [HostAccess.from_json(job.host) for job in jobs], session.reporter.info)
    if record.backend:
        def step(progress) -> None:
            session.reporter.step(progress)
            if progress.state != "started":
                store.add_event(name, "teardown", f"{progress.op} {progress.type.split(':')[-1]} {progress.name}: "
                                                  f"{progress.state}")

        try:
            session.backend(record.backend).teardown(record, step)
        except Exception as e:  # any failure keeps the run visible as terminating, to be finished later
            store.update_run(name, reason=f"teardown failed, retry with `dstack stop {name}`: {e}")
            store.add_event(name, "teardown-failed", str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise
    for job in jobs:
        if not job.final:
            store.update_job(name, job.rank, status=status, finished_at=time.time())
    finished = store.update_run(name, status=status, finished_at=time.time())
    store.add_event(name, status, reason or "")
    return finished


def submit(session: RunSession, run_name: str, resolved, offers: Sequence[Offer], source: Optional[Path],
           detach: bool, upload_repo: bool = True) -> RunRecord:
    """Runs a task: one job per node. Attached: until the run's jobs end (provisioner.run_jobs), then tears down.
    Detached: returns once every job is running. `source` is the configuration file: its repo (unless not
    `upload_repo`: `--no-repo`) and `files` are listed and size-checked before provisioning."""
    configuration = resolved.configuration
    if configuration.type != "task":
        raise ConfigurationError(f"running a {configuration.type} is not supported yet: `dstack offers -f` and "
                                 "`dstack apply --dry-run` work with it")
    offered = {(o.region, o.instance.name) for o in offers if o.backend == "ssh"}
    session = dataclasses.replace(session, fleet_hosts={key: access for key, access in session.fleet_hosts.items()
                                                        if key in offered})  # a cluster's hosts must fit too
    offers = check_fields(configuration, offers, run_name)
    uploads = UploadPlan() if source is None else plan_uploads(configuration, source.parent, str(source),
                                                               include_repos=upload_repo)
    check_size(uploads)
    store = session.store
    if store.get_cloud_fleet(run_name) is not None:  # a run's stack, resources and tags are named after the run
        raise ConfigurationError(f"a cloud fleet named {run_name} exists, and a run's cloud stack would take its "
                                 "stack's name (and a teardown its resources): pick another run name (`-n`)")
    max_duration = configuration.max_duration if isinstance(configuration.max_duration, int) else None
    owner_pid, owner_started = current_owner()
    store.create_run(RunRecord(name=run_name, status="submitted", submitted_at=time.time(), owner_pid=owner_pid,
                               owner_started=owner_started, detached=detach, max_duration=max_duration,
                               configuration=configuration_json(resolved)))
    store.add_event(run_name, "submitted", f"{len(offers)} offer{'' if len(offers) == 1 else 's'} to try")
    jobs: Optional[RunJobs] = None
    forwarder = None
    say = session.reporter.info
    try:
        claim_volumes(store, configuration, run_name)
        offer, hosts = provision_with_retry(session, run_name, offers, configuration)
        store.set_jobs(run_name, [host.to_json() for host in hosts])
        store.update_run(run_name, host=hosts[0].to_json())
        jobs = RunJobs(store, run_name, hosts)
        say(f"Connecting to {', '.join(host.description for host in hosts)}")
        jobs.connect(say)
        if not detach:  # ports first: a local port that is taken fails the run before its job starts
            forwarder = forward_ports(session, run_name, hosts[0], configuration.ports, lambda: jobs.transports[0])
        ssh = None
        if len(hosts) > 1 and not configuration.image:  # an image's container has no sshd of its own to reach
            ssh, line = cluster_ssh(run_name, hosts)
            jobs.authorize(line)
        mounts = job_mounts(store, configuration, offer)
        specs = [dataclasses.replace(job_spec(run_name, configuration, offer, uploads.repo,
                                              Cluster(hosts, rank) if len(hosts) > 1 else None),
                                     uploads=uploads, cluster_ssh=ssh,
                                     mounts=mounts) for rank in range(len(hosts))]
        jobs.start(specs, configuration.startup_order, session.reporter.upload)
        if not store.claim_run(run_name, ("provisioning",), "pulling" if configuration.image else "running",
                               started_at=time.time()):
            jobs.stop(range(jobs.size), 0, say)
            raise StopRequested
        store.add_event(run_name, "started", f"job started on {', '.join(host.description for host in hosts)}")
        if configuration.image:
            store.claim_run(run_name, ("pulling",), "running")
        if detach:
            jobs.close()
            return store.get_run(run_name)
        status, reason, code = _follow(session, jobs, run_name, configuration)
        error_deadline = retry_deadline(configuration, "error", store.get_run(run_name).submitted_at)
        while code not in (0, TIMED_OUT, None) and error_deadline is not None and time.time() < error_deadline:
            say(f"the job failed with exit code {code}; running it again (retry on error)")
            store.add_event(run_name, "retry", f"exit code {code}; running the job again")
            jobs.start(specs, configuration.startup_order, session.reporter.upload)
            status, reason, code = _follow(session, jobs, run_name, configuration)
        store.add_event(run_name, "exited", "the job went away" if code is None else f"exit code {code}")
        if store.claim_run(run_name, RUNNING, "terminating"):
            return finish_run(session, run_name, status, reason, code)
        return _wait_final(store, run_name)  # `dstack stop` from elsewhere is finishing it
    except StopRequested:
        return finish_run(session, run_name, "terminated", store.get_run(run_name).reason)
    except KeyboardInterrupt:
        say("Interrupted: stopping the run and removing what it created (Ctrl-C again to leave "
            f"now; `dstack stop {run_name}` finishes it later)")
        if store.claim_run(run_name, STARTED, "terminating"):
            _stop_jobs_quietly(session, run_name, jobs)
            finish_run(session, run_name, "terminated", "interrupted")
        raise
    except StoreDamaged:
        raise  # nothing can be recorded any more; its message names the job if it is still running
    except HostUnreachable as e:  # its job runs on in its own session if the host is up: keep the run
        raise HostUnreachable(f"{e}\n{kept_run_hint(run_name)}") from None
    except (DstackError, NodeFailed) as e:
        _stop_jobs_quietly(session, run_name, jobs)
        finish_run(session, run_name, "failed", str(e).splitlines()[0])
        if isinstance(e, NodeFailed):
            raise RunFailed(f"{run_name}: {e}") from None
        raise
    except Exception as e:
        _stop_jobs_quietly(session, run_name, jobs)
        finish_run(session, run_name, "failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        if forwarder is not None:
            forwarder.close()
        if jobs is not None:
            jobs.close()


def _wait_final(store: StateStore, name: str, timeout: float = 600, while_owner: Optional[RunRecord] = None
                ) -> RunRecord:
    """The run once it has ended, or after `timeout`; with `while_owner`, only while that record's owner lives."""
    deadline = time.time() + timeout
    record = store.get_run(name)
    while record.active and time.time() < deadline and (while_owner is None or _owner_alive(while_owner)):
        time.sleep(0.2)
        record = store.get_run(name)
    return record


def _owner_alive(record: RunRecord) -> bool:
    return owner_alive(record.owner_pid, record.owner_started)


def _follow(session: RunSession, jobs: RunJobs, run_name: str, configuration
            ) -> Tuple[str, Optional[str], Optional[int]]:
    """Writes every node's output as it comes (a copy of each kept under $DSTACK_HOME) until the run is over by
    its `stop_criteria` or a node's failure, then stops the nodes still running; returns (status, reason, exit
    code). Past max_duration (with a margin for the host's own timeout) the jobs are stopped."""
    store = session.store
    record = store.get_run(run_name)
    grace = recorded_stop_grace(record)
    deadline = (record.started_at or time.time()) + record.max_duration + 15 if record.max_duration else None
    lines = NodeLines(jobs.size, session.reporter.output)
    codes: Dict[int, Optional[int]] = {}
    followers = {}
    with contextlib.ExitStack() as stack:
        for rank, host in enumerate(jobs.hosts):
            followers[rank] = LogFollower(host.connect, run_name, log=session.reporter.info, host=host.description)
            followers[rank].transport = jobs.transports.get(rank)
        copies = {rank: stack.enter_context(append_private(local_log_path(run_name, rank))) for rank in followers}

        def writer(rank: int) -> Callable[[bytes], None]:
            def write(data: bytes) -> None:
                if rank == 0:
                    mark_output(run_name, copies[0].tell())  # for `dstack logs --since`
                copies[rank].write(data)
                copies[rank].flush()
                lines.add(rank, data)
            return write

        outcome = None
        while outcome is None:
            for rank, follower in followers.items():
                if rank not in codes:
                    code = follower.poll(writer(rank))
                    jobs.transports[rank] = follower.transport
                    if code is not None:
                        codes[rank] = code
                        lines.flush(rank)
                        jobs.record_end(rank, code)
            outcome = run_outcome(codes, jobs.size, configuration.stop_criteria)
            if outcome is None and deadline is not None and time.time() > deadline:
                outcome = (*exit_status(TIMED_OUT), TIMED_OUT)
            if outcome is None:
                time.sleep(0.2)
    remaining = [rank for rank in followers if rank not in codes]
    if remaining:
        session.reporter.info(f"stopping node{'s' if len(remaining) > 1 else ''} "
                              f"{', '.join(map(str, remaining))}: {outcome[1] or 'the master is done'}")
        jobs.stop(remaining, grace, session.reporter.info)
    return outcome


def forward_ports(session: RunSession, run_name: str, access: HostAccess, ports, ssh_transport):
    """Forwards each task port to localhost; returns the forwarder (None when nothing needs forwarding)."""
    if not ports:
        return None
    from provisioner.ports import PortForwarder, local_opener, ssh_opener

    if access.kind == "local":
        needed = [p for p in ports if p.local_port not in (None, p.container_port)]
        forwarder = PortForwarder(local_opener)
    else:
        needed = list(ports)
        forwarder = PortForwarder(ssh_opener(lambda: ssh_transport().transport))
    bound = []
    for mapping in ports:
        if mapping in needed:
            local = forwarder.forward(mapping.local_port, mapping.container_port)
        else:
            local = mapping.container_port
        bound.append([local, mapping.container_port])
        session.reporter.info(f"Port {mapping.container_port} is at http://localhost:{local}")
    session.store.update_run(run_name, ports=bound)
    return forwarder


def _stop_jobs_quietly(session: RunSession, run_name: str, jobs: Optional[RunJobs] = None,
                      grace: Optional[int] = -1) -> Dict[int, Optional[int]]:
    """Stops every job of the run that has not ended (with the run's stop grace unless `grace` is given);
    returns their exit codes. Hosts that cannot be reached are reported, not raised: teardown goes on."""
    store = session.store
    record = store.get_run(run_name)
    recorded = run_jobs(store, record)
    if not recorded:
        return {}
    if jobs is None:
        jobs = RunJobs(store, run_name, [HostAccess.from_json(job.host) for job in recorded])
    live = [job.rank for job in recorded if not job.final]
    try:
        return jobs.stop(live, recorded_stop_grace(record) if grace == -1 else grace, session.reporter.info)
    finally:
        jobs.close()


def stop_run(session: RunSession, name: str, abort: bool = False) -> RunRecord:
    store = session.store
    record = store.get_run(name)
    if record is None:
        raise ConfigurationError(f"no run named {name} (see `dstack ps -a`)")
    reason = "aborted" if abort else "stopped by user"
    if record.active:
        store.add_event(name, "stop", reason)
    if store.claim_run(name, STARTING, "terminating", reason=reason):
        if _owner_alive(record):  # its owner stops the job it is starting, and tears down (see submit)
            session.reporter.info(f"{name} is starting: waiting for the dstack process that starts it "
                                  f"(pid {record.owner_pid}) to stop it")
            record = _wait_final(store, name, while_owner=record)
            if not record.active or _owner_alive(record):
                return record
        # its owner is gone: the job may have started before it died
        record = store.get_run(name)
    elif not store.claim_run(name, RUNNING, "terminating"):
        record = store.get_run(name)
        if record.status != "terminating" or _owner_alive(record):
            return _wait_final(store, name) if record.active else record
        # a teardown that a dead process began: finish it
    codes = _stop_jobs_quietly(session, name, grace=0 if abort else -1)
    return finish_run(session, name, "terminated", reason, codes.get(0))


def reconcile(session: RunSession) -> List[RunRecord]:
    """Finishes what no live dstack process is looking after: a job that ended (record it, tear down), a run past
    max_duration (stop it), a provisioning or teardown cut short by a crash (tear down)."""
    for record in session.store.list_runs():
        if not record.active or _looked_after(record):
            continue
        try:
            _reconcile_one(session, record)
        except Exception as e:  # one unreachable host must not hide the others; the run stays as it is
            session.reporter.info(f"{record.name}: {e}")
    return session.store.list_runs()


def _looked_after(record: RunRecord) -> bool:
    """Whether a live dstack process looks after the run: an attached owner until the run ends, a detached one
    until it has started the job (or, stopped meanwhile, torn the run down)."""
    return _owner_alive(record) and (not record.detached or record.status not in RUNNING)


def _reconcile_one(session: RunSession, record: RunRecord) -> None:
    store = session.store
    if record.status in STARTING or not record.host:
        if store.claim_run(record.name, STARTING, "terminating"):
            if record.host:  # its owner died after choosing the hosts: the jobs may have started
                _stop_jobs_quietly(session, record.name)
            finish_run(session, record.name, "failed",
                       "interrupted while starting" if record.host else "interrupted while provisioning")
        return
    if record.status == "terminating":
        finish_run(session, record.name, "terminated", record.reason or "interrupted while terminating",
                   record.exit_code)
        return
    outcome = _ended_jobs(session, record)
    if outcome is not None:
        status, reason, code = outcome
        store.add_event(record.name, "exited", reason or f"exit code {code}")
        if store.claim_run(record.name, RUNNING, "terminating"):
            finish_run(session, record.name, status, reason, code)


def _ended_jobs(session: RunSession, record: RunRecord) -> Optional[Tuple[str, Optional[str], Optional[int]]]:
    """Asks each running job's host how it stands and records those that ended (their logs copied); once the run
    is over by its stop criteria, a failed node or max_duration, stops the others and returns (status, reason,
    exit code); else None."""
    recorded = run_jobs(session.store, record)
    jobs = RunJobs(session.store, record.name, [HostAccess.from_json(job.host) for job in recorded])
    codes = {job.rank: job.exit_code for job in recorded if job.final}
    stop_criteria = (record.configuration or {}).get("stop_criteria")
    try:
        for job in recorded:
            if job.final:
                continue
            jobs.transports[job.rank] = transport = jobs.hosts[job.rank].connect(total_wait=20)
            state, code = settled_job_state(transport, record.name)
            if state in ("exited", "missing"):
                codes[job.rank] = code
                jobs.record_end(job.rank, code)
            if state == "exited":
                copy_log(transport, record.name, job.rank)
        outcome = run_outcome(codes, jobs.size, stop_criteria)
        if outcome is None and record.max_duration and record.started_at and \
                time.time() > record.started_at + record.max_duration + 15:
            outcome = (*exit_status(TIMED_OUT), TIMED_OUT)
        remaining = [job.rank for job in recorded if job.rank not in codes]
        if outcome is not None and remaining:
            stopped = jobs.stop(remaining, recorded_stop_grace(record), session.reporter.info)
            for rank in remaining:
                copy_log(jobs.transports[rank], record.name, rank)
            if outcome[2] == TIMED_OUT and stopped.get(0) not in (None, TIMED_OUT):
                outcome = (outcome[0], outcome[1], stopped[0])
    finally:
        jobs.close()
    return outcome


def write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
