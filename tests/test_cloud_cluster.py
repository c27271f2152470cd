"""A cluster's N nodes in one cloud stack: the AWS and GCP programs under Pulumi's mocks (asserting on the resources'
inputs), their outputs, CloudBackend.create_stack's hosts in rank order, all-or-nothing `up`, and the plan."""

import dataclasses
import json

import pytest

from stacks.aws.program import aws_program
from stacks.gcp.program import gcp_program
from stacks.spec import generate_host_key
from tests.test_stacks import BASE, Recorder, is_secret

KEYS = tuple(generate_host_key() for _ in range(3))
TAGS = {"dstack:run": "train-1", "dstack:owner": "0a1b2c3d", "dstack:project": "dstack"}
NAME = "dstack-0a1b2c3d-train-1"
GCP = dict(backend="gcp", instance_type="a2-highgpu-1g", region="us-central1", zone="us-central1-a",
           gpu_name="A100", gpu_memory_gib=40, gcp_project_id="my-project")


def rank_of(name: str) -> int:
    """A node's rank from its instance's name (`NAME-RANK`; a stack of one node's is `NAME`)."""
    return int(name[len(NAME) + 1:] or 0)


class ClusterRecorder(Recorder):
    """Recorder whose instances get addresses by rank (public 203.0.113.R, private 10.0.0.R) and whose resources
    get the outputs the cloud computes; `exports` holds what the program exported, resolved."""

    def __init__(self):
        super().__init__()
        self.exports = {}
        new_resource = self.mocks.new_resource

        def with_addresses(args):
            resource_id, outputs = new_resource(args)
            if args.typ == "aws:ec2/instance:Instance":
                rank = rank_of(args.name)
                outputs.update(publicIp=f"203.0.113.{rank}", privateIp=f"10.0.0.{rank}")
            elif args.typ == "gcp:compute/instance:Instance":
                rank = rank_of(args.name)
                outputs["networkInterfaces"] = [{**args.inputs["networkInterfaces"][0], "networkIp": f"10.0.0.{rank}",
                                                 "accessConfigs": [{"natIp": f"203.0.113.{rank}"}]}]
            elif args.typ == "gcp:compute/resourcePolicy:ResourcePolicy":
                outputs["selfLink"] = f"projects/my-project/regions/us-central1/resourcePolicies/{args.inputs['name']}"
            return resource_id, outputs

        self.mocks.new_resource = with_addresses

    def run(self, program):
        import pulumi

        exported = {}

        def capturing():
            real_export = pulumi.export
            pulumi.export = lambda key, value: exported.__setitem__(key, value)
            try:
                program()
            finally:
                pulumi.export = real_export
            return pulumi.Output.from_input(exported).apply(self.exports.update)

        return super().run(capturing)


def aws(**changes):
    spec = dataclasses.replace(BASE, **{"host_keys": KEYS, "cluster": True, "ports": (), **changes})
    return ClusterRecorder().run(lambda: aws_program(spec))


def gcp(**changes):
    spec = dataclasses.replace(BASE, **{**GCP, "host_keys": KEYS, "cluster": True, "ports": (), **changes})
    return ClusterRecorder().run(lambda: gcp_program(spec))


def user_data_keys(user_data: str):
    """Which of KEYS a VM's user data installs (the private key's third line is its own: the first two are the
    format's header)."""
    return [rank for rank, key in enumerate(KEYS)
            if key.private_openssh.strip().splitlines()[2] in user_data and key.public_openssh in user_data]


# --- AWS --------------------------------------------------------------------------------------------------------

def test_aws_cluster_nodes_share_a_zone_a_placement_group_and_a_self_referencing_rule():
    recorder = aws()
    instances = sorted(recorder.of_type("aws:ec2/instance:Instance"), key=lambda r: r.name)
    assert [i.name for i in instances] == [f"{NAME}-0", f"{NAME}-1", f"{NAME}-2"]
    assert {i.inputs["availabilityZone"] for i in instances} == {"us-east-1b"}
    [group] = recorder.of_type("aws:ec2/placementGroup:PlacementGroup")
    assert group.inputs["strategy"] == "cluster" and group.inputs["name"] == NAME
    assert {i.inputs["placementGroup"] for i in instances} == {NAME}
    [security_group] = recorder.of_type("aws:ec2/securityGroup:SecurityGroup")
    assert {i.inputs["vpcSecurityGroupIds"][0] for i in instances} == {f"{NAME}-sg-id"}  # the one group
    ingress = security_group.inputs["ingress"]
    internet = [r for r in ingress if r.get("cidrBlocks")]
    assert [(r["protocol"], r["fromPort"], r["toPort"], r["cidrBlocks"]) for r in internet] == [
        ("tcp", 22, 22, ["0.0.0.0/0"])]  # the internet still reaches SSH alone
    [members] = [r for r in ingress if not r.get("cidrBlocks")]
    assert members["self"] is True and (members["protocol"], members["fromPort"], members["toPort"]) == ("-1", 0, 0)
    assert not members.get("securityGroups") and not members.get("ipv6CidrBlocks")


def test_aws_security_group_texts_use_only_the_characters_ec2_accepts():
    import re

    [group] = aws(ports=(8080,)).of_type("aws:ec2/securityGroup:SecurityGroup")
    texts = [group.inputs["description"]] + [r["description"] for r in group.inputs["ingress"]]
    assert len(texts) == 4 and all(re.fullmatch(r"[a-zA-Z0-9 ._:/()#,@\[\]+=;{}!$*-]{1,255}", t) for t in texts), texts


def test_aws_each_node_has_its_own_host_key_and_name_tag_and_shares_the_login_key():
    recorder = aws()
    instances = sorted(recorder.of_type("aws:ec2/instance:Instance"), key=lambda r: r.name)
    for rank, instance in enumerate(instances):
        assert is_secret(instance.inputs["userData"])
        assert user_data_keys(instance.inputs["userData"]["value"]) == [rank]
        assert "--unit=dstack-start-watchdog" in instance.inputs["userData"]["value"]  # each VM ends itself
        assert instance.inputs["tags"] == {**TAGS, "Name": f"{NAME}-{rank}"}
        assert instance.inputs["rootBlockDevice"]["tags"] == {**TAGS, "Name": f"{NAME}-{rank}"}
        assert instance.inputs["keyName"] == NAME
    [key] = recorder.of_type("aws:ec2/keyPair:KeyPair")
    assert key.inputs["publicKey"] == BASE.ssh_public_key
    for typ in ("aws:ec2/placementGroup:PlacementGroup", "aws:ec2/securityGroup:SecurityGroup"):
        assert recorder.of_type(typ)[0].inputs["tags"] == {**TAGS, "Name": NAME}


def test_aws_outputs_list_every_node_in_rank_order():
    exports = aws().exports
    assert exports["public_ips"] == ["203.0.113.0", "203.0.113.1", "203.0.113.2"]
    assert exports["private_ips"] == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert (exports["public_ip"], exports["private_ip"]) == ("203.0.113.0", "10.0.0.0")
    assert exports["instance_ids"] == [f"{NAME}-{rank}-id" for rank in range(3)] and exports["ssh_user"] == "ubuntu"


@pytest.mark.parametrize("instance_type", ["t3.large", "t4g.xlarge", "m7i-flex.large", "mac2.metal"])
def test_aws_types_a_placement_group_refuses_go_without_one(instance_type):
    from stacks.aws.program import placement_note

    recorder = aws(instance_type=instance_type, gpu_vendor="", gpu_name="", gpu_count=0)
    assert "aws:ec2/placementGroup:PlacementGroup" not in {r.typ for r in recorder.resources}
    assert all("placementGroup" not in i.inputs for i in recorder.of_type("aws:ec2/instance:Instance"))
    ingress = recorder.of_type("aws:ec2/securityGroup:SecurityGroup")[0].inputs["ingress"]
    assert any(r.get("self") for r in ingress)  # the nodes still reach each other
    assert instance_type in placement_note(instance_type)
    assert placement_note("g5.xlarge") is None and placement_note("trn1.32xlarge") is None


def test_aws_one_node_is_as_before():
    recorder = aws(host_keys=KEYS[:1], cluster=False)
    assert "aws:ec2/placementGroup:PlacementGroup" not in {r.typ for r in recorder.resources}
    [instance] = recorder.of_type("aws:ec2/instance:Instance")
    assert instance.name == NAME and instance.inputs["tags"]["Name"] == NAME and "placementGroup" not in instance.inputs
    ingress = recorder.of_type("aws:ec2/securityGroup:SecurityGroup")[0].inputs["ingress"]
    assert [r["fromPort"] for r in ingress] == [22] and not any(r.get("self") for r in ingress)
    assert recorder.exports["public_ips"] == ["203.0.113.0"] and recorder.exports["public_ip"] == "203.0.113.0"


# --- GCP --------------------------------------------------------------------------------------------------------

def test_gcp_cluster_nodes_share_a_zone_a_compact_policy_and_a_firewall_between_them():
    recorder = gcp()
    instances = sorted(recorder.of_type("gcp:compute/instance:Instance"), key=lambda r: r.name)
    assert [i.inputs["name"] for i in instances] == [f"{NAME}-0", f"{NAME}-1", f"{NAME}-2"]
    assert {i.inputs["zone"] for i in instances} == {"us-central1-a"}
    [policy] = recorder.of_type("gcp:compute/resourcePolicy:ResourcePolicy")
    assert policy.inputs["groupPlacementPolicy"] == {"collocation": "COLLOCATED"}
    assert policy.inputs["region"] == "us-central1" and policy.inputs["name"] == NAME
    assert policy.inputs["description"].startswith("dstack run train-1:")  # how a sweep knows it
    assert {i.inputs["resourcePolicies"] for i in instances} == {
        f"projects/my-project/regions/us-central1/resourcePolicies/{NAME}"}
    assert {i.inputs["scheduling"]["onHostMaintenance"] for i in instances} == {"TERMINATE"}
    assert {tuple(i.inputs["tags"]) for i in instances} == {(NAME,)}
    firewalls = {f.inputs["name"]: f.inputs for f in recorder.of_type("gcp:compute/firewall:Firewall")}
    assert set(firewalls) == {NAME, f"{NAME}-nodes"}
    internet = firewalls[NAME]
    assert internet["allows"] == [{"protocol": "tcp", "ports": ["22"]}] and internet["sourceRanges"] == ["0.0.0.0/0"]
    members = firewalls[f"{NAME}-nodes"]
    assert members["allows"] == [{"protocol": "all"}]
    assert members["sourceTags"] == [NAME] and members["targetTags"] == [NAME] and "sourceRanges" not in members
    assert members["description"] == "dstack run train-1: every port between its nodes"


def test_gcp_each_node_has_its_own_host_key_and_may_be_deleted_by_the_runs_account_only():
    recorder = gcp()
    instances = sorted(recorder.of_type("gcp:compute/instance:Instance"), key=lambda r: r.name)
    for rank, instance in enumerate(instances):
        assert is_secret(instance.inputs["metadata"])
        assert user_data_keys(instance.inputs["metadata"]["value"]["user-data"]) == [rank]
        assert instance.inputs["labels"] == {"dstack-run": "train-1", "dstack-owner": "0a1b2c3d",
                                             "dstack-project": "dstack"}
    from stacks.gcp.program import service_account_id

    email = f"{service_account_id('0a1b2c3d', 'train-1')}@my-project.iam.gserviceaccount.com"  # one, made before `up`
    assert {i.inputs["serviceAccount"]["email"] for i in instances} == {email}
    bindings = recorder.of_type("gcp:compute/instanceIAMMember:InstanceIAMMember")
    assert sorted(b.inputs["instanceName"] for b in bindings) == [f"{NAME}-{rank}" for rank in range(3)]
    assert {(b.inputs["role"], b.inputs["member"]) for b in bindings} == {
        ("roles/compute.instanceAdmin.v1", f"serviceAccount:{email}")}
    assert [r.typ for r in recorder.resources if "iam" in r.typ.lower()] == [bindings[0].typ] * 3  # nothing else


def test_gcp_outputs_list_every_node_in_rank_order():
    exports = gcp().exports
    assert exports["public_ips"] == ["203.0.113.0", "203.0.113.1", "203.0.113.2"]
    assert exports["private_ips"] == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert (exports["public_ip"], exports["private_ip"]) == ("203.0.113.0", "10.0.0.0")


@pytest.mark.parametrize("machine, compact", [("e2-standard-8", False), ("n1-standard-8", False),
                                              ("n4-standard-8", False), ("n2-standard-8", True),
                                              ("c2d-standard-8", True), ("c3-standard-8", True)])
def test_gcp_compact_policy_only_where_the_machine_series_takes_one(machine, compact):
    from stacks.gcp.program import placement_note

    recorder = gcp(instance_type=machine, gpu_vendor="", gpu_name="", gpu_count=0)
    types = {r.typ for r in recorder.resources}
    assert ("gcp:compute/resourcePolicy:ResourcePolicy" in types) == compact
    instance = recorder.of_type("gcp:compute/instance:Instance")[0].inputs
    assert ("resourcePolicies" in instance) == compact
    assert instance["scheduling"]["onHostMaintenance"] == ("TERMINATE" if compact else "MIGRATE")
    assert len(recorder.of_type("gcp:compute/firewall:Firewall")) == 2  # the nodes reach each other regardless
    assert (placement_note(machine) is None) == compact


def test_gcp_one_node_is_as_before():
    recorder = gcp(host_keys=KEYS[:1], cluster=False)
    types = {r.typ for r in recorder.resources}
    assert "gcp:compute/resourcePolicy:ResourcePolicy" not in types
    assert [f.inputs["name"] for f in recorder.of_type("gcp:compute/firewall:Firewall")] == [NAME]
    [instance] = recorder.of_type("gcp:compute/instance:Instance")
    assert instance.inputs["name"] == NAME and "resourcePolicies" not in instance.inputs
    [binding] = recorder.of_type("gcp:compute/instanceIAMMember:InstanceIAMMember")
    assert binding.name == f"{NAME}-self-delete"
    assert recorder.exports["private_ips"] == ["10.0.0.0"]


# --- from a configuration to the stack and its hosts --------------------------------------------------------------

def test_node_count_and_cluster_from_tasks_and_fleets():
    from types import SimpleNamespace

    from configuration.loader import parse_configuration
    from provisioner.planning.stack_plan import forms_cluster, node_count

    task = parse_configuration("type: task\nnodes: 3\ncommands: ['true']\n", "t.dstack.yml")
    single = parse_configuration("type: task\ncommands: ['true']\n", "t.dstack.yml")
    assert (node_count(task), forms_cluster(task)) == (3, True)
    assert (node_count(single), forms_cluster(single)) == (1, False)
    # A cloud fleet, before its fields exist here: `nodes` a number or a range, `placement` cluster or not.
    ranged = SimpleNamespace(type="fleet", nodes=SimpleNamespace(min=2, max=4), placement="cluster")
    assert (node_count(ranged), forms_cluster(ranged)) == (2, True)
    targeted = SimpleNamespace(type="fleet", nodes=SimpleNamespace(min=1, target=3, max=4), placement=None)
    assert (node_count(targeted), forms_cluster(targeted)) == (3, False)
    assert node_count(SimpleNamespace(type="fleet", nodes=2)) == 2
    assert not forms_cluster(SimpleNamespace(type="fleet", nodes=2))
    shape = SimpleNamespace(nodes=3, placement=None)  # a fleet's shape, which has no `type`
    assert (node_count(shape), forms_cluster(shape)) == (3, False)
    assert forms_cluster(SimpleNamespace(nodes=3, placement="cluster"))


def test_a_fleets_stack_spec_before_fleets_have_ports_tags_or_max_duration(dstack_home):
    from types import SimpleNamespace

    from configuration.backends import DstackConfig
    from provisioner.planning.stack_plan import generate_host_keys, stack_spec

    fleet = SimpleNamespace(type="fleet", name="pool", nodes=SimpleNamespace(min=2, max=4), placement="cluster")
    spec = stack_spec("pool", fleet, aws_offer(), "ssh-ed25519 K", generate_host_keys(fleet), DstackConfig())
    assert (spec.nodes, spec.cluster, spec.zone) == (2, True, "us-east-1b")
    assert (spec.ports, spec.user_tags, spec.max_duration_s) == ((), (), None)
    assert len({key.public_openssh for key in spec.host_keys}) == 2


@pytest.fixture
def cloud(monkeypatch, dstack_home):
    """CloudBackend with the engine replaced: `up` runs the program under the mocks (or fails as told) and what
    the stack would do is recorded."""
    import stacks.automation
    from configuration.backends import AWSBackend, DstackConfig
    from provisioner.backends.cloud import CloudBackend
    from provisioner.store.store import StateStore

    seen = {"destroyed": 0}

    class Stack:
        name = "train-1-stack"
        failure = None

        def __init__(self, program):
            self.program = program

        def up(self, **_):
            from pulumi.automation import errors
            from pulumi.automation._cmd import CommandResult

            if Stack.failure:
                raise errors.CommandError(CommandResult(stdout="", stderr=Stack.failure, code=1))
            recorder = ClusterRecorder().run(self.program)
            seen["recorder"] = recorder
            return SimpleResult(recorder.exports)

        def refresh(self, **_):
            pass

        def destroy(self, **_):
            seen["destroyed"] += 1

        @property
        def workspace(self):
            return type("Workspace", (), {"remove_stack": lambda _, name: seen.setdefault("removed", name)})()

    class SimpleResult:
        def __init__(self, exports):
            self.outputs = {k: type("Output", (), {"value": v})() for k, v in exports.items()}

    monkeypatch.setattr(stacks.automation, "require_pulumi", lambda: None)
    monkeypatch.setattr(stacks.automation, "open_stack", lambda name, program, settings: Stack(program))
    monkeypatch.setattr("stacks.clouds.check_credentials", lambda backend, region: None)
    # the nodes' addresses are made up: their first SSH answer is recorded, never sought
    monkeypatch.setattr("provisioner.backends.cloud.await_boot",
                        lambda hosts, deadline: seen.setdefault("awaited", [h.hostname for h in hosts]))
    config = DstackConfig(backends=[AWSBackend(type="aws")])
    return CloudBackend("aws", config, StateStore()), Stack, seen


def cluster_task(nodes=3):
    from configuration.loader import parse_configuration

    return parse_configuration(f"type: task\nnodes: {nodes}\ncommands: ['true']\n", "t.dstack.yml")


def aws_offer(instance_type="g5.xlarge"):
    from offers.catalog import load_catalogs
    from offers.offer import Offer

    types = {t.name: t for t in load_catalogs(["aws"])[0].types}
    return Offer("aws", types[instance_type], "us-east-1", ("us-east-1b",), False, 1.0, 100.0, 0.0)


def test_create_stack_returns_every_node_in_rank_order_with_its_own_host_key(cloud, tmp_path):
    backend, _, seen = cloud
    recorded = []
    hosts = backend.create_stack("train-1", aws_offer(), cluster_task(), lambda *_: None, tmp_path / "key",
                                 recorded.append)
    assert [h.hostname for h in hosts] == ["203.0.113.0", "203.0.113.1", "203.0.113.2"]
    assert [h.internal_ip for h in hosts] == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert {h.user for h in hosts} == {"ubuntu"} and {h.identity_file for h in hosts} == {str(tmp_path / "key")}
    instances = sorted(seen["recorder"].of_type("aws:ec2/instance:Instance"), key=lambda r: r.name)
    for host, instance in zip(hosts, instances):  # the key each host is verified by is the one its VM installs
        key_line = host.host_key.split()[1]
        assert f"ed25519_public: ssh-ed25519 {key_line}" in instance.inputs["userData"]["value"]
    assert len({h.host_key for h in hosts}) == 3
    assert recorded and recorded[0]["backend"] == "aws" and seen["destroyed"] == 0
    assert seen["awaited"] == [h.hostname for h in hosts]  # every node's first answer awaited before it is returned
    assert oct((tmp_path / "key").stat().st_mode & 0o777) == "0o600"


def test_a_node_that_cannot_be_created_fails_the_whole_stack_which_is_destroyed(cloud, tmp_path):
    from stacks.errors import StackFailure

    backend, stack_class, seen = cloud
    stack_class.failure = (
        "error: update failed\n  aws:ec2:Instance (dstack-0a1b2c3d-train-1-2):\n    error: creating EC2 Instance: "
        "operation error EC2: RunInstances, https response error StatusCode: 500, RequestID: 3f0c, api error "
        "InsufficientInstanceCapacity: We currently do not have sufficient g5.xlarge capacity in the Availability "
        "Zone you requested (us-east-1b).")
    with pytest.raises(StackFailure) as failure:
        backend.create_stack("train-1", aws_offer(), cluster_task(), lambda *_: None, tmp_path / "key",
                             lambda stack: None)
    assert (failure.value.kind, failure.value.scope) == ("capacity", "zone")  # failover tries the next zone
    assert seen["destroyed"] == 1 and seen["removed"] == "train-1-stack"  # the nodes that were made are gone


def test_dry_run_of_a_cluster_renders_its_nodes_and_notes_a_missing_placement_group(dstack_home):
    from configuration.backends import DstackConfig
    from provisioner.planning.stack_plan import dry_run_resources, placement_notes

    resources = dry_run_resources("train-1", cluster_task(), aws_offer(), DstackConfig())
    names = [r["name"] for r in resources if r["type"] == "aws:ec2/instance:Instance"]
    assert [name.rsplit("-", 1)[-1] for name in names] == ["0", "1", "2"]
    assert len([r for r in resources if r["type"] == "aws:ec2/placementGroup:PlacementGroup"]) == 1
    assert "PRIVATE KEY" not in json.dumps(resources)
    assert placement_notes(cluster_task(), aws_offer()) == []
    assert placement_notes(cluster_task(1), aws_offer("t3.large")) == []  # one node: no cluster
    [note] = placement_notes(cluster_task(), aws_offer("t3.large"))
    assert "t3.large cannot join a cluster placement group" in note


@pytest.mark.parametrize("backend, gpu, types", [
    ("aws", "A10G:1", {"aws:ec2/placementGroup:PlacementGroup": 1, "aws:ec2/instance:Instance": 3,
             "aws:ec2/securityGroup:SecurityGroup": 1, "aws:ec2/keyPair:KeyPair": 1}),
    ("gcp", "A100:1", {"gcp:compute/resourcePolicy:ResourcePolicy": 1, "gcp:compute/instance:Instance": 3,
             "gcp:compute/firewall:Firewall": 2, "gcp:compute/instanceIAMMember:InstanceIAMMember": 3}),
])
def test_apply_dry_run_json_of_three_nodes_shows_three_instances(tmp_path, dstack_home, backend, gpu, types):
    from collections import Counter

    from tests.helpers import run_cli

    conf = tmp_path / "t.dstack.yml"
    conf.write_text(f"type: task\nname: dist\nnodes: 3\ncommands: [python train.py]\nresources: {{gpu: '{gpu}'}}\n")
    result = run_cli("apply", "-f", str(conf), "-b", backend, "--dry-run", "--json",
                     env={"DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert Counter(r["type"] for r in plan["resources"]) == types
    instances = [r["inputs"] for r in plan["resources"] if r["type"].endswith("/instance:Instance")]
    zones = {i["availabilityZone"] if backend == "aws" else i["zone"] for i in instances}
    assert len(zones) == 1 and zones == {plan["offer"]["availability_zones"][0]}
    if backend == "aws":
        group = next(r for r in plan["resources"] if r["type"].endswith("SecurityGroup"))["inputs"]
        assert [(r["fromPort"], r.get("self", False)) for r in group["ingress"]] == [(22, False), (0, True)]
    else:
        firewalls = [r["inputs"] for r in plan["resources"] if r["type"].endswith("Firewall")]
        assert sorted(f["allows"][0]["protocol"] for f in firewalls) == ["all", "tcp"]
    assert "PRIVATE KEY" not in result.stdout


# --- node groups: per-node instance types in one stack -------------------------------------------------------------

def node_types(*types):
    from stacks.spec import NodeType

    return tuple(NodeType(instance_type=name, arch="x86", gpu_vendor="nvidia" if gpus else "", gpu_name=gpu,
                          gpu_count=gpus, gpu_memory_gib=memory, disk_gb=100) for name, gpu, gpus, memory in types)


def test_aws_node_groups_each_node_its_type_and_image_one_placement_group():
    recorder = aws(node_types=node_types(("c5.large", "", 0, 0), ("g5.xlarge", "A10G", 1, 24),
                                         ("g5.xlarge", "A10G", 1, 24)))
    instances = sorted(recorder.of_type("aws:ec2/instance:Instance"), key=lambda r: r.name)
    assert [i.inputs["instanceType"] for i in instances] == ["c5.large", "g5.xlarge", "g5.xlarge"]
    assert [i.inputs["rootBlockDevice"]["volumeSize"] for i in instances] == [100, 100, 100]
    [group] = recorder.of_type("aws:ec2/placementGroup:PlacementGroup")
    assert {i.inputs["placementGroup"] for i in instances} == {group.inputs["name"]}
    images = [c.args for c in recorder.calls if c.token == "aws:ec2/getAmi:getAmi"]
    names = sorted(f["values"][0] for c in images for f in c["filters"] if f["name"] == "name")
    assert len(images) == 2 and "Nvidia" in names[0] and "ubuntu" in names[1]  # one lookup per distinct image
    assert len(recorder.of_type("aws:ec2/securityGroup:SecurityGroup")) == 1


def test_gcp_node_groups_each_node_its_machine_type_one_compact_policy():
    recorder = gcp(node_types=node_types(("n2-standard-2", "", 0, 0), ("a2-highgpu-1g", "A100", 1, 40),
                                         ("a2-highgpu-1g", "A100", 1, 40)))
    instances = sorted(recorder.of_type("gcp:compute/instance:Instance"), key=lambda r: r.name)
    assert [i.inputs["machineType"] for i in instances] == ["n2-standard-2", "a2-highgpu-1g", "a2-highgpu-1g"]
    assert len({i.inputs["zone"] for i in instances}) == 1
    [policy] = recorder.of_type("gcp:compute/resourcePolicy:ResourcePolicy")
    assert {i.inputs["resourcePolicies"] for i in instances} == {
        f"projects/my-project/regions/us-central1/resourcePolicies/{policy.inputs['name']}"}
    images = [c.args for c in recorder.calls if c.token == "gcp:compute/getImage:getImage"]
    assert len(images) == 2


def test_node_types_must_match_the_node_count():
    with pytest.raises(ValueError, match="one node type per node"):
        dataclasses.replace(BASE, host_keys=KEYS, node_types=node_types(("c5.large", "", 0, 0)))
