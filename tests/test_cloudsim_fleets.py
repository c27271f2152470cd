"""Scenarios of cloud fleets and network volumes against the simulated clouds (tests.cloudsim): the fleet's stack and
its instances that runs reuse, a volume's own stack and its disk that a run attaches and leaves with its data."""

import pytest

from tests.cloudsim.aws import instance_of
from tests.cloudsim.fixtures import instances_of, wait_until
from tests.cloudsim.tasks import AWS_FLEET
from tests.helpers import write

pytestmark = pytest.mark.cloudsim


def test_a_cloud_fleet_is_reused_by_a_run_and_removed_with_its_stack(cloudsim, tmp_path, dstack_home):
    fleet = write(tmp_path, "fleet.dstack.yml", AWS_FLEET + "idle_duration: 1h\n")
    made = cloudsim.dstack("apply", "-f", fleet, "-y", home=dstack_home)
    assert made.returncode == 0, made.stdout + made.stderr + str(cloudsim.world.boot_errors())
    instance = instance_of(cloudsim.world)
    timers = cloudsim.world.timers_of(instance)
    assert "dstack-start-watchdog" not in timers  # a fleet instance waits for runs
    assert 3500 < timers["dstack-idle-power-off"] <= 3600  # its idle_duration, armed on the VM itself
    run = write(tmp_path, "t.dstack.yml", "type: task\nname: on-pool\nfleets: [pool]\ncommands: [hostname]\n")
    result = cloudsim.dstack("apply", "-f", run, "-y", home=dstack_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert instance.vm.name in result.stdout  # the job ran on the fleet's VM
    assert cloudsim.ever("Instance") == [instance] and instance.live  # nothing new was made; the VM is kept
    wait_until(lambda: "dstack-idle-power-off" in cloudsim.world.timers_of(instance))  # idle again, rearmed
    deleted = cloudsim.dstack("fleet", "delete", "pool", "-y", home=dstack_home)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert instance.deleted_by == "engine" and cloudsim.live() == []


VOLUME = """type: volume
name: data
backend: aws
region: us-east-1
availability_zone: us-east-1b
size: 10
"""


def test_a_volume_is_attached_to_a_run_and_kept_with_its_data(cloudsim, tmp_path, dstack_home):
    made = cloudsim.dstack("apply", "-f", write(tmp_path, "data.dstack.yml", VOLUME), "-y", home=dstack_home)
    assert made.returncode == 0, made.stdout + made.stderr
    [volume] = cloudsim.live("Volume")
    assert volume.zone == "us-east-1b" and volume.labels["dstack:volume"] == "data"
    run = write(tmp_path, "t.dstack.yml", "type: task\nname: writer\nvolumes: [data:/data]\n"
                                          "commands: ['echo kept > /data/result', 'ls /data']\n")
    result = cloudsim.dstack("apply", "-f", run, "-b", "aws", "-y", home=dstack_home)
    assert result.returncode == 0, result.stdout + result.stderr
    [instance] = cloudsim.ever("Instance")
    assert instance.zone == "us-east-1b"  # where the volume is
    assert any("mkfs.ext4" in what for _, what in instance.events)  # formatted on first use, then mounted
    [attachment] = cloudsim.ever("VolumeAttachment")
    assert attachment.inputs["deviceName"] == "/dev/sdf" and not attachment.live
    assert [r.kind for r in cloudsim.live()] == ["Volume"]  # the run's stack is gone; the volume stays
    assert (cloudsim.folder / "disks" / volume.id / "result").read_text() == "kept\n"
    deleted = cloudsim.dstack("volume", "delete", "data", "-y", home=dstack_home)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert cloudsim.live() == []


ELASTIC_FLEET = AWS_FLEET.replace("nodes: 1", "nodes: 0..3") + "idle_duration: 30s\n"


def test_a_fleet_of_0_to_3_grows_to_3_under_three_runs_and_shrinks_back_to_0_when_idle(cloudsim, tmp_path,
                                                                                      dstack_home):
    fleet = write(tmp_path, "fleet.dstack.yml", ELASTIC_FLEET)
    plan = cloudsim.dstack("apply", "-f", fleet, "--dry-run", home=dstack_home)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "Fleet pool: 0..3 x aws" in plan.stderr and "apply makes 0; runs add instances up to 3" in plan.stderr
    made = cloudsim.dstack("apply", "-f", fleet, "-y", home=dstack_home)
    assert made.returncode == 0, made.stdout + made.stderr
    assert cloudsim.ever("Instance") == [] and cloudsim.live("SecurityGroup")  # the stack, with no instance yet
    # one `up` of the fleet's stack at a time: each job waits for a gate in its VM, opened once all three are busy
    gate = "i=0; while [ ! -f /tmp/gate ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done"
    task = "type: task\nname: {name}\nfleets: [pool]\ncommands: ['" + gate + "', 'echo on $(hostname)']\n"
    runs = [write(tmp_path, f"w{n}.dstack.yml", task.format(name=f"w{n}")) for n in range(3)]
    planned = cloudsim.dstack("apply", "-f", runs[0], "--dry-run", home=dstack_home)
    assert planned.returncode == 0 and "adds instance 1 of 0..3 to fleet pool" in planned.stdout, planned.stdout
    processes = [cloudsim.start("apply", "-f", run, "-y", home=dstack_home) for run in runs]
    busy = wait_until(lambda: len([i for i in instances_of(cloudsim, dstack_home).values()
                                   if i["status"] == "busy"]) == 3 or None, timeout=120)
    assert busy
    refused = cloudsim.dstack("fleet", "delete", "pool", "-i", "1", "-y", home=dstack_home)
    assert refused.returncode == 1 and "instance 1 of fleet pool is in use by w" in refused.stderr, refused.stderr
    for instance in cloudsim.live("Instance"):
        assert instance.vm.run(["touch", "/tmp/gate"]).returncode == 0
    for process in processes:
        assert process.wait(120) == 0, process.stdout.read()
    names = sorted(r.inputs["tags"]["Name"] for r in cloudsim.ever("Instance"))
    owner = names[0].split("-")[1]
    assert names == [f"dstack-{owner}-pool-{n}" for n in range(3)]  # three made, none replaced
    assert all(r.live for r in cloudsim.ever("Instance"))
    held = instances_of(cloudsim, dstack_home)
    assert sorted(held) == [0, 1, 2] and all(i["status"] == "idle" and i["idle_since"] for i in held.values())
    # each VM counts its own idle time (its watchdog, from the job's end): whole minutes, at least one
    assert all(0 < cloudsim.world.timers_of(r)["dstack-idle-power-off"] <= 60 for r in cloudsim.ever("Instance"))
    shown = cloudsim.dstack("fleet", "get", "pool", home=dstack_home)
    assert "Instances: 3 of 0..3" in shown.stdout and "$0." in shown.stdout, shown.stdout
    wait_until(lambda: cloudsim.dstack("fleet", "get", "pool", home=dstack_home).stdout.count("Instances: 0 of 0..3"),
               timeout=90, interval=2)  # idle past the 30s idle_duration: each ends alone
    assert cloudsim.live("Instance") == [] and {r.deleted_by for r in cloudsim.ever("Instance")} == {"engine"}
    assert cloudsim.live("SecurityGroup")  # the fleet stays, at its minimum
    deleted = cloudsim.dstack("fleet", "delete", "pool", "-y", home=dstack_home)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert cloudsim.live() == []


def test_fleet_delete_i_destroys_one_idle_instance_of_a_cloud_fleet_and_keeps_the_others(cloudsim, tmp_path,
                                                                                       dstack_home):
    # made with 2, kept at 1 at least: deleting one leaves the fleet at its minimum (below it, the next command
    # would add one back: tests/test_cloudsim_fleet_upkeep.py)
    nodes = "nodes:\n  min: 1\n  target: 2\n  max: 3\n"
    fleet = write(tmp_path, "fleet.dstack.yml", AWS_FLEET.replace("nodes: 1\n", nodes) + "idle_duration: 1h\n")
    made = cloudsim.dstack("apply", "-f", fleet, "-y", home=dstack_home)
    assert made.returncode == 0, made.stdout + made.stderr
    first, second = sorted(cloudsim.ever("Instance"), key=lambda r: r.inputs["tags"]["Name"])
    deleted = cloudsim.dstack("fleet", "delete", "pool", "-i", "0", "-y", home=dstack_home)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert not first.live and first.deleted_by == "engine" and second.live  # the other is not replaced
    assert sorted(instances_of(cloudsim, dstack_home)) == [1]
    unknown = cloudsim.dstack("fleet", "delete", "pool", "-i", "0", "-y", home=dstack_home)
    assert unknown.returncode == 1 and "fleet pool has no instance 0: its instances are 1" in unknown.stderr
    deleted = cloudsim.dstack("fleet", "delete", "pool", "-y", home=dstack_home)
    assert deleted.returncode == 0 and cloudsim.live() == []


GCP_CLUSTER_FLEET = """type: fleet
name: pool
nodes: 0..2
placement: cluster
backends: [gcp]
regions: [us-central1]
instance_types: [n2-standard-2]
idle_duration: 1h
"""


def test_a_gcp_cluster_fleet_grows_into_its_placement_policy_and_loses_one_instance_alone(cloudsim, tmp_path,
                                                                                        dstack_home):
    made = cloudsim.dstack("apply", "-f", write(tmp_path, "fleet.dstack.yml", GCP_CLUSTER_FLEET), "-y",
                           home=dstack_home)
    assert made.returncode == 0, made.stdout + made.stderr
    [policy] = cloudsim.live("ResourcePolicy")  # the fleet's, made at apply with no instance yet
    task = "type: task\nname: {name}\nfleets: [pool]\ncommands: ['sleep 4', 'echo on $(hostname)']\n"
    processes = [cloudsim.start("apply", "-f", write(tmp_path, f"g{n}.dstack.yml", task.format(name=f"g{n}")),
                                "-y", home=dstack_home) for n in range(2)]
    for process in processes:
        assert process.wait(120) == 0, process.stdout.read()
    instances = sorted(cloudsim.ever("Instance", "gcp"), key=lambda r: r.inputs["name"])
    assert [i.inputs["name"].rsplit("-", 1)[1] for i in instances] == ["0", "1"] and all(i.live for i in instances)
    assert {i.inputs["resourcePolicies"] for i in instances} == {policy.outputs["selfLink"]}  # both placed together
    assert all(cloudsim.gcp.bindings[i.id] for i in instances)  # each may delete itself
    deleted = cloudsim.dstack("fleet", "delete", "pool", "-i", "0", "-y", home=dstack_home)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert not instances[0].live and instances[0].deleted_by == "engine" and instances[1].live
    assert policy.live and instances[0].id not in cloudsim.gcp.bindings
    assert sorted(instances_of(cloudsim, dstack_home)) == [1]
    deleted = cloudsim.dstack("fleet", "delete", "pool", "-y", home=dstack_home)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert cloudsim.live() == []
