"""Cloud fleets: `dstack apply -f fleet.dstack.yml` without `ssh_config` provisions `nodes` instances on the cheapest
offer, in one Pulumi stack (CloudBackend.create_stack), and records them as idle instances that runs reuse
(provisioner.planning.reuse). `dstack fleet delete` and idle expiry destroy the stack.

The fleet's row is written before `up` and its stack's identity as `up` begins, so a crash leaves what the delete
needs. Its key lives under `$DSTACK_HOME/fleets/NAME/` (0600), outliving the runs on its instances.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Callable, Dict, List, Optional

from configuration.backends import CLOUD_BACKENDS, DstackConfig
from configuration.errors import ConfigurationError, DstackError
from configuration.home import dstack_home
from configuration.policies import MAX_NODES
from configuration.resources import ResourcesSpec
from offers.catalog import load_catalogs
from offers.offer import Offer
from offers.requirements import Requirements, spot_from_policy
from offers.solver import find_offers
from provisioner.backends.base import LeftoversRemain
from provisioner.backends.cloud import CloudBackend, fleet_key_path
from provisioner.backends.fleet_stacks import (
    FleetShape,
    expired_above_min,
    fleet_host_keys,
    fleet_stack_lock,
    recorder,
    shrink_fleet,
)
from provisioner.backends.offer_failover import MAX_OFFERS_TRIED, OffersExhausted, first_provisioned
from provisioner.planning.field_support import restrict_zones
from provisioner.planning.reuse import fleet_idle_seconds, fleet_nodes, offer_record, watchdog_minutes
from provisioner.planning.stack_plan import dry_run_resources
from provisioner.store.errors import StoreDamaged
from provisioner.store.records import InstanceRecord
from provisioner.store.statuses import InstanceStatus
from provisioner.store.store import StateStore
from stacks.errors import StackFailure
from stacks.power_off import POWER_OFF_PATH

def fleet_shape(configuration) -> FleetShape:
    """A new fleet's stack: its `nodes` minimum (its target) of instances, numbered from 0."""
    return FleetShape(nodes=configuration.nodes.target, placement=configuration.placement, tags=configuration.tags,
                      instance_nums=tuple(range(configuration.nodes.target)))


def kept_seconds(configuration) -> Optional[int]:
    """A cloud fleet's idle_duration as its instances keep it (provisioner.planning.reuse.fleet_idle_seconds)."""
    return fleet_idle_seconds(configuration.idle_duration)


def idle_policy(configuration) -> str:
    """What happens to the fleet when idle, in the plan's words."""
    seconds = kept_seconds(configuration)
    if seconds is None:
        return "kept until `dstack fleet delete` (idle_duration: off)"
    default = " (the default)" if configuration.idle_duration is None else ""
    nodes = configuration.nodes
    if nodes.max is not None and nodes.max == nodes.min:
        return f"destroyed once every instance has been idle {_duration(seconds)}{default}"
    if not nodes.min:
        return (f"each instance destroyed alone once idle {_duration(seconds)}{default}; the fleet, with no "
                "instance, kept until `dstack fleet delete`")
    return (f"an instance above {nodes.min} destroyed alone once idle {_duration(seconds)}{default}; the fleet once "
            "every instance has been")


def growth_policy(configuration) -> str:
    """How the fleet grows and shrinks, in the plan's words; empty for a fleet of a fixed size."""
    nodes = configuration.nodes
    if nodes.max is not None and nodes.max == nodes.min:
        return ""
    most = nodes.max if nodes.max is not None else f"{MAX_NODES} (no maximum given)"
    return (f"apply makes {nodes.target}; runs add instances up to {most}, and an idle one above {nodes.min} ends "
            "alone after the idle_duration")


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def check_cloud_fleet(configuration, source: str) -> None:
    where = f"{source}: fleet {configuration.name}"
    if configuration.reservation is not None:
        raise ConfigurationError(f"{where}: `reservation` is not supported yet: the stack programs do not target "
                                 "capacity reservations")
    others = [b for b in configuration.backends or [] if b not in CLOUD_BACKENDS]
    if others:
        raise ConfigurationError(f"{where}: `backends`: a cloud fleet's instances come from aws or gcp, not "
                                 f"{', '.join(others)} (hosts you own go in `ssh_config`)")


def fleet_requirements(configuration, config: DstackConfig, all_clouds: bool) -> Requirements:
    """A dry run plans over every cloud, configured or not, as a run's does."""
    backends = configuration.backends or (list(CLOUD_BACKENDS) if all_clouds else config.cloud_backends)
    return Requirements(resources=configuration.resources or ResourcesSpec(),
                        spot=spot_from_policy(configuration.spot_policy or "on-demand"),
                        max_price=configuration.max_price, backends=tuple(backends),
                        regions=tuple(configuration.regions) if configuration.regions else None,
                        instance_types=tuple(configuration.instance_types) if configuration.instance_types else None)


def fleet_offers(configuration, requirements: Requirements, source: str) -> List[Offer]:
    if not requirements.backends:
        raise ConfigurationError(f"{source}: fleet {configuration.name} needs a cloud, and none is configured in "
                                 "$DSTACK_HOME/config.yml (docs/clouds.md)")
    search = find_offers(requirements, load_catalogs(list(requirements.backends)), [], limit=None)
    offers = restrict_zones(search.offers, configuration.availability_zones)
    slices = sorted({offer.instance.name for offer in offers if offer.tpu_slice})
    offers = [offer for offer in offers if not offer.tpu_slice]
    if slices and not offers:
        raise ConfigurationError(f"{source}: fleet {configuration.name}: a TPU slice ({', '.join(slices[:3])}) is not "
                                 "a fleet instance here: a task on a TPU takes a slice of its own (`gpu:` in the task)")
    if not offers:
        raise ConfigurationError(f"{source}: fleet {configuration.name}: no offers match: {requirements.describe()} "
                                 "(see `dstack offers`)")
    return offers


def fleet_plan(configuration, offers: List[Offer], config: DstackConfig, max_offers: int) -> dict:
    """`dstack apply --dry-run` of a cloud fleet: the offer it would take, the others, what it costs an hour
    (`price`, all its instances) and how long it is kept idle (`idle_duration`, `idle_policy`), and its stack's
    resources (rendered offline; without the cloud's extra, the reason instead)."""
    from stacks.extras import MissingExtra

    shape = fleet_shape(configuration)
    nodes = configuration.nodes
    document = {"fleet": configuration.name, "configuration": configuration.model_dump(mode="json"),
                "nodes": shape.nodes, "placement": shape.placement or "any",
                "nodes_range": {"min": nodes.min, "target": nodes.target, "max": nodes.max},
                "growth": growth_policy(configuration),
                "idle_duration": kept_seconds(configuration), "idle_policy": idle_policy(configuration),
                "offer": offers[0].to_json(), "offers": [o.to_json() for o in offers[:max_offers]],
                "price": round(offers[0].total_price * shape.nodes, 6),
                "price_per_instance": round(offers[0].total_price, 6)}
    if not shape.nodes:  # the stack as the first run that grows it makes it: its instance 0
        shape = dataclasses.replace(shape, nodes=1, instance_nums=(0,))
    try:
        document["resources"] = dry_run_resources(configuration.name, shape, offers[0], config)
    except MissingExtra as e:
        document["resources"], document["stack"] = [], {"rendered": False, "reason": str(e)}
    return document


def create_cloud_fleet(configuration, source: str, offers: List[Offer], config: DstackConfig, store: StateStore,
                       report: Callable, log: Callable[[str], None]) -> List[InstanceRecord]:
    """Provisions the fleet on the first offer that has capacity (failing over as a run does: _provision) and records
    its instances idle. Any other failure destroys what was made and forgets the fleet."""
    name = configuration.name
    run = store.get_run(name)
    if run is not None and run.active:  # a stack is named after its run or fleet: one would take the other's
        raise ConfigurationError(f"{source}: run {name} is active, and the fleet's stack would take its stack's "
                                 "name: pick another fleet name, or wait for the run to end")
    if any(f["name"] == name for f in store.list_fleets()) or \
            not store.create_cloud_fleet(name, source, offers[0].backend, configuration.model_dump(mode="json")):
        raise ConfigurationError(f"{source}: a fleet named {name} exists already: `dstack fleet delete {name}` "
                                 "first, or pick another name")
    shape = fleet_shape(configuration)
    try:
        with fleet_stack_lock(store, name, f"the creation of {name} ({os.getpid()})", wait_s=0):
            offer, hosts = _provision(name, offers, shape, config, store, report, log)
            idle = kept_seconds(configuration)
            for host in hosts:
                prepare_instance(host, idle)
            now = time.time()
            instances = [InstanceRecord(fleet=name, num=num, backend=offer.backend, offer=offer_record(offer),
                                        host=host.to_json(), idle_since=now, idle_duration=idle)
                         for num, host in enumerate(hosts)]
            store.add_instances(instances)
    except BaseException:
        log(f"Fleet {name} was not created; removing what was made")
        fleet = store.get_cloud_fleet(name)
        if fleet is not None and fleet["stack"]:
            CloudBackend(fleet["stack"]["backend"], config, store).destroy_stack(name, fleet["stack"], report)
        forget_cloud_fleet(store, name)
        raise
    return instances


def _provision(name: str, offers: List[Offer], shape: FleetShape, config: DstackConfig, store: StateStore,
               report: Callable, log: Callable[[str], None]):
    """The fleet's stack on the first offer that provisions, as a run fails over (provisioner.backends.offer_failover):
    each offer in every zone of its region, a failure ruling out its zone, offer, region or cloud for the next tries;
    a failure that is not retryable stops at once."""
    failures = []
    backends: Dict[str, CloudBackend] = {}  # one per cloud: what it settles once (GCP's permissions) stays settled

    def attempt(offer: Offer):
        zone = offer.zones[0] if offer.zones else ""
        log(f"Provisioning {shape.nodes} x {offer.backend} {offer.region} {offer.instance.name}"
            f"{' (spot)' if offer.spot else ''}{f' in {zone}' if zone else ''} at ${offer.total_price:.4f}/hour each"
            + ("; the fleet's stack has no instance until a run adds one" if not shape.nodes else ""))
        backend = backends.setdefault(offer.backend, CloudBackend(offer.backend, config, store))
        hosts = backend.create_stack(
            name, offer, shape, report, fleet_key_path(name), recorder(store, name, offer),
            note=lambda message: log(f"warning: {message}"),
            host_keys=fleet_host_keys(store, name, shape.instance_nums))
        if len(hosts) != shape.nodes:
            raise DstackError(f"fleet {name}: its stack brought up {len(hosts)} of the {shape.nodes} instances "
                              "asked for")
        return hosts

    def failed(offer: Offer, failure: StackFailure) -> None:
        if not failure.retryable:
            return  # raised as it is
        zone = offer.zones[0] if offer.zones else ""
        failures.append(f"  {offer.backend} {offer.region} {offer.instance.name}{f' in {zone}' if zone else ''}: "
                        f"{failure.kind}: {failure.message}")
        log(f"{offer.instance.name}{f' in {zone}' if zone else ''}: {failure.kind} ({failure.message}); trying the "
            f"next {'zone' if failure.scope == 'zone' else 'offer'}")

    try:
        return first_provisioned(offers, attempt, failed, MAX_OFFERS_TRIED)
    except OffersExhausted as e:
        raise DstackError(f"fleet {name}: no offer could be provisioned; tried {e.tried}:\n"
                          + ("\n".join(failures) or "  (none could be tried)")) from None


def prepare_instance(host, idle_seconds: Optional[int]) -> None:
    """A fleet instance waits for runs: the VM's start watchdog (which ends a VM no job started on) is stopped,
    and with an idle_duration the idle watchdog is armed, as after a job."""
    command = "sudo -n systemctl stop dstack-start-watchdog.timer 2>/dev/null || true"
    if idle_seconds is not None:
        minutes = watchdog_minutes(idle_seconds)
        command += f"; sudo -n {POWER_OFF_PATH} --idle {minutes} || {POWER_OFF_PATH} --idle {minutes}"
    transport = host.connect(total_wait=300, booting=True)
    try:
        result = transport.run(command, timeout=60)
    finally:
        transport.close()
    if result.code != 0:
        raise DstackError(f"{host.description}: could not arm the fleet instance's idle watchdog: "
                          f"{result.stderr.decode(errors='replace').strip()[:200]}")


def busy_runs(store: StateStore, name: str) -> List[str]:
    """The runs that hold an instance of the fleet, or are adding one to it."""
    return sorted({i.run for i in store.list_instances(name)
                   if i.status in (InstanceStatus.BUSY, InstanceStatus.PROVISIONING) and i.run})


def destroy_cloud_fleet(store: StateStore, config: DstackConfig, name: str, report: Callable) -> None:
    """Destroys a cloud fleet's stack and forgets it; refused while a run holds one of its instances (as dstack
    refuses to delete a fleet with active runs). It waits for a run adding an instance to the fleet."""
    fleet = store.get_cloud_fleet(name)
    if fleet is None:
        raise ConfigurationError(f"no fleet named {name} (see `dstack fleet list`)")
    with fleet_stack_lock(store, name, f"the deletion of {name} ({os.getpid()})") as locked:
        if not locked:
            raise ConfigurationError(f"fleet {name}: another command kept changing its instances; try again")
        if not store.claim_fleet_teardown(name):
            raise ConfigurationError(f"fleet {name} is in use by {', '.join(busy_runs(store, name))}: stop "
                                     f"{'them' if len(busy_runs(store, name)) > 1 else 'it'} first (`dstack stop`)")
        _destroy(store, config, store.get_cloud_fleet(name) or fleet, report)


def _destroy(store: StateStore, config: DstackConfig, fleet: dict, report: Callable) -> None:
    """A stack destroyed whose sweep then failed (LeftoversRemain) forgets the fleet all the same, and says so."""
    try:
        if fleet["stack"]:
            CloudBackend(fleet["stack"]["backend"], config, store).destroy_stack(fleet["name"], fleet["stack"],
                                                                                report)
    except LeftoversRemain:
        forget_cloud_fleet(store, fleet["name"])
        raise
    forget_cloud_fleet(store, fleet["name"])


def forget_cloud_fleet(store: StateStore, name: str) -> None:
    store.delete_cloud_fleet(name)
    shutil.rmtree(dstack_home() / "fleets" / name, ignore_errors=True)


def expire_idle_fleets(store: StateStore, config: DstackConfig, report: Callable,
                       log: Callable[[str], None], now: Optional[float] = None) -> List[str]:
    """Ends what has been idle past its idle_duration: a fleet's instances above its `nodes` minimum alone (its stack
    `up` without them: fleet_stacks.shrink_fleet), then the fleets whose every instance has (the stack as a whole);
    returns the names of the fleets destroyed. A fleet another command is changing is left for the next command,
    as is a failure, which is logged."""
    now = time.time() if now is None else now
    expired = []
    for fleet in store.list_cloud_fleets():
        name = fleet["name"]
        try:
            ended = expired_above_min(store, fleet, now)
            if ended and shrink_fleet(store, config, name, ended, report, wait_s=0):
                log(f"Fleet {name}: instance{'s' if len(ended) > 1 else ''} {', '.join(f'#{n}' for n in ended)} "
                    "idle past its idle_duration: destroyed")
            if not _all_expired(store.list_instances(name), now):  # read first: `dstack ps` writes nothing then
                continue
            with fleet_stack_lock(store, name, f"the expiry of {name} ({os.getpid()})", wait_s=0) as locked:
                if not locked or not store.claim_fleet_teardown(name, expired_at=now):
                    continue
                log(f"Fleet {name} has been idle past its idle_duration: destroying it")
                _destroy(store, config, store.get_cloud_fleet(name) or fleet, report)
                expired.append(name)
        except StoreDamaged:
            raise  # the store's damage is every command's to report, never one fleet's passing failure
        except Exception as e:  # one fleet's cloud error must not stop the command that happened to run this
            log(f"fleet {name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; the next "
                "`dstack ps` tries again")
    return expired


def _all_expired(instances: List[InstanceRecord], now: float) -> bool:
    """What StateStore.claim_fleet_teardown checks again in its transaction: every instance idle past its
    idle_duration (or `terminating` from a teardown that failed), and at least one."""
    return bool(instances) and all(
        i.status == InstanceStatus.TERMINATING or (i.status == InstanceStatus.IDLE and i.idle_duration is not None
                                                   and i.idle_since is not None and now >= i.idle_since
                                                   + i.idle_duration) for i in instances)


def fleets_json(store: StateStore, now: float) -> List[dict]:
    """SSH and cloud fleets as `dstack fleet list --json` shows them; an SSH fleet keeps its former shape."""
    ssh = [{**f, "kind": "ssh"} for f in store.list_fleets()]
    cloud = []
    for fleet in store.list_cloud_fleets():
        instances = store.list_instances(fleet["name"])
        backend = (fleet["stack"] or {}).get("backend", fleet["backend"])  # failover may have moved it
        cloud.append({"name": fleet["name"], "kind": "cloud", "source": fleet["source"], "backend": backend,
                      "created_at": fleet["created_at"], "hosts": [{"access": i.host} for i in instances],
                      "nodes": dict(zip(("min", "max"), fleet_nodes(fleet))),
                      "instances": [i.to_json(now) for i in instances], "user": fleet["user"]})
    return sorted(ssh + cloud, key=lambda f: f["name"])
