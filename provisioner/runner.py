"""A run from submission to teardown: pick offers in price order, provision with failover, start the job, stream
its log and forward its ports, and tear down whatever happens (job end, failure, Ctrl-C, `dstack stop`).

State is written before each step (provisioner.state), so `reconcile` can finish what a killed process left.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from configuration.backends import DstackConfig
from configuration.errors import ConfigurationError, DstackError
from configuration.home import append_private, dstack_home
from offers.offer import Offer
from provisioner.access import HostAccess
from provisioner.backends import Backend, backend_for
from provisioner.field_support import check_fields
from provisioner.events import mark_output
from provisioner.follow import LogFollower, kept_run_hint
from provisioner.instances import power_off_minutes
from provisioner.job import TIMED_OUT, UNDERUTILIZED, JobSpec, job_state, start_job, stop_job
from provisioner.owner import current_owner, owner_alive
from provisioner.plan import configuration_json
from provisioner.repo_archive import UploadPlan, check_size, plan_uploads
from provisioner.state import RunRecord, StateStore
from provisioner.store_errors import StoreDamaged
from provisioner.transport import HostUnreachable
from stacks.errors import StackFailure

STARTED = ("submitted", "provisioning", "pulling", "running")
STARTING = ("submitted", "provisioning")  # the job is not started yet: it may be starting while its owner lives
RUNNING = ("pulling", "running")  # the job's pid file exists
MAX_OFFERS_TRIED = 5
STOP_GRACE_S = 10
JOB_SETTLE_S = 0.5  # between a job's end and its exit code being written


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


def local_log_path(run_name: str) -> Path:
    return dstack_home() / "runs" / run_name / "output.log"


def repo_id(repo: Optional[str]) -> str:
    """DSTACK_REPO_ID: the repo's name and a digest of its folder or URL, stable across runs of one repo."""
    if not repo:
        return ""
    name = repo.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    name = name[:-4] if name.endswith(".git") else name
    return f"{name}-{hashlib.sha256(repo.encode()).hexdigest()[:8]}"


def system_env(run_name: str, offer: Offer, repo: Optional[str]) -> Dict[str, str]:
    """dstack's system variables of a single-node job; the host sets DSTACK_MASTER_NODE_IP, DSTACK_NODES_IPS and
    DSTACK_MPI_HOSTFILE itself (provisioner.job)."""
    gpus = str(offer.instance.gpu_count)
    return {"DSTACK_RUN_NAME": run_name, "DSTACK_REPO_ID": repo_id(repo), "DSTACK_GPUS_NUM": gpus,
            "DSTACK_GPUS_PER_NODE": gpus, "DSTACK_NODES_NUM": "1", "DSTACK_NODE_RANK": "0"}


def stop_grace(stop_duration) -> Optional[int]:
    """Seconds between SIGTERM and SIGKILL: `stop_duration`, STOP_GRACE_S without it, None with `off`."""
    if stop_duration == "off":
        return None
    return STOP_GRACE_S if stop_duration is None else stop_duration


def recorded_stop_grace(record: RunRecord) -> Optional[int]:
    return stop_grace((record.configuration or {}).get("stop_duration"))


def job_spec(run_name: str, configuration, offer: Offer, repo: Optional[str] = None) -> JobSpec:
    auth = configuration.registry_auth
    resources = configuration.resources
    policy = configuration.utilization_policy
    return JobSpec(
        run_name=run_name,
        commands=[*configuration.setup, *configuration.commands],
        env={**system_env(run_name, offer, repo), **configuration.env},
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
                            ) -> Tuple[Offer, HostAccess]:
    """Tries offers in price order, each in every zone of its region: a capacity error rules out its zone, a quota
    error its region (or the cloud for a global GPU quota); configuration and credential errors stop at once. At
    most MAX_OFFERS_TRIED offers (their zones count as one)."""
    store, say = session.store, session.reporter.info
    attempts: List[dict] = []
    blocked: set = set()
    tried = 0
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
                                   instance=offer.instance.name, price=offer.total_price, offer=offer.to_json()):
                raise StopRequested
            say(f"Provisioning {label}{f' in {zone}' if zone else ''} at ${offer.total_price:.4f}/hour")
            store.add_event(run_name, "offer", f"trying {label}{f' in {zone}' if zone else ''} "
                                               f"at ${offer.total_price:.4f}/hour")
            try:
                access = session.backend(offer.backend).provision(run_name, offer, configuration,
                                                                  session.reporter.step)[0]
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
            store.add_event(run_name, "provisioned", access.description)
            return offer, access
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
                         ) -> Tuple[Offer, HostAccess]:
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
    """Tears down what the run created, then records its final state. A failed teardown leaves the run
    `terminating`, so the next `dstack ps` or `dstack stop` tries again."""
    store = session.store
    record = store.get_run(name)
    store.update_run(name, status="terminating", reason=reason, exit_code=exit_code)
    store.add_event(name, "terminating", reason or "")
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
    finished = store.update_run(name, status=status, finished_at=time.time())
    store.add_event(name, status, reason or "")
    return finished


def _exit_status(code: Optional[int]) -> Tuple[str, Optional[str]]:
    if code == 0:
        return "done", None
    if code == TIMED_OUT:
        return "terminated", "max_duration reached"
    if code == UNDERUTILIZED:
        return "terminated", "GPU utilization below utilization_policy"
    return "failed", f"exit code {code}"


def submit(session: RunSession, run_name: str, resolved, offers: Sequence[Offer], source: Optional[Path],
           detach: bool, upload_repo: bool = True) -> RunRecord:
    """Runs a task. Attached: until its job ends, then tears down. Detached: returns once the job is running.
    `source` is the configuration file: its repo (unless not `upload_repo`: `--no-repo`) and `files` are listed and
    size-checked before provisioning."""
    configuration = resolved.configuration
    if configuration.type != "task":
        raise ConfigurationError(f"running a {configuration.type} is not supported yet: `dstack offers -f` and "
                                 "`dstack apply --dry-run` work with it")
    offers = check_fields(configuration, offers, run_name)
    uploads = UploadPlan() if source is None else plan_uploads(configuration, source.parent, str(source),
                                                               include_repos=upload_repo)
    check_size(uploads)
    store = session.store
    max_duration = configuration.max_duration if isinstance(configuration.max_duration, int) else None
    owner_pid, owner_started = current_owner()
    store.create_run(RunRecord(name=run_name, status="submitted", submitted_at=time.time(), owner_pid=owner_pid,
                               owner_started=owner_started, detached=detach, max_duration=max_duration,
                               configuration=configuration_json(resolved)))
    store.add_event(run_name, "submitted", f"{len(offers)} offer{'' if len(offers) == 1 else 's'} to try")
    follower: Optional[LogFollower] = None
    forwarder = None
    try:
        offer, access = provision_with_retry(session, run_name, offers, configuration)
        store.update_run(run_name, host=access.to_json())
        session.reporter.info(f"Connecting to {access.description}")
        transport = access.connect(total_wait=300, log=session.reporter.info, booting=True)
        if not detach:  # ports first: a local port that is taken fails the run before its job starts
            forwarder = forward_ports(session, run_name, access, configuration.ports,
                                      lambda: follower.transport if follower is not None else transport)
        job = dataclasses.replace(job_spec(run_name, configuration, offer, uploads.repo), uploads=uploads)
        start_job(transport, job, session.reporter.upload)  # returns once the job's pid file is written
        if not store.claim_run(run_name, ("provisioning",), "pulling" if configuration.image else "running",
                               started_at=time.time()):
            stop_job(transport, run_name, grace=0)
            raise StopRequested
        store.add_event(run_name, "started", f"job started on {access.description}")
        if configuration.image:
            store.claim_run(run_name, ("pulling",), "running")
        if detach:
            transport.close()
            return store.get_run(run_name)
        follower = LogFollower(access.connect, run_name, log=session.reporter.info, host=access.description)
        follower.transport = transport
        code = stream_logs(session, follower, run_name)
        error_deadline = retry_deadline(configuration, "error", store.get_run(run_name).submitted_at)
        while code not in (0, TIMED_OUT, None) and error_deadline is not None and time.time() < error_deadline:
            session.reporter.info(f"the job failed with exit code {code}; running it again (retry on error)")
            store.add_event(run_name, "retry", f"exit code {code}; running the job again")
            start_job(follower.transport, job, session.reporter.upload)
            follower.offset = 0
            code = stream_logs(session, follower, run_name)
        status, reason = _exit_status(code)
        store.add_event(run_name, "exited", "the job went away" if code is None else f"exit code {code}")
        if store.claim_run(run_name, RUNNING, "terminating"):
            return finish_run(session, run_name, status, reason, code)
        return _wait_final(store, run_name)  # `dstack stop` from elsewhere is finishing it
    except StopRequested:
        return finish_run(session, run_name, "terminated", store.get_run(run_name).reason)
    except KeyboardInterrupt:
        session.reporter.info("Interrupted: stopping the run and removing what it created (Ctrl-C again to leave "
                              f"now; `dstack stop {run_name}` finishes it later)")
        if store.claim_run(run_name, STARTED, "terminating"):
            _stop_job_quietly(session, run_name, follower)
            finish_run(session, run_name, "terminated", "interrupted")
        raise
    except StoreDamaged:
        raise  # nothing can be recorded any more; its message names the job if it is still running
    except HostUnreachable as e:  # its job runs on in its own session if the host is up: keep the run
        raise HostUnreachable(f"{e}\n{kept_run_hint(run_name)}") from None
    except DstackError as e:
        _stop_job_quietly(session, run_name, follower)
        finish_run(session, run_name, "failed", str(e).splitlines()[0])
        raise
    except Exception as e:
        _stop_job_quietly(session, run_name, follower)
        finish_run(session, run_name, "failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        if forwarder is not None:
            forwarder.close()


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


def stream_logs(session: RunSession, follower: LogFollower, run_name: str) -> Optional[int]:
    """Writes the job's output as it comes (and keeps a copy under $DSTACK_HOME); stops the job at max_duration."""
    record = session.store.get_run(run_name)
    with append_private(local_log_path(run_name)) as copy:
        def write(data: bytes) -> None:
            mark_output(run_name, copy.tell())  # for `dstack logs --since`
            copy.write(data)
            copy.flush()
            session.reporter.output(data)

        deadline = (record.started_at or time.time()) + record.max_duration if record.max_duration else None
        code = follower.follow(write, should_stop=lambda: deadline is not None and time.time() > deadline + 15)
    return code


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


def _stop_job_quietly(session: RunSession, run_name: str, follower: Optional[LogFollower]) -> None:
    record = session.store.get_run(run_name)
    if not record.host:
        return
    try:
        transport = follower.transport if follower and follower.transport else \
            HostAccess.from_json(record.host).connect(total_wait=30)
        stop_job(transport, run_name, grace=recorded_stop_grace(record))
    except Exception as e:  # the host may be gone already; teardown removes it either way
        session.reporter.info(f"could not stop the job cleanly: {e}")


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
    if record.host:
        try:
            transport = HostAccess.from_json(record.host).connect(total_wait=30)
            code = stop_job(transport, name, grace=0 if abort else recorded_stop_grace(record))
            transport.close()
        except Exception as e:  # unreachable host: still tear down what the run created
            session.reporter.info(f"could not reach the host to stop the job: {e}")
            code = None
    else:
        code = None
    return finish_run(session, name, "terminated", reason, code)


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
    if record.status in STARTING or not record.host:
        if session.store.claim_run(record.name, STARTING, "terminating"):
            if record.host:  # its owner died after choosing the host: the job may have started
                _stop_job_quietly(session, record.name, None)
            finish_run(session, record.name, "failed",
                       "interrupted while starting" if record.host else "interrupted while provisioning")
        return
    if record.status == "terminating":
        finish_run(session, record.name, "terminated", record.reason or "interrupted while terminating",
                   record.exit_code)
        return
    transport = HostAccess.from_json(record.host).connect(total_wait=20)
    try:
        state, code = _settled_job_state(transport, record.name)
        if state == "running" and record.max_duration and record.started_at and \
                time.time() > record.started_at + record.max_duration + 15:
            code = stop_job(transport, record.name, grace=recorded_stop_grace(record))
            state, code = "exited", TIMED_OUT if code is None else code
        if state == "exited":
            _copy_log(transport, record.name)
    finally:
        transport.close()
    if state == "exited":
        status, reason = _exit_status(code)
        session.store.add_event(record.name, "exited", "exit code " + str(code))
        if session.store.claim_run(record.name, RUNNING, "terminating"):
            finish_run(session, record.name, status, reason, code)
    elif state == "missing":
        if session.store.claim_run(record.name, RUNNING, "terminating"):
            finish_run(session, record.name, "failed", "the job is gone from its host")


def _settled_job_state(transport, run_name: str) -> Tuple[str, Optional[int]]:
    """job_state, asked once more after a moment when the job looks gone: a job that has just ended has no exit
    code yet for that moment."""
    state, code = job_state(transport, run_name)
    if state == "missing":
        time.sleep(JOB_SETTLE_S)
        state, code = job_state(transport, run_name)
    return state, code


def _copy_log(transport, run_name: str) -> None:
    from provisioner.job import read_log

    path = local_log_path(run_name)
    have = path.stat().st_size if path.exists() else 0
    chunk = read_log(transport, run_name, have)
    with append_private(path) as f:
        f.write(chunk.data)


def write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
