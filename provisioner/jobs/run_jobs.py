"""The jobs of one run, one per node (rank 0 the master), as the unit of the run's state machine: each job's host
and status are in the store (StateStore jobs) before it is started, so `reconcile` can finish every node of a run a
killed client left.

Jobs start wave by wave in `startup_order` (a wave once the one before runs its commands), are followed together,
and end together: a node that fails (a non-zero exit code) fails the run and the others are stopped; with
`stop_criteria: master-done` the master's end ends the run; else (`all-done`) the run ends when every node has.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from configuration.home import append_private
from configuration.owner import another_homes
from provisioner.host.access import HostAccess
from provisioner.host.liveness import liveness
from provisioner.host.transport import Transport
from provisioner.jobs.cluster_ssh import authorize_command, revoke_left
from provisioner.jobs.control import (job_begun, job_ended_ago, job_state, log_pieces, read_output_times,
                                      start_job, stop_job)
from provisioner.jobs.layout import INACTIVE, TIMED_OUT, UNDERUTILIZED, EndedByDstack
from provisioner.jobs.nodes import on_every_node, startup_waves
from provisioner.jobs.script import JobSpec
from provisioner.store.records import JobRecord, RunRecord
from provisioner.store.run_files import append_times, local_log_path
from provisioner.store.statuses import JobStatus, RunStatus
from provisioner.store.store import StateStore

JOB_SETTLE_S = 0.5  # between a job's end and its exit code being written
BEGIN_WAIT_S = 600  # how long a wave may take to begin its commands before the next one starts


class NodeFailed(Exception):
    """A node's job ended before its wave began running: the run fails."""


def exit_status(code: Optional[int]) -> Tuple[RunStatus, Optional[str]]:
    """How a run whose job exited with `code` (None: the job is gone) ends, and why."""
    if code == 0:
        return RunStatus.DONE, None
    if isinstance(code, EndedByDstack):
        if code == TIMED_OUT:
            return RunStatus.TERMINATED, "max_duration reached"
        if code == UNDERUTILIZED:
            return RunStatus.TERMINATED, "GPU utilization below utilization_policy"
        if code == INACTIVE:
            return RunStatus.TERMINATED, "no SSH connection for inactivity_duration"
    if code is None:
        return RunStatus.FAILED, "the job is gone from its host"
    return RunStatus.FAILED, f"exit code {code}"


def run_outcome(codes: Dict[int, Optional[int]], size: int, stop_criteria: Optional[str]
                ) -> Optional[Tuple[RunStatus, Optional[str], Optional[int]]]:
    """(status, reason, exit code) once the run is over given the ended nodes' exit codes (None: the job is gone),
    else None: any node that did not succeed ends it; the master's success with `master-done`, or every node's."""
    for rank, code in sorted(codes.items()):
        if code != 0:
            status, reason = exit_status(code)
            return status, reason if size == 1 else f"node {rank}: {reason}", code
    if 0 in codes and (stop_criteria == "master-done" or len(codes) == size):
        return RunStatus.DONE, None, 0
    return None


def job_final_status(code: Optional[int]) -> JobStatus:
    return JobStatus(str(exit_status(code)[0]))


def run_jobs(store: StateStore, record: RunRecord) -> List[JobRecord]:
    """The run's jobs to reach (StateStore.recorded_jobs). In a team database, hosts reached with a key dstack made
    under another laptop's home (a teammate's run, or an instance of a teammate's cloud fleet) get its sealed copy,
    unsealed into this home (provisioner.jobs.team_keys); `dstack ps`, which only lists them, reads
    StateStore.recorded_jobs and needs no team key."""
    jobs = store.recorded_jobs(record)
    if store.team is None:
        return jobs
    return [dataclasses.replace(job, host=reachable(store, record, job.host)) for job in jobs]


def reachable(store: StateStore, record: RunRecord, host: Optional[dict]) -> Optional[dict]:
    """A run's host as this laptop reaches it (provisioner.jobs.team_keys.reachable_key)."""
    if not host or not host.get("identity_file"):
        return host
    from provisioner.jobs.team_keys import reachable_key

    theirs = another_homes(record.owner_id)
    whose = f"run {record.name} is {record.user_name or 'a teammate'}'s" if theirs else \
        f"run {record.name} runs on a teammate's cloud fleet"
    return {**host, "identity_file": reachable_key(store, host["identity_file"], whose, theirs)}


class RunJobs:
    """The jobs of a run on their hosts, with a connection to each."""

    def __init__(self, store: StateStore, run_name: str, hosts: Sequence[HostAccess]):
        self.store = store
        self.run_name = run_name
        self.hosts = list(hosts)
        self.transports: Dict[int, Transport] = {}

    @property
    def size(self) -> int:
        return len(self.hosts)

    def connect(self, log: Callable[[str], None], booting: bool = True, cluster_line: Optional[str] = None) -> None:
        """Connects to every node, before the jobs start. With `cluster_line` (the run's cluster key line:
        provisioner.jobs.cluster_ssh), each node's thread adds it to that node's authorized_keys as soon as the node
        is connected to (and cluster keys left there are removed: reach), not waiting for the other nodes; on return
        the line is on every node. A node that could not be connected to fails it before one whose line could not be
        added (the lowest rank first in each). An interrupted connect adds no line after it has returned (a teardown
        that removes the line follows it): no addition is begun from then on, and those under way are waited for
        (each within its command's timeout)."""
        additions = _Additions()
        refused: Dict[int, BaseException] = {}
        keys_left = self.store.keys_left_on([host.to_json() for host in self.hosts])

        def connect_one(rank: int) -> None:
            transport = self.reach(rank, 300, log, booting, starting=True, keys_left=keys_left[rank])
            if cluster_line is None:
                return
            with additions.begun() as begun:
                if begun:
                    try:
                        self._authorize(rank, transport, cluster_line)
                    except Exception as e:  # raised once every node is connected to
                        refused[rank] = e

        try:
            on_every_node(connect_one, list(range(self.size)))
        except BaseException:
            additions.close()
            raise
        if refused:
            raise refused[min(refused)]

    def reach(self, rank: int, total_wait: float, log: Callable[[str], None], booting: bool = False,
              starting: bool = False, keys_left: Optional[list] = None) -> Transport:
        """The connection to node `rank`, made now; cluster keys earlier runs left on that host go with it
        (provisioner.jobs.cluster_ssh.revoke_left; `keys_left`: those the store had for it, read for every node at
        once, else read now)."""
        host = self.hosts[rank]
        transport = self.transports[rank] = host.connect(total_wait=total_wait, log=log, booting=booting)
        revoke_left(self.store, host, transport, log, starting=self.run_name if starting else None, left=keys_left)
        return transport

    def start(self, specs: Sequence[JobSpec], startup_order: Optional[str], progress: Callable,
              record_last_wave: Optional[Callable[[Dict[int, float]], None]] = None) -> None:
        """Starts every node's job, wave by wave in `startup_order`; each wave's jobs are recorded running in one
        write once they have started (a wave where a node failed: those that started). `record_last_wave`, where
        given, records the last wave instead (its caller's own write goes in the same commit)."""
        waves = startup_waves(startup_order, self.size)
        for index, wave in enumerate(waves):
            started: Dict[int, float] = {}

            def start_one(rank: int) -> None:
                start_job(self.transports[rank], specs[rank], progress if rank == 0 else lambda done, total: None)
                started[rank] = time.time()

            try:
                on_every_node(start_one, wave)
            except BaseException:
                if started:
                    self.store.jobs_started(self.run_name, started)
                raise
            if index == len(waves) - 1 and record_last_wave is not None:
                record_last_wave(started)
            else:
                self.store.jobs_started(self.run_name, started)
            if index < len(waves) - 1:
                on_every_node(self._wait_begun, wave)

    def _authorize(self, rank: int, transport: Transport, line: str) -> None:
        """The run's cluster key line added to the node's authorized_keys (provisioner.jobs.cluster_ssh)."""
        result = transport.run(authorize_command(line), timeout=30)
        if result.code != 0:
            raise NodeFailed(f"node {rank} ({self.hosts[rank].description}): cannot add the run's key to "
                             f"authorized_keys: {result.stderr.decode(errors='replace').strip()}")

    def _wait_begun(self, rank: int) -> None:
        deadline = time.time() + BEGIN_WAIT_S
        while time.time() < deadline:
            begun, code = job_begun(self.transports[rank], self.run_name)
            if begun:
                return
            if code is not None:
                raise NodeFailed(f"node {rank} ended with exit code {code} before its commands began")
            time.sleep(0.2)
        raise NodeFailed(f"node {rank} did not begin its commands within {BEGIN_WAIT_S}s")

    def record_end(self, rank: int, code: Optional[int], status: Optional[JobStatus] = None) -> None:
        """A job that ended by itself (no `status` given) ended when its host says (job_ended_ago): the client may
        learn of it long after; a job stopped now ended now."""
        finished_at = time.time()
        transport = self.transports.get(rank)
        if status is None and transport is not None:
            try:
                ago = job_ended_ago(transport, self.run_name)
            except Exception:  # the host went away meanwhile: now is the best left
                ago = None
            finished_at -= ago or 0.0
        self.store.update_job(self.run_name, rank, status=status or job_final_status(code), exit_code=code,
                              finished_at=finished_at)

    def stop(self, ranks: Sequence[int], grace: Optional[int], log: Callable[[str], None]) -> Dict[int, Optional[int]]:
        """Stops the jobs of `ranks` (SIGTERM, SIGKILL after `grace`), each recorded `terminated`."""
        def stop_one(rank: int) -> Optional[int]:
            try:
                transport = self.transports.get(rank) or self.reach(rank, liveness().stop_wait, log)
                code = stop_job(transport, self.run_name, grace=grace)
            except Exception as e:  # the host may be gone already; teardown removes what the run created
                log(f"could not reach the host to stop the job{f' of node {rank}' if self.size > 1 else ''}: {e}")
                code = None
            self.record_end(rank, code, JobStatus.TERMINATED)
            return code

        return dict(zip(ranks, on_every_node(stop_one, list(ranks))))

    def close(self) -> None:
        for transport in self.transports.values():
            try:
                transport.close()
            except Exception:  # a broken connection is gone either way
                pass
        self.transports.clear()


class _Additions:
    """The cluster key lines being added by the nodes' threads, until closed: from then on none is begun, and
    closing waits for those under way."""

    def __init__(self):
        self._changed = threading.Condition()
        self._under_way = 0
        self._closed = False

    @contextlib.contextmanager
    def begun(self) -> Iterator[bool]:
        """Yields whether a line may be added now (not closed), counted as under way until the block ends."""
        with self._changed:
            if self._closed:
                allowed = False
            else:
                allowed = True
                self._under_way += 1
        try:
            yield allowed
        finally:
            if allowed:
                with self._changed:
                    self._under_way -= 1
                    self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.wait_for(lambda: self._under_way == 0)


def settled_job_state(transport: Transport, run_name: str) -> Tuple[str, Optional[int]]:
    """job_state, asked once more after a moment when the job looks gone: a job that has just ended has no exit
    code yet for that moment."""
    state, code = job_state(transport, run_name)
    if state == "missing":
        time.sleep(JOB_SETTLE_S)
        state, code = job_state(transport, run_name)
    return state, code


def copy_log(transport: Transport, run_name: str, rank: int) -> None:
    """What the local copy of node `rank`'s log lacks, fetched from its host."""

    path = local_log_path(run_name, rank)
    have = path.stat().st_size if path.exists() else 0
    with append_private(path) as f:
        for data in log_pieces(transport, run_name, have):
            f.write(data)
    times = read_output_times(transport, run_name)  # for `dstack logs --since` once the host is gone
    if times:
        append_times(run_name, rank, times, start=have)
