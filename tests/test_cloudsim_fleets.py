"""Scenarios of cloud fleets and network volumes against the simulated clouds (tests.cloudsim): the fleet's stack and
its instances that runs reuse, a volume's own stack and its disk that a run attaches and leaves with its data."""

import pytest

from tests.cloudsim.aws import instance_of
from tests.cloudsim.fixtures import wait_until
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
