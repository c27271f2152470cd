"""Cloud instances that outlive a run, and the runs that reuse them.

An instance is a row of the instances table (provisioner.store.store): one of a cloud fleet's (`dstack apply -f
fleet.dstack.yml`), or the instance of a run with `idle_duration`, kept as the implicit fleet named after the run (as
dstack does). The plan puts the idle instances that fit first (InstanceOffer, marked `reused`); when a run takes one,
ReusingBackend claims it atomically instead of provisioning, and the run's teardown hands it back idle instead of
destroying it. An instance idle past its idle_duration ends twice over: its VM powers itself off (the job wrapper
schedules that when the job ends, and the next job's start cancels it), and the next `dstack ps` or `dstack apply`
destroys its fleet's stack (provisioner.backends.cloud_fleets.expire_idle_fleets).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

from configuration.backends import CLOUD_BACKENDS
from configuration.errors import ConfigurationError
from configuration.policies import MAX_NODES
from offers.catalog import InstanceType
from offers.offer import Offer
from offers.requirements import Requirements
from offers.solver import host_offers
from provisioner.jobs.nodes import node_count
from provisioner.store.records import InstanceRecord
from provisioner.store.statuses import InstanceStatus
from provisioner.store.store import StateStore

POWER_OFF_AFTER_EXIT_MIN = 5  # a cloud VM of a run kept by nothing ends this long after its job (for `dstack logs`)
POWER_OFF_MARGIN_S = 60  # an instance this close to its idle watchdog's power-off is not offered: it may be gone
# dstack 0.22.5's default idle_duration of a fleet (DEFAULT_FLEET_TERMINATION_IDLE_TIME): an idle fleet is not billed
# forever unless asked for (`idle_duration: off`).
DEFAULT_FLEET_IDLE_S = 3 * 24 * 3600


@dataclass(frozen=True)
class InstanceOffer(Offer):
    """An idle fleet instance as an offer: the run that takes it claims the instance rather than provisioning. Its
    `zones` are empty, so failover never tries it once per zone, and a claim lost to another run rules out no zone
    for the offers after it; `zone` is where it is."""

    fleet: str = ""
    num: int = 0
    idle_duration: Optional[int] = None  # the instance's, in seconds: None keeps it until its fleet is deleted
    zone: str = ""

    def to_json(self) -> dict:
        return {**super().to_json(), "reused": {"fleet": self.fleet, "instance_num": self.num, "zone": self.zone}}


@dataclass(frozen=True)
class GrowthOffer(InstanceOffer):
    """A cloud fleet of `nodes: MIN..MAX` with fewer than MAX instances, as an offer: the run that takes it adds
    instance `num` to the fleet (its stack's next `up`, provisioner.backends.fleet_stacks) and holds it; `count` is
    how many the fleet has before. The number is the plan's guess: the run takes the lowest free one when it grows
    the fleet."""

    count: int = 0
    nodes_min: int = 0
    nodes_max: int = 0

    @property
    def growth(self) -> str:
        """The plan's words: `adds instance 2 of 0..3 to fleet pool`."""
        return f"adds instance {self.count + 1} of {self.nodes_min}..{self.nodes_max} to fleet {self.fleet}"

    def to_json(self) -> dict:
        document = Offer.to_json(self)
        document["grows"] = {"fleet": self.fleet, "instance_num": self.num, "instances": self.count,
                             "nodes": {"min": self.nodes_min, "max": self.nodes_max}, "zone": self.zone,
                             "description": self.growth}
        return document


def offer_record(offer: Offer) -> dict:
    """An offer as an instance row keeps it: every field, so the plan can offer the instance again; of its zones,
    the first, where the stack put the instance."""
    return {"backend": offer.backend, "instance": offer.instance._asdict(), "region": offer.region,
            "zones": list(offer.zones[:1]), "spot": offer.spot, "price": offer.price, "disk_gb": offer.disk_gb,
            "disk_price": offer.disk_price}


def fleet_idle_seconds(idle_duration: Optional[int]) -> Optional[int]:
    """A cloud fleet's `idle_duration` (parsed: seconds) as its instances keep it: absent, dstack's 3 days
    (DEFAULT_FLEET_IDLE_S); `off` (a negative number) None, kept until deleted."""
    if idle_duration is None:
        return DEFAULT_FLEET_IDLE_S
    return None if idle_duration < 0 else idle_duration


def record_offer(o: dict) -> Offer:
    """offer_record's dict as the Offer it was made from."""
    return Offer(o["backend"], InstanceType(**o["instance"]), o["region"], tuple(o["zones"]), o["spot"], o["price"],
                 o["disk_gb"], o["disk_price"])


def fleet_nodes(fleet: dict) -> tuple:
    """A cloud fleet's `nodes` as (min, max) from its recorded configuration; a range with no maximum grows up to
    the most nodes a fleet has here (MAX_NODES)."""
    nodes = (fleet.get("configuration") or {}).get("nodes") or {}
    low = nodes.get("min") or 0
    return low, nodes.get("max") if nodes.get("max") is not None else max(low, MAX_NODES)


def growth_offers(store: StateStore, requirements: Requirements) -> List[GrowthOffer]:
    """The cloud fleets a run may add an instance to: made with numbered instances (their stack takes a new list),
    with fewer than their `nodes` maximum, on an offer that fits the requirements (as idle_offers)."""
    any_market = dataclasses.replace(requirements, spot=None)
    found = []
    for fleet in store.list_cloud_fleets():
        stack = fleet.get("stack") or {}
        low, high = fleet_nodes(fleet)
        if not stack.get("numbered") or not stack.get("offer"):
            continue
        instances = store.list_instances(fleet["name"])
        if len(instances) >= high or any(i.status == InstanceStatus.TERMINATING for i in instances):
            continue
        o = stack["offer"]
        taken = {i.num for i in instances}
        num = next(n for n in itertools.count(stack.get("legacy_nodes", 0)) if n not in taken)
        offer = GrowthOffer(o["backend"], InstanceType(**o["instance"]), o["region"], (), o["spot"], o["price"],
                            o["disk_gb"], o["disk_price"], fleet=fleet["name"], num=num,
                            idle_duration=fleet_idle_seconds((fleet.get("configuration") or {}).get("idle_duration")),
                            zone=o["zones"][0] if o["zones"] else "", count=len(instances), nodes_min=low,
                            nodes_max=high)
        if requirements.spot in (None, offer.spot) and next(iter(host_offers([offer], any_market)), None):
            found.append(offer)
    return sorted(found, key=lambda o: (o.price, o.fleet))


def instance_offer(record: InstanceRecord) -> InstanceOffer:
    o = record.offer
    return InstanceOffer(o["backend"], InstanceType(**o["instance"]), o["region"], (), o["spot"], o["price"],
                         o["disk_gb"], o["disk_price"], fleet=record.fleet, num=record.num,
                         idle_duration=record.idle_duration, zone=o["zones"][0] if o["zones"] else "")


def idle_offers(store: StateStore, requirements: Requirements) -> List[InstanceOffer]:
    """The idle instances that fit the requirements (host_offers' rules for hosts that exist), cheapest first. A
    spot instance serves runs that allow spot, an on-demand one runs that allow on-demand; an instance about to
    power itself off (within POWER_OFF_MARGIN_S of its idle_duration) serves none."""
    any_market = dataclasses.replace(requirements, spot=None)
    now = time.time()
    found = []
    for record in store.list_instances():
        about_to_end = record.idle_duration is not None and record.idle_since is not None and \
            now > record.idle_since + record.idle_duration - POWER_OFF_MARGIN_S
        if record.status != InstanceStatus.IDLE or about_to_end:
            continue
        offer = instance_offer(record)
        if requirements.spot in (None, offer.spot) and next(iter(host_offers([offer], any_market)), None):
            found.append(offer)
    return sorted(found, key=lambda o: (o.price, o.fleet, o.num))


def plan_offers(configuration, offers: Sequence[Offer], store: StateStore, requirements: Requirements,
                source: str) -> List[Offer]:
    """A run's offers with its fleet fields applied: the idle instances that fit first, then (with
    `creation_policy: reuse-or-create`, the default) the offers to create. `fleets: [names]` limits the run to the
    hosts those fleets have (SSH fleets' hosts, cloud fleets' idle instances); `reuse` to instances that exist."""
    names = [ref.name for ref in getattr(configuration, "fleets", None) or []]
    if names:
        known = {f["name"] for f in store.list_fleets()} | {f["name"] for f in store.list_cloud_fleets()}
        missing = [name for name in names if name not in known]
        if missing:
            raise ConfigurationError(f"{source}: `fleets`: no fleet named {', '.join(missing)} (see `dstack fleet "
                                     "list`)")
    zones = getattr(configuration, "availability_zones", None)
    # an idle instance serves one node: a multi-node run takes a cluster made for it (or an SSH fleet's hosts); a
    # task with `groups` is matched group by group (provisioner.planning.node_groups), not by the top-level resources
    # then the fleets of `nodes: MIN..MAX` that may grow by one instance for it
    reused: List[Offer] = [o for o in idle_offers(store, requirements) + growth_offers(store, requirements)
                           if (not names or o.fleet in names) and (not zones or o.zone in zones)
                           and node_count(configuration) == 1 and not getattr(configuration, "groups", None)]
    existing = [o for o in offers if o.backend == "ssh" and (not names or o.region in names)]
    if names:
        chosen = reused + existing
    elif getattr(configuration, "creation_policy", None) == "reuse":
        chosen = reused + existing + [o for o in offers if o.backend == "local"]
    else:
        chosen = reused + list(offers)
    cloud_fleets = {f["name"] for f in store.list_cloud_fleets()}
    if not chosen and node_count(configuration) > 1 and (set(names) & cloud_fleets if names else cloud_fleets) and \
            (names or getattr(configuration, "creation_policy", None) == "reuse"):
        raise ConfigurationError(f"{source}: a multi-node run takes no cloud fleet's idle instances (each serves "
                                 "one node; the run's cluster is made for it), and `fleets`/`creation_policy: reuse` "
                                 "leave it nothing else: an SSH fleet's hosts, or `creation_policy: reuse-or-create`")
    if not chosen and (names or getattr(configuration, "creation_policy", None) == "reuse"):
        where = f"fleet{'s' if len(names) > 1 else ''} {', '.join(names)}" if names else "any fleet"
        why = "`fleets` limits the run to them" if names else "`creation_policy: reuse` creates none"
        raise ConfigurationError(f"{source}: no idle instance of {where} fits {requirements.describe()}, none can "
                                 f"grow for it (at its `nodes` maximum, or of another offer), and {why} "
                                 "(see `dstack fleet list`)")
    return chosen


def power_off_minutes(configuration, offer: Offer) -> Optional[int]:
    """When a cloud VM powers itself off after its job ends: a reused instance's idle_duration, the run's own
    `idle_duration` (its instance is kept), else POWER_OFF_AFTER_EXIT_MIN; None for hosts that are not cloud VMs
    and instances kept until their fleet is deleted."""
    if offer.backend not in CLOUD_BACKENDS:
        return None
    if isinstance(offer, InstanceOffer):
        seconds = offer.idle_duration
    else:
        seconds = kept_for(configuration)
        if seconds == 0:
            return POWER_OFF_AFTER_EXIT_MIN
    return None if seconds is None else watchdog_minutes(seconds)


def watchdog_minutes(seconds: int) -> int:
    """An idle_duration as the VM's idle watchdog counts it: whole minutes, at least one."""
    return max(1, math.ceil(seconds / 60))


def kept_for(configuration) -> Optional[int]:
    """How long a run's own instance is kept idle after it, from its `idle_duration`: 0 when it is not kept, None
    when it is kept until deleted (`off`)."""
    seconds = getattr(configuration, "idle_duration", None)
    if seconds is None or seconds == 0:
        return 0
    return None if seconds < 0 else seconds


def stack_configuration(configuration):
    """What a run's stack is made from: a run whose instance is kept (`idle_duration`) gives its VMs no deadline
    from max_duration, since they outlive the run (the job's own deadline still holds)."""
    if getattr(configuration, "type", None) != "task" or kept_for(configuration) == 0:
        return configuration
    return configuration.model_copy(update={"max_duration": None})
