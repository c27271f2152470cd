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
import math
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

from configuration.backends import CLOUD_BACKENDS
from configuration.errors import ConfigurationError
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


def offer_record(offer: Offer) -> dict:
    """An offer as an instance row keeps it: every field, so the plan can offer the instance again; of its zones,
    the first, where the stack put the instance."""
    return {"backend": offer.backend, "instance": offer.instance._asdict(), "region": offer.region,
            "zones": list(offer.zones[:1]), "spot": offer.spot, "price": offer.price, "disk_gb": offer.disk_gb,
            "disk_price": offer.disk_price}


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
    reused: List[Offer] = [o for o in idle_offers(store, requirements)
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
        raise ConfigurationError(f"{source}: no idle instance of {where} fits {requirements.describe()}, and {why} "
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
