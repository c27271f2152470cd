"""What an interruption leaves for the run's next attempt: the zone that took the VM back skipped for a while (never
down to no offer at all), and the attempts `dstack ps` shows, read back from the run's events."""

import time

from offers.catalog import InstanceType
from offers.offer import Offer
from provisioner.runs import interruptions
from provisioner.runs.interruptions import ZoneBlocks, submissions
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
