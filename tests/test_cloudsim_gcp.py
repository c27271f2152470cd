"""Scenarios against the simulated GCP (tests.cloudsim): `dstack` in a child process running the real code with the
Pulumi engine swapped, Compute Engine and IAM answering by their documented rules, each instance a VM booted from its
user data that reaches the simulator's metadata server and Compute API to delete itself."""

import json
import signal

import pytest

from tests.cloudsim.fixtures import two_gcp_nodes_begun, wait_until
from tests.cloudsim.gcp import instance_of
from tests.cloudsim.tasks import gcp_task as task

pytestmark = pytest.mark.cloudsim


def test_a_vm_that_ends_itself_is_deleted_through_its_own_service_account(cloudsim, tmp_path, dstack_home):
    """The job ends; the idle power-off fires; the VM's script asks the metadata server for its token and deletes
    its own instance through the Compute API, as the IAM binding on that instance allows: the VM and its boot disk
    are gone (not stopped and billed); `dstack stop` removes the rest."""
    started = cloudsim.dstack("apply", "-f", task(tmp_path, "self-1"), "-b", "gcp", "-y", "-d", home=dstack_home)
    assert started.returncode == 0, started.stdout + started.stderr
    instance = instance_of(cloudsim.world)
    assert instance.zone == "us-central1-a" and instance.labels["dstack-run"] == "self-1"
    assert cloudsim.gcp.bindings[instance.id][0][0] == "roles/compute.instanceAdmin.v1"
    wait_until(lambda: "dstack-idle-power-off" in cloudsim.world.timers_of(instance))
    cloudsim.world.fire(instance, "dstack-idle-power-off")
    wait_until(lambda: not instance.live, timeout=30)
    assert instance.deleted_by == "guest" and not instance.stopped
    assert [r.deleted_by for r in cloudsim.ever("Disk")] == ["guest"]  # its boot disk went with it
    assert cloudsim.world.boot_errors() == []
    stopped = cloudsim.dstack("stop", "self-1", "-y", home=dstack_home)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert cloudsim.live() == []


def test_a_two_node_cluster_moves_to_a_zone_with_resources_and_runs_on_both_nodes(cloudsim, tmp_path, dstack_home):
    cloudsim.gcp.stockout("us-central1-a")
    conf = task(tmp_path, "pair-1", types="n2-standard-2",
                command="echo node $DSTACK_NODE_RANK of $DSTACK_NODES_NUM, master $DSTACK_MASTER_NODE_IP",
                extra="nodes: 2\n")
    result = cloudsim.dstack("apply", "-f", conf, "-b", "gcp", "-y", home=dstack_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "does not have enough resources available" in cloudsim.refusals()[0]
    instances = sorted(cloudsim.ever("Instance", "gcp"), key=lambda r: r.id)
    master = instances[0].outputs["networkInterfaces"][0]["networkIp"]
    assert f"node 0 of 2, master {master}" in result.stdout and f"node 1 of 2, master {master}" in result.stdout
    assert {i.zone for i in instances} == {"us-central1-b"}  # both nodes in the one zone that had room
    policy = cloudsim.ever("ResourcePolicy")[-1]  # n2 takes a compact placement policy
    assert {i.inputs["resourcePolicies"] for i in instances} == {policy.outputs["selfLink"]}
    owner = instances[0].labels["dstack-owner"]
    assert sorted({f.outputs["name"] for f in cloudsim.ever("Firewall")}) == [f"dstack-{owner}-pair-1",
                                                                             f"dstack-{owner}-pair-1-nodes"]
    assert cloudsim.world.boot_errors() == []
    assert cloudsim.live() == []


def test_a_preempted_spot_vm_ends_the_run_terminated_interrupted_and_leaves_nothing(cloudsim, tmp_path, dstack_home):
    """Compute Engine's zone operations name the preemption: the run ends `terminated (interrupted)` by itself."""
    conf = task(tmp_path, "spot-2", command="touch /tmp/started; sleep 120", types="n2d-standard-2",
                extra="spot_policy: spot\n")
    process = cloudsim.start("apply", "-f", conf, "-b", "gcp", "-y", home=dstack_home)
    instance = wait_until(lambda: cloudsim.world.live("Instance", "gcp") and instance_of(cloudsim.world),
                          process=process)
    assert instance.extra["spot"] and instance.inputs["scheduling"]["instanceTerminationAction"] == "DELETE"
    wait_until(lambda: instance.vm.file("/tmp/started") is not None, process=process)
    cloudsim.gcp.preempt(instance)
    code = process.wait(120)
    process.stdout.seek(0)
    output = process.stdout.read()
    assert code != 0 and instance.deleted_by == "cloud", output
    assert "preempted by Compute Engine" in output
    assert cloudsim.live() == []  # without `dstack stop`
    [run] = json.loads(cloudsim.dstack("ps", "-a", "--json", home=dstack_home).stdout)["runs"]
    assert (run["status"], run["reason"]) == ("terminated", "interrupted")


def test_one_preempted_node_of_a_cluster_restarts_every_node_with_retry_on_interruption(
        cloudsim, tmp_path, dstack_home):
    """Node 1 of two is preempted: the whole run goes back to submitted, both nodes are made again in another zone
    and both jobs start again from their commands (DSTACK_RUN_ATTEMPT 2)."""
    command = ('echo node $DSTACK_NODE_RANK attempt $DSTACK_RUN_ATTEMPT; [ $DSTACK_RUN_ATTEMPT = 1 ] && '
               'touch /tmp/started && sleep 120; echo finished node $DSTACK_NODE_RANK attempt $DSTACK_RUN_ATTEMPT')
    conf = task(tmp_path, "spot-5", command=command, types="n2-standard-2",
                extra="nodes: 2\nspot_policy: spot\nretry:\n  on_events: [interruption]\n")
    process = cloudsim.start("apply", "-f", conf, "-b", "gcp", "-y", home=dstack_home)
    first = two_gcp_nodes_begun(cloudsim, process)
    cloudsim.gcp.preempt(first[1])
    code = process.wait(300)
    process.stdout.seek(0)
    output = process.stdout.read()
    assert code == 0, output
    assert "finished node 0 attempt 2" in output and "finished node 1 attempt 2" in output
    assert "finished node 0 attempt 1" not in output  # node 0 was not let finish its first attempt
    instances = cloudsim.ever("Instance", "gcp")
    assert len(instances) == 4 and [i.deleted_by for i in first] == ["engine", "cloud"]
    second = [i for i in instances if i not in first]
    assert len({i.zone for i in second}) == 1 and second[0].zone != first[0].zone
    assert cloudsim.live() == []
    [run] = json.loads(cloudsim.dstack("ps", "-a", "--json", home=dstack_home).stdout)["runs"]
    assert run["status"] == "done" and [(a["status"], a["reason"]) for a in run["submissions"]] == [
        ("terminated", "interrupted"), ("done", None)]

def test_without_self_delete_a_vm_that_ends_itself_is_stopped_and_billed_until_dstack_removes_it(
        cloudsim, tmp_path, dstack_home):
    cloudsim.write_config(dstack_home, gcp_self_delete=False)
    started = cloudsim.dstack("apply", "-f", task(tmp_path, "noself-1"), "-b", "gcp", "-y", "-d", home=dstack_home)
    assert started.returncode == 0, started.stdout + started.stderr
    instance = instance_of(cloudsim.world)
    assert "serviceAccount" not in instance.inputs and not cloudsim.ever("InstanceIAMMember")
    wait_until(lambda: "dstack-idle-power-off" in cloudsim.world.timers_of(instance))
    cloudsim.world.fire(instance, "dstack-idle-power-off")
    wait_until(lambda: instance.stopped, timeout=30)
    assert instance.live  # a stopped GCP VM: its disk is still billed
    stopped = cloudsim.dstack("stop", "noself-1", "-y", home=dstack_home)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert cloudsim.live() == []


def test_gc_finds_and_removes_what_a_lost_home_left_in_gcp(cloudsim, tmp_path, dstack_home):
    conf = task(tmp_path, "lost-2", command="sleep 300")
    started = cloudsim.dstack("apply", "-f", conf, "-b", "gcp", "-y", "-d", home=dstack_home)
    assert started.returncode == 0, started.stdout + started.stderr
    other_home = tmp_path / "another-home"
    cloudsim.write_config(other_home, aws=False)
    removed = cloudsim.dstack("gc", "--all-owners", "-y", home=other_home)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    for kind in ("instance", "firewall", "service-account"):
        assert kind in removed.stdout
    assert cloudsim.live() == []
    assert {r.deleted_by for r in cloudsim.ever(backend="gcp")} == {"sweep"}


def test_ctrl_c_while_a_gcp_cluster_is_coming_up_removes_every_node(cloudsim, tmp_path, dstack_home):
    conf = task(tmp_path, "interrupt-2", types="n2-standard-2", command="touch /tmp/started; sleep 120",
                extra="nodes: 2\n")
    process = cloudsim.start("apply", "-f", conf, "-b", "gcp", "-y", home=dstack_home)
    wait_until(lambda: len(cloudsim.world.live("Instance", "gcp")) == 2, process=process)
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 130
    assert len(cloudsim.ever("Instance", "gcp")) == 2 and cloudsim.live() == []
