"""The AWS stack's network and billing details: burstable types held to standard CPU credits, the subnet a named VPC
gives the nodes, EFA interfaces (with an Elastic IP where a node has several) for the nodes of a cluster, what the
plan says of them, and the sweep of what such a stack leaves. Programs run under Pulumi's mocks; the plan through
`dstack apply --dry-run --json`; the sweep against moto."""

import dataclasses
import json

import pytest

from stacks.aws.program import aws_program
from tests.helpers import run_cli, write
from tests.test_cloud_cluster import KEYS, ClusterRecorder, rank_of
from tests.test_stacks import BASE

pytest.importorskip("pulumi_aws")


class SubnetRecorder(ClusterRecorder):
    """Answers the subnet lookup with `subnets` (and every other lookup as Recorder does); Elastic IPs get public
    addresses by node rank (198.51.100.R)."""

    def __init__(self, subnets):
        super().__init__()
        call, new_resource = self.mocks.call, self.mocks.new_resource

        def lookup(args):
            answer = call(args)
            return {**answer, "ids": list(subnets)} if args.token == "aws:ec2/getSubnets:getSubnets" else answer

        def with_eip(args):
            resource_id, outputs = new_resource(args)
            if args.typ == "aws:ec2/eip:Eip":
                outputs["publicIp"] = f"198.51.100.{rank_of(args.name[:-len('-eip')])}"
            return resource_id, outputs

        self.mocks.call, self.mocks.new_resource = lookup, with_eip


def program(subnets=("subnet-found",), **changes):
    spec = dataclasses.replace(BASE, **{"ports": (), **changes})
    return SubnetRecorder(subnets).run(lambda: aws_program(spec))


def instances(recorder):
    return [r.inputs for r in sorted(recorder.of_type("aws:ec2/instance:Instance"), key=lambda r: r.name)]


# --- CPU credits ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("instance_type, credits", [("t3.large", "standard"), ("t2.micro", "standard"),
                                                    ("t3a.medium", "standard"), ("t4g.small", "standard"),
                                                    ("g5.xlarge", None), ("m7i.large", None)])
def test_burstable_types_launch_with_standard_cpu_credits(instance_type, credits):
    """T3, T3a and T4g launch `unlimited` by default: a busy one pays for surplus credits beyond its price."""
    [instance] = instances(program(instance_type=instance_type, gpu_vendor="", gpu_name="", gpu_count=0))
    assert instance.get("creditSpecification") == ({"cpuCredits": credits} if credits else None)


def test_the_plan_of_a_burstable_offer_shows_standard_credits(tmp_path, dstack_home):
    conf = write(tmp_path, "t.dstack.yml", "type: task\ncommands: [x]\nresources: {cpu: 2, memory: 8GB}\n")
    result = run_cli("apply", "-f", conf, "-b", "aws", "--instance-type", "t3.large", "--dry-run", "--json",
                     env={"DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    [instance] = [r["inputs"] for r in plan["resources"] if r["type"] == "aws:ec2/instance:Instance"]
    assert plan["offer"]["instance"]["name"] == "t3.large"
    assert instance["creditSpecification"] == {"cpuCredits": "standard"}


# --- the subnet of a named VPC -----------------------------------------------------------------------------------

def test_a_named_vpc_gives_its_subnet_that_maps_public_ips_first_by_id():
    recorder = program(subnets=("subnet-0bbb", "subnet-0aaa"), vpc_name="ml-vpc")
    filters = {f["name"]: f["values"] for f in recorder.call("aws:ec2/getSubnets:getSubnets")["filters"]}
    assert filters["map-public-ip-on-launch"] == ["true"] and filters["availability-zone"] == ["us-east-1b"]
    [instance] = instances(recorder)
    assert instance["subnetId"] == "subnet-0aaa" and recorder.exports["subnet_id"] == "subnet-0aaa"


def test_a_named_vpc_without_such_a_subnet_in_the_zone_is_a_zone_miss():
    from stacks.errors import classify

    with pytest.raises(Exception) as e:
        program(subnets=(), vpc_name="ml-vpc")
    failure = classify(f"error: Program failed with an unhandled exception: {e.value}")
    assert (failure.scope, failure.retryable) == ("zone", True)
    assert "VPC ml-vpc has no subnet in us-east-1b that maps public IPs on launch" in failure.message
    assert "`subnet`" in failure.message


def test_the_chosen_subnet_is_named_in_the_log(monkeypatch, dstack_home, tmp_path):
    """After `up`, the provisioning log says which subnet the nodes got (as the plan said it would be chosen)."""
    from tests.test_cloud_cluster import aws_offer, cluster_task
    import stacks.automation
    from configuration.backends import AWSBackend, DstackConfig
    from provisioner.backends.cloud import CloudBackend
    from provisioner.store.store import StateStore

    class Stack:
        name = "train-1-stack"

        def __init__(self, program):
            self.program = program

        def up(self, **_):
            recorder = SubnetRecorder(("subnet-0ccc",)).run(self.program)
            return type("Result", (), {"outputs": {k: type("Output", (), {"value": v})()
                                                   for k, v in recorder.exports.items()}})()

    monkeypatch.setattr(stacks.automation, "require_pulumi", lambda: None)
    monkeypatch.setattr(stacks.automation, "open_stack", lambda name, program, settings: Stack(program))
    monkeypatch.setattr("stacks.clouds.check_credentials", lambda backend, region: None)
    monkeypatch.setattr("provisioner.backends.cloud.await_boot", lambda *args, **kwargs: None)
    config = DstackConfig(backends=[AWSBackend(type="aws", vpc_name="ml-vpc")])
    steps = []
    CloudBackend("aws", config, StateStore()).create_stack("train-1", aws_offer(), cluster_task(1), steps.append,
                                                           tmp_path / "key", lambda stack: None)
    said = [f"{s.op} {s.type.split(':')[-1]} {s.name}: {s.state}" for s in steps]
    assert "use Subnet subnet-0ccc (VPC ml-vpc, us-east-1b): done" in said


def test_the_plan_says_how_a_named_vpcs_subnet_is_chosen(tmp_path, dstack_home):
    dstack_home.mkdir(parents=True)
    (dstack_home / "config.yml").write_text("backends:\n  - type: aws\n    vpc_name: ml-vpc\n")
    conf = write(tmp_path, "t.dstack.yml", "type: task\ncommands: [x]\nresources: {gpu: A10G:1}\n")
    result = run_cli("apply", "-f", conf, "-b", "aws", "--dry-run", "--json", env={"DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    zone = plan["offer"]["availability_zones"][0]
    assert any(note.startswith(f"subnet: VPC ml-vpc's subnet in {zone} that maps public IPs on launch")
               for note in plan["notes"]), plan.get("notes")
    [instance] = [r["inputs"] for r in plan["resources"] if r["type"] == "aws:ec2/instance:Instance"]
    assert instance["subnetId"] == "(looked up at apply: aws:ec2/getSubnets:getSubnets)"
    text = run_cli("apply", "-f", conf, "-b", "aws", "--dry-run", env={"DSTACK_HOME": str(dstack_home)})
    assert "Note: subnet: VPC ml-vpc's subnet in" in " ".join(text.stdout.split())


# --- EFA -------------------------------------------------------------------------------------------------------

def efa_cluster(instance_type="p5.48xlarge", nodes=3, **changes):
    return program(instance_type=instance_type, gpu_name="H100", gpu_count=8, gpu_memory_gib=80, cluster=True,
                   host_keys=KEYS[:nodes], **changes)


def test_a_p5_cluster_gets_32_efa_interfaces_per_node_and_an_elastic_ip_each():
    recorder = efa_cluster()
    [template] = recorder.of_type("aws:ec2/launchTemplate:LaunchTemplate")
    interfaces = template.inputs["networkInterfaces"]
    assert len(interfaces) == 32
    first = interfaces[0]
    assert (first["networkCardIndex"], first["deviceIndex"], first["interfaceType"]) == (0, 0, "efa")
    assert [(i["networkCardIndex"], i["deviceIndex"]) for i in interfaces[1:]] == [(card, 1) for card in range(1, 32)]
    assert {i["interfaceType"] for i in interfaces[1:]} == {"efa", "efa-only"}  # `efa` on every fourth card (P5)
    assert {i["associatePublicIpAddress"] for i in interfaces} == {"false"}  # several interfaces: no public IP
    assert {i["subnetId"] for i in interfaces} == {"subnet-found"}  # the zone's default subnet, looked up
    assert all(i["securityGroups"] == ["dstack-0a1b2c3d-train-1-sg-id"] for i in interfaces)
    filters = {f["name"]: f["values"] for f in recorder.call("aws:ec2/getSubnets:getSubnets")["filters"]}
    assert filters["default-for-az"] == ["true"] and filters["availability-zone"] == ["us-east-1b"]
    for instance in instances(recorder):
        assert instance["launchTemplate"]["id"] == "dstack-0a1b2c3d-train-1-efa-id"
        assert not {"associatePublicIpAddress", "vpcSecurityGroupIds", "subnetId"} & set(instance)
    eips = sorted(recorder.of_type("aws:ec2/eip:Eip"), key=lambda r: r.name)
    assert [e.name for e in eips] == [f"dstack-0a1b2c3d-train-1-{rank}-eip" for rank in range(3)]
    assert recorder.exports["public_ips"] == ["198.51.100.0", "198.51.100.1", "198.51.100.2"]
    assert recorder.exports["public_ip"] == "198.51.100.0"
    group = recorder.of_type("aws:ec2/securityGroup:SecurityGroup")[0].inputs
    assert any(rule.get("self") for rule in group["egress"]) and any(rule.get("self") for rule in group["ingress"])


def test_a_type_with_one_efa_interface_keeps_its_public_ip_at_launch():
    recorder = efa_cluster("g5.8xlarge", nodes=2)
    [template] = recorder.of_type("aws:ec2/launchTemplate:LaunchTemplate")
    [interface] = template.inputs["networkInterfaces"]
    assert (interface["interfaceType"], interface["associatePublicIpAddress"]) == ("efa", "true")
    assert not [r for r in recorder.resources if r.typ == "aws:ec2/eip:Eip"]
    assert recorder.exports["public_ips"] == ["203.0.113.0", "203.0.113.1"]


def test_p6_b300_has_its_efa_interfaces_beyond_network_card_0():
    [template] = efa_cluster("p6-b300.48xlarge", nodes=2).of_type("aws:ec2/launchTemplate:LaunchTemplate")
    interfaces = template.inputs["networkInterfaces"]
    assert (interfaces[0]["interfaceType"], len(interfaces)) == ("interface", 17)
    assert {i["interfaceType"] for i in interfaces[1:]} == {"efa-only"}


@pytest.mark.parametrize("changes", [{"cluster": False, "host_keys": KEYS[:1]}, {"instance_type": "g5.xlarge"}])
def test_no_efa_for_a_single_node_or_a_type_without_it(changes):
    recorder = program(**{"cluster": True, "host_keys": KEYS, **changes})
    assert not [r for r in recorder.resources if r.typ == "aws:ec2/launchTemplate:LaunchTemplate"]
    assert {i["associatePublicIpAddress"] for i in instances(recorder)} == {True}


def test_the_efa_table_is_ec2s():
    """Every EFA type of EC2's instance type data (as bundled with moto, the catalogue's source) with its count."""
    import gzip
    import os

    moto = pytest.importorskip("moto")
    from stacks.aws.efa import MAX_EFA_INTERFACES

    path = os.path.join(os.path.dirname(moto.__file__), "ec2", "resources", "instance_types.json.gz")
    with gzip.open(path) as f:
        data = json.load(f)
    expected = {name: info["NetworkInfo"]["EfaInfo"]["MaximumEfaInterfaces"] for name, info in data.items()
                if info["NetworkInfo"].get("EfaSupported")}
    assert MAX_EFA_INTERFACES == expected
    assert {MAX_EFA_INTERFACES[t] for t in ("p4d.24xlarge", "p5.48xlarge", "p5e.48xlarge", "p5en.48xlarge",
                                             "p6-b200.48xlarge", "g5.8xlarge", "g6.8xlarge")} == {4, 32, 16, 8, 1}


def test_apply_dry_run_of_a_3_node_p5_task_renders_its_efa_interfaces(tmp_path, dstack_home):
    from collections import Counter

    conf = write(tmp_path, "t.dstack.yml", "type: task\nname: dist\nnodes: 3\ncommands: [torchrun train.py]\n"
                 "resources: {gpu: H100:8}\n")
    result = run_cli("apply", "-f", conf, "-b", "aws", "--instance-type", "p5.48xlarge", "--dry-run", "--json",
                     env={"DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    counts = Counter(r["type"] for r in plan["resources"])
    assert counts["aws:ec2/instance:Instance"] == 3 and counts["aws:ec2/eip:Eip"] == 3
    assert counts["aws:ec2/launchTemplate:LaunchTemplate"] == 1
    [template] = [r["inputs"] for r in plan["resources"] if r["type"] == "aws:ec2/launchTemplate:LaunchTemplate"]
    assert len(template["networkInterfaces"]) == 32 and template["networkInterfaces"][0]["deviceIndex"] == 0
    for instance in (r["inputs"] for r in plan["resources"] if r["type"] == "aws:ec2/instance:Instance"):
        assert "associatePublicIpAddress" not in instance and "launchTemplate" in instance
    for eip in (r["inputs"] for r in plan["resources"] if r["type"] == "aws:ec2/eip:Eip"):
        assert eip["networkInterface"].startswith("(known at apply: ") and eip["domain"] == "vpc"
    assert any("p5.48xlarge takes EFA: each node gets 32 EFA interfaces" in note for note in plan["notes"])


@pytest.mark.parametrize("machine, lost", [("a3-megagpu-8g", "1,600 of its 1,800 Gbps"),
                                           ("a4-highgpu-8g", "3,200 of its 3,600 Gbps")])
def test_a_gcp_a3_or_a4_cluster_plan_names_the_bandwidth_its_gpu_nics_would_give(tmp_path, dstack_home, machine,
                                                                                 lost):
    pytest.importorskip("pulumi_gcp")
    conf = write(tmp_path, "t.dstack.yml", "type: task\nnodes: 2\ncommands: [x]\nresources: {gpu: 8}\n")
    # these types are sold on demand only through a reservation: spot here (offers.consumption)
    result = run_cli("apply", "-f", conf, "-b", "gcp", "--instance-type", machine, "--spot", "--dry-run", "--json",
                     env={"DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 0, result.stderr
    notes = json.loads(result.stdout)["notes"]
    assert any(note.startswith(f"{machine}: each node gets its first NIC only") and lost in note for note in notes)
    single = write(tmp_path, "one.dstack.yml", "type: task\ncommands: [x]\nresources: {gpu: 8}\n")
    alone = run_cli("apply", "-f", single, "-b", "gcp", "--instance-type", machine, "--spot", "--dry-run", "--json",
                    env={"DSTACK_HOME": str(dstack_home)})
    assert not [n for n in json.loads(alone.stdout).get("notes", []) if "NIC" in n]  # one node: nothing lost


# --- what a lost EFA stack leaves --------------------------------------------------------------------------------

def test_elastic_ips_and_launch_templates_of_a_lost_stack_are_swept(monkeypatch, moto_endpoint, dstack_home):
    import boto3

    from configuration.owner import owner_id
    from stacks.aws.leftovers import find_leftovers, remove_leftovers
    from tests.test_gc import tagged

    for name, value in {"AWS_ENDPOINT_URL_EC2": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    ec2 = boto3.client("ec2", region_name="ap-northeast-3")  # the moto server is shared: a region of this test's own
    address = ec2.allocate_address(Domain="vpc", TagSpecifications=[
        {"ResourceType": "elastic-ip", "Tags": tagged("efa-run", owner_id())}])["AllocationId"]
    template = ec2.create_launch_template(LaunchTemplateName=f"dstack-{owner_id()}-efa-run", LaunchTemplateData={},
                                          TagSpecifications=[{"ResourceType": "launch-template",
                                                              "Tags": tagged("efa-run", owner_id())}])
    template_id = template["LaunchTemplate"]["LaunchTemplateId"]
    ec2.allocate_address(Domain="vpc")  # not ours
    found = find_leftovers(ec2, "ap-northeast-3", owner_id(), run="efa-run")
    assert {(l.kind, l.id) for l in found} == {("elastic-ip", address), ("launch-template", template_id)}
    remove_leftovers(ec2, found)
    assert find_leftovers(ec2, "ap-northeast-3", owner_id(), run="efa-run") == []
    assert len(ec2.describe_addresses()["Addresses"]) == 1
