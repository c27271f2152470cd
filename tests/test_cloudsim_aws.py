"""Scenarios against the simulated AWS (tests.cloudsim): `dstack` in a child process running the real code with the
Pulumi engine swapped, EC2 answering by its documented rules and moto, each instance a VM booted from its user data.
Each scenario ends with what the cloud holds: nothing, unless the scenario keeps something on purpose."""

import json
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


def test_sigterm_during_the_job_stops_it_and_removes_everything(cloudsim, tmp_path, dstack_home):
    conf = task(tmp_path, "interrupt-1", command="touch /tmp/started; sleep 120")
    process = cloudsim.start("apply", "-f", conf, "-b", "aws", "-y", home=dstack_home)
    instance = wait_until(lambda: cloudsim.world.live("Instance", "aws") and instance_of(cloudsim.world),
                          process=process)
    wait_until(lambda: instance.vm is not None and instance.vm.file("/tmp/started") is not None, process=process)
    process.send_signal(signal.SIGTERM)  # Ctrl-C with -y would detach: the job is running
    assert process.wait(60) == 128 + signal.SIGTERM
    assert instance.deleted_by == "engine" and cloudsim.live() == []


def test_stop_of_a_detached_run_removes_everything(cloudsim, tmp_path, dstack_home):
    conf = task(tmp_path, "detached-1", command="sleep 120")
    started = cloudsim.dstack("apply", "-f", conf, "-b", "aws", "-y", "-d", home=dstack_home)
    assert started.returncode == 0, started.stdout + started.stderr
    assert len(cloudsim.live("Instance")) == 1
    stopped = cloudsim.dstack("stop", "detached-1", "-y", home=dstack_home)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert cloudsim.live() == []


def test_a_spot_instance_taken_back_ends_the_run_terminated_interrupted_and_leaves_nothing(
        cloudsim, tmp_path, dstack_home):
    """Without `interruption` in `retry.on_events` the run ends `terminated (interrupted)` by itself (EC2's state
    reason says the VM was taken back), its stack removed without `dstack stop`."""
    conf = task(tmp_path, "spot-1", command="touch /tmp/started; sleep 120", types="g4dn.xlarge",
                extra="spot_policy: spot\nretry:\n  on_events: [no-capacity]\n")
    process = cloudsim.start("apply", "-f", conf, "-b", "aws", "-y", home=dstack_home)
    instance = wait_until(lambda: cloudsim.world.live("Instance", "aws") and instance_of(cloudsim.world),
                          process=process)
    assert instance.extra["spot"]
    wait_until(lambda: instance.vm is not None and instance.vm.file("/tmp/started") is not None, process=process)
    cloudsim.aws.reclaim(instance)
    code = process.wait(120)  # the lost connection asks EC2, which says why: no wait for the host's timeout
    process.stdout.seek(0)
    output = process.stdout.read()
    assert code != 0 and instance.deleted_by == "cloud", output
    assert "taken back by EC2 (spot interruption, Server.SpotInstanceTermination)" in output
    assert cloudsim.live() == []  # nothing left, without `dstack stop`
    ps = cloudsim.dstack("ps", "-a", "--json", home=dstack_home)
    [run] = json.loads(ps.stdout)["runs"]
    assert (run["status"], run["reason"]) == ("terminated", "interrupted")
    logs = cloudsim.dstack("logs", "spot-1", home=dstack_home)
    assert "Server.SpotInstanceTermination" in logs.stdout  # the job's log says what happened, with the time
    events = cloudsim.dstack("event", "spot-1", home=dstack_home).stdout
    assert "interrupted" in events and "resubmitted" not in events


def test_a_spot_instance_taken_back_with_retry_on_interruption_runs_again_in_another_zone(
        cloudsim, tmp_path, dstack_home):
    """`retry: {on_events: [interruption]}`: the run goes back to submitted, its stack is destroyed, the zone that
    took the VM back is skipped, and the job starts again from its commands with DSTACK_RUN_ATTEMPT 2."""
    command = ('echo attempt $DSTACK_RUN_ATTEMPT; [ $DSTACK_RUN_ATTEMPT = 1 ] && touch /tmp/started && sleep 120; '
               'echo finished attempt $DSTACK_RUN_ATTEMPT')
    conf = task(tmp_path, "spot-3", command=command, types="g4dn.xlarge",
                extra="spot_policy: spot\nretry:\n  on_events: [interruption]\n  duration: 1h\n")
    process = cloudsim.start("apply", "-f", conf, "-b", "aws", "-y", home=dstack_home)
    first = wait_until(lambda: cloudsim.world.live("Instance", "aws") and instance_of(cloudsim.world),
                       process=process)
    wait_until(lambda: first.vm is not None and first.vm.file("/tmp/started") is not None, process=process)
    wait_until(lambda: process.stdout.seek(0) == 0 and "attempt 1" in process.stdout.read(), process=process)
    cloudsim.aws.reclaim(first)
    code = process.wait(300)
    process.stdout.seek(0)
    output = process.stdout.read()
    assert code == 0, output
    assert "attempt 1" in output and "finished attempt 2" in output and "finished attempt 1" not in output
    first_, second = sorted(cloudsim.ever("Instance", "aws"), key=lambda r: r.created_at)
    assert first_ is first and first.deleted_by == "cloud" and second.deleted_by == "engine"
    assert second.zone != first.zone  # the interrupted zone is blocked for the next attempt
    assert cloudsim.live() == []
    ps = cloudsim.dstack("ps", "-a", "-v", "--json", home=dstack_home)
    [run] = json.loads(ps.stdout)["runs"]
    assert run["status"] == "done"
    assert [a["status"] for a in run["submissions"]] == ["terminated", "done"]
    table = cloudsim.dstack("ps", "-a", "-v", home=dstack_home).stdout
    assert "interrupted" in table and table.count(run["name"]) == 1
    kinds = [e["kind"] for e in json.loads(cloudsim.dstack("event", "spot-3", "--json", home=dstack_home).stdout)[
        "events"]]
    assert kinds.count("started") == 2 and "interrupted" in kinds and "resubmitted" in kinds


def test_a_signal_during_the_second_attempt_stops_the_run_and_removes_everything(cloudsim, tmp_path, dstack_home):
    """An attached apply follows the run into its next attempt; a signal there acts as for any attached run."""
    conf = task(tmp_path, "spot-6", command="touch /tmp/started; sleep 120", types="g4dn.xlarge",
                extra="spot_policy: spot\nretry:\n  on_events: [interruption]\n")
    process = cloudsim.start("apply", "-f", conf, "-b", "aws", "-y", home=dstack_home)
    first = wait_until(lambda: cloudsim.world.live("Instance", "aws") and instance_of(cloudsim.world),
                       process=process)
    wait_until(lambda: first.vm is not None and first.vm.file("/tmp/started") is not None, process=process)
    cloudsim.aws.reclaim(first)
    second = wait_until(lambda: cloudsim.world.live("Instance", "aws") and instance_of(cloudsim.world),
                        process=process)
    wait_until(lambda: second.vm is not None and second.vm.file("/tmp/started") is not None, process=process)
    process.send_signal(signal.SIGTERM)  # Ctrl-C with -y would detach: the job is running
    assert process.wait(60) == 128 + signal.SIGTERM
    assert second.deleted_by == "engine" and cloudsim.live() == []
    [run] = json.loads(cloudsim.dstack("ps", "-a", "--json", home=dstack_home).stdout)["runs"]
    assert (run["status"], run["reason"]) == ("terminated", "interrupted")  # the signal's own reason, as before
    assert len(run["submissions"]) == 2


def test_a_detached_run_whose_spot_instance_was_taken_back_ends_at_the_next_ps(cloudsim, tmp_path, dstack_home):
    """The run no process follows: `dstack ps` finds its host silent, asks EC2, and ends it `terminated
    (interrupted)`, removing its stack; it no longer stays `running` until `dstack stop`."""
    conf = task(tmp_path, "spot-4", command="sleep 300", types="g4dn.xlarge", extra="spot_policy: spot\n")
    started = cloudsim.dstack("apply", "-f", conf, "-b", "aws", "-y", "-d", home=dstack_home)
    assert started.returncode == 0, started.stdout + started.stderr
    instance = instance_of(cloudsim.world)
    cloudsim.aws.reclaim(instance)
    ps = cloudsim.dstack("ps", "-a", "--json", home=dstack_home, env={"DSTACK_HOST_TIMEOUT": "5"})
    [run] = json.loads(ps.stdout)["runs"]
    assert (run["status"], run["reason"]) == ("terminated", "interrupted"), ps.stdout + ps.stderr
    assert cloudsim.live() == []


def test_a_finished_jobs_vm_powers_itself_off_and_terminates(cloudsim, tmp_path, dstack_home):
    """The job wrapper arms the VM's idle power-off (stacks.power_off); when it fires, the VM shuts down, which on
    AWS terminates it (instance_initiated_shutdown_behavior); the next `dstack ps` ends the run and removes the rest
    of the stack."""
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
    # the next `dstack ps` finds the host silent, asks EC2 (Client.InstanceInitiatedShutdown) and ends the run,
    # removing the rest of its stack: it does not stay `running` until `dstack stop`
    ps = cloudsim.dstack("ps", "-a", "--json", home=dstack_home, env={"DSTACK_HOST_TIMEOUT": "5"})
    [run] = json.loads(ps.stdout)["runs"]
    assert (run["status"], run["reason"]) == ("terminated", "the instance powered itself off after the job"), \
        ps.stdout + ps.stderr
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
