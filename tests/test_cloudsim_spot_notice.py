"""The spot interruption notice, read on the host (provisioner.jobs.spot_notice), against the simulated clouds: EC2's
`spot/instance-action` in each VM's instance metadata (tests.cloudsim.aws_imds, IMDSv2), Compute Engine's
`instance/preempted` (tests.cloudsim.gcp_rest). The cloud gives its notice and takes the VM back only after a window
longer than the scenario: a VM the engine deleted (not the cloud) proves the notice is what told the run."""

import json
import re

import pytest

from tests.cloudsim import aws as aws_cloud
from tests.cloudsim import gcp as gcp_cloud
from tests.cloudsim.fixtures import (ec2_notice_seen_on_the_host, ended_interrupted, output_of,
                                     retried_after_an_ec2_notice, two_gcp_nodes_begun, wait_exit, wait_until)
from tests.cloudsim.tasks import aws_task, gcp_task

pytestmark = pytest.mark.cloudsim

WINDOW_S = 600  # the notice's window: the scenarios end long before the cloud would take the VM back
ATTEMPTS = ('echo attempt $DSTACK_RUN_ATTEMPT; [ $DSTACK_RUN_ATTEMPT = 1 ] && touch /tmp/started && sleep 300; '
            'echo finished attempt $DSTACK_RUN_ATTEMPT')


def test_an_ec2_spot_notice_retries_the_run_elsewhere_before_the_instance_is_taken_back(
        cloudsim, tmp_path, dstack_home):
    """The host reads EC2's notice (IMDSv2): the job's log gets its line with the time, the attached apply shows it,
    and with `retry: {on_events: [interruption]}` the run goes to another zone and finishes; the first instance is
    destroyed by the run's teardown while EC2's two minutes (here longer) still run."""
    conf = aws_task(tmp_path, "notice-1", command=ATTEMPTS, types="g4dn.xlarge",
                    extra="spot_policy: spot\nretry:\n  on_events: [interruption]\n  duration: 1h\n")
    process = cloudsim.start("apply", "-f", conf, "-b", "aws", "-y", home=dstack_home)
    first = wait_until(lambda: cloudsim.world.live("Instance", "aws") and aws_cloud.instance_of(cloudsim.world),
                       process=process)
    retried_after_an_ec2_notice(cloudsim, process, first, WINDOW_S)
    first_, second = sorted(cloudsim.ever("Instance", "aws"), key=lambda r: r.created_at)
    assert first_ is first and first.deleted_by == "engine"  # gone before EC2 took it: the notice told the run
    assert second.zone != first.zone and cloudsim.live() == []
    [run] = json.loads(cloudsim.dstack("ps", "-a", "-v", "--json", home=dstack_home).stdout)["runs"]
    assert run["status"] == "done"
    assert [(a["status"], a["reason"]) for a in run["submissions"]] == [("terminated", "interrupted"), ("done", None)]
    logs = cloudsim.dstack("logs", "notice-1", home=dstack_home).stdout
    assert f"spot interruption notice from AWS: terminate at {first.extra['spot_notice']['time']}" in logs


def test_a_detached_run_whose_host_had_an_ec2_spot_notice_ends_interrupted_at_the_next_ps(
        cloudsim, tmp_path, dstack_home):
    """No process follows the run: `dstack ps` reads the host's record of the notice (the VM still runs, and EC2
    says nothing yet) and ends the run `terminated (interrupted)`, its stack removed and the notice in its log."""
    conf = aws_task(tmp_path, "notice-2", command="touch /tmp/started; sleep 300", types="g4dn.xlarge",
                    extra="spot_policy: spot\n")
    started = cloudsim.dstack("apply", "-f", conf, "-b", "aws", "-y", "-d", home=dstack_home)
    assert started.returncode == 0, started.stdout + started.stderr
    instance = aws_cloud.instance_of(cloudsim.world)
    wait_until(lambda: instance.vm.file("/tmp/started") is not None)
    line = ec2_notice_seen_on_the_host(cloudsim, instance, "notice-2", WINDOW_S)
    ended_interrupted(cloudsim, dstack_home)
    assert instance.deleted_by == "engine" and cloudsim.live() == []
    logs = cloudsim.dstack("logs", "notice-2", home=dstack_home).stdout
    at = instance.extra["spot_notice"]["time"]
    assert line in logs and f"got the spot interruption notice from AWS: terminate at {at}" in logs


def test_a_gcp_preemption_notice_ends_the_run_terminated_interrupted_before_the_vm_goes(
        cloudsim, tmp_path, dstack_home):
    """The host waits on `instance/preempted` (wait_for_change): once it turns TRUE the job's log says so with the
    time, and without `interruption` in `retry.on_events` the run ends `terminated (interrupted)`; the VM is
    deleted by the run's teardown while Compute Engine's window still runs."""
    conf = gcp_task(tmp_path, "notice-3", command="echo working; touch /tmp/started; sleep 300",
                    types="n2d-standard-2", extra="spot_policy: spot\n")
    process = cloudsim.start("apply", "-f", conf, "-b", "gcp", "-y", home=dstack_home)
    instance = wait_until(lambda: cloudsim.world.live("Instance", "gcp") and gcp_cloud.instance_of(cloudsim.world),
                          process=process)
    wait_until(lambda: instance.vm.file("/tmp/started") is not None, process=process)
    wait_until(lambda: "working" in output_of(process), process=process)
    cloudsim.gcp.preempt(instance, notice_s=WINDOW_S)
    code = wait_exit(process, 120)
    output = output_of(process)
    assert code != 0, output
    assert re.search(r"dstack: spot interruption notice from GCP: preempted at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
                     output), output
    assert instance.deleted_by == "engine" and cloudsim.gcp.preemptions == []  # Compute Engine had not taken it yet
    assert cloudsim.live() == []
    [run] = json.loads(cloudsim.dstack("ps", "-a", "--json", home=dstack_home).stdout)["runs"]
    assert (run["status"], run["reason"]) == ("terminated", "interrupted")
    events = cloudsim.dstack("event", "notice-3", home=dstack_home).stdout
    assert "interrupted" in events and "resubmitted" not in events


def test_a_preemption_notice_on_one_node_of_a_gcp_cluster_restarts_every_node_elsewhere(
        cloudsim, tmp_path, dstack_home):
    """Node 1 of two has the notice (each node's log is read in a thread of its own): with `retry` on
    `interruption` the whole run goes back to submitted, both nodes are made again in another zone and finish;
    node 1's log has the notice's line, and both first VMs are deleted by the run, none by Compute Engine."""
    command = ('echo node $DSTACK_NODE_RANK attempt $DSTACK_RUN_ATTEMPT; [ $DSTACK_RUN_ATTEMPT = 1 ] && '
               'touch /tmp/started && sleep 300; echo finished node $DSTACK_NODE_RANK attempt $DSTACK_RUN_ATTEMPT')
    conf = gcp_task(tmp_path, "notice-4", command=command, types="n2-standard-2",
                    extra="nodes: 2\nspot_policy: spot\nretry:\n  on_events: [interruption]\n")
    process = cloudsim.start("apply", "-f", conf, "-b", "gcp", "-y", home=dstack_home)
    first = two_gcp_nodes_begun(cloudsim, process)
    cloudsim.gcp.preempt(first[1], notice_s=WINDOW_S)
    code = wait_exit(process, 240)
    output = output_of(process)
    assert code == 0, output
    assert "dstack: spot interruption notice from GCP: preempted at " in output
    assert "finished node 0 attempt 2" in output and "finished node 1 attempt 2" in output
    assert "finished node 0 attempt 1" not in output
    assert [i.deleted_by for i in first] == ["engine", "engine"] and cloudsim.gcp.preemptions == []
    second = [i for i in cloudsim.ever("Instance", "gcp") if i not in first]
    assert len(second) == 2 and second[0].zone != first[0].zone
    assert cloudsim.live() == []
    [run] = json.loads(cloudsim.dstack("ps", "-a", "--json", home=dstack_home).stdout)["runs"]
    assert run["status"] == "done" and [(a["status"], a["reason"]) for a in run["submissions"]] == [
        ("terminated", "interrupted"), ("done", None)]
