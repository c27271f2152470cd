"""Finishing what no live dstack process looks after (each `dstack ps` runs it): a job that ended, a run past
max_duration, a provisioning or teardown that a crash cut short, a run whose VM the cloud took back (or is taking
back: the host had the spot interruption notice) or that ended itself (provisioner.runs.interruptions)."""

from __future__ import annotations

import time
from typing import List, Optional, Tuple

from provisioner.host.access import HostAccess
from provisioner.host.transport import TransportError
from provisioner.jobs.layout import TIMED_OUT, EndedByDstack, recorded_exit_code
from provisioner.jobs.run_jobs import RunJobs, copy_log, exit_status, run_jobs, run_outcome, settled_job_state
from provisioner.jobs.spot_notice import read_notice
from provisioner.runs.interruptions import (CLOUD_BACKENDS, Interrupted, end_lost, lost_instances, may_have_notice,
                                            notice_losses, record_loss)
from provisioner.runs.job_specs import recorded_stop_grace
from provisioner.runs.looked_after import looked_after
from provisioner.runs.session import RunSession
from provisioner.runs.teardown import finish_run, stop_jobs
from provisioner.store.records import RunRecord
from provisioner.store.statuses import RUNNING, STARTING, JobStatus, RunStatus
from stacks.losses import InstanceLoss


def reconcile(session: RunSession) -> List[RunRecord]:
    """Finishes what no live dstack process is looking after: a job that ended (record it, tear down), a run past
    max_duration (stop it), a provisioning or teardown cut short by a crash (tear down). Returns the runs that were
    active, as they are now, newest first: runs that had finished before are never read (a store may hold
    thousands)."""
    active = session.store.list_runs(active_only=True)
    for record in active:
        if looked_after(record):
            continue
        try:
            _reconcile_one(session, record)
        except Exception as e:  # one unreachable host must not hide the others; the run stays as it is
            session.reporter.info(f"{record.name}: {e}")
    now = {record.name: record for record in session.store.list_runs(active_only=True)}
    after = [now.get(record.name) or session.store.get_run(record.name) for record in active]
    return [record for record in after if record is not None]


def _reconcile_one(session: RunSession, record: RunRecord) -> None:
    store = session.store
    if record.status in STARTING or not record.host:
        if store.claim_run(record.name, STARTING, RunStatus.TERMINATING):
            if record.host:  # its owner died after choosing the hosts: the jobs may have started
                stop_jobs(session, record.name)
            finish_run(session, record.name, RunStatus.FAILED,
                       "interrupted while starting" if record.host else "interrupted while provisioning")
        return
    if record.status == RunStatus.TERMINATING:
        finish_run(session, record.name, RunStatus.TERMINATED, record.reason or "interrupted while terminating",
                   record.exit_code)
        return
    outcome, losses = _outcome_or_losses(session, record)
    if losses:
        attempt = 1 + sum(e["kind"] == "resubmitted" for e in store.list_events(record.name))
        record_loss(session, record.name, losses, attempt)
        end_lost(session, record.name, losses)
        return
    if outcome is not None:
        status, reason, code = outcome
        store.add_event(record.name, "exited", reason or f"exit code {code}")
        if store.claim_run(record.name, RUNNING, RunStatus.TERMINATING):
            finish_run(session, record.name, status, reason, code)


REACH_S = 20.0  # how long `dstack ps` tries a running job's host
FIRST_REACH_S = 5.0  # a cloud run's hosts first: then the cloud is asked whether the VMs still run


def _outcome_or_losses(session: RunSession, record: RunRecord) -> Tuple[Optional[Tuple], List[InstanceLoss]]:
    """(_ended_jobs' outcome, []), or (None, the instances the run lost): a host's spot interruption notice, or a
    host that does not answer whose VM the cloud says is gone. A cloud run's hosts are tried for FIRST_REACH_S, then
    the cloud is asked, and only hosts whose VMs still run get the rest of REACH_S: a VM taken back costs `ps` a
    few seconds, not the whole wait."""
    waits = [FIRST_REACH_S, REACH_S - FIRST_REACH_S] if record.backend in CLOUD_BACKENDS else [REACH_S]
    while True:
        wait = waits.pop(0)
        try:
            return _ended_jobs(session, record, wait), []
        except Interrupted as noticed:  # a host had its cloud's spot interruption notice: the VM is being taken back
            return None, noticed.losses
        except TransportError:  # a VM the cloud took back, or that ended itself, ends its run here
            losses = lost_instances(session, record.name)
            if losses:
                return None, losses
            if not waits:
                raise


def _ended_jobs(session: RunSession, record: RunRecord, wait: float
                ) -> Optional[Tuple[str, Optional[str], Optional[int]]]:
    """Asks each running job's host how it stands and records those that ended (their logs copied); once the run
    is over by its stop criteria, a failed node or max_duration, stops the others and returns (status, reason,
    exit code); else None. Raises Interrupted where a cloud run's host had the spot interruption notice."""
    recorded = run_jobs(session.store, record)
    jobs = RunJobs(session.store, record.name, [HostAccess.from_json(job.host) for job in recorded])
    codes = {job.rank: recorded_exit_code(job.exit_code, job.status == JobStatus.TERMINATED)
             for job in recorded if job.status.is_finished()}
    stop_criteria = (record.configuration or {}).get("stop_criteria")
    notices = {}
    try:
        for job in recorded:
            if job.status.is_finished():
                continue
            transport = jobs.reach(job.rank, wait, session.reporter.info)
            state, code = settled_job_state(transport, record.name)
            if state in ("exited", "missing"):
                codes[job.rank] = code
                jobs.record_end(job.rank, code)
            if state == "exited":
                copy_log(transport, record.name, job.rank)
            elif state == "running" and may_have_notice(session.store, record):
                notice = read_notice(transport, record.name)
                if notice:  # its log (the notice's line in it) copied while the host is there
                    notices[job.rank] = notice
                    copy_log(transport, record.name, job.rank)
        losses = notice_losses(session, record.name, notices) if notices else []
        if losses:
            raise Interrupted(losses)
        outcome = run_outcome(codes, jobs.size, stop_criteria)
        if outcome is None and record.max_duration and record.started_at and \
                time.time() > record.started_at + record.max_duration + 15:
            outcome = (*exit_status(EndedByDstack(TIMED_OUT)), TIMED_OUT)
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
