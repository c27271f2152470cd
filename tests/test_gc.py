"""`dstack gc` against a local moto server: tagged resources of runs that are not active are listed and removed;
those of an active run, and untagged ones, are left alone."""

import json
import time

import boto3
import pytest

from provisioner.store.records import RunRecord
from provisioner.store.store import StateStore
from tests.helpers import run_cli


@pytest.fixture
def aws(monkeypatch, moto_endpoint, dstack_home):
    env = {"AWS_ENDPOINT_URL_EC2": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "eu-west-3", "DSTACK_HOME": str(dstack_home)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return boto3.client("ec2", region_name="eu-west-3"), env


def tagged(run, owner):
    return [{"Key": "dstack:run", "Value": run}, {"Key": "dstack:owner", "Value": owner},
            {"Key": "dstack:project", "Value": "dstack"}, {"Key": "Name", "Value": f"dstack-{owner}-{run}"}]


def make_run_resources(ec2, run, owner=None):
    """A run's five kinds of resource (a cluster's placement group among them), tagged as this home's (owner None)
    or another owner's."""
    from configuration.owner import owner_id

    owner = owner or owner_id()
    spec = [{"ResourceType": kind, "Tags": tagged(run, owner)} for kind in ("instance", "volume")]
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                                 TagSpecifications=spec)["Instances"][0]["InstanceId"]
    group = ec2.create_security_group(GroupName=f"dstack-{owner}-{run}", Description="x", TagSpecifications=[
        {"ResourceType": "security-group", "Tags": tagged(run, owner)}])["GroupId"]
    key = ec2.create_key_pair(KeyName=f"dstack-{owner}-{run}", TagSpecifications=[
        {"ResourceType": "key-pair", "Tags": tagged(run, owner)}])["KeyName"]
    volume = ec2.create_volume(AvailabilityZone="eu-west-3a", Size=8, TagSpecifications=[
        {"ResourceType": "volume", "Tags": tagged(run, owner)}])["VolumeId"]
    placement = ec2.create_placement_group(GroupName=f"dstack-{owner}-{run}", Strategy="cluster", TagSpecifications=[
        {"ResourceType": "placement-group", "Tags": tagged(run, owner)}])["PlacementGroup"]["GroupName"]
    return {("instance", instance), ("security-group", group), ("key-pair", key), ("volume", volume),
            ("placement-group", placement)}  # the key pair and the placement group share the run's name


def test_gc_lists_and_removes_only_orphans(aws):
    ec2, env = aws
    orphan = make_run_resources(ec2, "ghost-run")
    live = make_run_resources(ec2, "live-run")
    ec2.create_security_group(GroupName="not-ours", Description="untagged")
    ec2.create_placement_group(GroupName="not-ours", Strategy="cluster")
    StateStore().create_run(RunRecord(name="live-run", status="running", submitted_at=time.time()))

    listed = run_cli("gc", "-r", "eu-west-3", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    leftovers = json.loads(listed.stdout)["leftovers"]
    assert {(l["kind"], l["id"]) for l in leftovers} == orphan
    assert {l["run"] for l in leftovers} == {"ghost-run"}

    declined = run_cli("gc", "-r", "eu-west-3", env=env, input="n\n")
    assert declined.returncode == 1 and "ghost-run" in declined.stdout
    removed = run_cli("gc", "-r", "eu-west-3", "-y", env=env)
    assert removed.returncode == 0, removed.stderr
    assert "Removed 5 resources" in removed.stderr
    assert json.loads(run_cli("gc", "-r", "eu-west-3", "--json", env=env).stdout)["leftovers"] == []
    state = ec2.describe_instances(InstanceIds=[i for kind, i in orphan if kind == "instance"])
    assert state["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
    remaining = {g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert "not-ours" in remaining and not any(name.endswith("-ghost-run") for name in remaining)
    assert any(name.endswith("-live-run") for name in remaining)
    placement_groups = {g["GroupName"] for g in ec2.describe_placement_groups()["PlacementGroups"]}
    assert "not-ours" in placement_groups and not any(name.endswith("-ghost-run") for name in placement_groups)
    assert live  # the active run's resources were never listed


def test_a_runs_own_leftovers_are_found_by_its_tag(aws):
    from stacks.aws.leftovers import find_leftovers, remove_leftovers

    ec2, _ = aws
    mine = make_run_resources(ec2, "pending-run")
    other = make_run_resources(ec2, "other-run")
    from configuration.owner import owner_id

    found = find_leftovers(ec2, "eu-west-3", owner_id(), run="pending-run")
    assert {(l.kind, l.id) for l in found} == mine
    remove_leftovers(ec2, found)
    assert find_leftovers(ec2, "eu-west-3", owner_id(), run="pending-run") == []
    assert {(l.kind, l.id) for l in find_leftovers(ec2, "eu-west-3", owner_id(), run="other-run")} == other


def test_gc_and_sweeps_leave_another_owners_resources_alone(aws):
    """Two users of one account, both with a run named `train`: this home's gc and teardown sweep touch only its own."""
    from configuration.owner import owner_id
    from stacks.aws.leftovers import sweep_run as sweep_aws_run

    ec2, env = aws
    theirs = make_run_resources(ec2, "train", owner="0badf00d")
    mine = make_run_resources(ec2, "train")
    listed = json.loads(run_cli("gc", "-r", "eu-west-3", "--json", env=env).stdout)["leftovers"]
    assert {(l["kind"], l["id"]) for l in listed} == mine and {l["owner"] for l in listed} == {owner_id()}

    def every_owners_train():  # the moto server is shared by the whole session: other tests' runs are there too
        listed = run_cli("gc", "-r", "eu-west-3", "--json", "--all-owners", env=env).stdout
        return {(l["kind"], l["id"]) for l in json.loads(listed)["leftovers"] if l["run"] == "train"}

    assert every_owners_train() == mine | theirs
    sweep_aws_run("eu-west-3", owner_id(), "train")
    assert every_owners_train() == theirs
