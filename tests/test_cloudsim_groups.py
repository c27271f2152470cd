"""Node groups on the simulated clouds (tests.cloudsim): one stack with each group's instance type, the groups'
commands and addresses in the jobs, and nothing left after the run."""

import pytest

from tests.helpers import write

pytestmark = pytest.mark.cloudsim

GROUPS = """type: task
name: {name}
regions: [{region}]
instance_types: [{types}]
groups:
  - name: head
    commands: ['echo head $DSTACK_NODE_RANK of $DSTACK_NODES_NUM at ${{{{ groups[0].nodes[0].IP_ADDRESS }}}}']
    resources: {{cpu: 2}}
  - name: workers
    nodes: 2
    commands: ['echo worker $DSTACK_NODE_RANK head $DSTACK_MASTER_NODE_IP is ${{{{ groups[0].nodes[0].IP_ADDRESS }}}}']
    resources: {{cpu: 4}}
"""


@pytest.mark.parametrize("backend, region, small, large", [("aws", "us-east-1", "t3a.large", "c5.xlarge"),
                                                            ("gcp", "us-central1", "e2-standard-2", "e2-standard-4")])
def test_groups_run_in_one_stack_each_on_its_instance_type(cloudsim, tmp_path, dstack_home, backend, region, small,
                                                          large):
    conf = write(tmp_path, "groups.dstack.yml", GROUPS.format(name="grp-1", region=region, types=f"{small}, {large}"))
    result = cloudsim.dstack("apply", "-f", conf, "-b", backend, "-y", home=dstack_home, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    instances = sorted(cloudsim.ever("Instance"), key=lambda i: i.name)
    key = "instanceType" if backend == "aws" else "machineType"
    assert [i.inputs[key].rsplit("/", 1)[-1] for i in instances] == [small, large, large]
    lines = result.stdout.splitlines()
    [head] = [line for line in lines if line.startswith("[0] head 0 of 3 at ")]
    master = head.rsplit(" ", 1)[1]
    for rank in (1, 2):
        assert f"[{rank}] worker {rank} head {master} is {master}" in lines, result.stdout
    assert cloudsim.live() == []
