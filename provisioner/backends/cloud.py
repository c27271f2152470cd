"""The narrow interface the run orchestration sees per backend: `provision` an offer into reachable hosts (one per
node, rank order), and `teardown` what a run left. Local and fleet hosts already exist; cloud hosts are one Pulumi
stack per run (`create_stack`/`destroy_stack`, which fleets use for stacks of their own).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence

from configuration.backends import DstackConfig
from configuration.home import dstack_home
from offers.catalog import InstanceType
from offers.offer import Offer
from provisioner.host.access import HostAccess
from provisioner.host.keys import generate_key
from provisioner.host.transport import TransportError
from provisioner.jobs.nodes import on_every_node, rank_offers
from provisioner.planning.stack_plan import generate_host_keys, stack_spec
from provisioner.store.store import StateStore
from stacks import clouds
from stacks.errors import UNREACHABLE, StackFailure
from stacks.progress import EngineEventTracker, StepProgress

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
    name: str  # aws or gcp
    config: DstackConfig
    store: StateStore

    def provision(self, run_name, offer, configuration, report) -> List[HostAccess]:
        return self.create_stack(run_name, offer, configuration, report, run_key_path(run_name),
                                 lambda stack: self.store.update_run(run_name, stack=stack))

    def create_stack(self, name: str, offer: Offer, configuration, report: Callable, key_path: Path,
                     record_stack: Callable[[dict], None]) -> List[HostAccess]:
        """Brings up the stack of `name` (a run, or a fleet) and returns its hosts, one per node in rank order
        (provisioner.jobs.nodes.node_count). `record_stack` stores the stack's identity before `up`, so a crash
        mid-way still leaves what `destroy_stack` needs. All or nothing: a node that cannot be created fails the
        whole `up`, which destroys what was created (stacks.automation.stack_up)."""
        from stacks.automation import open_stack, require_pulumi, stack_up, state_settings
        from stacks.extras import require_extra

        require_extra(self.name, f"{name} on {self.name.upper() if self.name == 'aws' else 'GCP'}")
        require_pulumi()  # before anything else: without it nothing can be created or destroyed
        clouds.check_credentials(self.name, offer.region)
        public_key = generate_key(key_path, f"dstack-run-{name}")
        spec = stack_spec(name, configuration, offer, public_key, generate_host_keys(configuration), self.config)
        settings = state_settings(self.config.pulumi.backend_url)
        record_stack({"backend": self.name, "name": spec.stack_name, "owner": spec.owner, "region": offer.region,
                      "backend_url": settings.backend_url, "tagged": name})
        stack = open_stack(spec.stack_name, clouds.program_for(spec), settings)
        tracker = EngineEventTracker(report)
        began = time.monotonic()
        outputs = stack_up(stack, on_event=tracker)
        if outputs.get("subnet_id"):
            report(StepProgress("use", "aws:ec2/subnet:Subnet", f"{outputs['subnet_id']} ("
                                f"{'VPC ' + spec.vpc_name if spec.vpc_name else 'the default VPC'}, {spec.zone})",
                                "done"))
        hosts = stack_hosts(outputs, spec.host_keys, key_path)
        budget = max(boot_budget_s(o.instance) for o in rank_offers(offer, len(hosts)))
        try:
            await_boot(hosts, (tracker.launched_at or began) + budget)
        except TransportError as e:
            from stacks.automation import stack_destroy

            failure = StackFailure(UNREACHABLE, "offer", f"{str(e).splitlines()[0]}; a {offer.instance.name} VM "
                                                         f"gets {budget}s from its launch (its boot budget)")
            try:
                stack_destroy(stack, on_event=tracker)
            except StackFailure as cleanup:
                failure.message += f" (and the cleanup failed: {cleanup.message}; run `dstack stop` again)"
            raise failure from None
        return hosts

    def teardown(self, record, report) -> None:
        if record.stack:
            self.destroy_stack(record.name, record.stack, report)

    def destroy_stack(self, name: str, stack: dict, report: Callable) -> None:
        """Destroys the stack `create_stack` recorded for `name`, then sweeps what an interrupted `up` created
        before Pulumi recorded it: the resources tagged with the name the stack was made for (`tagged`: a run's
        implicit fleet may be named apart from the run whose record holds the stack)."""
        from stacks.extras import require_extra

        require_extra(self.name, f"removing {name}'s {self.name} stack")
        clouds.check_credentials(self.name, stack["region"])  # before Pulumi, whose error would be pages long
        from stacks.automation import open_stack, stack_destroy, state_settings

        settings = state_settings(stack.get("backend_url"))
        pulumi_stack = open_stack(stack.get("name", name), lambda: None, settings)
        stack_destroy(pulumi_stack, on_event=EngineEventTracker(report))
        gcp = self.config.backend("gcp")
        clouds.sweep_run(self.name, stack["region"], gcp.project_id if gcp is not None else None, stack.get("owner"),
                         stack.get("tagged", name))


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
