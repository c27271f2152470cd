"""The narrow interface the run orchestration sees per backend: `provision` an offer into reachable hosts (one per
node, rank order), and `teardown` what a run left. Local and fleet hosts already exist; cloud hosts are one Pulumi
stack per run (`create_stack`/`destroy_stack`, which fleets use for stacks of their own).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Protocol

from configuration.backends import DstackConfig
from configuration.errors import ConfigurationError
from configuration.home import dstack_home, private_file
from offers.offer import Offer
from provisioner.access import HostAccess
from provisioner.state import RunRecord, StateStore
from stacks.errors import CAPACITY, StackFailure


class Backend(Protocol):
    name: str

    def provision(self, run_name: str, offer: Offer, configuration, report: Callable) -> List[HostAccess]:
        ...

    def teardown(self, record: RunRecord, report: Callable) -> None:
        ...


class LocalBackend:
    name = "local"

    def provision(self, run_name, offer, configuration, report) -> List[HostAccess]:
        import shutil

        if configuration.image and not shutil.which("docker"):
            raise ConfigurationError("`image:` tasks on this machine need Docker, which is not installed: install it "
                                     "(https://docs.docker.com/engine/install/), or run with `python:` instead")
        return [HostAccess(kind="local")]

    def teardown(self, record, report) -> None:
        """Nothing was created: the job folder stays for `dstack logs`."""


@dataclass
class FleetBackend:
    store: StateStore
    hosts: dict  # (fleet, hostname) -> HostAccess
    name: str = "ssh"

    def provision(self, run_name, offer, configuration, report) -> List[HostAccess]:
        """The offer's host, and for `nodes: N` N-1 more idle hosts of its fleet among `hosts` (the session holds
        those that fit the run), claimed all or none."""
        from provisioner.cluster import node_count

        nodes = node_count(configuration)
        first = self.hosts[(offer.region, offer.instance.name)]
        others = [access for (fleet, _), access in self.hosts.items() if fleet == offer.region and access != first]
        candidates = [first] + (others if nodes > 1 else [])
        claimed, holders = self.store.claim_hosts(run_name, [host.to_json() for host in candidates], nodes)
        if claimed is None:
            busy = f"busy with run{'s' if len(holders) > 1 else ''} {', '.join(holders)}"
            raise StackFailure(CAPACITY, "zone", f"{first.description} is {busy}" if nodes == 1 else
                               f"fleet {offer.region} has fewer than {nodes} idle hosts that fit (others are {busy})")
        return [HostAccess.from_json(host) for host in claimed]

    def teardown(self, record, report) -> None:
        """The host is the user's: nothing to remove."""


def run_key_path(run_name: str) -> Path:
    return dstack_home() / "runs" / run_name / "id_ed25519"


def generate_key(path: Path, comment: str) -> str:
    """An ed25519 key pair: the private key written to `path` with mode 0600 before it holds anything; returns the
    public key in OpenSSH form."""
    from provisioner.cluster_ssh import new_key_pair

    private, public = new_key_pair(comment)
    private_file(path).write_bytes(private)
    return public


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
        (provisioner.cloud_plan.node_count). `record_stack` stores the stack's identity before `up`, so a crash
        mid-way still leaves what `destroy_stack` needs. All or nothing: a node that cannot be created fails the
        whole `up`, which destroys what was created (stacks.automation.stack_up)."""
        from provisioner.cloud_plan import generate_host_keys, program_for, stack_spec
        from stacks.automation import open_stack, require_pulumi, stack_up, state_settings
        from stacks.progress import EngineEventTracker
        from stacks.extras import require_extra

        require_extra(self.name, f"{name} on {self.name.upper() if self.name == 'aws' else 'GCP'}")
        require_pulumi()  # before anything else: without it nothing can be created or destroyed
        self.check_credentials(offer.region)
        public_key = generate_key(key_path, f"dstack-run-{name}")
        spec = stack_spec(name, configuration, offer, public_key, generate_host_keys(configuration), self.config)
        settings = state_settings(self.config.pulumi.backend_url)
        record_stack({"backend": self.name, "name": spec.stack_name, "owner": spec.owner, "region": offer.region,
                      "backend_url": settings.backend_url, "tagged": name})
        stack = open_stack(spec.stack_name, program_for(spec), settings)
        outputs = stack_up(stack, on_event=EngineEventTracker(report))
        return stack_hosts(outputs, spec.host_keys, key_path)

    def check_credentials(self, region: str) -> None:
        if self.name == "aws":
            from stacks.aws_checks import require_region_enabled
            from stacks.credentials import check_aws_credentials

            require_region_enabled(region)
            check_aws_credentials(region)
        else:
            from stacks.credentials import gcp_credentials_source

            gcp_credentials_source()

    def teardown(self, record, report) -> None:
        if record.stack:
            self.destroy_stack(record.name, record.stack, report)

    def destroy_stack(self, name: str, stack: dict, report: Callable) -> None:
        """Destroys the stack `create_stack` recorded for `name`, then sweeps what an interrupted `up` created
        before Pulumi recorded it: the resources tagged with the name the stack was made for (`tagged`: a run's
        implicit fleet may be named apart from the run whose record holds the stack)."""
        from stacks.extras import require_extra

        require_extra(self.name, f"removing {name}'s {self.name} stack")
        self.check_credentials(stack["region"])  # before Pulumi, whose error would be pages long
        from stacks.automation import open_stack, stack_destroy, state_settings
        from stacks.progress import EngineEventTracker

        settings = state_settings(stack.get("backend_url"))
        pulumi_stack = open_stack(stack.get("name", name), lambda: None, settings)
        stack_destroy(pulumi_stack, on_event=EngineEventTracker(report))
        if self.name == "aws":
            sweep_aws_run(stack["region"], stack.get("owner"), stack.get("tagged", name))
        else:
            gcp = self.config.backend("gcp")
            sweep_gcp_run(gcp.project_id if gcp is not None else None, stack.get("owner"), stack.get("tagged", name))


def stack_hosts(outputs: dict, host_keys, key_path: Path) -> List[HostAccess]:
    """A stack's nodes from its outputs, in rank order: each reached at its public address with the run's key and
    verified by its own host key; `internal_ip`, its private address, is where the other nodes reach it."""
    return [HostAccess(kind="ssh", hostname=str(public), user=str(outputs["ssh_user"]), identity_file=str(key_path),
                       host_key=key.public_openssh, internal_ip=str(private) if private else None)
            for public, private, key in zip(outputs["public_ips"], outputs["private_ips"], host_keys, strict=True)]


def sweep_aws_run(region: str, owner: Optional[str], run_name: str) -> None:
    """What an interrupted `up` created before Pulumi recorded it: found by the run's and its owner's tags (another
    user's run of the same name is not touched) and removed. A run recorded before owners existed has none."""
    import boto3

    from stacks.aws_leftovers import find_leftovers, remove_leftovers
    from stacks.credentials import aws_errors

    ec2 = boto3.session.Session().client("ec2", region_name=region)
    with aws_errors(f"removing what run {run_name} left in AWS {region}"):
        remove_leftovers(ec2, find_leftovers(ec2, region, owner, run=run_name))


def sweep_gcp_run(project_id: Optional[str], owner: Optional[str], run_name: str) -> None:
    """What an interrupted `up` created before Pulumi recorded it: found by the run's labels and names, in every
    zone (an offer's zones are tried in turn), and removed."""
    from configuration.owner import owner_id
    from stacks.gcp_leftovers import find_leftovers, gcp_api, remove_leftovers

    api = gcp_api(project_id)
    remove_leftovers(api, find_leftovers(api, owner or owner_id(), run=run_name))


def fleet_key_path(fleet: str) -> Path:
    """A cloud fleet's private key: its instances outlive the runs on them, so it is not under any run's folder."""
    return dstack_home() / "fleets" / fleet / "id_ed25519"


def backend_for(name: str, config: DstackConfig, store: StateStore, fleet_hosts: Optional[dict] = None) -> Backend:
    """A cloud's backend reuses idle fleet instances (provisioner.instances) before creating any."""
    from provisioner.instances import ReusingBackend

    if name == "local":
        return LocalBackend()
    if name == "ssh":
        return FleetBackend(store, fleet_hosts or {})
    return ReusingBackend(CloudBackend(name, config, store), store)

