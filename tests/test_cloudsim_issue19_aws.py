"""Issue 19's AWS defects as scenarios against the simulated cloud (tests.cloudsim): each failed before its fix
(branch c19-aws, merged) and passes with it."""

import pytest

from tests.cloudsim.aws import instance_of
from tests.cloudsim.tasks import AWS_FLEET
from tests.cloudsim.tasks import aws_task as task
from tests.helpers import write

pytestmark = pytest.mark.cloudsim


def test_a_local_zone_is_no_offer(cloudsim, tmp_path, dstack_home):
    """g4dn.xlarge's cheapest spot offers in us-west-2 are in its Los Angeles Local Zones, where the default VPC has
    no subnet: a run must not be offered them."""
    conf = task(tmp_path, "local-1", regions="us-west-2", types="g4dn.xlarge", extra="spot_policy: spot\n")
    result = cloudsim.dstack("apply", "-f", conf, "-b", "aws", "-y", home=dstack_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert cloudsim.refusals() == [] and "lax" not in result.stdout
    assert [i.zone for i in cloudsim.ever("Instance")] == ["us-west-2a"] and cloudsim.live() == []


def test_a_zone_without_a_default_subnet_is_skipped(cloudsim, tmp_path, dstack_home):
    cloudsim.aws.remove_default_subnet("us-east-1", "us-east-1a")
    result = cloudsim.dstack("apply", "-f", task(tmp_path, "subnet-1"), "-b", "aws", "-y", home=dstack_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [i.zone for i in cloudsim.ever("Instance")] == ["us-east-1b"] and cloudsim.live() == []


def test_unsupported_configuration_in_a_zone_moves_to_the_next_zone(cloudsim, tmp_path, dstack_home):
    cloudsim.aws.refuse_zone("us-east-1a", "unsupported")
    result = cloudsim.dstack("apply", "-f", task(tmp_path, "unsupported-1"), "-b", "aws", "-y", home=dstack_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The requested configuration is currently not supported" in cloudsim.refusals()[0]
    assert [i.zone for i in cloudsim.ever("Instance")] == ["us-east-1b"] and cloudsim.live() == []


def test_a_cloud_fleet_without_idle_duration_powers_off_after_three_idle_days(cloudsim, tmp_path, dstack_home):
    made = cloudsim.dstack("apply", "-f", write(tmp_path, "fleet.dstack.yml", AWS_FLEET), "-y", home=dstack_home)
    assert made.returncode == 0, made.stdout + made.stderr
    instance = instance_of(cloudsim.world)
    idle = cloudsim.world.timers_of(instance).get("dstack-idle-power-off")
    assert idle is not None and 3 * 86400 - 120 < idle <= 3 * 86400


def test_a_cloud_fleet_moves_to_the_next_zone_when_one_has_no_capacity(cloudsim, tmp_path, dstack_home):
    cloudsim.aws.refuse_zone("us-east-1a", "capacity")
    fleet = write(tmp_path, "fleet.dstack.yml", AWS_FLEET + "idle_duration: 1h\n")
    made = cloudsim.dstack("apply", "-f", fleet, "-y", home=dstack_home)
    assert made.returncode == 0, made.stdout + made.stderr
    assert [i.zone for i in cloudsim.live("Instance")] == ["us-east-1b"]
    deleted = cloudsim.dstack("fleet", "delete", "pool", "-y", home=dstack_home)
    assert deleted.returncode == 0 and cloudsim.live() == []


def test_a_cluster_of_an_efa_type_gets_efa_interfaces_and_elastic_ips(cloudsim, tmp_path, dstack_home):
    conf = task(tmp_path, "efa-1", types="c6in.32xlarge", command="echo node $DSTACK_NODE_RANK", extra="nodes: 2\n")
    result = cloudsim.dstack("apply", "-f", conf, "-b", "aws", "-y", home=dstack_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "node 0" in result.stdout and "node 1" in result.stdout
    instances = cloudsim.ever("Instance")
    assert len(instances) == 2
    for instance in instances:  # c6in.32xlarge takes 2 EFA interfaces (describe_instance_types)
        assert [i.get("interfaceType") for i in instance.extra["interfaces"]] == ["efa", "efa-only"]
    assert len(cloudsim.ever("Eip")) == 2  # several interfaces: no public address of its own, an Elastic IP each
    assert cloudsim.live() == []


def test_in_a_named_vpc_the_run_gets_the_zones_public_subnet(cloudsim, tmp_path, dstack_home):
    """my-vpc has two subnets in us-east-1a: the first private (no route to the internet gateway), the second
    public. A node in the private one can never be reached."""
    ec2 = cloudsim.aws.ec2("us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.8.0.0/16", TagSpecifications=[
        {"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": "my-vpc"}]}])["Vpc"]["VpcId"]
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    private = ec2.create_subnet(VpcId=vpc, CidrBlock="10.8.1.0/24", AvailabilityZone="us-east-1a")["Subnet"]
    public = ec2.create_subnet(VpcId=vpc, CidrBlock="10.8.2.0/24", AvailabilityZone="us-east-1a")["Subnet"]
    ec2.modify_subnet_attribute(SubnetId=public["SubnetId"], MapPublicIpOnLaunch={"Value": True})
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway)
    ec2.associate_route_table(RouteTableId=table, SubnetId=public["SubnetId"])
    cloudsim.write_config(dstack_home, gcp=False, aws_vpc_name="my-vpc")
    result = cloudsim.dstack("apply", "-f", task(tmp_path, "vpc-1"), "-b", "aws", "-y", home=dstack_home, timeout=25)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [i.extra["subnet"] for i in cloudsim.ever("Instance")] == [public["SubnetId"]]
    assert private["SubnetId"] not in result.stdout + result.stderr and cloudsim.live() == []


def test_a_vm_that_never_answers_is_given_up_for_the_next_offer(cloudsim, tmp_path, dstack_home):
    cloudsim.world.never_boot = 1  # the first VM never comes up
    conf = task(tmp_path, "silent-1", types="t3a.large, m5a.large")
    budget = {"provisioner.backends.cloud:BOOT_BUDGET_CPU_S": 4, "provisioner.backends.cloud:MIN_BOOT_WAIT_S": 2}
    result = cloudsim.dstack("apply", "-f", conf, "-b", "aws", "-y", home=dstack_home, patches=budget, timeout=25)
    assert result.returncode == 0, result.stdout + result.stderr
    first, second = cloudsim.ever("Instance")
    assert first.inputs["instanceType"] == "t3a.large" and first.deleted_by == "engine"
    assert second.inputs["instanceType"] == "m5a.large" and "hello from silent-1" in result.stdout
    assert cloudsim.live() == []


def test_a_run_name_gcp_cannot_take_is_refused_before_anything_is_made(cloudsim, tmp_path, dstack_home):
    """GCP names end with a letter or digit (Compute Engine, "Naming resources"): `train-` is refused with the
    file and field, before any cloud call."""
    conf = write(tmp_path, "t.dstack.yml", "type: task\nname: train-\ncommands: [echo hi]\n"
                                           "instance_types: [e2-standard-2]\nregions: [us-central1]\n")
    result = cloudsim.dstack("apply", "-f", conf, "-b", "gcp", "-y", home=dstack_home)
    assert result.returncode == 1
    assert "t.dstack.yml" in result.stderr and "name" in result.stderr and "Traceback" not in result.stderr
    assert cloudsim.calls == [] and cloudsim.ever() == []
