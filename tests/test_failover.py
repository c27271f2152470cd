"""Failover across offers, with a test double at the stack boundary: the double fails chosen offers the way clouds
do, and the orchestration must skip what each failure rules out, stop on configuration errors, list every offer
tried when none works, and tear down after each failure."""

import time

import pytest

from configuration.backends import DstackConfig
from configuration.loader import parse_configuration
from offers.catalog import InstanceType
from offers.offer import Offer
from provisioner.host.access import HostAccess
from provisioner.runs.failover import MAX_OFFERS_TRIED, RunFailed, provision_with_failover
from provisioner.runs.session import RunSession
from provisioner.store.records import RunRecord
from provisioner.store.store import StateStore
from stacks.errors import classify

GPU = InstanceType("g5.xlarge", 4, 16.0, "nvidia", "A10G", 1, 24.0, "x86", True)


def offer(backend, region, zone, price):
    return Offer(backend, GPU, region, (zone,), False, price, 100.0, 0.01)


class FakeCloud:
    """Fails the offers whose (region, zone) maps to an error text; records every provision and teardown."""

    def __init__(self, name, failures):
        self.name, self.failures, self.provisioned, self.torn_down = name, failures, [], []

    def provision(self, run_name, offer, configuration, report):
        self.provisioned.append((offer.region, offer.zones[0]))
        text = self.failures.get((offer.region, offer.zones[0])) or self.failures.get(offer.region)
        if text:
            raise classify(text)
        return [HostAccess(kind="ssh", hostname="203.0.113.7", user="ubuntu")]

    def teardown(self, record, report):
        self.torn_down.append(record.name)


CAPACITY = "api error InsufficientInstanceCapacity: We currently do not have sufficient g5.xlarge capacity"
VCPU = "api error VcpuLimitExceeded: You have requested more vCPU capacity than your current vCPU limit of 0"
GPUS_GLOBAL = "googleapi: Error 403: Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally., quotaExceeded"
AMI = "api error InvalidAMIID.NotFound: The image id '[ami-0abc]' does not exist"


@pytest.fixture
def session(monkeypatch):
    store = StateStore()
    clouds = {}
    monkeypatch.setattr(RunSession, "backend", lambda self, name: clouds[name])
    session = RunSession(store=store, config=DstackConfig())
    store.create_run(RunRecord(name="fo", status="submitted", submitted_at=time.time()))
    return session, clouds


def _forget_the_fixtures_run(session) -> None:
    """submit() records its run itself: the fixture's (submitted, for the failover tests) goes, as a finished run."""
    session.store.update_run("fo", status="failed")
    assert session.store.delete_run("fo")


CONF = parse_configuration("type: task\ncommands: [nvidia-smi]\nresources: {gpu: A10G}\n", "x.dstack.yml")


def test_capacity_rules_out_the_zone_quota_the_region(session):
    session, clouds = session
    clouds["aws"] = FakeCloud("aws", {("us-east-1", "us-east-1a"): CAPACITY, "us-west-2": VCPU})
    offers = [offer("aws", "us-east-1", "us-east-1a", 1.0), offer("aws", "us-west-2", "us-west-2a", 1.01),
              offer("aws", "us-west-2", "us-west-2b", 1.02), offer("aws", "us-east-1", "us-east-1a", 1.03),
              offer("aws", "us-east-1", "us-east-1b", 1.04)]
    chosen, access = provision_with_failover(session, "fo", offers, CONF)
    assert (chosen.region, chosen.zones) == ("us-east-1", ("us-east-1b",))
    assert clouds["aws"].provisioned == [("us-east-1", "us-east-1a"), ("us-west-2", "us-west-2a"),
                                         ("us-east-1", "us-east-1b")]
    attempts = session.store.get_run("fo").attempts
    assert [(a["kind"], a["offer"]) for a in attempts] == [("capacity", "aws us-east-1 g5.xlarge"),
                                                         ("quota", "aws us-west-2 g5.xlarge")]
    record = session.store.get_run("fo")
    assert (record.status, record.region, record.instance) == ("provisioning", "us-east-1", "g5.xlarge")


def test_every_zone_of_a_region_is_tried_before_the_next_offer(session):
    session, clouds = session
    clouds["aws"] = FakeCloud("aws", {("us-east-1", "us-east-1a"): CAPACITY, ("us-east-1", "us-east-1b"): CAPACITY})
    three_zones = Offer("aws", GPU, "us-east-1", ("us-east-1a", "us-east-1b", "us-east-1c"), False, 1.0, 100.0, 0.01)
    chosen, _ = provision_with_failover(session, "fo", [three_zones, offer("aws", "us-east-2", "us-east-2a", 1.1)],
                                        CONF)
    assert chosen.zones == ("us-east-1c",)
    assert clouds["aws"].provisioned == [("us-east-1", "us-east-1a"), ("us-east-1", "us-east-1b"),
                                         ("us-east-1", "us-east-1c")]
    assert [a["zone"] for a in session.store.get_run("fo").attempts] == ["us-east-1a", "us-east-1b"]


def test_the_zones_of_one_offer_count_as_one_try(session):
    session, clouds = session
    regions = [f"r{i}" for i in range(MAX_OFFERS_TRIED + 2)]
    clouds["aws"] = FakeCloud("aws", {r: CAPACITY for r in regions})
    offers = [Offer("aws", GPU, r, (f"{r}a", f"{r}b"), False, 1.0 + i / 100, 100.0, 0.01)
              for i, r in enumerate(regions)]
    with pytest.raises(RunFailed, match=f"tried {MAX_OFFERS_TRIED}:"):
        provision_with_failover(session, "fo", offers, CONF)
    assert len(clouds["aws"].provisioned) == 2 * MAX_OFFERS_TRIED


def test_a_disk_type_the_machine_series_refuses_rules_out_that_type_only(session):
    session, clouds = session
    text = ("googleapi: Error 400: [pd-balanced] disk type cannot be used by [a3-ultragpu-8g] machine type., "
            "badRequest")
    failure = classify(text)
    assert (failure.kind, failure.scope, failure.retryable) == ("unavailable", "type", True)
    ultra = InstanceType("a3-ultragpu-8g", 224, 2952.0, "nvidia", "H200", 8, 141.0, "x86", True)
    mega = InstanceType("a3-megagpu-8g", 208, 1872.0, "nvidia", "H100", 8, 80.0, "x86", True)

    class RefusesUltra(FakeCloud):
        def provision(self, run_name, offer, configuration, report):
            self.provisioned.append((offer.instance.name, offer.zones[0]))
            if offer.instance.name == "a3-ultragpu-8g":
                raise classify(text)
            return [HostAccess(kind="ssh", hostname="203.0.113.7", user="ubuntu")]

    clouds["gcp"] = RefusesUltra("gcp", {})
    offers = [Offer("gcp", ultra, "us-central1", ("us-central1-a", "us-central1-b"), False, 80.0, 100.0, 0.01),
              Offer("gcp", ultra, "europe-west4", ("europe-west4-a",), False, 81.0, 100.0, 0.01),
              Offer("gcp", mega, "us-central1", ("us-central1-a",), False, 90.0, 100.0, 0.01)]
    chosen, _ = provision_with_failover(session, "fo", offers, CONF)
    assert chosen.instance.name == "a3-megagpu-8g"
    assert clouds["gcp"].provisioned == [("a3-ultragpu-8g", "us-central1-a"), ("a3-megagpu-8g", "us-central1-a")]


def test_a_global_gpu_quota_rules_out_the_whole_cloud(session):
    session, clouds = session
    clouds["gcp"] = FakeCloud("gcp", {"us-central1": GPUS_GLOBAL})
    clouds["aws"] = FakeCloud("aws", {})
    offers = [offer("gcp", "us-central1", "us-central1-a", 0.9), offer("gcp", "europe-west4", "europe-west4-a", 0.95),
              offer("aws", "us-east-1", "us-east-1a", 1.0)]
    chosen, _ = provision_with_failover(session, "fo", offers, CONF)
    assert chosen.backend == "aws" and clouds["gcp"].provisioned == [("us-central1", "us-central1-a")]


def test_a_configuration_error_stops_at_once(session):
    session, clouds = session
    clouds["aws"] = FakeCloud("aws", {"us-east-1": AMI})
    with pytest.raises(RunFailed, match="configuration error, not retrying: api error InvalidAMIID.NotFound"):
        provision_with_failover(session, "fo", [offer("aws", "us-east-1", "us-east-1a", 1.0),
                                                offer("aws", "us-east-2", "us-east-2a", 1.1)], CONF)
    assert clouds["aws"].provisioned == [("us-east-1", "us-east-1a")]


def test_when_every_offer_fails_each_is_listed_with_its_reason(session):
    session, clouds = session
    regions = [f"r{i}" for i in range(8)]
    clouds["aws"] = FakeCloud("aws", {r: (CAPACITY if i % 2 else VCPU) for i, r in enumerate(regions)})
    offers = [offer("aws", r, f"{r}a", 1.0 + i / 100) for i, r in enumerate(regions)]
    with pytest.raises(RunFailed) as e:
        provision_with_failover(session, "fo", offers, CONF)
    message = str(e.value)
    assert message.startswith(f"no offer could be provisioned; tried {MAX_OFFERS_TRIED}:")
    assert "aws r0 g5.xlarge in r0a: quota: api error VcpuLimitExceeded" in message
    assert "aws r1 g5.xlarge in r1a: capacity: api error InsufficientInstanceCapacity" in message
    assert len(clouds["aws"].provisioned) == MAX_OFFERS_TRIED  # bounded


def test_submit_tears_down_and_records_failure(session, tmp_path):
    from configuration.interpolation import resolve_run
    from provisioner.runs.lifecycle import submit

    session, clouds = session
    _forget_the_fixtures_run(session)
    clouds["aws"] = FakeCloud("aws", {"us-east-1": CAPACITY})
    resolved = resolve_run(CONF, "x.dstack.yml", [], {})
    with pytest.raises(RunFailed):
        submit(session, "fo", resolved, [offer("aws", "us-east-1", "us-east-1a", 1.0)], None, detach=False)
    record = session.store.get_run("fo")
    assert record.status == "failed" and record.reason.startswith("no offer could be provisioned")
    assert clouds["aws"].torn_down == ["fo"]


def test_no_capacity_is_retried_within_the_retry_duration(session, monkeypatch):
    from provisioner.runs import failover

    session, clouds = session
    monkeypatch.setattr(failover, "RETRY_INTERVAL_S", 0.01)
    calls = {"n": 0}

    class Flaky(FakeCloud):
        def provision(self, run_name, offer, configuration, report):
            calls["n"] += 1
            if calls["n"] <= 2:  # the first round: both offers out of capacity
                raise classify(CAPACITY)
            return super().provision(run_name, offer, configuration, report)

    clouds["aws"] = Flaky("aws", {})
    offers = [offer("aws", "us-east-1", "us-east-1a", 1.0), offer("aws", "us-east-2", "us-east-2a", 1.1)]
    retrying = parse_configuration("type: task\ncommands: [x]\nretry: {on_events: [no-capacity], duration: 1m}\n",
                                   "x.dstack.yml")
    chosen, _ = failover.provision_with_retry(session, "fo", offers, retrying)
    assert chosen.region == "us-east-1" and calls["n"] == 3
    calls["n"] = 0
    with pytest.raises(failover.NoCapacity):  # without `retry`, the first round's failure is final
        failover.provision_with_retry(session, "fo", offers, CONF)
    assert calls["n"] == 2


def test_ctrl_c_during_provisioning_tears_the_stack_down(session):
    from configuration.interpolation import resolve_run
    from provisioner.runs.lifecycle import submit

    session, clouds = session
    _forget_the_fixtures_run(session)

    class Interrupted(FakeCloud):
        def provision(self, run_name, offer, configuration, report):
            session.store.update_run(run_name, stack={"backend": "aws", "name": run_name, "region": offer.region,
                                                      "backend_url": "file:///tmp/x"})
            raise KeyboardInterrupt

    clouds["aws"] = Interrupted("aws", {})
    with pytest.raises(KeyboardInterrupt):
        submit(session, "fo", resolve_run(CONF, "x.dstack.yml", [], {}),
               [offer("aws", "us-east-1", "us-east-1a", 1.0)], None, detach=False)
    record = session.store.get_run("fo")
    assert (record.status, record.reason) == ("terminated", "interrupted")
    assert clouds["aws"].torn_down == ["fo"]


def test_a_teardown_cut_short_is_finished_by_reconcile(session):
    from provisioner.runs.reconcile import reconcile

    session, clouds = session
    clouds["aws"] = FakeCloud("aws", {})
    session.store.update_run("fo", status="provisioning", backend="aws", owner_pid=999999999,
                             stack={"backend": "aws", "name": "fo", "region": "us-east-1", "backend_url": "file:///x"})
    reconcile(session)
    record = session.store.get_run("fo")
    assert (record.status, record.reason) == ("failed", "interrupted while provisioning")
    assert clouds["aws"].torn_down == ["fo"]


def test_a_zone_without_a_default_subnet_moves_to_the_next_zone(session):
    """A Local Zone of an older refreshed catalogue, or a VPC with no subnet in the zone: that zone is skipped, the run
    goes on in the offer's next zone."""
    session, clouds = session
    no_subnet = ("api error InvalidInput: No default subnet for availability zone: 'us-west-2-lax-1b'.")
    unsupported = ("api error Unsupported: The requested configuration is currently not supported. Please check the "
                   "documentation for supported configurations.")
    clouds["aws"] = FakeCloud("aws", {("us-west-2", "us-west-2-lax-1b"): no_subnet,
                                      ("us-west-2", "us-west-2a"): unsupported})
    zones = Offer("aws", GPU, "us-west-2", ("us-west-2-lax-1b", "us-west-2a", "us-west-2b"), False, 1.0, 100.0, 0.01)
    chosen, _ = provision_with_failover(session, "fo", [zones], CONF)
    assert chosen.zones == ("us-west-2b",)
    assert [a["zone"] for a in session.store.get_run("fo").attempts] == ["us-west-2-lax-1b", "us-west-2a"]
