"""The narrow interface the run orchestration sees per backend: `provision` an offer into reachable hosts (one per
node, rank order), and `teardown` what a run left. Local and fleet hosts already exist; cloud hosts are one Pulumi
stack per run (`create_stack`/`destroy_stack`, which fleets use for stacks of their own).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from configuration.backends import DstackConfig
from configuration.errors import ConfigurationError
from configuration.home import dstack_home
from offers.catalog import InstanceType
from offers.offer import Offer
from provisioner.backends.base import LeftoversRemain
from provisioner.host.access import HostAccess
from provisioner.host.keys import generate_key, kept_key
from provisioner.host.transport import TransportError
from provisioner.jobs.nodes import on_every_node, rank_offers
from provisioner.jobs.team_keys import seal_home_key
from provisioner.planning.stack_plan import generate_host_keys, stack_spec
from provisioner.store.store import StateStore
from stacks import clouds
from stacks.errors import UNREACHABLE, StackFailure
from stacks.losses import InstanceLoss
from stacks.progress import EngineEventTracker, StepProgress
from stacks.spec import HostKey, StackSpec, fleet_instance_name, node_name

# How long a new VM may take from its launch (the engine's first instance create) to its first SSH answer. Ubuntu on
# a CPU VM answers within a minute or two; an accelerator VM boots a larger image and loads its drivers first
# (dstack allows any VM 10 minutes from its request to a ready host); an 8-accelerator or bare-metal VM (p4d, p5,
# p6, GCP A3 and A4, `*.metal`) also brings up NVSwitch and many NICs before sshd starts (dstack allows GCP's
# a4-highgpu-8g 16 minutes). A VM that has not answered by then is given up: its stack is destroyed and the run moves
# to its next offer (a StackFailure of scope `offer`).
BOOT_BUDGET_CPU_S = 300
BOOT_BUDGET_ACCELERATOR_S = 600
BOOT_BUDGET_LARGE_S = 960
MIN_BOOT_WAIT_S = 60  # what a VM gets at least after `up`, however long `up` took


def run_key_path(run_name: str) -> Path:
    return dstack_home() / "runs" / run_name / "id_ed25519"


@dataclass
class CloudBackend:
    """One per run's provisioning (provisioner.runs.failover keeps it across the run's tries), so what is settled
    once per run is settled once: GCP's `self_delete` permissions, and each stack's service account."""

    name: str  # aws or gcp
    config: DstackConfig
    store: StateStore
    self_delete_missing: Optional[Tuple[str, ...]] = None  # GCP: what the credentials lack; None: not asked yet
    accounts: Dict[str, str] = field(default_factory=dict)  # GCP: stack name -> its service account, made

    def provision(self, run_name, offer, configuration, report) -> List[HostAccess]:
        return self.create_stack(run_name, offer, configuration, report, run_key_path(run_name),
                                 lambda stack: self.store.update_run(run_name, stack=stack),
                                 note=run_note(self.store, run_name))

    def create_stack(self, name: str, offer: Offer, configuration, report: Callable, key_path: Path,
                     record_stack: Callable[[dict], None], note: Callable[[str], None] = lambda message: None,
                     host_keys: Optional[Tuple[HostKey, ...]] = None, update: bool = False,
                     existing: Optional[dict] = None) -> List[HostAccess]:
        """Brings up the stack of `name` (a run, or a fleet) and returns its hosts, one per node in rank order
        (provisioner.jobs.nodes.node_count). `record_stack` stores the stack's identity before `up`, so a crash
        mid-way still leaves what `destroy_stack` needs. All or nothing: a node that cannot be created fails the
        whole `up`, which destroys what was created (stacks.automation.stack_up). `note` gets the warnings a
        person should read (a GCP run falling back to `self_delete: false`).

        A cloud fleet's stack (provisioner.backends.fleet_stacks) brings its own `host_keys`, kept per instance, and
        its login key at `key_path` is kept: with `update`, its `up` adds and removes instances in place, and a
        failure leaves the stack as it is (never destroyed) for the caller to bring back. `existing`: the stack as
        recorded, whose owner's names and state backend it keeps whichever laptop of the team updates it."""
        from stacks.automation import open_stack, require_pulumi, stack_up, state_settings
        from stacks.extras import require_extra

        require_extra(self.name, f"{name} on {self.name.upper() if self.name == 'aws' else 'GCP'}")
        require_pulumi()  # before anything else: without it nothing can be created or destroyed
        clouds.check_credentials(self.name, offer.region)
        if host_keys is None:
            public_key, host_keys = generate_key(key_path, f"dstack-run-{name}"), generate_host_keys(configuration)
        else:
            public_key = kept_key(key_path, f"dstack-run-{name}")
        spec = stack_spec(name, configuration, offer, public_key, host_keys, self.config)
        if existing and existing.get("owner"):  # a teammate's fleet grown from here: its stack, its names
            spec = dataclasses.replace(spec, owner=existing["owner"])
        spec = self._self_delete_allowed(spec, note)
        settings = recorded_state(existing, name) if existing and existing.get("backend_url") else \
            state_settings(self.config.pulumi.backend_url)
        seal_home_key(self.store, key_path)  # after the passphrase (the team key's default) is made
        recorded = {"backend": self.name, "name": spec.stack_name, "owner": spec.owner, "region": offer.region,
                    "backend_url": settings.backend_url, "tagged": name,
                    "home_state": existing.get("home_state", False) if existing else
                    not self.config.pulumi.backend_url}  # a laptop's own state: see recorded_state
        if spec.instance_nums is not None:  # a fleet's instances named by their numbers (instance_state)
            recorded["numbered"] = True
            if spec.legacy_nodes:  # kept with the stack: those instances' names (fleet_instance_name)
                recorded["legacy_nodes"] = spec.legacy_nodes
        record_stack(recorded)
        if spec.self_delete and spec.backend == "gcp":  # recorded first: the run's teardown sweeps the account
            if name not in self.accounts:
                self.accounts[name] = clouds.run_service_account(spec.gcp_project_id, spec.owner, name)
            spec = dataclasses.replace(spec, service_account_email=self.accounts[name])
        stack = open_stack(spec.stack_name, clouds.program_for(spec), settings)
        tracker = EngineEventTracker(report)
        began = time.monotonic()
        outputs = stack_up(stack, on_event=tracker, update=update)
        # what `losses` asks the cloud about once a node stops answering (a spot VM taken back)
        record_stack({**recorded, "zone": outputs.get("zone"),
                      "instance_ids": [str(i) for i in outputs.get("instance_ids") or []]})
        if outputs.get("subnet_id"):
            report(StepProgress("use", "aws:ec2/subnet:Subnet", f"{outputs['subnet_id']} ("
                                f"{'VPC ' + spec.vpc_name if spec.vpc_name else 'the default VPC'}, {spec.zone})",
                                "done"))
        hosts = stack_hosts(outputs, spec.host_keys, key_path)
        budget = max((boot_budget_s(o.instance) for o in rank_offers(offer, len(hosts))), default=0)
        try:
            await_boot(hosts, (tracker.launched_at or began) + budget)
        except TransportError as e:
            from stacks.automation import stack_destroy

            failure = StackFailure(UNREACHABLE, "offer", f"{str(e).splitlines()[0]}; a {offer.instance.name} VM "
                                                         f"gets {budget}s from its launch (its boot budget)")
            if update:
                raise failure from None
            try:
                stack_destroy(stack, on_event=tracker)
            except StackFailure as cleanup:
                failure.message += f" (and the cleanup failed: {cleanup.message}; run `dstack stop` again)"
            raise failure from None
        return hosts

    def _self_delete_allowed(self, spec: StackSpec, note: Callable[[str], None]) -> StackSpec:
        """GCP `self_delete`, asked once before the first `up`: without the permissions (or the IAM API) it takes,
        the stack falls back to `self_delete: false` and `note` names what is missing, rather than an `up` failing
        after its GPU VM was created (docs/clouds.md)."""
        if spec.backend != "gcp" or not spec.self_delete:
            return spec
        if self.self_delete_missing is None:
            check = clouds.self_delete_check(spec.gcp_project_id)
            self.self_delete_missing = check.missing
            if check.missing:
                note(clouds.self_delete_warning(spec.gcp_project_id, check.missing))
            elif check.unknown:
                note(f"could not tell whether the GCP credentials may give VMs their own service account "
                     f"(`self_delete`): {check.unknown}; trying")
        return dataclasses.replace(spec, self_delete=False) if self.self_delete_missing else spec

    def instance_state(self, stack: dict, zone: str, rank: int, nodes: int) -> str:
        """The state the cloud has for node `rank` of the stack `create_stack` recorded (`running`, `gone`, ...); in
        a fleet's stack of numbered instances, instance number `rank`."""
        from stacks.extras import require_extra

        require_extra(self.name, "reading an instance's state")
        gcp = self.config.backend("gcp")
        tagged = stack.get("tagged", "")
        name = fleet_instance_name(stack["owner"], tagged, rank, stack.get("legacy_nodes", 0)) \
            if stack.get("numbered") else \
            node_name(stack["owner"], tagged, rank, nodes)
        return clouds.instance_state(self.name, stack["region"], zone, gcp.project_id if gcp is not None else None,
                                     stack["owner"], name)

    def sweep_instances(self, stack: dict, nums: Sequence[int]) -> None:
        """Removes fleet instances `nums` that an `up` killed mid-way created unrecorded, once the fleet's stack
        (as `create_stack` recorded it) no longer has them."""
        gcp = self.config.backend("gcp")
        tagged = stack.get("tagged", "")
        clouds.sweep_instances(self.name, stack["region"], gcp.project_id if gcp is not None else None,
                               stack["owner"], tagged,
                               [fleet_instance_name(stack["owner"], tagged, n, stack.get("legacy_nodes", 0))
                                for n in nums])

    def losses(self, stack: Optional[dict]) -> List[InstanceLoss]:
        """The instances of a stack (as `create_stack` recorded it) that the cloud no longer runs, and why: a spot
        VM taken back is an interruption. Empty for a stack recorded without its instances."""
        if not stack or not stack.get("instance_ids"):
            return []
        gcp = self.config.backend("gcp")
        return clouds.instance_losses(self.name, stack["region"], stack.get("zone"),
                                      gcp.project_id if gcp is not None else None, stack["instance_ids"])

    def teardown(self, record, report) -> None:
        if record.stack:
            self.destroy_stack(record.name, record.stack, report)

    def destroy_stack(self, name: str, stack: dict, report: Callable) -> None:
        """Destroys the stack `create_stack` recorded for `name`, then sweeps what an interrupted `up` created
        before Pulumi recorded it: the resources tagged with the name the stack was made for (`tagged`: a run's
        implicit fleet may be named apart from the run whose record holds the stack). A sweep that fails after the
        stack is gone raises LeftoversRemain: a warning, not a teardown to try again."""
        from stacks.extras import require_extra

        require_extra(self.name, f"removing {name}'s {self.name} stack")
        clouds.check_credentials(self.name, stack["region"])  # before Pulumi, whose error would be pages long
        from stacks.automation import open_stack, stack_destroy

        pulumi_stack = open_stack(stack.get("name", name), lambda: None, recorded_state(stack, name))
        gcp = self.config.backend("gcp")

        def sweep() -> None:
            clouds.sweep_run(self.name, stack["region"], gcp.project_id if gcp is not None else None,
                             stack.get("owner"), stack.get("tagged", name))

        try:
            stack_destroy(pulumi_stack, on_event=EngineEventTracker(report))
        except Exception as destroy_failed:
            # A VM whose create the engine never recorded (dstack killed mid-`up`) holds what the stack deletes (AWS
            # refuses the security group: DependencyViolation): the sweep removes it by its tags, then the destroy
            # goes again. A sweep that cannot run leaves the destroy's own error as the reason.
            try:
                sweep()
            except Exception:
                raise destroy_failed from None
            stack_destroy(pulumi_stack, on_event=EngineEventTracker(report))
        try:
            sweep()
        except Exception as e:  # the stack is gone: what is left is `dstack gc`'s, whose failure stays hard
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise LeftoversRemain(f"{name}'s stack was destroyed, but the sweep for what an interrupted `up` may "
                                  f"have left failed: {reason}; `dstack gc` finds and removes such resources") \
                from None


def recorded_state(stack: dict, name: str):
    """The Pulumi state a recorded stack lives in, found by its URL from any laptop of the team (a shared `s3://`
    or `gs://` backend: docs/teams.md). A stack kept in the default state under the `$DSTACK_HOME` that made it is
    out of reach from another home: refused in one line, rather than destroying nothing in an empty folder here
    while the stack's resources go on billing."""
    from stacks.automation import state_settings

    url = stack.get("backend_url")
    if stack.get("home_state") and url != state_settings().backend_url:
        raise ConfigurationError(f"{name}'s stack is in the Pulumi state of the home that made it ({url}), not in a "
                                 "backend the team shares: only that laptop can destroy it (a team sets "
                                 "pulumi: backend_url: in every config.yml, docs/teams.md)")
    return state_settings(url)


def run_note(store: StateStore, run_name: str) -> Callable[[str], None]:
    """A warning about a run's provisioning, as one of its events (provisioner.runs.failover shows them)."""
    return lambda message: store.add_event(run_name, "warning", message)


def boot_budget_s(instance: InstanceType) -> int:
    """The seconds a new VM of `instance` may take from its launch to its first SSH answer (see BOOT_BUDGET_*)."""
    if instance.gpu_count >= 8 or ".metal" in instance.name:
        return BOOT_BUDGET_LARGE_S
    return BOOT_BUDGET_ACCELERATOR_S if instance.gpu_count else BOOT_BUDGET_CPU_S


def await_boot(hosts: Sequence[HostAccess], deadline: float) -> None:
    """Waits until every node answers SSH (with the run's host key and login key), each until `deadline` (on the
    monotonic clock) or MIN_BOOT_WAIT_S from now, whichever is later. A node that never answered raises
    TransportError; one that answers with another key or refuses the login raises what the connection says."""
    def first_answer(host: HostAccess) -> None:
        host.connect(total_wait=max(deadline - time.monotonic(), MIN_BOOT_WAIT_S), booting=True).close()

    on_every_node(first_answer, list(hosts))


def stack_hosts(outputs: dict, host_keys, key_path: Path) -> List[HostAccess]:
    """A stack's nodes from its outputs, in rank order: each reached at its public address with the run's key and
    verified by its own host key; `internal_ip`, its private address, is where the other nodes reach it."""
    return [HostAccess(kind="ssh", hostname=str(public), user=str(outputs["ssh_user"]), identity_file=str(key_path),
                       host_key=key.public_openssh, internal_ip=str(private) if private else None)
            for public, private, key in zip(outputs["public_ips"], outputs["private_ips"], host_keys, strict=True)]


def fleet_key_path(fleet: str) -> Path:
    """A cloud fleet's private key: its instances outlive the runs on them, so it is not under any run's folder."""
    return dstack_home() / "fleets" / fleet / "id_ed25519"
