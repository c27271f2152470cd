"""`nodes` has a bound, and planning stays linear and lean up to it: a count past MAX_NODES is refused by name, and
the dry run of a cluster renders a few nodes through Pulumi's mocks whatever its size, its other nodes repeated from
them exactly as a full rendering gives them. The figures are benchmarks/plan_bench.py's."""

import json
import subprocess
import sys

import pytest

from configuration.backends import DstackConfig
from configuration.loader import parse_configuration
from configuration.policies import MAX_NODES
from offers.catalog import InstanceType
from offers.offer import Offer
from tests.helpers import ROOT, run_cli, write

OFFERS = {
    "aws": Offer("aws", InstanceType("t3.large", 2, 8.0, "", "", 0, 0.0, "x86", True), "us-east-1",
                 ("us-east-1a",), False, 0.0832, 100.0, 0.011),
    "gcp": Offer("gcp", InstanceType("n2-standard-2", 2, 8.0, "", "", 0, 0.0, "x86", True), "us-central1",
                 ("us-central1-a",), False, 0.0971, 100.0, 0.004),
}


def task(nodes: int):
    return parse_configuration(f"type: task\nnodes: {nodes}\ncommands: [x]\n", "t.dstack.yml")


@pytest.mark.parametrize("line, field, text", [
    (2, "nodes", "type: task\nnodes: {n}\ncommands: [x]\n"),
    (3, "nodes", "type: fleet\nname: big\nnodes: {n}\n"),
    (2, "groups[0].nodes", "type: task\ngroups: [{{nodes: {n}, commands: [x]}}]\n"),
])
def test_a_node_count_past_the_bound_is_refused_by_name_in_one_line(tmp_path, line, field, text):
    conf = write(tmp_path, "big.dstack.yml", text.format(n=MAX_NODES + 1))
    result = run_cli("apply", "-f", conf, "--dry-run")
    assert result.returncode == 1
    assert result.stderr == (f"error: {conf}:{line}: {field}: at most {MAX_NODES} nodes, got {MAX_NODES + 1}: the "
                             "largest cluster a run or fleet makes here (docs/runs.md)\n")
    assert task(MAX_NODES).nodes == MAX_NODES  # the bound itself is allowed


def test_groups_past_the_bound_in_all_are_refused(tmp_path):
    half = MAX_NODES // 2 + 1
    conf = write(tmp_path, "g.dstack.yml", f"type: task\ngroups:\n  - {{nodes: {half}, commands: [x]}}\n"
                                           f"  - {{nodes: {half}, commands: [y]}}\n")
    result = run_cli("apply", "-f", conf, "--dry-run")
    assert result.returncode == 1 and f"{conf}:2: groups: at most {MAX_NODES} nodes, got {2 * half}" in result.stderr


@pytest.mark.parametrize("backend", ["aws", "gcp"])
@pytest.mark.parametrize("nodes", [2, 4, 12])
def test_the_dry_run_of_a_cluster_is_what_a_full_rendering_gives(backend, nodes):
    """The stack rendered with every node through the program, and the plan's repeating the last rendered node."""
    pytest.importorskip(f"pulumi_{backend}")
    from provisioner.planning.stack_plan import (dry_run_resources, generate_host_keys, placeholder_key,
                                                 render_plan_resources, stack_spec)

    configuration, config = task(nodes), DstackConfig()
    name = "wide-2"  # a run name that ends as a node's name does
    full = render_plan_resources(stack_spec(name, configuration, OFFERS[backend], placeholder_key(name),
                                            generate_host_keys(configuration), config))
    assert dry_run_resources(name, configuration, OFFERS[backend], config) == full
    instances = [r["name"] for r in full if r["type"].endswith("/instance:Instance")]
    assert len(instances) == len(set(instances)) == nodes


def test_a_dry_run_at_the_bound_renders_a_few_nodes_and_lists_them_all(monkeypatch):
    """The work that grows with the count is copying a rendered node's resources: Pulumi renders three nodes."""
    pytest.importorskip("pulumi_aws")
    from provisioner.planning import stack_plan

    rendered = []
    real = stack_plan.render_plan_resources
    monkeypatch.setattr(stack_plan, "render_plan_resources", lambda spec: rendered.append(spec.nodes) or real(spec))
    resources = stack_plan.dry_run_resources("wide", task(MAX_NODES), OFFERS["aws"], DstackConfig())
    assert rendered == [stack_plan.RENDERED_NODES]
    names = [r["name"] for r in resources if r["type"] == "aws:ec2/instance:Instance"]
    assert sorted(names) == sorted(f"{names[0].rsplit('-', 1)[0]}-{rank}" for rank in range(MAX_NODES))


def peak_memory_kb(args, env) -> int:
    """The most memory (RSS) the CLI took, measured by a process whose only child it is."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_a_dry_run_at_the_bound_takes_about_the_memory_of_two_nodes(tmp_path, home_env):
    """Through the CLI: a full rendering took 3.5 times the memory of two nodes at 1000 (and 1.4 GB at 5000)."""
    pytest.importorskip("pulumi_aws")
    import os

    env = dict(os.environ, **home_env)
    sizes = {}
    for nodes in (2, MAX_NODES):
        conf = write(tmp_path, f"n{nodes}.dstack.yml", f"type: task\nnodes: {nodes}\ncommands: [x]\nbackends: [aws]\n")
        sizes[nodes] = peak_memory_kb(["apply", "-f", conf, "--dry-run", "--json"], env)
        plan = json.loads(run_cli("apply", "-f", conf, "--dry-run", "--json", env=home_env).stdout)
        assert sum(r["type"] == "aws:ec2/instance:Instance" for r in plan["resources"]) == nodes
        assert plan["nodes"]["count"] == nodes
    assert sizes[MAX_NODES] < 1.5 * sizes[2], sizes
