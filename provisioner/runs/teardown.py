"""Ending a run: its jobs stopped, what it created removed, its final state recorded; `dstack stop` of a run that its
owner may still be starting."""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional

from configuration.errors import ConfigurationError
from configuration.owner import another_homes
from provisioner.backends.base import LeftoversRemain
from provisioner.host.access import HostAccess
from provisioner.jobs.cluster_ssh import revoke_everywhere
from provisioner.jobs.run_jobs import RunJobs, run_jobs
from provisioner.runs import dev_environments
from provisioner.runs.job_specs import recorded_stop_grace
from provisioner.runs.listing import is_dev_environment
from provisioner.runs.looked_after import run_owner_alive
from provisioner.runs.session import RunSession
from provisioner.runs.ssh_entries import remove_entry
from provisioner.store.records import RunRecord
from provisioner.store.statuses import RUNNING, STARTING, JobStatus, RunStatus
from provisioner.store.store import StateStore


def finish_run(session: RunSession, name: str, status: RunStatus, reason: Optional[str] = None,
               exit_code: Optional[int] = None) -> RunRecord:
    """Tears down what the run created, then records its final state (and its jobs' that had not ended). A failed
    teardown leaves the run `terminating`, so the next `dstack ps` or `dstack stop` tries again; one that removed
    the stack but not what its sweep looked for ends the run with a warning (LeftoversRemain)."""
    store = session.store
    record = store.get_run(name)
    store.update_run(name, status=RunStatus.TERMINATING, reason=reason, exit_code=exit_code)
    store.add_event(name, RunStatus.TERMINATING, reason or "")
    jobs = store.list_jobs(name)
    # the user's hosts, and VMs a fleet keeps after the run, keep nothing of it (a VM destroyed goes whole)
    outlive = record.backend == "ssh" or any(i.run == name for i in store.list_instances())
    if len(jobs) > 1 and outlive:
        revoke_everywhere(store, name, [HostAccess.from_json(job.host) for job in jobs], session.reporter.info)
    if is_dev_environment(record.configuration or {}):
        dev_environments.close(name, [HostAccess.from_json(job.host) for job in jobs if job.host] if outlive else [],
                               session.reporter.info)
    else:
        remove_entry(name)  # a task's, which `dstack attach` writes
    if record.backend:
        try:
            session.backend(record.backend).teardown(record, teardown_progress(session, name))
        except LeftoversRemain as e:  # the stack is gone: the run ends, with the warning in its events
            store.add_event(name, "teardown-warning", str(e))
            session.reporter.info(f"warning: {e}")
        except Exception as e:  # any other failure keeps the run visible as terminating, to be finished later
            store.update_run(name, reason=f"teardown failed, retry with `dstack stop {name}`: {e}")
            store.add_event(name, "teardown-failed", str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise
    for job in jobs:
        if not job.status.is_finished():
            store.update_job(name, job.rank, status=JobStatus(str(status)), finished_at=time.time())
    finished = store.update_run(name, status=status, finished_at=time.time())
    store.add_event(name, status, reason or "")
    return finished


def teardown_progress(session: RunSession, name: str) -> Callable:
    """What a run's teardown reports each step to: the terminal, and the run's events once a step is done."""
    def step(progress) -> None:
        session.reporter.step(progress)
        if progress.state != "started":
            session.store.add_event(name, "teardown", f"{progress.op} {progress.type.split(':')[-1]} "
                                                      f"{progress.name}: {progress.state}")

    return step


def one_line(message: str) -> str:
    """A message of several lines as a run's reason, whole, on one line: a line ending in `:` runs on into what it
    introduces (`tried 2: aws ...; gcp ...`), the others are parted by `; `."""
    reason = ""
    for line in (line.strip() for line in message.splitlines()):
        if line:
            reason += line if not reason else (" " if reason.endswith(":") else "; ") + line
    return reason


def wait_final(store: StateStore, name: str, timeout: float = 600, while_owner: Optional[RunRecord] = None
                ) -> RunRecord:
    """The run once it has ended, or after `timeout`; with `while_owner`, only while that record's owner lives."""
    deadline = time.time() + timeout
    record = store.get_run(name)
    while record.active and time.time() < deadline and (while_owner is None or run_owner_alive(while_owner)):
        time.sleep(0.2)
        record = store.get_run(name)
    return record


def stop_jobs(session: RunSession, run_name: str, jobs: Optional[RunJobs] = None,
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
    live = [job.rank for job in recorded if not job.status.is_finished()]
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
    if record.active and another_homes(record.owner_id) and (record.backend == "local" or
                                                             (record.host or {}).get("kind") == "local"):
        raise ConfigurationError(f"run {name} is {record.user_name or 'a teammate'}'s and runs on their machine "
                                 "(backend local): only they can stop it")
    if record.active:
        store.add_event(name, "stop", reason)
    if store.claim_run(name, STARTING, RunStatus.TERMINATING, reason=reason):
        if run_owner_alive(record):  # its owner stops the job it is starting, and tears down (see submit)
            session.reporter.info(f"{name} is starting: waiting for the dstack process that starts it "
                                  f"(pid {record.owner_pid}) to stop it")
            record = wait_final(store, name, while_owner=record)
            if not record.active or run_owner_alive(record):
                return record
        # its owner is gone: the job may have started before it died
        record = store.get_run(name)
    elif not store.claim_run(name, RUNNING, RunStatus.TERMINATING):
        record = store.get_run(name)
        if record.status != RunStatus.TERMINATING or run_owner_alive(record):
            return wait_final(store, name) if record.active else record
        # a teardown that a dead process began: finish it
    codes = stop_jobs(session, name, grace=0 if abort else -1)
    return finish_run(session, name, RunStatus.TERMINATED, reason, codes.get(0))
