"""A run on a spot cloud fleet's instance that EC2 takes back (tests.cloudsim): the host's notice ends the attempt as
it ends a run of its own stack (provisioner.runs.interruptions); the instance is recorded gone, so fleet upkeep
removes it from the fleet's stack, and with `retry` on `interruption` the run takes another offer of the fleet."""

import json

import pytest

from tests.cloudsim import aws as aws_cloud
from tests.cloudsim.fixtures import (ec2_notice_seen_on_the_host, ended_interrupted, instances_of,
                                     retried_after_an_ec2_notice, wait_until)
from tests.cloudsim.tasks import AWS_FLEET, aws_task
from tests.helpers import write

pytestmark = pytest.mark.cloudsim

WINDOW_S = 600  # the notice's window: the scenarios end long before EC2 would take the VM back
SPOT_FLEET = AWS_FLEET.replace("t3a.large", "g4dn.xlarge") + "spot_policy: spot\nidle_duration: 1h\n"  # spot-priced
ATTEMPTS = ("echo attempt $DSTACK_RUN_ATTEMPT on $(hostname); [ $DSTACK_RUN_ATTEMPT = 1 ] && touch /tmp/started && "
            "sleep 300; echo finished attempt $DSTACK_RUN_ATTEMPT")


def test_a_run_on_a_spot_fleet_instance_with_a_notice_is_retried_on_a_new_instance_of_the_fleet(
        cloudsim, tmp_path, dstack_home):
    """The attached apply sees the notice, ends the attempt and, with `retry` on `interruption`, grows the fleet (its
    only instance is taken back) and finishes there; the instance taken back is removed from the fleet's stack."""
    fleet = write(tmp_path, "fleet.dstack.yml", SPOT_FLEET.replace("nodes: 1", "nodes: 1..2"))
    made = cloudsim.dstack("apply", "-f", fleet, "-y", home=dstack_home)
    assert made.returncode == 0, made.stdout + made.stderr
    first = aws_cloud.instance_of(cloudsim.world)
    run = write(tmp_path, "t.dstack.yml", "type: task\nname: on-spot\nfleets: [pool]\nspot_policy: auto\n"
                                          "commands: ['" + ATTEMPTS + "']\nretry:\n  on_events: [interruption]\n"
                                          "  duration: 1h\n")
    process = cloudsim.start("apply", "-f", run, "-y", home=dstack_home)
    output = retried_after_an_ec2_notice(cloudsim, process, first, WINDOW_S)
    second = next(i for i in cloudsim.ever("Instance", "aws") if i is not first)
    assert f"attempt 2 on {second.vm.name}" in output, output
    ps = cloudsim.dstack("ps", "-a", "-v", "--json", home=dstack_home)
    assert "Fleet pool: instance #0 was retired" in ps.stderr, ps.stderr  # recorded gone: upkeep removes it
    [record] = json.loads(ps.stdout)["runs"]
    assert record["status"] == "done"
    assert [(a["status"], a["reason"]) for a in record["submissions"]] == [("terminated", "interrupted"),
                                                                           ("done", None)]
    events = cloudsim.dstack("event", "on-spot", home=dstack_home).stdout
    assert "interrupted" in events and "resubmitted" in events
    assert first.deleted_by == "engine" and not first.live  # removed before EC2 took it
    held = instances_of(cloudsim, dstack_home)
    assert sorted(held) == [1] and held[1]["status"] == "idle"
    deleted = cloudsim.dstack("fleet", "delete", "pool", "-y", home=dstack_home)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert cloudsim.live() == []


def detached_run_begun_on_the_spot_fleet(cloudsim, tmp_path, home, name: str):
    """SPOT_FLEET applied and a detached run `name` on its instance, whose job has begun: the instance."""
    made = cloudsim.dstack("apply", "-f", write(tmp_path, "fleet.dstack.yml", SPOT_FLEET), "-y", home=home)
    assert made.returncode == 0, made.stdout + made.stderr
    instance = aws_cloud.instance_of(cloudsim.world)
    run = write(tmp_path, "t.dstack.yml", f"type: task\nname: {name}\nfleets: [pool]\nspot_policy: auto\n"
                                          "commands: ['touch /tmp/started; sleep 300']\n")
    started = cloudsim.dstack("apply", "-f", run, "-y", "-d", home=home)
    assert started.returncode == 0, started.stdout + started.stderr
    wait_until(lambda: instance.vm.file("/tmp/started") is not None)
    return instance


def test_a_detached_run_on_a_spot_fleet_instance_with_a_notice_ends_interrupted_at_the_next_ps(
        cloudsim, tmp_path, dstack_home):
    """Without `retry`: `dstack ps` reads the host's notice and ends the run `terminated (interrupted)`; the
    instance is not handed back idle (a later run never lands on a VM being taken back) and the fleet replaces it
    to keep its minimum."""
    first = detached_run_begun_on_the_spot_fleet(cloudsim, tmp_path, dstack_home, "on-spot-2")
    line = ec2_notice_seen_on_the_host(cloudsim, first, "on-spot-2", WINDOW_S)
    ended_interrupted(cloudsim, dstack_home)
    at = first.extra["spot_notice"]["time"]
    logs = cloudsim.dstack("logs", "on-spot-2", home=dstack_home).stdout
    assert line in logs and f"got the spot interruption notice from AWS: terminate at {at}" in logs
    held = instances_of(cloudsim, dstack_home)
    assert 0 not in held and [i["status"] for i in held.values()] == ["idle"], held  # replaced, to keep nodes: 1
    assert first.deleted_by == "engine" and not first.live
    deleted = cloudsim.dstack("fleet", "delete", "pool", "-y", home=dstack_home)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert cloudsim.live() == []


def test_a_detached_run_whose_spot_fleet_instance_was_taken_back_without_a_notice_ends_interrupted(
        cloudsim, tmp_path, dstack_home):
    """EC2 takes the VM back at once: `dstack ps` loses the host, asks EC2 about the instance by its id (the fleet's
    stack records each instance's) and ends the run `terminated (interrupted)`, not `running` behind an unreachable
    host; the fleet replaces the instance."""
    first = detached_run_begun_on_the_spot_fleet(cloudsim, tmp_path, dstack_home, "on-spot-3")
    cloudsim.aws.reclaim(first)
    ended_interrupted(cloudsim, dstack_home)
    logs = cloudsim.dstack("logs", "on-spot-3", home=dstack_home).stdout
    assert "(#0 of fleet pool) taken back by EC2 (spot interruption" in logs, logs
    held = instances_of(cloudsim, dstack_home)
    assert 0 not in held and [i["status"] for i in held.values()] == ["idle"], held
    deleted = cloudsim.dstack("fleet", "delete", "pool", "-y", home=dstack_home)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert cloudsim.live() == []


def test_a_run_kept_by_idle_duration_whose_spot_instance_had_a_notice_ends_interrupted_and_its_fleet_goes(
        cloudsim, tmp_path, dstack_home):
    """A task with `idle_duration` holds its instance as an implicit fleet: the notice ends the detached run at the
    next `dstack ps` (`terminated (interrupted)`), and the fleet, its only instance gone, is destroyed whole."""
    conf = aws_task(tmp_path, "kept-spot", command="touch /tmp/started; sleep 300", types="g4dn.xlarge",
                    extra="spot_policy: spot\nidle_duration: 1h\n")
    started = cloudsim.dstack("apply", "-f", conf, "-b", "aws", "-y", "-d", home=dstack_home)
    assert started.returncode == 0, started.stdout + started.stderr
    instance = aws_cloud.instance_of(cloudsim.world)
    wait_until(lambda: instance.vm.file("/tmp/started") is not None)
    ec2_notice_seen_on_the_host(cloudsim, instance, "kept-spot", WINDOW_S)
    ended_interrupted(cloudsim, dstack_home)
    assert instance.deleted_by == "engine" and cloudsim.live() == []
    fleets = cloudsim.dstack("fleet", "list", "--json", home=dstack_home)
    assert json.loads(fleets.stdout)["fleets"] == [], fleets.stdout
