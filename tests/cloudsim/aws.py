"""The simulated AWS: each resource a run's stack registers is checked by the rules below (each names its source)
and then made in moto (the project's local EC2, tests.conftest's server), which refuses what EC2 refuses and is what
the leftover sweeps and `dstack gc` list through boto3; an instance is also a VM (tests.cloudsim.guest). A refusal
is the provider's text around EC2's error code and message, as pulumi-aws reports it.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from typing import Dict, List, Optional

from tests.cloudsim.aws_imds import Imds
from tests.cloudsim.world import Refusal, Resource, World

# The RunInstances errors a zone gives (EC2 API reference, "Error codes"; EC2 user guide, "Troubleshoot instance
# launch issues": insufficient capacity, instance type not supported in the zone).
CAPACITY = ("InsufficientInstanceCapacity", "We currently do not have sufficient {type} capacity in the Availability "
            "Zone you requested ({zone}). Our system will be working on provisioning additional capacity. You can "
            "currently get {type} capacity by not specifying an Availability Zone in your request or choosing {other}.")
TYPE_UNSUPPORTED = ("Unsupported", "Your requested instance type ({type}) is not supported in your requested "
                    "Availability Zone ({zone}). Please retry your request by not specifying an Availability Zone or "
                    "choosing {other}.")
# What EC2 says of a request a zone cannot serve without naming why (spot requests in zones without spot capacity
# for the type, a type and zone that do not go together); EC2 API reference, "Error codes": Unsupported.
UNSUPPORTED = ("Unsupported", "The requested configuration is currently not supported. Please check the documentation "
               "for supported configurations.")
ZONE_REFUSALS = {"capacity": CAPACITY, "type-unsupported": TYPE_UNSUPPORTED, "unsupported": UNSUPPORTED}
# EC2 API reference, "Error codes": OptInRequired (a region the account has not enabled).
OPT_IN = ("OptInRequired", "You are not subscribed to this service. Please go to http://aws.amazon.com to subscribe.")
# EC2 user guide, "Work with instance user data": 16 KB, raw, before base64 encoding.
MAX_USER_DATA = 16 * 1024
# EC2 API reference, CreateSecurityGroup: GroupName and GroupDescription, up to 255 characters of these, and a
# name that does not start with `sg-`; AuthorizeSecurityGroupIngress: a rule's description, the same characters.
SG_TEXT = re.compile(r"[a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]{1,255}")
# AWS Local Zones user guide, "Getting started": a Local Zone has no default subnet; a subnet must be created there.
LOCAL_ZONE = re.compile(r"^[a-z]{2}-[a-z]+-\d-[a-z]+-\d+[a-z]$")


_CLIENTS: dict = {}  # (moto's address, region) -> boto3 EC2 client


def api_error(operation: str, code: str, message: str, status: int = 400) -> str:
    """EC2's error as pulumi-aws (AWS SDK for Go v2) reports it."""
    return (f"operation error EC2: {operation}, https response error StatusCode: {status}, RequestID: {uuid.uuid4()}, "
            f"api error {code}: {message}")


class AwsCloud:
    def __init__(self, world: World, moto_endpoint: str):
        self.world = world
        self.endpoint = moto_endpoint
        self.zone_refusals: Dict[str, str] = {}  # zone -> a key of ZONE_REFUSALS
        self.spot_zone_refusals: Dict[str, str] = {}  # the same, for spot requests only
        self._opt_in: Optional[set] = None  # the regions moto says the account has not enabled
        self.imds = Imds()  # each VM's instance metadata service (tests.cloudsim.aws_imds)
        world.on_power_off["aws"] = self.guest_power_off

    def ec2(self, region: str):
        """A boto3 EC2 client to moto; made once per worker (a client costs a model parse), shared by its tests."""
        key = (self.endpoint, region)
        if key not in _CLIENTS:
            import boto3

            _CLIENTS[key] = boto3.session.Session(
                aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region
            ).client("ec2", endpoint_url=self.endpoint)
        return _CLIENTS[key]

    # --- what a test sets ----------------------------------------------------------------------------------------

    def refuse_zone(self, zone: str, why: str = "capacity", spot_only: bool = False) -> None:
        (self.spot_zone_refusals if spot_only else self.zone_refusals)[zone] = why

    def remove_default_subnet(self, region: str, zone: str) -> None:
        """The account's default VPC without its default subnet in `zone` (deleted, or a zone added later)."""
        ec2 = self.ec2(region)
        for subnet in ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]},
                                                    {"Name": "availability-zone", "Values": [zone]}])["Subnets"]:
            ec2.delete_subnet(SubnetId=subnet["SubnetId"])

    def reclaim(self, instance: Resource, notice_s: Optional[float] = None) -> None:
        """EC2 takes a spot instance back: the interruption behavior (terminate, the default, or stop) happens; with
        `notice_s`, the interruption notice first (EC2 gives two minutes): the instance's metadata shows it at
        `spot/instance-action`, and the instance is taken back `notice_s` seconds later (unless gone by then)."""
        if notice_s is not None:
            behavior = ((instance.inputs.get("instanceMarketOptions") or {}).get("spotOptions") or {}).get(
                "instanceInterruptionBehavior", "terminate")
            at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.world.now() + notice_s))
            instance.extra["spot_notice"] = {"action": behavior, "time": at}
            instance.events.append((self.world.now(), f"spot interruption notice: {behavior} at {at}"))
            self.world.schedule(instance, "cloudsim-spot-interruption", notice_s, lambda: self.reclaim(instance))
            return
        behavior = ((instance.inputs.get("instanceMarketOptions") or {}).get("spotOptions") or {}).get(
            "instanceInterruptionBehavior", "terminate")
        instance.events.append((self.world.now(), f"spot interruption: {behavior}"))
        code = "Server.SpotInstanceTermination" if behavior == "terminate" else "Server.SpotInstanceShutdown"
        reason = (code, "Spot instance termination", "Service initiated")
        if behavior == "terminate":
            self._terminate(instance, "cloud", reason)
        else:
            self.ec2(instance.region).stop_instances(InstanceIds=[instance.id])
            self._state_reason_in_moto(instance, *reason)
            self.world.stop_vm(instance, "spot interruption")

    @staticmethod
    def _state_reason_in_moto(instance: Resource, code: str, message: str, initiated: str) -> None:
        """What DescribeInstances says of an instance that EC2 took back or that shut itself down (EC2 user guide,
        "Spot Instance interruption notices" and "Troubleshoot terminated instances": its state reason and who
        initiated the transition); moto, running in this process, has no call that sets them."""
        import datetime

        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ec2.models import ec2_backends
        from moto.ec2.models.instances import StateReason

        found = ec2_backends[DEFAULT_ACCOUNT_ID][instance.region].get_instance(instance.id)
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        found._reason = f"{initiated} ({when} GMT)"
        found.state_reason = StateReason(f"{code}: {message}", code)

    # --- the engine's requests ------------------------------------------------------------------------------------

    def create(self, request: dict) -> Resource:
        provider = request["provider"]
        region = provider.get("region") or "us-east-1"
        inputs = request["inputs"]
        tags = {**((provider.get("defaultTags") or {}).get("tags") or {}), **(inputs.get("tags") or {})}
        resource = Resource("aws", request["type"], request["name"], "", request["stack"], region,
                            inputs.get("availabilityZone"), inputs, labels=tags)
        kind = resource.kind
        operation = {"Instance": "RunInstances", "SecurityGroup": "CreateSecurityGroup", "KeyPair": "ImportKeyPair",
                     "PlacementGroup": "CreatePlacementGroup", "Volume": "CreateVolume",
                     "VolumeAttachment": "AttachVolume", "LaunchTemplate": "CreateLaunchTemplate",
                     "Eip": "AllocateAddress"}.get(kind)
        if operation is None:
            raise self.world.refuse(request["type"], request["name"], f"cloudsim: {request['type']} is not simulated")
        what = {"Instance": "EC2 Instance", "SecurityGroup": "Security Group", "KeyPair": "EC2 Key Pair",
                "PlacementGroup": "EC2 Placement Group", "Volume": "EBS Volume",
                "VolumeAttachment": "EBS Volume Attachment", "LaunchTemplate": "EC2 Launch Template",
                "Eip": "EC2 EIP"}[kind]
        try:
            self._opted_in(region, operation)
            getattr(self, f"_create_{kind.lower()}")(resource, self._tag_specification(kind, tags))
        except Refusal as refusal:
            raise self.world.refuse(request["type"], request["name"], f"creating {what}: {refusal}") from None
        except Exception as e:  # moto's refusal: EC2's own code and message
            error = getattr(e, "response", {}).get("Error", {})
            if not error:
                raise
            text = api_error(operation, error.get("Code", "?"), error.get("Message", str(e)))
            raise self.world.refuse(request["type"], request["name"], f"creating {what}: {text}") from None
        resource.extra["options"] = request.get("options") or {}
        return self.world.add(resource)

    def _opted_in(self, region: str, operation: str) -> None:
        if self._opt_in is None:
            regions = self.ec2("us-east-1").describe_regions(AllRegions=True)["Regions"]
            self._opt_in = {r["RegionName"] for r in regions if r.get("OptInStatus") == "not-opted-in"}
        if region in self._opt_in:
            raise Refusal(api_error(operation, *OPT_IN, status=401))

    @staticmethod
    def _tag_specification(kind: str, tags: dict) -> list:
        resource_type = {"Instance": "instance", "SecurityGroup": "security-group", "KeyPair": "key-pair",
                         "PlacementGroup": "placement-group", "Volume": "volume", "LaunchTemplate": "launch-template",
                         "Eip": "elastic-ip"}.get(kind)
        if resource_type is None or not tags:
            return []
        return [{"ResourceType": resource_type, "Tags": [{"Key": k, "Value": str(v)} for k, v in tags.items()]}]

    def _create_keypair(self, resource: Resource, tag_specification: list) -> None:
        inputs = resource.inputs
        self.ec2(resource.region).import_key_pair(KeyName=inputs["keyName"],
                                                  PublicKeyMaterial=inputs["publicKey"].encode(),
                                                  TagSpecifications=tag_specification)
        resource.id = inputs["keyName"]
        resource.outputs = {"keyName": inputs["keyName"], "keyPairId": f"key-{self._digest(resource.id)}"}

    def _create_securitygroup(self, resource: Resource, tag_specification: list) -> None:
        inputs = resource.inputs
        name, description = inputs.get("name") or resource.name, inputs.get("description") or "Managed by Pulumi"
        texts = [name, description] + [r["description"] for r in inputs.get("ingress") or [] if r.get("description")]
        bad = [t for t in texts if not SG_TEXT.fullmatch(t)]
        if bad or name.startswith("sg-"):
            raise Refusal(api_error("CreateSecurityGroup", "InvalidParameterValue",
                                    f"Value ({(bad or [name])[0]}) for parameter GroupDescription is invalid. "
                                    "Character sets beyond ASCII are not supported."))
        group = self.ec2(resource.region).create_security_group(
            GroupName=name, Description=description, VpcId=inputs.get("vpcId"), TagSpecifications=tag_specification)
        resource.id = group["GroupId"]
        resource.outputs = {"arn": f"arn:aws:ec2:{resource.region}:123456789012:security-group/{resource.id}"}

    def _create_placementgroup(self, resource: Resource, tag_specification: list) -> None:
        inputs = resource.inputs
        self.ec2(resource.region).create_placement_group(GroupName=inputs["name"], Strategy=inputs["strategy"],
                                                         TagSpecifications=tag_specification)
        resource.id = inputs["name"]
        resource.outputs = {"placementGroupId": f"pg-{self._digest(resource.id)}"}

    def _create_instance(self, resource: Resource, tag_specification: list) -> None:
        inputs, region = resource.inputs, resource.region
        zone, instance_type = inputs.get("availabilityZone"), inputs["instanceType"]
        spot = (inputs.get("instanceMarketOptions") or {}).get("marketType") == "spot"
        refusal = self.zone_refusals.get(zone) or (self.spot_zone_refusals.get(zone) if spot else None)
        if refusal:
            code, message = ZONE_REFUSALS[refusal]
            other = ", ".join(z for z in self._zones(region) if z != zone)
            raise Refusal(api_error("RunInstances", code, message.format(type=instance_type, zone=zone, other=other),
                                    status=500 if refusal == "capacity" else 400))
        if zone and LOCAL_ZONE.match(zone) and not inputs.get("subnetId"):
            raise Refusal(api_error("RunInstances", "InvalidInput",
                                    f"No default subnet for availability zone: '{zone}'."))
        user_data = inputs.get("userData") or ""
        if len(user_data.encode()) > MAX_USER_DATA:
            raise Refusal(api_error("RunInstances", "InvalidParameterValue",
                                    "User data is limited to 16384 bytes"))
        arguments = dict(ImageId=self._image(region), InstanceType=instance_type, MinCount=1, MaxCount=1,
                         UserData=user_data, TagSpecifications=tag_specification + [
                             {**tag_specification[0], "ResourceType": "volume"}] if tag_specification else [],
                         InstanceInitiatedShutdownBehavior=inputs.get("instanceInitiatedShutdownBehavior", "stop"))
        placement = {k: v for k, v in (("AvailabilityZone", zone), ("GroupName", inputs.get("placementGroup"))) if v}
        arguments["Placement"] = placement
        interfaces = self._interfaces(inputs, region)
        if interfaces:  # moto keeps the primary one; the simulator checks them all
            arguments["NetworkInterfaces"] = [self._interface(interfaces[0], inputs)]
        else:
            arguments.update({k: v for k, v in (("SecurityGroupIds", inputs.get("vpcSecurityGroupIds")),
                                                ("SubnetId", inputs.get("subnetId"))) if v})
        if inputs.get("keyName"):
            arguments["KeyName"] = inputs["keyName"]
        if spot:
            arguments["InstanceMarketOptions"] = {"MarketType": "spot"}
        instance = self.ec2(region).run_instances(**arguments)["Instances"][0]
        resource.id = instance["InstanceId"]
        resource.zone = instance["Placement"]["AvailabilityZone"]
        resource.extra.update(spot=spot, interfaces=interfaces, subnet=instance.get("SubnetId"))
        keys = [r.inputs["publicKey"] for r in self.world.live("KeyPair", "aws")
                if r.id == inputs.get("keyName") and r.region == region]
        vm = self.world.start_vm(resource, user_data, keys, gcp=False)
        self.imds.serve(resource, vm)
        if not self._reachable(region, instance.get("SubnetId")):
            vm.link(False)  # a subnet with no route to an internet gateway: its address answers nothing
            resource.events.append((self.world.now(), "no route from the internet (its subnet has no IGW route)"))
        # EC2 user guide, "Public IPv4 addresses": none is assigned to an instance with several network interfaces
        public = "" if len(interfaces) > 1 else vm.address
        arn = f"arn:aws:ec2:{region}:123456789012:instance/{resource.id}"
        resource.outputs = {"publicIp": public, "privateIp": vm.address, "availabilityZone": resource.zone,
                            "instanceState": "running", "arn": arn,
                            "primaryNetworkInterfaceId": instance["NetworkInterfaces"][0]["NetworkInterfaceId"]
                            if instance.get("NetworkInterfaces") else f"eni-{self._digest(resource.id)}",
                            "subnetId": instance.get("SubnetId")}

    def _interfaces(self, inputs: dict, region: str) -> list:
        """The instance's network interfaces (its own, or its launch template's), checked as EC2 checks them."""
        interfaces = list(inputs.get("networkInterfaces") or [])
        template = inputs.get("launchTemplate") or {}
        if template:
            found = self.world.find(template.get("id") or "") or next(
                (r for r in self.world.live("LaunchTemplate", "aws") if r.inputs.get("name") == template.get("name")),
                None)
            if found is None:
                raise Refusal(api_error("RunInstances", "InvalidLaunchTemplateId.NotFound",
                                        f"The specified launch template, with template ID {template.get('id')}, "
                                        "does not exist."))
            interfaces = list(found.inputs.get("networkInterfaces") or [])
        efa = [i for i in interfaces if i.get("interfaceType") in ("efa", "efa-only")]
        if efa:  # EC2 user guide, "Elastic Fabric Adapter": supported instance types (describe_instance_types)
            info = self.ec2(region).describe_instance_types(InstanceTypes=[inputs["instanceType"]])["InstanceTypes"]
            network = info[0]["NetworkInfo"] if info else {}
            if not network.get("EfaSupported") or len(efa) > network.get("EfaInfo", {}).get("MaximumEfaInterfaces", 0):
                raise Refusal(api_error("RunInstances", "InvalidParameterCombination",
                                        f"The requested number of EFA interfaces ({len(efa)}) is not supported by "
                                        f"instance type {inputs['instanceType']}."))
        if len(interfaces) > 1 and any(str(i.get("associatePublicIpAddress")).lower() == "true" for i in interfaces):
            raise Refusal(api_error("RunInstances", "InvalidParameterCombination",
                                    "The associatePublicIPAddress parameter cannot be specified when launching with "
                                    "multiple network interfaces."))
        return interfaces

    def _reachable(self, region: str, subnet_id: Optional[str]) -> bool:
        """Whether a subnet routes to an internet gateway (VPC user guide, "Subnets": a public subnet). moto's
        default VPCs have no gateway: their subnets count as public, as AWS's default subnets are."""
        if not subnet_id:
            return True
        ec2 = self.ec2(region)
        subnet = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]
        if subnet.get("DefaultForAz") or subnet["VpcId"] in self._default_vpcs(region):
            return True
        tables = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [subnet_id]}])
        tables = tables["RouteTables"] or ec2.describe_route_tables(Filters=[
            {"Name": "vpc-id", "Values": [subnet["VpcId"]]}, {"Name": "association.main", "Values": ["true"]}])[
            "RouteTables"]
        return any(str(route.get("GatewayId", "")).startswith("igw-") for table in tables for route in table["Routes"])

    def _create_launchtemplate(self, resource: Resource, tag_specification: list) -> None:
        inputs = resource.inputs
        template = self.ec2(resource.region).create_launch_template(
            LaunchTemplateName=inputs.get("name") or resource.name, LaunchTemplateData={},
            TagSpecifications=tag_specification)["LaunchTemplate"]
        resource.id = template["LaunchTemplateId"]
        resource.outputs = {"latestVersion": 1, "arn": f"arn:aws:ec2:{resource.region}::launch-template/{resource.id}"}

    def _create_eip(self, resource: Resource, tag_specification: list) -> None:
        inputs, ec2 = resource.inputs, self.ec2(resource.region)
        interface = inputs.get("networkInterface")
        instance = next((r for r in self.world.live("Instance", "aws")
                         if r.outputs.get("primaryNetworkInterfaceId") == interface), None)
        address = ec2.allocate_address(Domain="vpc", TagSpecifications=tag_specification)
        resource.id = address["AllocationId"]
        if instance is not None and interface and interface.startswith("eni-") and \
                instance.outputs["primaryNetworkInterfaceId"] == interface:
            try:
                ec2.associate_address(AllocationId=resource.id, NetworkInterfaceId=interface)
            except Exception:  # moto may not know the interface of a multi-card instance: the simulator does
                pass
        # the VM has one address, its namespace's: the Elastic IP is it, on the interface named
        resource.outputs = {"publicIp": instance.vm.address if instance is not None and instance.vm else "",
                            "allocationId": resource.id}
        resource.extra["instance"] = instance.id if instance is not None else None

    @staticmethod
    def _interface(interface: dict, inputs: dict) -> dict:
        converted = {"DeviceIndex": int(interface.get("deviceIndex", 0)),
                     "Groups": interface.get("securityGroups") or inputs.get("vpcSecurityGroupIds") or [],
                     "DeleteOnTermination": True}
        if interface.get("subnetId") or inputs.get("subnetId"):
            converted["SubnetId"] = interface.get("subnetId") or inputs.get("subnetId")
        if interface.get("interfaceType"):
            converted["InterfaceType"] = interface["interfaceType"]
        return converted

    def _create_volume(self, resource: Resource, tag_specification: list) -> None:
        inputs = resource.inputs
        volume = self.ec2(resource.region).create_volume(
            AvailabilityZone=inputs["availabilityZone"], Size=int(inputs.get("size") or 8),
            VolumeType=inputs.get("type") or "gp3", Encrypted=bool(inputs.get("encrypted")),
            TagSpecifications=tag_specification)
        resource.id = volume["VolumeId"]
        (self.world.folder / "disks" / resource.id).mkdir(parents=True, exist_ok=True)
        resource.outputs = {"arn": f"arn:aws:ec2:{resource.region}::volume/{resource.id}"}

    def _create_volumeattachment(self, resource: Resource, tag_specification: list) -> None:
        inputs = resource.inputs
        volume, instance = self.world.find(inputs["volumeId"]), self.world.find(inputs["instanceId"])
        if volume is None or instance is None:
            raise Refusal(api_error("AttachVolume", "InvalidVolume.NotFound",
                                    f"The volume '{inputs['volumeId']}' does not exist."))
        if volume.zone != instance.zone:  # moto does not check it; EC2 API reference, AttachVolume
            raise Refusal(api_error("AttachVolume", "InvalidVolume.ZoneMismatch",
                                    f"The volume '{volume.id}' is not in the same availability zone as instance "
                                    f"'{instance.id}'"))
        self.ec2(resource.region).attach_volume(VolumeId=volume.id, InstanceId=instance.id,
                                                Device=inputs["deviceName"])
        resource.id = f"vai-{self._digest(inputs['deviceName'] + volume.id + instance.id)}"
        resource.zone = instance.zone
        resource.extra.update(volume=volume.id, instance=instance.id)
        if instance.vm is not None and instance.vm.running:
            self.world.attach(instance, f"nvme-Amazon_Elastic_Block_Store_{volume.id.replace('-', '')}",
                              self.world.folder / "disks" / volume.id)

    def delete(self, resource: Resource) -> None:
        ec2 = self.ec2(resource.region)
        kind = resource.kind
        try:
            if kind == "Instance":
                self._terminate(resource, "engine")
                return
            if kind == "SecurityGroup":
                users = [r for r in self.world.live("Instance", "aws") if resource.id in
                         (r.inputs.get("vpcSecurityGroupIds") or [])]
                if users:  # EC2 API reference, DeleteSecurityGroup
                    raise Refusal(api_error("DeleteSecurityGroup", "DependencyViolation",
                                            f"resource {resource.id} has a dependent object"))
                ec2.delete_security_group(GroupId=resource.id)
            elif kind == "KeyPair":
                ec2.delete_key_pair(KeyName=resource.id)
            elif kind == "PlacementGroup":
                ec2.delete_placement_group(GroupName=resource.id)
            elif kind == "Volume":
                ec2.delete_volume(VolumeId=resource.id)
            elif kind == "LaunchTemplate":
                ec2.delete_launch_template(LaunchTemplateId=resource.id)
            elif kind == "Eip":
                ec2.release_address(AllocationId=resource.id)
            elif kind == "VolumeAttachment" and not resource.inputs.get("skipDestroy"):
                ec2.detach_volume(VolumeId=resource.extra["volume"], InstanceId=resource.extra["instance"])
        except Refusal as refusal:
            raise Refusal(f"deleting {kind}: {refusal}") from None
        except Exception as e:
            error = getattr(e, "response", {}).get("Error", {})
            if not error:
                raise
            if "NotFound" not in error.get("Code", ""):
                raise Refusal(f"deleting {kind}: {api_error('Delete' + kind, error['Code'], error['Message'])}") \
                    from None
        self.world.delete(resource, "engine")

    def _terminate(self, instance: Resource, by: str, reason: Optional[tuple] = None) -> None:
        """`reason` (_state_reason_in_moto's) is EC2's before the VM goes: a client that loses its connection and asks
        at once reads it, never moto's default for a terminate call (Client.UserInitiatedShutdown)."""
        self.ec2(instance.region).terminate_instances(InstanceIds=[instance.id])
        self.imds.unserve(instance)
        if reason is not None:
            self._state_reason_in_moto(instance, *reason)
        self.world.delete(instance, by)
        for attachment in self.world.live("VolumeAttachment", "aws"):
            if attachment.extra.get("instance") == instance.id:
                self.world.delete(attachment, by)

    def guest_power_off(self, instance: Resource) -> None:
        """EC2 user guide, "Change instance initiated shutdown behavior": `terminate` ends the instance, `stop`
        (EC2's default) stops it."""
        reason = ("Client.InstanceInitiatedShutdown", "Instance initiated shutdown", "User initiated")
        if instance.inputs.get("instanceInitiatedShutdownBehavior") == "terminate":
            self._terminate(instance, "guest", reason)
        else:
            self.ec2(instance.region).stop_instances(InstanceIds=[instance.id])
            self._state_reason_in_moto(instance, *reason)
            self.world.stop_vm(instance, "guest power-off")

    def sync(self) -> None:
        """What moto no longer has (a sweep or `dstack gc` removed it through boto3) is deleted here too."""
        live = self.world.live(backend="aws")
        for region in {r.region for r in live}:
            present = self._in_moto(region, {r.kind for r in live if r.region == region})
            for resource in live:
                if resource.region == region and resource.kind in present and resource.id not in present[resource.kind]:
                    self.world.delete(resource, "sweep")

    def _in_moto(self, region: str, kinds: set) -> Dict[str, set]:
        """The ids moto holds in `region`, per kind of resource asked about (one listing per kind)."""
        ec2, found = self.ec2(region), {}
        if "Instance" in kinds:
            found["Instance"] = {i["InstanceId"] for r in ec2.describe_instances()["Reservations"]
                                 for i in r["Instances"] if i["State"]["Name"] not in ("terminated", "shutting-down")}
        if "SecurityGroup" in kinds:
            found["SecurityGroup"] = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
        if "KeyPair" in kinds:
            found["KeyPair"] = {k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]}
        if "Volume" in kinds:
            found["Volume"] = {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
        if "PlacementGroup" in kinds:
            found["PlacementGroup"] = {g["GroupName"] for g in ec2.describe_placement_groups()["PlacementGroups"]}
        if "LaunchTemplate" in kinds:
            found["LaunchTemplate"] = {t["LaunchTemplateId"] for t in
                                       ec2.describe_launch_templates()["LaunchTemplates"]}
        if "Eip" in kinds:
            found["Eip"] = {a["AllocationId"] for a in ec2.describe_addresses()["Addresses"]}
        return found

    # --- lookups -----------------------------------------------------------------------------------------------

    def call(self, token: str, args: dict, provider: dict) -> dict:
        """The provider's data sources, answered from moto (VPCs, subnets) or the simulator's images."""
        region = provider.get("region") or "us-east-1"
        ec2 = self.ec2(region)
        if token == "aws:ec2/getVpc:getVpc":
            filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in (args.get("tags") or {}).items()]
            if args.get("default"):
                filters.append({"Name": "isDefault", "Values": ["true"]})
            filters += [{"Name": f["name"], "Values": f["values"]} for f in args.get("filters") or []]
            vpcs = ec2.describe_vpcs(Filters=filters)["Vpcs"]
            if len(vpcs) != 1:  # pulumi-aws's ec2.getVpc data source
                raise Refusal("no matching EC2 VPC found" if not vpcs else
                              "multiple EC2 VPCs matched; use additional constraints to reduce matches to a single "
                              "EC2 VPC")
            vpc = vpcs[0]
            return {"id": vpc["VpcId"], "cidrBlock": vpc["CidrBlock"], "default": vpc.get("IsDefault", False)}
        if token in ("aws:ec2/getSubnets:getSubnets", "aws:ec2/getSubnet:getSubnet"):
            filters = [{"Name": f["name"], "Values": f["values"]} for f in args.get("filters") or []]
            filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in (args.get("tags") or {}).items()]
            for key, name in (("vpcId", "vpc-id"), ("availabilityZone", "availability-zone"), ("id", "subnet-id"),
                              ("defaultForAz", "default-for-az")):
                if args.get(key) is not None:
                    filters.append({"Name": name, "Values": [str(args[key]).lower()]})
            subnets = ec2.describe_subnets(Filters=filters)["Subnets"]
            if token.endswith("getSubnets"):
                return {"id": region, "ids": [s["SubnetId"] for s in subnets]}
            if len(subnets) != 1:
                raise Refusal("no matching EC2 Subnet found" if not subnets else "multiple EC2 Subnets matched")
            subnet = subnets[0]
            return {"id": subnet["SubnetId"], "availabilityZone": subnet["AvailabilityZone"],
                    "vpcId": subnet["VpcId"], "cidrBlock": subnet["CidrBlock"],
                    "mapPublicIpOnLaunch": subnet.get("MapPublicIpOnLaunch", False),
                    "defaultForAz": subnet.get("DefaultForAz", False)}
        if token == "aws:ec2/getAmi:getAmi":
            pattern = next((f["values"][0] for f in args.get("filters") or [] if f["name"] == "name"), "image")
            image_id = f"ami-{self._digest(pattern)}"
            return {"id": image_id, "imageId": image_id, "name": pattern.replace("*", "20250601")}
        raise Refusal(f"cloudsim: the lookup {token} is not simulated")

    def _default_vpcs(self, region: str) -> set:
        vpcs = self.ec2(region).describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        return {v["VpcId"] for v in vpcs}

    def _zones(self, region: str) -> List[str]:
        zones = self.ec2(region).describe_availability_zones()["AvailabilityZones"]
        return [z["ZoneName"] for z in zones]

    @staticmethod
    def _image(region: str) -> str:
        """What RunInstances is given, whatever the AMI lookup said: moto takes any image id, and the simulator's
        fixture has moto skip loading its 1,200 default images (seconds of CPU per region and reset)."""
        return "ami-0c105c105c105c105"

    @staticmethod
    def _digest(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:17]


def instance_of(world: World, stack_or_name: Optional[str] = None) -> Resource:
    """The one live AWS instance (of a stack, or named so)."""
    found = [r for r in world.live("Instance", "aws")
             if stack_or_name is None or stack_or_name in (r.stack, r.labels.get("Name"))]
    if len(found) != 1:
        raise AssertionError(f"expected one live AWS instance, found {found}")
    return found[0]
