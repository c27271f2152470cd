"""Scenarios against the simulated AWS (tests.cloudsim): `dstack` in a child process running the real code with the
Pulumi engine swapped, EC2 answering by its documented rules and moto, each instance a VM booted from its user data.
Each scenario ends with what the cloud holds: nothing, unless the scenario keeps something on purpose."""

import signal
import time

import pytest

from tests.cloudsim.aws import instance_of
from tests.cloudsim.fixtures import wait_until
from tests.cloudsim.tasks import aws_task as task

pytestmark = pytest.mark.cloudsim


def test_a_one_node_run_goes_end_to_end_and_leaves_nothing(cloudsim, tmp_path, dstack_home):
    result = cloudsim.dstack("apply", "-f", task(tmp_path, "hello-1"), "-b", "aws", "-y", home=dstack_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hello from hello-1" in result.stdout
    [instance] = cloudsim.ever("Instance", "aws")
    assert instance.zone == "us-east-1a" and instance.deleted_by == "engine"
    assert instance.inputs["instanceType"] == "t3a.large" and instance.labels["dstack:run"] == "hello-1"
    # the VM booted from its user data: its host key served, the start watchdog armed, no cloud-init line failed
    assert any("--unit=dstack-start-watchdog" in what for _, what in instance.events)
    assert cloudsim.world.boot_errors() == []
    assert {r.kind for r in cloudsim.ever(backend="aws")} == {"KeyPair", "SecurityGroup", "Instance"}
    assert cloudsim.live() == []  # metered to zero: everything the run made is gone
    logs = cloudsim.dstack("logs", "hello-1", home=dstack_home)
    assert "hello from hello-1" in logs.stdout


def test_an_opt_in_region_is_skipped_and_a_zone_out_of_capacity_moves_the_run_to_the_next_zone(
        cloudsim, tmp_path, dstack_home):
    """il-central-1 is cheaper and not enabled for the account (moto's opt-in regions, as AWS's): skipped; in
    eu-central-1 the first zone has no capacity: the run moves to the next zone."""
    cloudsim.aws.refuse_zone("eu-central-1a", "capacity")
    conf = task(tmp_path, "zones-1", regions="il-central-1, eu-central-1")
    result = cloudsim.dstack("apply", "-f", conf, "-b", "aws", "-y", home=dstack_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "il-central-1 is an opt-in region" in result.stderr
    assert [text.split("api error ")[1].split(":")[0] for text in cloudsim.refusals()] == [
        "InsufficientInstanceCapacity"]
    [instance] = cloudsim.ever("Instance", "aws")  # the refused zone made no instance
    assert instance.zone == "eu-central-1b"
    assert {r.region for r in cloudsim.ever()} == {"eu-central-1"}  # nothing was made in il-central-1
    assert cloudsim.live() == []


def test_ctrl_c_during_the_job_stops_it_and_removes_everything(cloudsim, tmp_path, dstack_home):
    conf = task(tmp_path, "interrupt-1", command="touch /tmp/started; sleep 120")
    process = cloudsim.start("apply", "-f", conf, "-b", "aws", "-y", home=dstack_home)
    instance = wait_until(lambda: cloudsim.world.live("Instance", "aws") and instance_of(cloudsim.world),
                          process=process)
    wait_until(lambda: instance.vm is not None and instance.vm.file("/tmp/started") is not None, process=process)
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 130
    assert instance.deleted_by == "engine" and cloudsim.live() == []


def test_stop_of_a_detached_run_removes_everything(cloudsim, tmp_path, dstack_home):
    conf = task(tmp_path, "detached-1", command="sleep 120")
    started = cloudsim.dstack("apply", "-f", conf, "-b", "aws", "-y", "-d", home=dstack_home)
    assert started.returncode == 0, started.stdout + started.stderr
    assert len(cloudsim.live("Instance")) == 1
    stopped = cloudsim.dstack("stop", "detached-1", "-y", home=dstack_home)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert cloudsim.live() == []


def test_a_spot_instance_taken_back_ends_the_run_and_leaves_nothing(cloudsim, tmp_path, dstack_home):
    conf = task(tmp_path, "spot-1", command="touch /tmp/started; sleep 120", types="g4dn.xlarge",
                extra="spot_policy: spot\n")
    process = cloudsim.start("apply", "-f", conf, "-b", "aws", "-y", home=dstack_home,
                             env={"DSTACK_HOST_TIMEOUT": "5"})  # how soon a host that stopped answering is given up
    instance = wait_until(lambda: cloudsim.world.live("Instance", "aws") and instance_of(cloudsim.world),
                          process=process)
    assert instance.extra["spot"]
    wait_until(lambda: instance.vm is not None and instance.vm.file("/tmp/started") is not None, process=process)
    cloudsim.aws.reclaim(instance)
    code = process.wait(120)  # the host is unreachable: the run is kept, its end left to `dstack stop`
    assert code != 0 and instance.deleted_by == "cloud"
    stopped = cloudsim.dstack("stop", "spot-1", "-y", home=dstack_home)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert cloudsim.live() == []


def test_a_finished_jobs_vm_powers_itself_off_and_terminates(cloudsim, tmp_path, dstack_home):
    """The job wrapper arms the VM's idle power-off (stacks.power_off); when it fires, the VM shuts down, which on
    AWS terminates it (instance_initiated_shutdown_behavior); `dstack stop` then removes the rest of the stack."""
    conf = task(tmp_path, "poweroff-1", command="echo done")
    started = cloudsim.dstack("apply", "-f", conf, "-b", "aws", "-y", "-d", home=dstack_home)
    assert started.returncode == 0, started.stdout + started.stderr
    instance = instance_of(cloudsim.world)
    wait_until(lambda: "dstack-idle-power-off" in cloudsim.world.timers_of(instance))
    assert "dstack-start-watchdog" in cloudsim.world.timers_of(instance)
    cloudsim.world.fire(instance, "dstack-idle-power-off")
    wait_until(lambda: not instance.live)
    assert instance.deleted_by == "guest"  # not merely stopped: nothing bills any more
    assert {r.kind for r in cloudsim.live()} == {"KeyPair", "SecurityGroup"}
    stopped = cloudsim.dstack("stop", "poweroff-1", "-y", home=dstack_home)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert cloudsim.live() == []


def test_a_dstack_process_killed_mid_up_leaves_what_ps_and_its_sweep_remove(cloudsim, tmp_path, dstack_home):
    """Killed right after EC2 made the instance and before the engine recorded it (a pending create): the stack does
    not know the instance; `dstack ps` tears the run down and the sweep finds the instance by its tags."""
    cloudsim.kill_after.add("Instance")
    result = cloudsim.dstack("apply", "-f", task(tmp_path, "killed-1"), "-b", "aws", "-y", home=dstack_home)
    assert result.returncode == -signal.SIGKILL
    assert len(cloudsim.live("Instance")) == 1
    cloudsim.kill_after.clear()
    time.sleep(0.5)  # the killed process's start time must be seen as gone
    ps = cloudsim.dstack("ps", "-a", home=dstack_home)
    assert ps.returncode == 0, ps.stderr
    [instance] = cloudsim.ever("Instance", "aws")
    assert instance.deleted_by == "sweep" and cloudsim.live() == [], ps.stdout + ps.stderr


def test_gc_finds_and_removes_what_a_lost_home_left(cloudsim, tmp_path, dstack_home):
    started = cloudsim.dstack("apply", "-f", task(tmp_path, "lost-1", command="sleep 300"), "-b", "aws", "-y", "-d",
                              home=dstack_home)
    assert started.returncode == 0, started.stdout + started.stderr
    other_home = tmp_path / "another-home"  # the first home is gone (another machine, a deleted ~/.dstack)
    cloudsim.write_config(other_home, gcp=False)
    removed = cloudsim.dstack("gc", "--all-owners", "-y", home=other_home)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    for kind in ("instance", "security-group", "key-pair"):  # listed, then removed
        assert kind in removed.stdout
    assert cloudsim.live() == []
    assert {r.deleted_by for r in cloudsim.ever(backend="aws")} == {"sweep"}
