"""The Pulumi program of an AWS run: key pair, security group, one instance per node (with its root disk), and for a
cluster a `cluster` placement group; a cluster of an EFA type also a launch template with the nodes' EFA interfaces
(stacks.aws.efa) and, where a node has several interfaces, an Elastic IP per node.

Every resource carries the run's tags (through the provider's default tags and on each resource), so a stack lost
to a crash can still be found and removed by `dstack gc`.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from stacks.aws.efa import efa_interfaces, needs_elastic_ip, network_interfaces
from stacks.spec import StackSpec, cloud_init
from stacks.volume_attach import attach_aws_volumes

SSH_USER = "ubuntu"
CANONICAL = "099720109477"
AMAZON = "amazon"
_ARCH = {"x86": ("x86_64", "amd64"), "arm": ("arm64", "arm64")}
# Instance families a cluster placement group refuses (EC2 User Guide, placement group rules and limitations):
# burstable performance instances (T2, T3, T3a, T4g) and Mac instances; and the flex types (M7i-flex, C7i-flex).
NO_CLUSTER_PLACEMENT_PREFIXES = ("t2", "t3", "t4g", "mac")
# Burstable families (CPU credits). T3, T3a and T4g launch `unlimited` unless told otherwise (T2 as the account's
# default says): a busy instance then pays for surplus credits beyond its hourly price. `standard` holds it to its
# baseline once its credits are spent, so the price shown is the price paid.
BURSTABLE_FAMILIES = ("t2", "t3", "t3a", "t4g")


def image_query(spec: StackSpec) -> Dict[str, object]:
    """The AMI lookup: a Deep Learning Base AMI with NVIDIA drivers for NVIDIA GPUs (the open-source kernel modules
    need Turing or newer, so V100 and older get the proprietary-driver DLAMI), the Neuron DLAMI for AWS accelerators,
    plain Ubuntu 24.04 LTS otherwise; for the instance's architecture. Accelerators with no image here (AMD, Gaudi,
    Qualcomm) are not offers at all (NO_IMAGE_VENDORS in offers/gpus.py)."""
    aws_arch, ubuntu_arch = _ARCH[spec.arch]
    if spec.gpu_vendor == "nvidia":
        driver = "OSS" if spec.nvidia_open_driver else "Proprietary"
        prefix = f"Deep Learning ARM64 Base {driver} Nvidia Driver GPU AMI" if spec.arch == "arm" else \
            f"Deep Learning Base {driver} Nvidia Driver GPU AMI"
        owners, pattern = [AMAZON], f"{prefix} (Ubuntu 22.04) *"
    elif spec.gpu_vendor == "aws":
        owners, pattern = [AMAZON], "Deep Learning AMI Neuron (Ubuntu 22.04) *"
    else:
        owners, pattern = [CANONICAL], f"ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{ubuntu_arch}-server-*"
    return {
        "most_recent": True,
        "owners": owners,
        "filters": [
            {"name": "name", "values": [pattern]},
            {"name": "architecture", "values": [aws_arch]},
            {"name": "state", "values": ["available"]},
        ],
    }


def supports_cluster_placement(instance_type: str) -> bool:
    family = instance_type.split(".", 1)[0]
    return not family.startswith(NO_CLUSTER_PLACEMENT_PREFIXES) and not family.endswith("-flex")


def placement_note(instance_type: str) -> Optional[str]:
    """What the plan says when a cluster of `instance_type` goes without its placement group."""
    if supports_cluster_placement(instance_type):
        return None
    return (f"{instance_type} cannot join a cluster placement group (burstable, Mac and flex instances cannot): the "
            "nodes share a zone, without the group")


def credit_specification(instance_type: str) -> Optional[dict]:
    """`standard` CPU credits for a burstable type (BURSTABLE_FAMILIES), None for the others."""
    return {"cpu_credits": "standard"} if instance_type.split(".", 1)[0] in BURSTABLE_FAMILIES else None


def uses_efa(spec: StackSpec) -> bool:
    """EFA interfaces for the nodes of a cluster whose type takes them (a single node has no one to talk to)."""
    return spec.cluster and spec.uniform and efa_interfaces(spec.instance_type) > 0


def efa_note(instance_type: str) -> Optional[str]:
    """What the plan says of a cluster of `instance_type` with EFA interfaces."""
    count = efa_interfaces(instance_type)
    if not count:
        return None
    address = " and an Elastic IP as its public address (EC2 gives none to an instance with several network " \
              "interfaces)" if needs_elastic_ip(instance_type) else ""
    return (f"{instance_type} takes EFA: each node gets {count} EFA interface{'s' if count > 1 else ''} (a launch "
            f"template){address}; the security group lets the nodes reach each other on every port both ways")


def ingress_rules(spec: StackSpec) -> List[dict]:
    """From the internet (`ingress_cidrs`): SSH and the opened task ports. Between a cluster's nodes: everything, by
    a rule naming the group itself, so only members reach each other's other ports."""
    rules = [
        {"protocol": "tcp", "from_port": port, "to_port": port, "cidr_blocks": list(spec.ingress_cidrs),
         "description": "ssh" if port == 22 else f"task port {port}"}
        for port in spec.open_ports
    ]
    if spec.cluster:
        rules.append({"protocol": "-1", "from_port": 0, "to_port": 0, "self": True,
                      "description": "every port between the nodes of the run"})
    return rules


def egress_rules(spec: StackSpec) -> List[dict]:
    """To anywhere; for a cluster also to the group itself, by name, which EFA traffic needs (it is not IP traffic)."""
    rules = [{"protocol": "-1", "from_port": 0, "to_port": 0, "cidr_blocks": ["0.0.0.0/0"],
              "ipv6_cidr_blocks": ["::/0"]}]
    if spec.cluster:
        rules.append({"protocol": "-1", "from_port": 0, "to_port": 0, "self": True,
                      "description": "every port between the nodes of the run"})
    return rules


def run_subnet(spec: StackSpec, vpc_id: str, invoke) -> Optional[str]:
    """The subnet of the run's instances, in the offer's zone: the configured `subnet`; in a named VPC, its first
    subnet (by id) of the zone that maps public IPs on launch, so that the node is reachable; in the default VPC, the
    zone's default subnet where network interfaces need a subnet named (EFA), else none: EC2 takes it then. A zone
    without one is a zone miss (stacks.errors): failover moves to the next zone."""
    import pulumi_aws as aws

    if spec.subnet:
        return spec.subnet
    if not spec.vpc_name and not uses_efa(spec):
        return None
    wanted = {"name": "map-public-ip-on-launch", "values": ["true"]} if spec.vpc_name else \
        {"name": "default-for-az", "values": ["true"]}
    found = aws.ec2.get_subnets(filters=[{"name": "vpc-id", "values": [vpc_id]},
                                         {"name": "availability-zone", "values": [spec.zone]}, wanted], opts=invoke)
    if found.ids:
        return sorted(found.ids)[0]
    if spec.vpc_name:
        raise ValueError(f"VPC {spec.vpc_name} has no subnet in {spec.zone} that maps public IPs on launch: add one "
                         "(or turn that on for one), or set `subnet` for the aws backend in $DSTACK_HOME/config.yml")
    raise ValueError(f"the default VPC has no default subnet in {spec.zone}")


def efa_template(spec: StackSpec, subnet_id: str, group_id, opts):
    """The launch template that gives each node of an EFA cluster its network interfaces (stacks.aws.efa); the
    instances name it instead of a subnet, security group and public address of their own."""
    import pulumi_aws as aws

    return aws.ec2.LaunchTemplate(f"{spec.resource_name}-efa", name=spec.resource_name,
                                  network_interfaces=network_interfaces(spec.instance_type, subnet_id, group_id),
                                  tags=spec.tags(), opts=opts)


def placement_group(spec: StackSpec, opts):
    """The cluster's placement group (its nodes on one low-latency network segment of the zone), or None."""
    import pulumi_aws as aws

    if not spec.cluster or not all(supports_cluster_placement(t) for t in spec.instance_types):
        return None
    return aws.ec2.PlacementGroup(f"{spec.resource_name}-pg", name=spec.resource_name, strategy="cluster",
                                  tags=spec.tags(), opts=opts)


def aws_program(spec: StackSpec) -> None:
    import pulumi
    import pulumi_aws as aws

    tags = spec.tags()
    provider = aws.Provider("aws", region=spec.region, default_tags={"tags": tags})
    opts = pulumi.ResourceOptions(provider=provider)
    invoke = pulumi.InvokeOptions(provider=provider)
    name = spec.resource_name

    if spec.vpc_name:
        vpc = aws.ec2.get_vpc(tags={"Name": spec.vpc_name}, opts=invoke)
    else:
        vpc = aws.ec2.get_vpc(default=True, opts=invoke)
    subnet_id = run_subnet(spec, vpc.id, invoke)
    amis: dict = {}  # one lookup per distinct image (node groups may differ)
    for rank in spec.ranks:
        query = image_query(spec.node(rank))
        key = repr(query)
        if key not in amis:
            amis[key] = aws.ec2.get_ami(most_recent=query["most_recent"], owners=query["owners"],
                                        filters=query["filters"], opts=invoke).id
    key = aws.ec2.KeyPair(f"{name}-key", key_name=name, public_key=spec.ssh_public_key, tags=tags, opts=opts)
    group = aws.ec2.SecurityGroup(
        f"{name}-sg",
        name=name,
        description=f"dstack run {spec.run_name}: ssh" + (" and the task ports" if spec.ports else "")
        + (", every port between its nodes" if spec.cluster else ""),  # no apostrophes: EC2 refuses them here
        vpc_id=vpc.id,
        ingress=ingress_rules(spec),
        egress=egress_rules(spec),
        tags=tags,
        opts=opts,
    )
    group_placement = placement_group(spec, opts)
    template = efa_template(spec, subnet_id, group.id, opts) if uses_efa(spec) else None
    instances = [node_instance(spec.node(rank), rank, amis[repr(image_query(spec.node(rank)))], key.key_name,
                               group.id, subnet_id,
                               group_placement.name if group_placement is not None else None, template, opts)
                 for rank in spec.ranks]
    if instances:  # a cloud fleet's stack may have none (`nodes: 0..N`)
        attach_aws_volumes(spec, instances[0], opts)  # network volumes are refused with nodes > 1
    if template is not None and needs_elastic_ip(spec.instance_type):  # an EFA template: uniform nodes
        public_ips = [aws.ec2.Eip(f"{spec.node_name(rank)}-eip", domain="vpc",
                                  network_interface=instance.primary_network_interface_id, tags=spec.tags(rank),
                                  opts=opts).public_ip for rank, instance in zip(spec.ranks, instances)]
    else:
        public_ips = [instance.public_ip for instance in instances]
    export_nodes(instances, public_ips, subnet_id)


def node_instance(spec: StackSpec, rank: int, ami_id, key_name, group_id, subnet_id, placement_group_name, template,
                  opts):
    """One node's VM: all of a stack's in the offer's zone (and subnet), each with its own host key. With an EFA
    launch template, the template's interfaces carry the subnet, the security group and the public address."""
    import pulumi
    import pulumi_aws as aws

    tags = spec.tags(rank)
    if spec.made_before_numbering(rank):  # its host key was not kept: new user data would replace it
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(ignore_changes=["userData"]))
    market = None
    if spec.spot:
        market = {"market_type": "spot",
                  "spot_options": {"spot_instance_type": "one-time", "instance_interruption_behavior": "terminate"}}
    if template is None:
        network = {"vpc_security_group_ids": [group_id], "subnet_id": subnet_id, "associate_public_ip_address": True}
    else:
        network = {"launch_template": {"id": template.id, "version": "$Latest"}}
    return aws.ec2.Instance(
        spec.node_name(rank),
        instance_type=spec.instance_type,
        ami=ami_id,
        availability_zone=spec.zone,
        key_name=key_name,
        placement_group=placement_group_name,
        credit_specification=credit_specification(spec.instance_type),
        **network,
        root_block_device={"volume_size": spec.disk_gb, "volume_type": "gp3", "delete_on_termination": True,
                           "tags": tags},
        metadata_options={"http_endpoint": "enabled", "http_tokens": "required"},
        instance_market_options=market,
        instance_initiated_shutdown_behavior="terminate",
        user_data=pulumi.Output.secret(cloud_init(spec, rank)),
        user_data_replace_on_change=True,
        tags=tags,
        opts=opts,
    )


def export_nodes(instances: list, public_ips: list, subnet_id: Optional[str]) -> None:
    """Each node's address in rank order (`public_ips`, `private_ips`), and rank 0's alone as before (a fleet with
    no instance has lists alone); the subnet chosen (run_subnet), when one was."""
    import pulumi

    pulumi.export("instance_ids", [i.id for i in instances])
    pulumi.export("public_ips", public_ips)
    pulumi.export("private_ips", [i.private_ip for i in instances])
    pulumi.export("ssh_user", SSH_USER)
    if subnet_id:
        pulumi.export("subnet_id", subnet_id)
    if instances:
        first = instances[0]
        pulumi.export("instance_id", first.id)
        pulumi.export("public_ip", public_ips[0])
        pulumi.export("private_ip", first.private_ip)
        pulumi.export("zone", first.availability_zone)
