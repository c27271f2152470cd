"""What happens between `up` and a usable host, and how cloud fleets fail over: a new VM must answer SSH within a
boot budget counted from its launch and scaled with its type, else its stack is destroyed and the run moves to its
next offer; a cloud fleet fails over zone by zone and skips what a failure rules out, as a run does.

The engine is stood in for (the program runs under Pulumi's mocks); the first SSH answer is real: a namespace host
answers, an address of the test range that nothing holds never does (its packets meet the range's unreachable
route)."""

import time
from types import SimpleNamespace

import pytest

from configuration.loader import parse_configuration
from offers.catalog import InstanceType
from offers.offer import Offer
from stacks.errors import classify

T3 = InstanceType("t3.large", 2, 8.0, "", "", 0, 0.0, "x86", True)
SILENT = "10.251.7.2"  # in the test range, held by no namespace host: nothing ever answers there


def offer(region, zones, instance=T3, price=0.1):
    return Offer("aws", instance, region, tuple(zones), False, price, 100.0, 0.01)


def test_the_boot_budget_scales_with_the_type():
    from provisioner.backends.cloud import boot_budget_s

    p5 = InstanceType("p5.48xlarge", 192, 2048.0, "nvidia", "H100", 8, 80.0, "x86", True)
    g5 = InstanceType("g5.xlarge", 4, 16.0, "nvidia", "A10G", 1, 24.0, "x86", True)
    metal = InstanceType("c5.metal", 96, 192.0, "", "", 0, 0.0, "x86", True)
    assert [boot_budget_s(t) for t in (T3, g5, p5, metal)] == [300, 600, 960, 960]


def test_the_boot_budget_counts_from_the_instances_launch_not_from_the_end_of_up(monkeypatch, dstack_home,
                                                                                 tmp_path):
    import stacks.automation
    from configuration.backends import DstackConfig
    from provisioner.backends.cloud import CloudBackend
    from provisioner.store.store import StateStore
    from tests.test_cloud_cluster import ClusterRecorder

    seen = {}

    class Stack:
        name = "slow-stack"

        def __init__(self, program):
            self.program = program

        def up(self, on_event=None, **_):
            metadata = SimpleNamespace(op="create", type="aws:ec2/instance:Instance", urn="urn:pulumi:x::dstack-x")
            on_event(SimpleNamespace(resource_pre_event=SimpleNamespace(metadata=metadata)))
            seen["launched"] = time.monotonic()
            time.sleep(0.5)  # the rest of `up`: the VM boots meanwhile
            seen["up_done"] = time.monotonic()
            exports = ClusterRecorder().run(self.program).exports
            return SimpleNamespace(outputs={k: SimpleNamespace(value=v) for k, v in exports.items()})

    monkeypatch.setattr(stacks.automation, "require_pulumi", lambda: None)
    monkeypatch.setattr(stacks.automation, "open_stack", lambda name, program, settings: Stack(program))
    monkeypatch.setattr("stacks.clouds.check_credentials", lambda backend, region: None)
    monkeypatch.setattr("provisioner.backends.cloud.await_boot",
                        lambda hosts, deadline: seen.setdefault("deadline", deadline))
    task = parse_configuration("type: task\ncommands: [x]\n", "t.dstack.yml")
    CloudBackend("aws", DstackConfig(), StateStore()).create_stack("slow", offer("us-east-1", ["us-east-1a"]), task,
                                                                   lambda step: None, tmp_path / "key",
                                                                   lambda stack: None)
    launched_at = seen["deadline"] - 300
    assert launched_at <= seen["launched"] and launched_at < seen["up_done"] - 0.4


@pytest.fixture
def cloud(monkeypatch, make_host, client_key):
    """CloudBackend with the engine replaced: `up` runs the program under the mocks; a node in a zone of `silent`
    gets an address nothing answers, any other the namespace host's. Records each stack brought up and destroyed."""
    import stacks.automation
    from provisioner.host.access import HostAccess
    from tests.test_cloud_cluster import ClusterRecorder

    host = make_host()
    answering = HostAccess(kind="ssh", hostname=host.address, port=22, user="root", identity_file=client_key[0],
                           host_key=host.host_public_key)
    silent = HostAccess(kind="ssh", hostname=SILENT, port=22, user="root", identity_file=client_key[0],
                        host_key=host.host_public_key)
    calls = {"up": [], "destroyed": 0, "silent": set(), "answering": answering}

    class Stack:
        name = "stack"

        def __init__(self, program):
            self.program = program

        def up(self, **_):
            exports = ClusterRecorder().run(self.program).exports
            calls["up"].append(exports["zone"])
            return SimpleNamespace(outputs={k: SimpleNamespace(value=v) for k, v in exports.items()})

        def refresh(self, **_):
            pass

        def destroy(self, **_):
            calls["destroyed"] += 1

        @property
        def workspace(self):
            return SimpleNamespace(remove_stack=lambda name: None)

    monkeypatch.setattr(stacks.automation, "require_pulumi", lambda: None)
    monkeypatch.setattr(stacks.automation, "open_stack", lambda name, program, settings: Stack(program))
    monkeypatch.setattr("stacks.clouds.check_credentials", lambda backend, region: None)
    monkeypatch.setattr("provisioner.backends.cloud.stack_hosts", lambda outputs, keys, key_path: [
        silent if outputs["zone"] in calls["silent"] else answering])
    monkeypatch.setattr("provisioner.backends.cloud.BOOT_BUDGET_CPU_S", 1)
    monkeypatch.setattr("provisioner.backends.cloud.MIN_BOOT_WAIT_S", 2)
    return calls


def test_a_vm_that_never_answers_is_destroyed_and_the_run_moves_to_its_next_offer(cloud, dstack_home):
    from configuration.backends import DstackConfig
    from provisioner.runs.failover import provision_with_failover
    from provisioner.runs.session import RunSession
    from provisioner.store.records import RunRecord
    from provisioner.store.store import StateStore

    cloud["silent"] = {"us-east-1a"}
    store = StateStore()
    store.create_run(RunRecord(name="boot", status="submitted", submitted_at=time.time()))
    session = RunSession(store=store, config=DstackConfig())
    task = parse_configuration("type: task\ncommands: [x]\n", "t.dstack.yml")
    offers = [offer("us-east-1", ["us-east-1a", "us-east-1b"]), offer("us-east-2", ["us-east-2a"], price=0.2)]
    started = time.monotonic()
    chosen, hosts = provision_with_failover(session, "boot", offers, task)
    assert (chosen.region, chosen.zones, hosts) == ("us-east-2", ("us-east-2a",), [cloud["answering"]])
    assert cloud["up"] == ["us-east-1a", "us-east-2a"]  # the silent offer's other zone is not tried
    assert cloud["destroyed"] == 1  # the silent VM's stack
    [attempt] = store.get_run("boot").attempts
    assert attempt["kind"] == "unreachable" and attempt["zone"] == "us-east-1a"
    assert f"root@{SILENT}:22 did not answer SSH within" in attempt["error"]
    assert "a t3.large VM gets 1s from its launch (its boot budget)" in attempt["error"]
    assert time.monotonic() - started < 30


def test_a_cloud_fleet_fails_over_zone_by_zone_as_a_run_does(monkeypatch, dstack_home):
    """A capacity miss in one zone moves to the offer's next zone (not to the next offer); a quota error rules out
    its region for the offers after it."""
    from configuration.backends import load_config
    from configuration.fleets import FleetConfiguration
    from provisioner.backends.cloud import CloudBackend
    from provisioner.backends.cloud_fleets import create_cloud_fleet
    from provisioner.host.access import HostAccess
    from provisioner.store.store import StateStore

    capacity = "api error InsufficientInstanceCapacity: We currently do not have sufficient t3.large capacity"
    quota = "api error VcpuLimitExceeded: You have requested more vCPU capacity than your current vCPU limit"
    failures = {("us-east-1", "us-east-1a"): capacity, ("eu-west-1", "eu-west-1a"): quota}
    tried = []

    def create_stack(self, name, offer, configuration, report, key_path, record_stack, note=None, **_):
        tried.append((offer.instance.name, offer.zones[0]))
        record_stack({"backend": "aws", "name": f"{name}-stack", "owner": "test", "region": offer.region})
        if (offer.region, offer.zones[0]) in failures:
            raise classify(failures[(offer.region, offer.zones[0])])
        return [HostAccess(kind="ssh", hostname="10.251.7.2", user="root")] * configuration.nodes

    monkeypatch.setattr(CloudBackend, "create_stack", create_stack)
    monkeypatch.setattr(CloudBackend, "destroy_stack", lambda self, name, stack, report: None)
    monkeypatch.setattr("provisioner.backends.cloud_fleets.prepare_instance", lambda host, idle: None)
    m5 = InstanceType("m5.large", 2, 8.0, "", "", 0, 0.0, "x86", True)
    conf = FleetConfiguration.model_validate({"type": "fleet", "name": "gpus", "nodes": 1})
    store = StateStore()

    def fleet(offers):
        name = f"fleet-{len(store.list_cloud_fleets())}"
        return create_cloud_fleet(conf.model_copy(update={"name": name}), "f.yml", offers, load_config(), store,
                                  lambda p: None, lambda m: None)

    [instance] = fleet([offer("us-east-1", ["us-east-1a", "us-east-1b"]), offer("us-west-2", ["us-west-2a"], m5)])
    assert tried == [("t3.large", "us-east-1a"), ("t3.large", "us-east-1b")]
    assert instance.offer["zones"] == ["us-east-1b"]  # where the stack put it
    tried.clear()
    fleet([offer("eu-west-1", ["eu-west-1a"]), offer("eu-west-1", ["eu-west-1b"], m5),
           offer("us-west-2", ["us-west-2a"])])
    assert tried == [("t3.large", "eu-west-1a"), ("t3.large", "us-west-2a")]  # the region's other offer: skipped


def test_a_cloud_fleet_tries_as_many_offers_as_a_run_and_lists_each_failure(monkeypatch, dstack_home):
    from configuration.backends import load_config
    from configuration.errors import DstackError
    from configuration.fleets import FleetConfiguration
    from provisioner.backends.cloud import CloudBackend
    from provisioner.backends.cloud_fleets import create_cloud_fleet
    from provisioner.backends.offer_failover import MAX_OFFERS_TRIED
    from provisioner.store.store import StateStore

    tried = []

    def create_stack(self, name, offer, configuration, report, key_path, record_stack, note=None, **_):
        tried.append(offer.region)
        raise classify("api error InsufficientInstanceCapacity: We currently do not have sufficient capacity")

    monkeypatch.setattr(CloudBackend, "create_stack", create_stack)
    regions = [f"r{i}" for i in range(MAX_OFFERS_TRIED + 2)]
    conf = FleetConfiguration.model_validate({"type": "fleet", "name": "gpus", "nodes": 2})
    with pytest.raises(DstackError) as e:
        create_cloud_fleet(conf, "f.yml", [offer(r, [f"{r}a"]) for r in regions], load_config(), StateStore(),
                           lambda p: None, lambda m: None)
    assert tried == regions[:MAX_OFFERS_TRIED]
    assert str(e.value).startswith(f"fleet gpus: no offer could be provisioned; tried {MAX_OFFERS_TRIED}:")
    assert "aws r0 t3.large in r0a: capacity: api error InsufficientInstanceCapacity" in str(e.value)
