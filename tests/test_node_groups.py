"""Node groups (`groups`, dstack 0.22) through the `dstack` command: on an SSH fleet of three namespace hosts (ranks
across the groups, each group's commands, the `${{ groups[i].nodes[j].IP_ADDRESS }}` references, the cluster
variables), the checks at submit, and the clouds' plans (`--dry-run --json`: each group's offer and instance type in
one stack)."""

import json
import textwrap

import pytest

from tests.helpers import run_cli, write
from tests.netns_hosts import Switch
from tests.test_faults import add_fleet
from tests.test_runs import ps

# Group 0 (`head`, rank 0) listens at its own address; every worker connects to the address its command was given
# as `${{ groups[0].nodes[0].IP_ADDRESS }}`, which must be the master's.
RAY_LIKE = textwrap.dedent("""\
    type: task
    name: {name}
    backends: [ssh]
    groups:
      - name: head
        commands:
          - echo head rank=$DSTACK_NODE_RANK of=$DSTACK_NODES_NUM master=$DSTACK_MASTER_NODE_IP
          - echo head sees ${{{{ groups[0].nodes[0].IP_ADDRESS }}}} ${{{{ groups[1].nodes[1].IP_ADDRESS }}}}
          - echo 'head escaped $${{{{ groups[0].nodes[0].IP_ADDRESS }}}}'
          - python3 -c "import socket; s = socket.create_server(('${{{{ groups[0].nodes[0].IP_ADDRESS }}}}', 29600)); [s.accept()[0].close() for _ in range(2)]; print('head accepted 2')"
        resources:
          cpu: 1..
      - name: workers
        nodes: 2
        commands:
          - echo worker rank=$DSTACK_NODE_RANK of=$DSTACK_NODES_NUM head=${{{{ groups[0].nodes[0].IP_ADDRESS }}}}
          - python3 -c "import socket, time; [time.sleep(0.1) for _ in iter(lambda:socket.socket().connect_ex(('${{{{ groups[0].nodes[0].IP_ADDRESS }}}}', 29600)), 0)]; print('worker connected')"
        resources:
          memory: 0.1GB..
""")


@pytest.fixture
def fleet(tmp_path, home_env, make_host, client_key):
    hosts = [make_host() for _ in range(3)]
    switch = Switch().start()
    try:
        for host in hosts:
            switch.join(host)
        add_fleet(tmp_path, home_env, client_key, hosts)
        yield hosts
    finally:
        switch.cleanup()


def test_groups_run_on_an_ssh_fleet_with_ranks_commands_and_addresses_by_group(tmp_path, home_env, fleet):
    conf = write(tmp_path, "ray.dstack.yml", RAY_LIKE.format(name="ray"))
    result = run_cli("apply", "-f", conf, "-y", env=home_env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    run = ps(home_env, "-v")["ray"]
    assert (run["status"], [job["status"] for job in run["jobs"]]) == ("done", ["done"] * 3)
    addresses = [job["host"].split("@")[1].split(":")[0] for job in run["jobs"]]
    assert len(set(addresses)) == 3
    lines = result.stdout.splitlines()
    master = addresses[0]
    assert f"[0] head rank=0 of=3 master={master}" in lines, result.stdout
    assert f"[0] head sees {master} {addresses[2]}" in lines
    assert "[0] head accepted 2" in lines
    assert "[0] head escaped ${{ groups[0].nodes[0].IP_ADDRESS }}" in lines
    for rank in (1, 2):
        assert f"[{rank}] worker rank={rank} of=3 head={master}" in lines
        assert f"[{rank}] worker connected" in lines
    assert not any(line.startswith(("[1] head", "[2] head", "[0] worker")) for line in lines)


def test_a_group_no_fleet_host_fits_is_refused_by_name(tmp_path, home_env, fleet):
    conf = write(tmp_path, "big.dstack.yml", "type: task\nname: big\nbackends: [ssh]\ngroups:\n"
                 "  - commands: [echo a]\n  - name: gpus\n    commands: [echo b]\n    resources: {gpu: 1}\n")
    result = run_cli("apply", "-f", conf, "-y", env=home_env)
    assert result.returncode != 0
    assert "`groups` (2 nodes): no offer fits group gpus" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_groups_need_as_many_hosts_as_their_nodes(tmp_path, home_env, fleet):
    conf = write(tmp_path, "many.dstack.yml", "type: task\nname: many\nbackends: [ssh]\ngroups:\n"
                 "  - nodes: 2\n    commands: [echo a]\n  - nodes: 2\n    commands: [echo b]\n")
    result = run_cli("apply", "-f", conf, "-y", env=home_env)
    assert result.returncode != 0
    assert "no SSH fleet has hosts for every group" in result.stderr, result.stderr


@pytest.mark.parametrize("body, message", [
    ("groups:\n  - commands: ['echo ${{ groups[1].nodes[0].IP_ADDRESS }}']\n",
     "groups[0].commands[0]: invalid reference groups[1].nodes[0].IP_ADDRESS: out of range"),
    ("groups:\n  - nodes: 2\n    commands: ['echo ${{ groups[0].nodes[2].IP_ADDRESS }}']\n",
     "invalid reference groups[0].nodes[2].IP_ADDRESS: out of range"),
    ("groups:\n  - commands: ['echo ${{ groups[0].replicas[0].IP_ADDRESS }}']\n",
     "illegal reference groups[0].replicas[0].IP_ADDRESS"),
    ("groups:\n  - commands: ['echo ${{ groups[0].nodes[0].ip }}']\n",
     "illegal reference groups[0].nodes[0].ip"),
    ("env: ['HEAD=${{ groups[0].nodes[0].IP_ADDRESS }}']\ngroups:\n  - commands: [echo]\n",
     "env.HEAD: `${{ groups... }}` references are only supported in commands"),
    ("nodes: 2\ncommands: ['echo ${{ groups[0].nodes[2].IP_ADDRESS }}']\n",
     "commands[0]: invalid reference groups[0].nodes[2].IP_ADDRESS: out of range"),
])
def test_node_references_are_checked_at_submit(tmp_path, home_env, body, message):
    conf = write(tmp_path, "refs.dstack.yml", f"type: task\nname: refs\n{body}")
    result = run_cli("apply", "-f", conf, "--dry-run", "-b", "aws", env=home_env)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("body, message", [
    ("nodes: 2\ngroups:\n  - commands: [echo]\n", "`nodes` and `groups` are mutually exclusive"),
    ("groups: []\n", "`groups` must not be empty"),
    ("groups:\n  - commands: [echo]\n  - name: '0'\n    commands: [echo]\n", "duplicate group names: 0"),
    ("commands: [echo]\ngroups:\n  - commands: [echo]\n", "`commands` goes in each of `groups`"),
    ("groups:\n  - name: Head\n    commands: [echo]\n", "Invalid group name 'Head'"),
    ("groups:\n  - nodes: 1\n", "group '0': either its `commands` or the task's `image` must be set"),
])
def test_groups_schema_as_dstack_checks_it(tmp_path, home_env, body, message):
    conf = write(tmp_path, "bad.dstack.yml", f"type: task\nname: bad\n{body}")
    result = run_cli("apply", "-f", conf, "--dry-run", env=home_env)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


RAY_CLOUD = textwrap.dedent("""\
    type: task
    name: ray
    python: "3.12"
    groups:
      - nodes: 1
        commands: ["ray start --head --port=6379 --block"]
        resources: {cpu: 2, memory: 4GB..}
        ports: [8265]
      - name: gpu
        nodes: 2
        commands: ["ray start --address=${{ groups[0].nodes[0].IP_ADDRESS }}:6379 --block"]
        resources: {gpu: T4:1}
""")


@pytest.mark.parametrize("backend, instance_type", [("aws", "aws:ec2/instance:Instance"),
                                                     ("gcp", "gcp:compute/instance:Instance")])
def test_cloud_plan_has_each_groups_offer_and_instance_type_in_one_stack(tmp_path, home_env, backend,
                                                                         instance_type):
    conf = write(tmp_path, "ray.dstack.yml", RAY_CLOUD)
    result = run_cli("apply", "-f", conf, "--dry-run", "--json", "-b", backend, env=home_env, timeout=300)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    groups = plan["groups"]
    assert [(g["name"], g["nodes"], g["ranks"]) for g in groups] == [("0", 1, [0]), ("gpu", 2, [1, 2])]
    head, gpu = groups[0]["offer"], groups[1]["offer"]
    assert plan["offer"] == head  # the run's offer is rank 0's, as before
    assert head["instance"]["resources"]["gpus"] == [] and head["instance"]["resources"]["cpus"] == 2
    assert [g["name"] for g in gpu["instance"]["resources"]["gpus"]] == ["T4"]
    assert head["region"] == gpu["region"] and head["backend"] == gpu["backend"] == backend
    assert plan["nodes"]["count"] == 3
    assert plan["nodes"]["total_price"] == pytest.approx(groups[0]["total_price"] + groups[1]["total_price"],
                                                         abs=1e-5)
    nodes = sorted((r for r in plan["resources"] if r["type"] == instance_type), key=lambda r: r["name"])
    assert [r["name"].rsplit("-", 1)[1] for r in nodes] == ["0", "1", "2"]
    key = "instanceType" if backend == "aws" else "machineType"
    assert [r["inputs"][key] for r in nodes] == [head["instance"]["name"]] + [gpu["instance"]["name"]] * 2
    zone_key = "availabilityZone" if backend == "aws" else "zone"
    assert len({r["inputs"][zone_key] for r in nodes}) == 1  # one stack, one zone
    assert plan["configuration"]["groups"][1]["commands"] == [
        "ray start --address=${{ groups[0].nodes[0].IP_ADDRESS }}:6379 --block"]


def test_a_resource_flag_on_a_task_with_groups_is_refused_by_name(tmp_path, home_env):
    """Each group has its own resources: `--gpu` and the like would change nothing, so they are refused."""
    conf = write(tmp_path, "ray.dstack.yml", RAY_CLOUD)
    for flag, value in (("--gpu", "A100"), ("--memory", "64GB..")):
        result = run_cli("apply", "-f", conf, "--dry-run", "-b", "aws", flag, value, env=home_env)
        assert result.returncode == 2 and flag in result.stderr and "set them per group" in result.stderr


def test_startup_order_across_groups_master_is_group_0s_first_node(tmp_path, home_env, fleet):
    conf = write(tmp_path, "order.dstack.yml", "type: task\nname: order\nbackends: [ssh]\n"
                 "startup_order: workers-first\ngroups:\n"
                 "  - name: head\n    commands: ['echo began $(date +%s.%N)']\n"
                 "  - name: workers\n    nodes: 2\n    commands: ['echo began $(date +%s.%N)']\n")
    result = run_cli("apply", "-f", conf, "-y", env=home_env, timeout=300)
    assert result.returncode == 0, result.stderr
    began = {int(line.split()[0].strip("[]")): float(line.split()[2]) for line in result.stdout.splitlines()
             if line.split()[1:2] == ["began"]}
    assert sorted(began) == [0, 1, 2] and began[0] > max(began[1], began[2]), result.stdout
