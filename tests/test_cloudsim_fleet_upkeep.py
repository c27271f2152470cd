"""A cloud fleet kept as its `nodes` say by the commands that read it (provisioner.backends.fleet_upkeep), against the
simulated clouds: an instance the cloud ended is replaced while the fleet is below its minimum, and a grow whose
dstack was killed is undone, with nothing left in the cloud."""

import pytest

from tests.cloudsim.aws import instance_of
from tests.cloudsim.fixtures import instances_of, wait_until
from tests.cloudsim.tasks import AWS_FLEET
from tests.helpers import write

pytestmark = pytest.mark.cloudsim


def test_an_instance_the_cloud_took_back_is_replaced_to_keep_the_fleet_at_its_minimum(cloudsim, tmp_path,
                                                                                      dstack_home):
    fleet = write(tmp_path, "fleet.dstack.yml", AWS_FLEET.replace("nodes: 1", "nodes: 1..2") + "idle_duration: 1h\n")
    made = cloudsim.dstack("apply", "-f", fleet, "-y", home=dstack_home)
    assert made.returncode == 0, made.stdout + made.stderr
    first = instance_of(cloudsim.world)
    cloudsim.aws.reclaim(first)  # EC2 takes it back while it is idle
    shown = cloudsim.dstack("fleet", "get", "pool", home=dstack_home)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "Fleet pool: instance #0 is gone in the cloud; removing it" in shown.stderr, shown.stderr
    assert "below its `nodes` minimum of 1: adding #1" in shown.stderr, shown.stderr
    [second] = cloudsim.live("Instance")
    assert second is not first and second.inputs["tags"]["Name"].endswith("-pool-1")
    held = instances_of(cloudsim, dstack_home)
    assert sorted(held) == [1] and held[1]["status"] == "idle" and held[1]["hostname"]
    timers = cloudsim.world.timers_of(second)
    assert "dstack-start-watchdog" not in timers and "dstack-idle-power-off" in timers  # prepared as a fleet's
    run = write(tmp_path, "t.dstack.yml", "type: task\nname: on-pool\nfleets: [pool]\ncommands: [hostname]\n")
    result = cloudsim.dstack("apply", "-f", run, "-y", home=dstack_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert second.vm.name in result.stdout and cloudsim.live("Instance") == [second]  # the run took it
    deleted = cloudsim.dstack("fleet", "delete", "pool", "-y", home=dstack_home)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert cloudsim.live() == []


ELASTIC_FLEET = AWS_FLEET.replace("nodes: 1", "nodes: 0..2") + "idle_duration: 1h\n"
TASK = "type: task\nname: grower\nfleets: [pool]\ncommands: ['echo on $(hostname)']\n"


def _killed_mid_grow(cloudsim, tmp_path, home):
    """The fleet, and a run growing it whose dstack is SIGKILLed once the engine made the instance, before the
    state recorded it: the VM it made (live, unrecorded)."""
    made = cloudsim.dstack("apply", "-f", write(tmp_path, "fleet.dstack.yml", ELASTIC_FLEET), "-y", home=home)
    assert made.returncode == 0, made.stdout + made.stderr
    cloudsim.kill_after.add("Instance")
    killed = cloudsim.start("apply", "-f", write(tmp_path, "t.dstack.yml", TASK), "-y", home=home)
    assert killed.wait(120) == -9, killed.stdout.read()
    cloudsim.kill_after.clear()
    [leaked] = cloudsim.live("Instance")
    return leaked


def test_a_grow_killed_mid_up_is_undone_by_the_next_command_and_leaves_nothing(cloudsim, tmp_path, dstack_home):
    leaked = _killed_mid_grow(cloudsim, tmp_path, dstack_home)
    shown = cloudsim.dstack("fleet", "get", "pool", home=dstack_home)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "instance #0 was being added by a dstack process that is gone; removing it" in shown.stderr, shown.stderr
    assert "Instances: 0 of 0..2" in shown.stdout, shown.stdout
    assert cloudsim.live("Instance") == [] and not leaked.live  # the VM the killed `up` made is swept
    listed = cloudsim.dstack("ps", "--json", home=dstack_home)
    assert listed.returncode == 0, listed.stderr
    again = cloudsim.dstack("apply", "-f", write(tmp_path, "t.dstack.yml", TASK), "-y", home=dstack_home)
    assert again.returncode == 0, again.stdout + again.stderr  # the lock is free: a run grows the fleet again
    [grown] = cloudsim.live("Instance")
    assert grown.vm.name in again.stdout and sorted(instances_of(cloudsim, dstack_home)) == [0]
    deleted = cloudsim.dstack("fleet", "delete", "pool", "-y", home=dstack_home)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert cloudsim.live() == []


def test_fleet_delete_after_a_grow_killed_mid_up_destroys_everything(cloudsim, tmp_path, dstack_home):
    _killed_mid_grow(cloudsim, tmp_path, dstack_home)
    deleted = cloudsim.dstack("fleet", "delete", "pool", "-y", home=dstack_home)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert cloudsim.live() == []


def test_a_fleet_recorded_before_instances_were_numbered_is_numbered_and_grows_without_replacing_its_instance(
        cloudsim, tmp_path, dstack_home):
    fleet = write(tmp_path, "fleet.dstack.yml", AWS_FLEET.replace("nodes: 1", "nodes: 1..2") + "idle_duration: 1h\n")
    made = cloudsim.dstack("apply", "-f", fleet, "-y", home=dstack_home, entry="tests.cloudsim.legacy_fleet")
    assert made.returncode == 0, made.stdout + made.stderr
    first = instance_of(cloudsim.world)
    owner = first.inputs["tags"]["Name"].split("-")[1]
    assert first.inputs["tags"]["Name"] == f"dstack-{owner}-pool"  # named as a run's single node, as then
    shown = cloudsim.dstack("fleet", "get", "pool", home=dstack_home)
    assert "Fleet pool: made before instances were numbered; its instance is #0 from now on" in shown.stderr, \
        shown.stdout + shown.stderr
    task = "type: task\nname: {name}\nfleets: [pool]\ncommands: ['sleep {sleep}', 'echo on $(hostname)']\n"
    holder = cloudsim.start("apply", "-f", write(tmp_path, "a.dstack.yml", task.format(name="holder", sleep=15)), "-y",
                            home=dstack_home)
    wait_until(lambda: instances_of(cloudsim, dstack_home)[0]["status"] == "busy", timeout=60, process=holder)
    grown = cloudsim.dstack("apply", "-f", write(tmp_path, "b.dstack.yml", task.format(name="second", sleep=0)), "-y",
                            home=dstack_home)
    assert grown.returncode == 0, grown.stdout + grown.stderr  # the fleet grows for it
    assert holder.wait(120) == 0, holder.stdout.read()
    second = next(r for r in cloudsim.ever("Instance") if r is not first)
    assert second.inputs["tags"]["Name"] == f"dstack-{owner}-pool-1" and second.vm.name in grown.stdout
    assert first.live and len(cloudsim.ever("Instance")) == 2  # the old instance kept, not replaced
    deleted = cloudsim.dstack("fleet", "delete", "pool", "-i", "1", "-y", home=dstack_home)
    assert deleted.returncode == 0 and not second.live and first.live, deleted.stdout + deleted.stderr
    deleted = cloudsim.dstack("fleet", "delete", "pool", "-y", home=dstack_home)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert cloudsim.live() == []


def test_an_instance_a_run_found_gone_is_replaced_by_the_next_ps_not_the_fleet_destroyed(cloudsim, tmp_path,
                                                                                        dstack_home):
    """`nodes: 1`: the run that would take the instance finds its VM gone and retires it (it cannot grow the fleet
    for itself); the next `dstack ps` replaces it rather than destroying the fleet whose only instance it was."""
    made = cloudsim.dstack("apply", "-f", write(tmp_path, "fleet.dstack.yml", AWS_FLEET + "idle_duration: 1h\n"),
                           "-y", home=dstack_home)
    assert made.returncode == 0, made.stdout + made.stderr
    first = instance_of(cloudsim.world)
    cloudsim.aws.reclaim(first)
    run = write(tmp_path, "t.dstack.yml", "type: task\nname: on-pool\nfleets: [pool]\ncommands: [hostname]\n")
    refused = cloudsim.dstack("apply", "-f", run, "-y", home=dstack_home)
    assert refused.returncode != 0 and "it is retired, not reused" in refused.stdout + refused.stderr, \
        refused.stdout + refused.stderr
    listed = cloudsim.dstack("ps", home=dstack_home)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "Fleet pool: instance #0 was retired (its VM ended) or its removal cut short; removing it" in \
        listed.stderr, listed.stderr
    [second] = cloudsim.live("Instance")
    assert second is not first and sorted(instances_of(cloudsim, dstack_home)) == [1]
    result = cloudsim.dstack("apply", "-f", run, "-y", home=dstack_home)
    assert result.returncode == 0 and second.vm.name in result.stdout, result.stdout + result.stderr
    deleted = cloudsim.dstack("fleet", "delete", "pool", "-y", home=dstack_home)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert cloudsim.live() == []
