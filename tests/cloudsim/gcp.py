"""The simulated GCP: each resource a run's stack registers is checked by the rules below (each names its source),
kept here (what the Compute and IAM REST APIs of tests.cloudsim.gcp_rest list and delete), and an instance is also a
VM (tests.cloudsim.guest) whose power-off script reaches this cloud's metadata server and Compute API.

IAM is simulated as far as a run needs it: the user's credentials hold every permission but those `deny`-ed; a
service account is visible to Compute and IAM `iam_delay_s` after it was made (IAM's eventual consistency); a VM's
token is its service account's, which may delete the instances where a binding grants it a role that may.
A refusal is the provider's text (terraform-provider-google's `Error creating X: googleapi: Error N: ...`).
"""

from __future__ import annotations

import re
import time
from typing import Dict, List, Optional, Set

from tests.cloudsim.world import Refusal, Resource, World

# Compute Engine, "Naming resources": RFC 1035 names, 1 to 63 characters.
NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
# IAM API, projects.serviceAccounts.create: accountId.
ACCOUNT_ID = re.compile(r"[a-z](?:[-a-z0-9]{4,28}[a-z0-9])")
# Resource Manager, "Labels": keys start with a letter; keys and values up to 63 of lowercase letters, digits, - and _.
LABEL_KEY, LABEL_VALUE = re.compile(r"[a-z][a-z0-9_-]{0,62}"), re.compile(r"[a-z0-9_-]{0,63}")
# Compute Engine, "Choose a disk type" and the machine series pages: series that take Hyperdisk only (no Persistent
# Disk), and series that take Persistent Disk only (no Hyperdisk Balanced).
HYPERDISK_ONLY = ("a3-ultragpu-", "a4-", "a4x-", "c4-", "c4a-", "c4d-", "g4-", "n4-", "n4a-", "n4d-", "m4-", "x4-",
                  "h4d-")
PERSISTENT_DISK_ONLY = ("n1-", "e2-", "n2-", "n2d-", "t2d-", "t2a-", "c2-", "c2d-", "a2-", "g2-", "m1-", "m2-")
# Compute Engine, "Accelerator-optimized machine family", consumption option availability by machine type: A4X, A4,
# A3 Ultra, A3 Mega and a3-highgpu-8g are sold through reservations, Flex-start or Spot, not on demand.
RESERVATION_BOUND = ("a3-ultragpu-", "a4-", "a4x-", "a3-megagpu-", "a3-highgpu-8g")
# Compute Engine, "GPU machine types": machines with GPUs (built in or attached) cannot live-migrate.
GPU_SERIES = ("a2-", "a3-", "a4-", "a4x-", "g2-", "g4-")
# A TPU node's workers get addresses of the test range that no test host takes (index 254: tests.netns_hosts hands
# out 10..249), behind its unreachable route, which a scenario with a TPU holds: nothing boots there, so a client's
# SSH to a worker fails at once and never leaves this machine.
TPU_WORKER_ADDRESS = "10.251.254.{}"
# Cloud TPU, "TPU versions" and "TPU software versions": the accelerator types' generations, and the software
# versions each boots (the generic Ubuntu image boots on every generation; the v5e and v6e images on their own).
TPU_GENERATIONS = ("v2", "v3", "v4", "v5p", "v5litepod", "v6e")
TPU_RUNTIMES = {"tpu-ubuntu2204-base": TPU_GENERATIONS, "v2-alpha-tpuv5-lite": ("v5litepod",),
                "v2-alpha-tpuv6e": ("v6e",)}
# Compute Engine IAM roles: the predefined roles that hold compute.instances.delete.
DELETING_ROLES = ("roles/compute.instanceAdmin.v1", "roles/compute.instanceAdmin", "roles/owner", "roles/editor")
TOKEN_PREFIX = "cloudsim-vm-token-"


def api_error(code: int, message: str, reason: str) -> str:
    return f"googleapi: Error {code}: {message}, {reason}"


class GcpCloud:
    def __init__(self, world: World, project: str = "my-project"):
        self.world = world
        self.project = project
        self.denied: Set[str] = set()  # permissions the user's credentials lack
        self.iam_delay_s = 0.0  # how long a new service account stays invisible to Compute and IAM
        self.stockouts: Set[str] = set()  # zones out of capacity
        self.agent_first = False  # the guest agent runs before cloud-init's bootcmd on new VMs
        self.networks = {"default"}
        self.bindings: Dict[str, List[tuple]] = {}  # instance id -> [(role, member, made at)]
        self.metadata_servers: Dict[str, object] = {}  # instance id -> its listeners (tests.cloudsim.gcp_rest)
        self.vm_side = None  # tests.cloudsim.gcp_rest.VmSide, set by the server
        self.preemptions: List[tuple] = []  # (zone, instance id, time): the zones' compute.instances.preempted
        world.on_power_off["gcp"] = self.guest_power_off

    # --- what a test sets ----------------------------------------------------------------------------------------

    def deny(self, permission: str) -> None:
        self.denied.add(permission)

    def stockout(self, zone: str) -> None:
        self.stockouts.add(zone)

    def preempt(self, instance: Resource, notice_s: Optional[float] = None) -> None:
        """Compute Engine preempts a Spot VM: deleted where its termination action is DELETE, else stopped; with
        `notice_s`, the preemption notice first (Compute Engine gives 30 s): the VM's metadata key
        `instance/preempted` turns TRUE, and the VM goes `notice_s` seconds later (unless gone by then)."""
        if notice_s is not None:
            instance.extra["preempted"] = True
            instance.events.append((self.world.now(), f"preemption notice: the VM goes in {notice_s:g}s"))
            self.world.schedule(instance, "cloudsim-preemption", notice_s, lambda: self.preempt(instance))
            return
        instance.extra["preempted"] = True
        action = (instance.inputs.get("scheduling") or {}).get("instanceTerminationAction", "STOP")
        instance.events.append((self.world.now(), f"preempted: {action}"))
        self.preemptions.append((instance.zone, instance.extra["instance_id"], self.world.now()))
        if action == "DELETE":
            self.delete_instance(instance, "cloud")
        else:
            self.world.stop_vm(instance, "preempted")

    def maintenance(self, instance: Resource) -> None:
        """A host maintenance event (Compute Engine, "Host events"): a VM set to MIGRATE moves live; one set to
        TERMINATE stops, and with automatic restart (the default) starts again: its every-boot user data runs."""
        scheduling = instance.inputs.get("scheduling") or {}
        instance.events.append((self.world.now(), "host maintenance"))
        if scheduling.get("onHostMaintenance", "MIGRATE") == "MIGRATE":
            return
        if scheduling.get("automaticRestart", True):
            self.world.reboot(instance)
        else:
            self.world.stop_vm(instance, "host maintenance")

    # --- IAM -----------------------------------------------------------------------------------------------------

    def require(self, permission: str, target: str, what: str) -> None:
        if permission in self.denied:
            if permission.startswith("iam."):
                raise Refusal(f"Error {what}: " + api_error(
                    403, f"Permission '{permission}' denied on resource (or it may not exist).", "forbidden"))
            raise Refusal(f"Error {what}: " + api_error(403, f"Required '{permission}' permission for '{target}'",
                                                        "forbidden"))

    def account(self, email: str, visible: bool = True) -> Optional[Resource]:
        """A live service account; with `visible`, only once IAM's propagation delay has passed."""
        found = next((r for r in self.world.live("Account", "gcp") if r.outputs.get("email") == email), None)
        if found is not None and visible and time.time() < found.created_at + self.iam_delay_s:
            return None
        return found

    def create_account(self, project: str, account_id: str, display_name: str, description: str, stack: str = "",
                       name: str = "") -> Resource:
        self.require("iam.serviceAccounts.create", f"projects/{project}", "creating service account")
        if not ACCOUNT_ID.fullmatch(account_id or ""):
            raise Refusal("Error creating service account: " + api_error(
                400, f"Invalid account ID \"{account_id}\". Account IDs must be 6 to 30 characters of lowercase "
                     "letters, digits and hyphens, starting with a letter", "badRequest"))
        email = f"{account_id}@{project}.iam.gserviceaccount.com"
        if self.account(email, visible=False) is not None:
            raise Refusal("Error creating service account: " + api_error(
                409, f"Service account {account_id} already exists within project projects/{project}.",
                "alreadyExists"))
        number = self.world.next_number()
        resource = Resource("gcp", "gcp:serviceaccount/account:Account", name or account_id,
                            f"projects/{project}/serviceAccounts/{email}", stack, "global", None,
                            {"accountId": account_id, "displayName": display_name, "description": description})
        resource.outputs = {"email": email, "member": f"serviceAccount:{email}", "name": resource.id,
                            "uniqueId": f"10400000000000000{number:04d}", "displayName": display_name,
                            "description": description, "project": project}
        return self.world.add(resource)

    def may_delete(self, token: str, instance: Resource) -> bool:
        """Whether a VM's token (its service account) may delete `instance`: a binding there, propagated."""
        source = self.world.find(token[len(TOKEN_PREFIX):]) if token.startswith(TOKEN_PREFIX) else None
        email = ((source.inputs.get("serviceAccount") or {}).get("email")) if source is not None else None
        if not email or self.account(email) is None:
            return False
        now = time.time()
        return any(role in DELETING_ROLES and member == f"serviceAccount:{email}" and now >= made + self.iam_delay_s
                   for role, member, made in self.bindings.get(instance.id, []))

    # --- the engine's requests ------------------------------------------------------------------------------------

    def create(self, request: dict) -> Resource:
        provider, inputs = request["provider"], request["inputs"]
        project = inputs.get("project") or provider.get("project") or self.project
        kind = request["type"].rsplit(":", 1)[-1]
        what = {"Instance": "creating instance", "Firewall": "creating Firewall",
                "ResourcePolicy": "creating ResourcePolicy", "Disk": "creating Disk",
                "AttachedDisk": "attaching disk", "InstanceIAMMember": "applying IAM policy for compute instance",
                "Account": "creating service account", "V2Vm": "creating Vm"}.get(kind)
        if what is None:
            raise self.world.refuse(request["type"], request["name"], f"cloudsim: {request['type']} is not simulated")
        try:
            if kind == "Account":
                return self.create_account(project, inputs.get("accountId", ""), inputs.get("displayName", ""),
                                           inputs.get("description", ""), request["stack"], request["name"])
            labels = {**(provider.get("defaultLabels") or {}), **(inputs.get("labels") or {})}
            zone = inputs.get("zone") or provider.get("zone")
            region = inputs.get("region") or (zone.rsplit("-", 1)[0] if zone else provider.get("region"))
            resource = Resource("gcp", request["type"], request["name"], "", request["stack"], region, zone, inputs,
                                labels=labels)
            resource.extra["project"] = project
            getattr(self, f"_create_{kind.lower()}")(resource, project, what)
        except Refusal as refusal:
            raise self.world.refuse(request["type"], request["name"], str(refusal)) from None
        resource.extra["options"] = request.get("options") or {}
        return self.world.add(resource)

    @staticmethod
    def _named(resource: Resource, what: str) -> str:
        name = resource.inputs.get("name") or ""
        if not NAME.fullmatch(name):
            raise Refusal(f"Error {what}: " + api_error(
                400, f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex "
                     "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'", "invalid"))
        return name

    @staticmethod
    def _check_labels(labels: dict, what: str) -> None:
        for key, value in labels.items():
            if not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(str(value)):
                raise Refusal(f"Error {what}: " + api_error(
                    400, f"Invalid value for field 'resource.labels': '{key}={value}'. Label keys and values may "
                         "contain only lowercase letters, digits, underscores and dashes, up to 63 characters",
                    "invalid"))

    def _create_firewall(self, resource: Resource, project: str, what: str) -> None:
        name = self._named(resource, what)
        self.require("compute.firewalls.create", f"projects/{project}/global/firewalls/{name}", what)
        network = (resource.inputs.get("network") or "default").rsplit("/", 1)[-1]
        if network not in self.networks:
            raise Refusal(f"Error {what}: " + api_error(
                404, f"The resource 'projects/{project}/global/networks/{network}' was not found", "notFound"))
        if self.world.find(f"projects/{project}/global/firewalls/{name}") is not None:
            raise Refusal(f"Error {what}: " + api_error(
                409, f"The resource 'projects/{project}/global/firewalls/{name}' already exists", "alreadyExists"))
        resource.id = f"projects/{project}/global/firewalls/{name}"
        resource.outputs = {"selfLink": f"https://www.googleapis.com/compute/v1/{resource.id}", "name": name}

    def _create_resourcepolicy(self, resource: Resource, project: str, what: str) -> None:
        name = self._named(resource, what)
        self.require("compute.resourcePolicies.create", f"projects/{project}/regions/{resource.region}", what)
        resource.id = f"projects/{project}/regions/{resource.region}/resourcePolicies/{name}"
        resource.outputs = {"selfLink": f"https://www.googleapis.com/compute/v1/{resource.id}", "name": name}

    def _create_disk(self, resource: Resource, project: str, what: str) -> None:
        name = self._named(resource, what)
        self.require("compute.disks.create", f"projects/{project}/zones/{resource.zone}/disks/{name}", what)
        self._check_labels(resource.labels, what)
        resource.id = f"projects/{project}/zones/{resource.zone}/disks/{name}"
        (self.world.folder / "disks" / name).mkdir(parents=True, exist_ok=True)
        resource.extra["disk_type"] = (resource.inputs.get("type") or "pd-standard").rsplit("/", 1)[-1]
        resource.outputs = {"selfLink": f"https://www.googleapis.com/compute/v1/{resource.id}", "name": name,
                            "zone": resource.zone}

    def _create_instance(self, resource: Resource, project: str, what: str) -> None:
        inputs, zone = resource.inputs, resource.zone
        name = self._named(resource, what)
        machine = inputs.get("machineType", "")
        path = f"projects/{project}/zones/{zone}/instances/{name}"
        self.require("compute.instances.create", path, what)
        self._check_labels(resource.labels, what)
        scheduling = inputs.get("scheduling") or {}
        spot = scheduling.get("provisioningModel") == "SPOT" or bool(scheduling.get("preemptible"))
        reserved = scheduling.get("provisioningModel") == "RESERVATION_BOUND" or bool(
            (inputs.get("reservationAffinity") or {}).get("type") == "SPECIFIC_RESERVATION")
        if machine.startswith(RESERVATION_BOUND) and not spot and not reserved:
            # The documentation names the consumption options, not the API's text: this is its invalid-field shape.
            raise Refusal(f"Error {what}: " + api_error(
                400, f"Invalid value for field 'resource.scheduling.provisioningModel': 'STANDARD'. Machine type "
                     f"{machine} is available only through reservations, Flex-start or Spot VMs", "invalid"))
        gpus = machine.startswith(GPU_SERIES) or bool(inputs.get("guestAccelerators"))
        if gpus and scheduling.get("onHostMaintenance", "MIGRATE") == "MIGRATE":
            raise Refusal(f"Error {what}: " + api_error(
                400, "Instances with guest accelerators do not support live migration.", "badRequest"))
        for accelerator in inputs.get("guestAccelerators") or []:
            if not machine.startswith("n1-"):  # only N1 attaches GPUs ("GPU machine types")
                kind = str(accelerator.get("type", "")).rsplit("/", 1)[-1]
                raise Refusal(f"Error {what}: " + api_error(
                    400, f"[{kind}, {machine}] features are not compatible for creating instance.", "badRequest"))
        boot = (inputs.get("bootDisk") or {}).get("initializeParams") or {}
        self._disk_fits(boot.get("type") or "pd-standard", machine, what)
        for interface in inputs.get("networkInterfaces") or []:
            network = str(interface.get("network") or "default").rsplit("/", 1)[-1]
            if network not in self.networks:
                raise Refusal(f"Error {what}: " + api_error(
                    404, f"The resource 'projects/{project}/global/networks/{network}' was not found", "notFound"))
        email = (inputs.get("serviceAccount") or {}).get("email")
        if email:
            self.require("iam.serviceAccounts.actAs", email, what)
            if self.account(email) is None:  # IAM, "Eventual consistency": a new account is not usable at once
                raise Refusal(f"Error {what}: " + api_error(
                    400, f"Invalid value for field 'resource.serviceAccounts[0].email': '{email}'. Service account "
                         f"{email} does not exist.", "invalid"))
        policy = inputs.get("resourcePolicies")
        if policy and self.world.find(re.sub(r"^https://www.googleapis.com/compute/v1/", "", policy)) is None:
            raise Refusal(f"Error {what}: " + api_error(404, f"The resource '{policy}' was not found", "notFound"))
        if zone in self.stockouts:  # Compute Engine, "Troubleshooting resource availability errors"
            raise Refusal(f"Error waiting for instance to create: The zone 'projects/{project}/zones/{zone}' does not "
                          "have enough resources available to fulfill the request.  Try a different zone, or try "
                          "again later.")
        number = self.world.next_number()
        resource.id = path
        resource.extra.update(spot=spot, instance_id=f"50000000000000{number:05d}")
        metadata = inputs.get("metadata") or {}
        keys = [entry.split(":", 1)[1] for entry in str(metadata.get("ssh-keys", "")).splitlines() if ":" in entry]
        disk = Resource("gcp", "cloudsim:compute/bootDisk:Disk", f"{name}-boot", f"projects/{project}/zones/{zone}/"
                        f"disks/{name}", resource.stack, resource.region, zone, dict(boot),
                        labels=dict(boot.get("labels") or {}))
        disk.extra.update(users=[path], boot_of=path, disk_type=str(boot.get("type") or "pd-standard"))
        self.world.add(disk)
        resource.extra["boot_disk"] = disk.id
        servers = self.vm_side.hosts_lines_for(resource) if self.vm_side else ([], None)
        vm = self.world.start_vm(resource, str(metadata.get("user-data", "")), keys, gcp=True,
                                 hosts_lines=servers[0], ca_bundle=servers[1], agent_first=self.agent_first)
        if self.vm_side is not None:
            self.vm_side.serve(resource, vm)
        interfaces = [{**interface, "networkIp": vm.address, "name": f"nic{i}",
                       "accessConfigs": [{**access, "natIp": vm.address} for access in interface.get("accessConfigs")
                                         or []]} for i, interface in enumerate(inputs.get("networkInterfaces") or [])]
        resource.outputs = {"instanceId": resource.extra["instance_id"], "name": name, "zone": zone,
                            "selfLink": f"https://www.googleapis.com/compute/v1/{path}", "currentStatus": "RUNNING",
                            "networkInterfaces": interfaces}

    def _create_v2vm(self, resource: Resource, project: str, what: str) -> None:
        """A TPU VM node (Cloud TPU API v2, `projects.locations.nodes.create`; the provider's `gcp.tpu.V2Vm`): its
        name, labels, network, accelerator type and software version checked; one network endpoint per worker
        (offers.tpus counts a slice's hosts). No guest boots on it (TPU_WORKER_ADDRESS)."""
        from offers.tpus import tpu_hosts

        inputs, zone = resource.inputs, resource.zone
        name = self._named(resource, what)
        path = f"projects/{project}/locations/{zone}/nodes/{name}"
        self.require("tpu.nodes.create", path, what)
        self._check_labels(resource.labels, what)
        if self.world.find(path) is not None:
            raise Refusal(f"Error {what}: " + api_error(409, f"Resource '{path}' already exists", "alreadyExists"))
        network = str((inputs.get("networkConfig") or {}).get("network") or "default").rsplit("/", 1)[-1]
        if network not in self.networks:
            raise Refusal(f"Error {what}: " + api_error(
                404, f"The resource 'projects/{project}/global/networks/{network}' was not found", "notFound"))
        accelerator, runtime = inputs.get("acceleratorType", ""), inputs.get("runtimeVersion", "")
        generation = accelerator.rpartition("-")[0]
        if generation not in TPU_GENERATIONS or generation not in TPU_RUNTIMES.get(runtime, ()):
            raise Refusal(f"Error {what}: " + api_error(
                400, f"Invalid value for field 'runtime_version': '{runtime}' is not supported for accelerator type "
                     f"'{accelerator}'", "badRequest"))
        if zone in self.stockouts:
            raise Refusal(f"Error waiting to create Vm: There is no more capacity in the zone \"{zone}\"; you can "
                          "try in another zone where Cloud TPU Nodes are offered")
        resource.id = path
        endpoints = [{"ipAddress": TPU_WORKER_ADDRESS.format(rank + 1), "port": 8470,
                      "accessConfigs": [{"externalIp": TPU_WORKER_ADDRESS.format(rank + 1)}]}
                     for rank in range(tpu_hosts(accelerator))]
        resource.outputs = {"name": name, "zone": zone, "state": "READY", "networkEndpoints": endpoints}

    @staticmethod
    def _disk_fits(disk_type: str, machine: str, what: str) -> None:
        disk_type = disk_type.rsplit("/", 1)[-1]
        hyperdisk = disk_type.startswith("hyperdisk-")
        if (machine.startswith(HYPERDISK_ONLY) and not hyperdisk) or \
                (machine.startswith(PERSISTENT_DISK_ONLY) and hyperdisk):
            raise Refusal(f"Error {what}: " + api_error(
                400, f"[{disk_type}] features and [machine_type: {machine}] InstanceTaxonomies are not compatible for "
                     "creating instance", "badRequest"))

    def _create_instanceiammember(self, resource: Resource, project: str, what: str) -> None:
        inputs = resource.inputs
        path = f"projects/{project}/zones/{inputs.get('zone')}/instances/{inputs.get('instanceName')}"
        self.require("compute.instances.setIamPolicy", path, what)
        instance = self.world.find(path)
        if instance is None:
            raise Refusal(f"Error {what}: " + api_error(404, f"The resource '{path}' was not found", "notFound"))
        member = inputs.get("member", "")
        if member.startswith("serviceAccount:") and self.account(member.split(":", 1)[1]) is None:
            raise Refusal(f"Error {what} \"{path}\": Error setting IAM policy for compute instance \"{path}\": "
                          + api_error(400, f"Service account {member.split(':', 1)[1]} does not exist.", "badRequest"))
        self.bindings.setdefault(instance.id, []).append((inputs.get("role"), member, time.time()))
        resource.id = f"{path}/{inputs.get('role')}/{member}"
        resource.zone = instance.zone
        resource.extra["instance"] = instance.id
        resource.outputs = {"etag": "BwYcloudsim="}

    def _create_attacheddisk(self, resource: Resource, project: str, what: str) -> None:
        inputs = resource.inputs
        instance_path = re.sub(r"^https://www.googleapis.com/compute/v1/", "", inputs.get("instance", ""))
        instance = self.world.find(instance_path)
        disk_name = str(inputs.get("disk", "")).rsplit("/", 1)[-1]
        disk = next((d for d in self.world.live("Disk", "gcp") if d.id.endswith(f"/disks/{disk_name}")
                     and d.type == "gcp:compute/disk:Disk"), None)
        if instance is None or disk is None:
            missing = instance_path if instance is None else disk_name
            raise Refusal(f"Error {what}: " + api_error(404, f"The resource '{missing}' was not found", "notFound"))
        if disk.zone != instance.zone:
            raise Refusal(f"Error {what}: " + api_error(
                400, f"Invalid value for field 'disk': '{disk.id}'. Disk must be in the same zone as the instance",
                "invalid"))
        self._disk_fits(disk.extra["disk_type"], instance.inputs.get("machineType", ""), what)
        if disk.extra.get("users"):
            raise Refusal(f"Error {what}: " + api_error(
                400, f"The disk resource '{disk.id}' is already being used by '{disk.extra['users'][0]}'",
                "resourceInUseByAnotherResource"))
        disk.extra["users"] = [instance.id]
        device = inputs.get("deviceName") or disk_name
        resource.id = f"{instance.id}/{disk_name}"
        resource.zone = instance.zone
        resource.extra.update(instance=instance.id, disk=disk.id)
        if instance.vm is not None and instance.vm.running:
            self.world.attach(instance, f"google-{device}", self.world.folder / "disks" / disk_name)

    # --- deleting ------------------------------------------------------------------------------------------------

    def delete(self, resource: Resource, by: str = "engine") -> None:
        kind = resource.kind
        permission = {"Instance": "compute.instances.delete", "Firewall": "compute.firewalls.delete",
                      "ResourcePolicy": "compute.resourcePolicies.delete", "Disk": "compute.disks.delete",
                      "Account": "iam.serviceAccounts.delete", "InstanceIAMMember": "compute.instances.setIamPolicy",
                      "AttachedDisk": "compute.instances.detachDisk", "V2Vm": "tpu.nodes.delete"}.get(kind)
        if permission:
            self.require(permission, resource.id, f"deleting {kind}")
        if kind == "Instance":
            self.delete_instance(resource, by)
            return
        if kind == "ResourcePolicy" and any(r.inputs.get("resourcePolicies", "").endswith(resource.id)
                                            for r in self.world.live("Instance", "gcp")):
            raise Refusal("Error deleting ResourcePolicy: " + api_error(
                400, f"The resource_policy resource '{resource.id}' is already being used by an instance",
                "resourceInUseByAnotherResource"))
        if kind == "Disk" and resource.extra.get("users"):
            raise Refusal("Error deleting Disk: " + api_error(
                400, f"The disk resource '{resource.id}' is already being used by '{resource.extra['users'][0]}'",
                "resourceInUseByAnotherResource"))
        if kind == "InstanceIAMMember":
            bindings = self.bindings.get(resource.extra["instance"], [])
            self.bindings[resource.extra["instance"]] = [b for b in bindings if f"/{b[0]}/{b[1]}" not in resource.id]
        if kind == "AttachedDisk":
            disk = self.world.find(resource.extra["disk"])
            if disk is not None:
                disk.extra["users"] = []
        self.world.delete(resource, by)

    def delete_instance(self, instance: Resource, by: str) -> None:
        """The instance, its IAM bindings and its auto-deleted boot disk; its attached disks become free (those
        first: a test that sees the instance gone sees the rest gone too)."""
        self.bindings.pop(instance.id, None)
        for resource in self.world.live(backend="gcp"):
            if resource.extra.get("boot_of") == instance.id:
                self.world.delete(resource, by)
            elif resource.kind in ("InstanceIAMMember", "AttachedDisk") and \
                    resource.extra.get("instance") == instance.id:
                self.world.delete(resource, by)
            elif resource.kind == "Disk" and instance.id in resource.extra.get("users", []):
                resource.extra["users"] = []
        if self.vm_side is not None:
            self.vm_side.unserve(instance)
        self.world.delete(instance, by)

    def guest_power_off(self, instance: Resource) -> None:
        """A GCP VM that powers off is stopped (TERMINATED, its disks billed), not deleted (Compute Engine, "Stop
        and start a VM")."""
        self.world.stop_vm(instance, "guest power-off")
        if self.vm_side is not None:
            self.vm_side.unserve(instance)

    def exists(self, resource: Resource) -> bool:
        return resource.live

    # --- lookups -----------------------------------------------------------------------------------------------

    def call(self, token: str, args: dict, provider: dict) -> dict:
        if token == "gcp:compute/getImage:getImage":
            project, family = args.get("project"), args.get("family") or args.get("name")
            if project not in ("deeplearning-platform-release", "ubuntu-os-cloud"):
                raise Refusal(api_error(404, f"The resource 'projects/{project}/global/images/family/{family}' was "
                                             "not found", "notFound"))
            link = f"https://www.googleapis.com/compute/v1/projects/{project}/global/images/{family}-v20250601"
            return {"id": link, "selfLink": link, "name": f"{family}-v20250601", "family": family}
        raise Refusal(f"cloudsim: the lookup {token} is not simulated")


def instance_of(world: World, name: Optional[str] = None) -> Resource:
    found = [r for r in world.live("Instance", "gcp") if name is None or r.id.endswith(f"/instances/{name}")]
    if len(found) != 1:
        raise AssertionError(f"expected one live GCP instance, found {found}")
    return found[0]
