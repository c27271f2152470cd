"""A cloud fleet's stack as a list of numbered instances (provisioner.backends.fleet_stacks): both programs keep the
other instances' resources (names and inputs) when the list changes, so the engine replaces none; the store's lock
on a fleet's stack admits one holder at a time."""

import pytest

from configuration.backends import DstackConfig
from offers.catalog import InstanceType
from offers.offer import Offer
from stacks.spec import cloud_init, generate_host_key

OFFERS = {
    "aws": Offer("aws", InstanceType("c5.large", 2, 4.0, "", "", 0, 0.0, "x86", True), "us-east-1",
                 ("us-east-1a",), False, 0.085, 100.0, 0.011),
    "gcp": Offer("gcp", InstanceType("n2-standard-2", 2, 8.0, "", "", 0, 0.0, "x86", True), "us-central1",
                 ("us-central1-a",), False, 0.0971, 100.0, 0.004),
}
KEYS = {num: generate_host_key() for num in range(5)}  # each instance's own, kept for its life


def fleet_spec(backend: str, nums, placement=None):
    from provisioner.backends.fleet_stacks import numbered_shape
    from provisioner.planning.stack_plan import stack_spec

    shape = numbered_shape({"placement": placement, "tags": {"team": "ml"}}, nums)
    return stack_spec("pool", shape, OFFERS[backend], "ssh-ed25519 AAAA fleet-key", tuple(KEYS[n] for n in nums),
                      DstackConfig())


def by_name(resources):
    return {(r["type"], r["name"]): r["inputs"] for r in resources}


@pytest.mark.parametrize("backend", ["aws", "gcp"])
@pytest.mark.parametrize("placement", [None, "cluster"])
def test_an_instance_list_change_keeps_the_other_instances_resources_as_they_were(backend, placement):
    pytest.importorskip(f"pulumi_{backend}")
    from provisioner.planning.stack_plan import render_plan_resources

    before, after = fleet_spec(backend, (0, 1, 3), placement), fleet_spec(backend, (0, 3, 4), placement)
    old, new = by_name(render_plan_resources(before)), by_name(render_plan_resources(after))
    instance = "aws:ec2/instance:Instance" if backend == "aws" else "gcp:compute/instance:Instance"
    names = lambda resources: sorted(name for typ, name in resources if typ == instance)  # noqa: E731
    owner = before.owner
    assert names(old) == [f"dstack-{owner}-pool-{n}" for n in (0, 1, 3)]
    assert names(new) == [f"dstack-{owner}-pool-{n}" for n in (0, 3, 4)]  # numbered, never renumbered
    kept = {key: inputs for key, inputs in old.items() if key in new}
    gone, added = set(old) - set(new), set(new) - set(old)
    assert kept == {key: new[key] for key in kept}  # the same inputs: no update, no replacement
    assert {name for _, name in gone if not name.endswith(("-self-delete", "-eip"))} == {f"dstack-{owner}-pool-1"}
    assert {name for _, name in added if not name.endswith(("-self-delete", "-eip"))} == {f"dstack-{owner}-pool-4"}
    # the user data (a secret, masked in the rendering) of a kept instance is the same too: its own host key
    assert cloud_init(before, 2) == cloud_init(after, 1) and KEYS[3].public_openssh in cloud_init(after, 1)
    if placement == "cluster":  # the fleet's placement group (or policy) is shared, kept, and named by the fleet
        shared = [key for key in kept if "Placement" in key[0] or "ResourcePolicy" in key[0]]
        assert shared and all(name == f"dstack-{owner}-pool" + ("-pg" if backend == "aws" else "-placement")
                              for _, name in shared)


@pytest.mark.parametrize("backend", ["aws", "gcp"])
def test_a_fleet_stack_of_no_instance_renders_its_shared_resources_alone(backend):
    pytest.importorskip(f"pulumi_{backend}")
    from provisioner.planning.stack_plan import render_plan_resources

    resources = render_plan_resources(fleet_spec(backend, ()))
    assert resources and not any(r["type"].endswith("/instance:Instance") for r in resources)


def test_the_lock_on_a_fleets_stack_has_one_holder_until_released_or_stale(dstack_home):
    from provisioner.store.store import StateStore

    store = StateStore()
    assert store.create_cloud_fleet("pool", "f.yml", "aws", {"nodes": {"min": 0, "max": 3}}, {"backend": "aws"})
    assert store.lock_fleet_stack("pool", "run-a", 100.0, 60) is None
    assert store.lock_fleet_stack("pool", "run-b", 110.0, 60) == "run-a"
    store.set_fleet_stack("pool", {"backend": "aws", "numbered": True})  # a stack recorded under the lock keeps it
    assert store.lock_fleet_stack("pool", "run-b", 120.0, 60) == "run-a"
    assert store.get_cloud_fleet("pool")["stack"]["numbered"]
    store.unlock_fleet_stack("pool", "run-b")  # not its holder: nothing happens
    assert store.lock_fleet_stack("pool", "run-b", 130.0, 60) == "run-a"
    store.unlock_fleet_stack("pool", "run-a")
    assert store.lock_fleet_stack("pool", "run-b", 140.0, 60) is None
    assert store.lock_fleet_stack("pool", "run-c", 201.0, 60) is None  # run-b's is stale (its command died)


def test_the_plan_of_a_run_offers_one_more_instance_of_a_fleet_below_its_maximum(tmp_path, dstack_home):
    import json

    from provisioner.planning.reuse import offer_record
    from provisioner.store.records import InstanceRecord
    from provisioner.store.store import StateStore
    from tests.helpers import run_cli, write

    offer = Offer("aws", InstanceType("t3.large", 2, 8.0, "", "", 0, 0.0, "x86", True), "us-east-1",
                  ("us-east-1a",), False, 0.0832, 100.0, 0.011)
    host = {"kind": "ssh", "hostname": "10.251.250.2"}  # never contacted: a dry run
    store = StateStore()
    store.create_cloud_fleet("pool", "fleet.dstack.yml", "aws", {"nodes": {"min": 0, "max": 2}, "idle_duration": 60},
                             {"backend": "aws", "numbered": True, "offer": offer_record(offer)},
                             [InstanceRecord("pool", 0, "aws", offer_record(offer), host, status="busy", run="r0")])
    conf = write(tmp_path, "t.dstack.yml", "type: task\ncommands: [x]\nfleets: [pool]\n")
    env = {"DSTACK_HOME": str(dstack_home)}
    result = run_cli("apply", "-f", conf, "--dry-run", "--json", env=env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["offer"]["grows"] == {"fleet": "pool", "instance_num": 1, "instances": 1, "zone": "us-east-1a",
                                      "nodes": {"min": 0, "max": 2},
                                      "description": "adds instance 2 of 0..2 to fleet pool"}
    assert plan["resources"] == [] and "reused" not in plan["offer"]
    text = run_cli("apply", "-f", conf, "--dry-run", env=env)
    assert text.returncode == 0 and "aws (adds instance 2 of 0..2 to fleet pool)" in text.stdout, text.stdout
    store.add_instances([InstanceRecord("pool", 1, "aws", offer_record(offer), host, status="busy", run="r1")])
    full = run_cli("apply", "-f", conf, "--dry-run", env=env)  # at its maximum: nothing to offer, and it says so
    assert full.returncode == 1 and "no idle instance of fleet pool fits" in full.stderr, full.stderr
    assert "none can grow for it (at its `nodes` maximum" in full.stderr


@pytest.mark.parametrize("backend", ["aws", "gcp"])
@pytest.mark.parametrize("made", [1, 2])
def test_a_fleet_made_before_numbering_keeps_its_instances_resources_once_numbered(backend, made):
    """A fleet's stack from before numbering (a run's nodes: `pool` alone for one), numbered with `legacy_nodes`
    (provisioner.backends.fleet_upkeep.number_instances) and grown by one: the old instances' resources keep their
    names and inputs (their user data, made with a host key not kept, is ignored by the engine), the new one is
    `-N`."""
    pytest.importorskip(f"pulumi_{backend}")
    from provisioner.backends.fleet_stacks import FleetShape, numbered_shape
    from provisioner.planning.stack_plan import render_plan_resources, stack_spec

    old = stack_spec("pool", FleetShape(nodes=made, placement=None, tags={"team": "ml"}), OFFERS[backend],
                     "ssh-ed25519 AAAA fleet-key", tuple(generate_host_key() for _ in range(made)), DstackConfig())
    nums = tuple(range(made + 1))
    new = stack_spec("pool", numbered_shape({"placement": None, "tags": {"team": "ml"}}, nums, legacy_nodes=made),
                     OFFERS[backend], "ssh-ed25519 AAAA fleet-key", tuple(KEYS[n] for n in nums), DstackConfig())
    before, after = by_name(render_plan_resources(old)), by_name(render_plan_resources(new))
    assert {key: after.get(key) for key in before} == before  # nothing renamed, nothing changed
    added = {name for _, name in set(after) - set(before) if not name.endswith(("-self-delete", "-eip"))}
    assert added == {f"dstack-{new.owner}-pool-{made}"}
    assert [new.made_before_numbering(rank) for rank in new.ranks] == [True] * made + [False]


def test_a_lock_whose_holder_process_is_gone_is_taken_over_at_once_and_a_teammates_only_once_stale(dstack_home):
    import subprocess
    import time

    from configuration.owner import owner_id
    from provisioner.backends.fleet_stacks import fleet_stack_lock
    from provisioner.host.owner import process_start_time
    from provisioner.store.store import StateStore

    store = StateStore()
    assert store.create_cloud_fleet("pool", "f.yml", "aws", {"nodes": {"min": 0, "max": 3}}, {"backend": "aws"})
    process = subprocess.Popen(["sleep", "30"])
    started = process_start_time(process.pid)
    holder = {"pid": process.pid, "started": started, "owner_id": owner_id()}
    assert store.lock_fleet_stack("pool", "grower", time.time(), 1800, holder) is None
    with fleet_stack_lock(store, "pool", "next", wait_s=0) as locked:
        assert not locked  # its holder lives
    process.kill()
    process.wait()
    with fleet_stack_lock(store, "pool", "next", wait_s=0) as locked:
        assert locked  # its holder was SIGKILLed: taken over at once, not after 30 minutes
    teammate = {**holder, "owner_id": "0badc0de"}  # another home's process: its pid means nothing here
    assert store.lock_fleet_stack("pool", "theirs", time.time(), 1800, teammate) is None
    with fleet_stack_lock(store, "pool", "next", wait_s=0) as locked:
        assert not locked
