"""Scenarios of a GCP TPU slice against the simulated GCP (tests.cloudsim): the run's stack makes one TPU VM node
(`gcp.tpu.V2Vm`, tests.cloudsim.gcp's rule for it) with one worker per host, Ctrl-C deletes it with the stack, and
`dstack gc` finds a node a lost home left by its labels, through the Cloud TPU API. No guest boots on a TPU worker
here: its address lies behind the test range's unreachable route, which each scenario holds."""

import signal
from pathlib import Path

import pytest

from tests.cloudsim.fixtures import wait_until
from tests.cloudsim.tasks import gcp_task as task
from tests.netns_hosts import guard_test_range, release_test_range

pytestmark = pytest.mark.cloudsim

SLICE = "resources:\n  gpu: v5litepod-16\nnodes: 4\n"


@pytest.fixture
def guarded_range():
    guard_test_range()
    yield
    release_test_range()


def tpu_node(cloudsim):
    nodes = cloudsim.world.live("V2Vm", "gcp")
    return nodes[0] if nodes else None


def test_ctrl_c_while_a_tpu_slice_comes_up_deletes_its_node(cloudsim, tmp_path, dstack_home, guarded_range):
    conf = task(tmp_path, "tpu-4", types="v5litepod-16", command="python3 -c 'import jax'", extra=SLICE)
    process = cloudsim.start("apply", "-f", conf, "-b", "gcp", "-y", home=dstack_home)
    node = wait_until(lambda: tpu_node(cloudsim), process=process)
    assert node.inputs["acceleratorType"] == "v5litepod-16" and node.inputs["runtimeVersion"] == "v2-alpha-tpuv5-lite"
    assert node.labels["dstack-run"] == "tpu-4" and node.labels["dstack-project"] == "dstack"
    assert node.inputs["metadata"]["ssh-keys"].startswith("ubuntu:ssh-ed25519 ")
    assert len(node.outputs["networkEndpoints"]) == 4  # one worker per host: the run's four nodes
    assert not cloudsim.ever("Instance", "gcp") and not cloudsim.ever("Account", "gcp")  # no VM, no self-delete
    # the stack is up: the client waits for the workers' SSH, which never answers here
    wait_until(lambda: ": done" in Path(process.stdout.name).read_text().split("V2Vm", 1)[-1], process=process)
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 130  # not held up by the workers' SSH waits (provisioner.jobs.nodes.on_every_node)
    assert not node.live and node.deleted_by == "engine"
    assert cloudsim.live() == []


def test_gc_finds_and_removes_the_tpu_node_a_lost_home_left(cloudsim, tmp_path, dstack_home, guarded_range):
    conf = task(tmp_path, "tpu-lost", types="v5litepod-8", command="sleep 300",
                extra="resources:\n  gpu: v5litepod-8\n")
    process = cloudsim.start("apply", "-f", conf, "-b", "gcp", "-y", home=dstack_home)
    node = wait_until(lambda: tpu_node(cloudsim), process=process)
    process.send_signal(signal.SIGKILL)  # the client dies: nothing it started is torn down
    process.wait(30)
    other_home = tmp_path / "another-home"
    cloudsim.write_config(other_home, aws=False)
    removed = cloudsim.dstack("gc", "--all-owners", "-y", home=other_home)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "tpu-node" in removed.stdout and "firewall" in removed.stdout
    assert not node.live and node.deleted_by == "sweep"
    assert cloudsim.live() == []
