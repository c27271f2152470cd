"""What an interruption leaves for the run's next attempt: the zone that took the VM back skipped for a while (never
down to no offer at all), and the attempts `dstack ps` shows, read back from the run's events."""

import time

from offers.catalog import InstanceType
from offers.offer import Offer
from provisioner.runs import interruptions
from provisioner.runs.interruptions import ZoneBlocks
from provisioner.runs.listing import submissions
from provisioner.store.records import RunRecord
from provisioner.store.statuses import RunStatus
from provisioner.store.store import StateStore

GPU = InstanceType("g4dn.xlarge", 4, 16.0, "nvidia", "T4", 1, 16.0, "x86", True)


def offer(region, zones, price=0.3):
    return Offer("aws", GPU, region, tuple(zones), True, price, 100.0, 0.01)


def test_the_interrupted_zone_is_skipped_until_its_block_ends(monkeypatch):
    blocks = ZoneBlocks()
    offers = [offer("us-east-1", ["us-east-1a", "us-east-1b"]), offer("eu-west-1", ["eu-west-1a"], 0.4)]
    blocks.block("aws", "us-east-1", "us-east-1a")
    assert [o.zones for o in blocks.open_offers(offers)] == [("us-east-1b",), ("eu-west-1a",)]
    blocks.block("aws", "eu-west-1", "eu-west-1a")  # an offer with no open zone is left out
    assert [o.zones for o in blocks.open_offers(offers)] == [("us-east-1b",)]
    later = time.time() + interruptions.INTERRUPTED_ZONE_BLOCK_S + 1
    monkeypatch.setattr(interruptions.time, "time", lambda: later)
    assert blocks.open_offers(offers) == offers


def test_a_blocked_zone_is_tried_anyway_when_it_is_the_only_one_left():
    """A network volume pins a run to its zone: the next attempt tries that zone rather than nothing."""
    blocks = ZoneBlocks()
    pinned = [offer("us-east-1", ["us-east-1a"])]
    blocks.block("aws", "us-east-1", "us-east-1a")
    assert blocks.open_offers(pinned) == pinned


def test_each_attempt_is_read_back_from_the_runs_events(dstack_home):
    store = StateStore()
    store.create_run(RunRecord(name="r", status=RunStatus.SUBMITTED, submitted_at=time.time()))
    store.add_event("r", "started", "job started on ubuntu@192.0.2.1:22")
    store.add_event("r", "interrupted", "attempt 1: instance i-1 taken back by EC2")
    store.add_event("r", "resubmitted", "attempt 2: the offers are tried again")
    store.add_event("r", "started", "job started on ubuntu@192.0.2.2:22 (attempt 2)")
    record = store.update_run("r", status=RunStatus.DONE)
    assert [(s["submission"], s["hosts"], s["status"], s["reason"]) for s in submissions(store, record)] == [
        (1, "ubuntu@192.0.2.1:22", "terminated", "interrupted"), (2, "ubuntu@192.0.2.2:22", "done", None)]


def test_only_a_cloud_spot_vms_job_watches_for_the_interruption_notice():
    """The watcher goes to a job on an AWS or GCP spot VM, named after its cloud; never to an on-demand VM, an SSH
    host or this machine (provisioner.jobs.spot_notice)."""
    import dataclasses

    from configuration.loader import parse_configuration
    from provisioner.jobs.control import job_folder_files
    from provisioner.jobs.launch import start_command
    from provisioner.runs.job_specs import job_spec

    conf = parse_configuration("type: task\ncommands: [sleep 1]\n", "x.dstack.yml")
    for backend, spot, watched in (("aws", True, "aws"), ("gcp", True, "gcp"), ("aws", False, None),
                                   ("ssh", True, None), ("local", True, None)):
        spec = job_spec("r", conf, dataclasses.replace(offer("r", ["z"]), backend=backend, spot=spot))
        assert spec.spot_notice == watched, (backend, spot)
        assert ("notice.sh" in job_folder_files(spec)) == bool(watched)
        assert (f"./notice.sh {watched} $J" in start_command(spec)) == bool(watched)


def test_a_log_read_brings_the_hosts_notice_with_the_exit_code(tmp_path):
    """read_log: the notice the host recorded (spot_notice in the job folder) comes in the same round trip as the
    log and the exit code; without the file there is none, and the exit code reads as before."""
    from provisioner.host.transport import LocalTransport
    from provisioner.jobs.control import read_log
    from provisioner.jobs.layout import EndedByDstack
    from provisioner.jobs.spot_notice import NOTICE_FILE, read_notice

    folder = tmp_path / "jobs" / "r"
    folder.mkdir(parents=True)
    (folder / "output.log").write_text("working\ndstack: spot interruption notice from AWS: terminate at T\n")
    transport = LocalTransport(str(tmp_path / "jobs"))
    chunk = read_log(transport, "r", 0)
    assert (chunk.exit_code, chunk.notice) == (None, None) and read_notice(transport, "r") is None
    (folder / NOTICE_FILE).write_text("spot interruption notice from AWS: terminate at T\n")
    chunk = read_log(transport, "r", 8)
    assert chunk.data.startswith(b"dstack: spot interruption notice") and chunk.exit_code is None
    assert chunk.notice == "spot interruption notice from AWS: terminate at T" == read_notice(transport, "r")
    (folder / "exit_code").write_text("143\n")
    assert (read_log(transport, "r", 0).exit_code, read_log(transport, "r", 0).notice) == (143, chunk.notice)
    (folder / "exit_code").write_text("124 max_duration\n")  # a code dstack gave, told apart with a notice too
    assert isinstance(read_log(transport, "r", 0).exit_code, EndedByDstack)
    assert read_notice(transport, "gone") is None


def test_ps_asks_the_cloud_after_a_short_try_of_a_cloud_runs_hosts(monkeypatch):
    """A cloud run's host that does not answer within FIRST_REACH_S: the cloud is asked, and a VM it says is gone
    ends the attempt then; a VM it says still runs gets the rest of the wait. A run on hosts of its own: one wait."""
    import pytest

    from provisioner.host.transport import TransportError
    from provisioner.runs import reconcile
    from stacks.losses import InstanceLoss

    waits, answers = [], []

    def no_answer(session, record, wait):
        waits.append(wait)
        raise TransportError("no answer")

    monkeypatch.setattr(reconcile, "_ended_jobs", no_answer)
    monkeypatch.setattr(reconcile, "lost_instances", lambda session, name: answers.pop(0))
    gone = InstanceLoss("i-1", True, "taken back by EC2")
    answers[:] = [[gone]]
    assert reconcile._outcome_or_losses(None, RunRecord(name="r", status="running", submitted_at=1.0, backend="aws")) == (None, [gone])
    assert waits == [reconcile.FIRST_REACH_S]
    waits.clear()
    answers[:] = [[], []]  # the cloud says the VM runs: its host gets the rest, then the error stands
    with pytest.raises(TransportError):
        reconcile._outcome_or_losses(None, RunRecord(name="r", status="running", submitted_at=1.0, backend="aws"))
    assert waits == [reconcile.FIRST_REACH_S, reconcile.REACH_S - reconcile.FIRST_REACH_S]
    waits.clear()
    answers[:] = [[]]
    with pytest.raises(TransportError):
        reconcile._outcome_or_losses(None, RunRecord(name="r", status="running", submitted_at=1.0, backend="ssh"))
    assert waits == [reconcile.REACH_S]
