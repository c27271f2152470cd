"""A run's jobs recorded running as they start (provisioner.jobs.run_jobs.RunJobs.start): the jobs of a wave in one
write to the store (one commit, not one per node that every node's first line waited on in turn), and those that
started recorded even where another node of the wave failed."""

import pytest

from provisioner.host.transport import LocalTransport, TransportError
from provisioner.jobs.run_jobs import RunJobs
from provisioner.jobs.script import JobSpec
from provisioner.store import connection
from provisioner.store.records import RunRecord
from provisioner.store.statuses import JobStatus
from provisioner.store.store import StateStore
from tests.helpers import wait_exit


class Unreachable:
    description = "worker@10.251.0.99:22"

    def run(self, command, stdin=None, timeout=None):
        raise TransportError(f"{self.description}: connection reset")


def test_a_waves_started_jobs_are_recorded_in_one_write_and_a_failed_node_leaves_the_others_recorded(
        tmp_path, monkeypatch):
    monkeypatch.setenv("DSTACK_HOME", str(tmp_path / "home"))
    store = StateStore()
    store.create_run(RunRecord(name="c", status="running", submitted_at=1.0))
    store.set_jobs("c", [{"kind": "local"}] * 3)
    writes = []
    connect = connection.StoreFile._connect

    def counted(self, read=False, create=False):
        if not read:
            writes.append(1)
        return connect(self, read=read, create=create)

    monkeypatch.setattr(connection.StoreFile, "_connect", counted)
    jobs = RunJobs(store, "c", [None] * 3)
    jobs.transports = {rank: LocalTransport(str(tmp_path / f"jobs-{rank}")) for rank in (0, 2)}
    jobs.transports[1] = Unreachable()
    with pytest.raises(TransportError, match="connection reset"):
        jobs.start([JobSpec(run_name="c", commands=["true"]) for _ in range(3)], None, lambda done, total: None)
    assert len(writes) == 1
    recorded = {job.rank: job for job in store.list_jobs("c")}
    assert [recorded[rank].status for rank in range(3)] == [JobStatus.RUNNING, JobStatus.PROVISIONING,
                                                            JobStatus.RUNNING]
    assert recorded[0].started_at and recorded[2].started_at and recorded[1].started_at is None
    for rank in (0, 2):
        assert wait_exit(jobs.transports[rank], "c") == (0, "")
