"""Which backend acts upon which task field: the one table the plan consults.

A field in use is either acted upon by the backend of the offer the run takes, or the plan (`dstack apply`, with
`--dry-run` too) stops with one line naming the field and why. Nothing is accepted and then ignored. Fields that
belong to work not done yet are refused on every backend, naming the issue that brings them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

from configuration.backends import CLOUD_BACKENDS
from configuration.errors import ConfigurationError
from configuration.policies import VolumeMountPoint
from offers.consumption import RESERVATION_BACKENDS
from offers.offer import Offer
from provisioner.jobs.nodes import node_count, node_offers
from provisioner.planning.host_offers import local_gives_root
from provisioner.planning.reuse import InstanceOffer

ALL_BACKENDS = ("local", "ssh", "aws", "gcp")


@dataclass(frozen=True)
class FieldRule:
    field: str
    used: Callable[[Any], bool]
    backends: Tuple[str, ...]  # the backends that act upon the field; () refuses it everywhere
    reason: str = ""  # why it is refused where it is; default: "not supported on the <backend> backend yet"
    fits: Optional[Callable[[Offer], bool]] = None  # an offer's own condition (e.g. a GPU to watch)

    def refusal(self, configuration, offer: Optional[Offer]) -> Optional[str]:
        if not self.used(configuration):
            return None
        if not self.backends:
            return f"`{self.field}` {self.reason}"
        if offer is None:
            return None
        if offer.backend not in self.backends:
            return f"`{self.field}` is not supported on the {offer.backend} backend{self.reason or ' yet'}"
        if self.fits is not None and not self.fits(offer):
            return f"`{self.field}` {self.reason}"
        return None


def _set(name: str) -> Callable[[Any], bool]:
    return lambda c: bool(getattr(c, name, None))


def _without_image(name: str) -> Callable[[Any], bool]:
    return lambda c: bool(getattr(c, name, None)) and c.image is None


def _network_volumes(configuration) -> bool:
    return any(isinstance(v, VolumeMountPoint) for v in getattr(configuration, "volumes", []))


def _not_tpu(offer: Offer) -> bool:
    return not offer.tpu_slice


def _nvidia_gpu(offer: Offer) -> bool:
    return offer.instance.gpu_vendor == "nvidia" and offer.instance.gpu_count > 0


def _host_shm(configuration) -> bool:
    return configuration.resources.shm_size is not None and configuration.image is None


def _gives_root(offer: Offer) -> bool:
    """Whether the offer's host lets a job become root: a cloud VM's user has passwordless sudo; this machine when
    dstack runs as root or with passwordless sudo; an SSH host is asked when its job starts
    (provisioner.jobs.launch.root_check), which refuses it there, naming it, before anything runs."""
    if offer.backend == "local":
        return local_gives_root()
    return True


_ROOT_REASON = ("without `image:` needs root on this machine (the local backend): dstack runs as neither root nor "
                "a user with passwordless sudo here; run it as one, use `image:`, or an SSH fleet or cloud backend")


RULES: Tuple[FieldRule, ...] = (
    FieldRule("volumes", lambda c: node_count(c) != 1 and _network_volumes(c), (),
              "with a network volume (`NAME:/path`) needs one instance: a disk attaches to one instance at a time; "
              "use instance volumes (`/host/path:/path`) on multi-node runs"),
    FieldRule("idle_duration", lambda c: _network_volumes(c) and (getattr(c, "idle_duration", None) or 0) != 0,
              (), "with a network volume (`NAME:/path`) is not supported: the kept instance would hold the disk "
                  "attached after the run, where no other run could attach it and `dstack volume delete` fails"),
    FieldRule("volumes", _network_volumes, ALL_BACKENDS, "with a network volume (`NAME:/path`) is not attached to a "
              "TPU VM here (its disks attach at creation, through the TPU API); use instance volumes", fits=_not_tpu),
    FieldRule("idle_duration", lambda c: (getattr(c, "idle_duration", None) or 0) != 0, ALL_BACKENDS,
              "is not supported on a TPU slice here: a kept TPU VM is not reused by later runs", fits=_not_tpu),
    FieldRule("instances", _set("instances"), (), "is not supported yet: runs pick fleet instances by `fleets` "
                                                  "and their resources"),
    FieldRule("reservation", _set("reservation"), RESERVATION_BACKENDS,
              ": only a GCP VM consumes a named reservation here (AWS capacity reservations are not targeted yet)"),
    FieldRule("reservation", _set("reservation"), RESERVATION_BACKENDS,
              "is not consumed by a TPU slice here (TPU reservations are not targeted yet)", fits=_not_tpu),
    FieldRule("dstack", _set("dstack"), (), "is not supported: there is no dstack server to reach (this CLI runs "
                                            "tasks itself, so there is no server API or token to hand the job); "
                                            "remove it, and give the job what it needs to call instead through "
                                            "`env` or `secrets`, or run `dstack` commands from your machine"),
    FieldRule("backend_options", _set("backend_options"), (),
              "is not supported: its only options are for the vastai backend, which is not one of ours"),
    FieldRule("entrypoint", _without_image("entrypoint"), (), "needs `image:` (a task without one runs "
                                                              "`commands` in a shell)"),
    FieldRule("user", _without_image("user"), (), "needs `image:` (a task without one runs as the host's "
                                                  "login user)"),
    FieldRule("privileged", _without_image("privileged"), ALL_BACKENDS, _ROOT_REASON, fits=_gives_root),
    FieldRule("home_dir", _without_image("home_dir"), (), "needs `image:` (a task without one has the host "
                                                          "user's home)"),
    FieldRule("registry_auth", _without_image("registry_auth"), (), "needs `image:` (there is no image to pull)"),
    FieldRule("resources.shm_size", _host_shm, ALL_BACKENDS, _ROOT_REASON, fits=_gives_root),
    FieldRule("docker", _set("docker"), ("ssh", "aws", "gcp"),
              ": it would install and drive Docker on this machine; use `image:` or a fleet host"),
    FieldRule("availability_zones", _set("availability_zones"), CLOUD_BACKENDS, ": only clouds have zones"),
    FieldRule("utilization_policy", _set("utilization_policy"), ALL_BACKENDS,
              "needs an NVIDIA GPU to watch, and the chosen offer has none", fits=_nvidia_gpu),
)


def refusals(configuration, offer: Optional[Offer]) -> List[str]:
    """Every field the offer's backend would not act upon (with offer None: those no backend acts upon)."""
    found = [rule.refusal(configuration, offer) for rule in RULES]
    return [message for message in found if message]


def restrict_zones(offers: Sequence[Offer], zones: Optional[List[str]]) -> List[Offer]:
    """`availability_zones`: cloud offers narrowed to the zones asked for; offers in none of them are dropped.
    An offer that names no zones keeps those of its region (zone names start with the region's). An idle fleet
    instance's offer (provisioner.planning.reuse.InstanceOffer) is kept as it is where its `zone` is asked for: given
    zones, failover would claim it once per zone and a lost claim would rule those zones out for the offers after."""

    if not zones:
        return list(offers)
    kept = []
    for offer in offers:
        if isinstance(offer, InstanceOffer):
            if offer.zone in zones:
                kept.append(offer)
            continue
        if offer.backend not in CLOUD_BACKENDS:
            kept.append(offer)
            continue
        allowed = tuple(z for z in (offer.zones or zones) if z in zones and z.startswith(offer.region))
        if allowed:
            kept.append(dataclasses.replace(offer, zones=allowed))
    return kept


def reached_over_ssh(configuration, offers: Sequence[Offer], source: str) -> List[Offer]:
    """A dev environment is reached with `ssh NAME` and the IDE's link: this machine's offer (`local`, where jobs
    run without SSH) is dropped; when it was the only one, the run is refused naming why."""
    if getattr(configuration, "type", "task") != "dev-environment":
        return list(offers)
    kept = [offer for offer in offers if offer.backend != "local"]
    if offers and not kept:
        raise ConfigurationError(f"{source}: a dev-environment is not supported on the local backend: it is reached "
                                 "with `ssh NAME` and the IDE's link, and jobs on this machine run without SSH; use "
                                 "an SSH fleet (this machine can be one of its hosts) or a cloud backend")
    return kept


def check_fields(configuration, offers: Sequence[Offer], source: str) -> List[Offer]:
    """The offers a run may take. Raises, naming each field, when a field no backend acts upon is set or when the
    cheapest offer's backend would not act upon one; the offers after it whose backends would not are dropped
    (failover never moves a run to a backend that ignores its fields). `nodes: N` keeps the offers that can host
    N nodes (provisioner.jobs.nodes.node_offers), or says why none can."""

    messages = refusals(configuration, None)
    offers = reached_over_ssh(configuration, restrict_zones(offers, getattr(configuration, "availability_zones",
                                                                             None)), source)
    if not messages:
        offers = node_offers(offers, node_count(configuration), source)
    if not messages and offers:
        messages = refusals(configuration, offers[0])
    if messages:
        raise ConfigurationError("\n".join(f"{source}: {m}" for m in messages))
    return [offer for offer in offers if not refusals(configuration, offer)]


def plan_notes(configuration) -> List[str]:
    """What the plan says about fields acted upon in a way worth knowing."""
    notes = []
    schedule = getattr(configuration, "schedule", None)
    if schedule is not None:
        notes.append(f"schedule {', '.join(schedule.cron)} (UTC): `dstack apply` registers it with your crontab and "
                     "each start is a detached run NAME-N (docs/runs.md)")
    if getattr(configuration, "priority", None) is not None:
        notes.append(f"priority {configuration.priority}: runs do not queue here, so every run is provisioned at "
                     "once; priority orders nothing")
    return notes
