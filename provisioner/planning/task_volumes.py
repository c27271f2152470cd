"""What a task's `volumes` mean for its run: the network volumes must exist (provisioner.backends.volume_stacks
makes them), its offers are those where they are, its stack attaches them and its host mounts them
(provisioner.jobs.mounts).

A run holds every volume it names (all the names of a `name: [a, b]` list) while it is active: `dstack volume
delete` is refused and another run cannot take them.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Set, Tuple

from configuration.errors import ConfigurationError
from configuration.policies import InstanceMountPoint, VolumeMountPoint
from offers.offer import Offer
from provisioner.jobs.mounts import InstanceMount, Mounts, NetworkMount
from provisioner.planning.reuse import InstanceOffer
from provisioner.store.records import VolumeRecord
from provisioner.store.statuses import VolumeStatus
from provisioner.store.store import StateStore
from stacks import clouds
from stacks.volume_spec import AWS_DEVICE_NAMES, VolumeAttachment, aws_device_path, gcp_device_name, gcp_device_path

Place = Tuple[str, str, Optional[str]]  # backend, region, zone


def network_mount_points(configuration) -> List[VolumeMountPoint]:
    return [v for v in getattr(configuration, "volumes", []) if isinstance(v, VolumeMountPoint)]


def _names(point: VolumeMountPoint) -> List[str]:
    return [point.name] if isinstance(point.name, str) else list(point.name)


def runs_using(store: StateStore, name: str) -> List[str]:
    """The active runs whose configuration names volume `name`."""
    users = []
    for run in store.list_runs():
        if not run.active:
            continue
        for point in (run.configuration or {}).get("volumes") or []:
            names = point.get("name") if isinstance(point, dict) else None
            if name == names or (isinstance(names, list) and name in names):
                users.append(run.name)
                break
    return users


def claim_volumes(store: StateStore, configuration, run_name: str) -> None:
    """Checked once the run is recorded: another active run naming one of its volumes means both were submitted at
    once (each saw the volume free before the other was recorded); each then sees the other and stops, so no disk is
    ever attached twice."""
    for point in network_mount_points(configuration):
        for name in _names(point):
            others = [run for run in runs_using(store, name) if run != run_name]
            if others:
                raise ConfigurationError(f"volume {name} is in use by run {', '.join(others)}")


def _candidates(store: StateStore, configuration, source: str, busy_check: bool = True
                ) -> List[Tuple[VolumeMountPoint, List[VolumeRecord]]]:
    """Each network mount point with the volumes it may take: missing volumes, and (with `busy_check`, before the
    run is recorded) volumes another run uses, are errors naming them."""
    found = []
    for point in network_mount_points(configuration):
        records = []
        for name in _names(point):
            record = store.get_volume(name)
            if record is None:
                raise ConfigurationError(f"{source}: volume {name} does not exist: create it with `dstack apply -f "
                                         "VOLUME.dstack.yml` (see `dstack volume list`)")
            if record.status != VolumeStatus.ACTIVE:
                raise ConfigurationError(f"{source}: volume {name} is {record.status}, not active")
            users = runs_using(store, name) if busy_check else []
            if users:
                raise ConfigurationError(f"{source}: volume {name} is in use by run {', '.join(users)}")
            records.append(record)
        found.append((point, records))
    return found


def _fits(record: VolumeRecord, offer: Offer) -> bool:
    """The volume is where the offer is, and the offer's machine type can attach it (a GCP volume is a pd-balanced
    disk, which the Hyperdisk-only machine series cannot attach: stacks.clouds.attaches_network_volumes)."""
    return (record.backend == offer.backend and record.region == offer.region
            and (not offer.zones or record.zone in offer.zones)
            and clouds.attaches_network_volumes(offer.backend, offer.instance.name))


def narrow_requirements(store: StateStore, configuration, requirements, source: str):
    """The requirements limited to the backends and regions of the task's volumes (before the offer search, so the
    cheapest offers elsewhere do not crowd out those where the volumes are)."""
    candidates = _candidates(store, configuration, source)
    if not candidates:
        return requirements
    places: List[Set[Place]] = [{(r.backend, r.region, r.zone) for r in records} for _, records in candidates]
    common = set.intersection(*places)
    if not common:
        where = "; ".join(f"{', '.join(_names(point))}: {', '.join(sorted(f'{r.backend} {r.zone}' for r in records))}"
                          for point, records in candidates)
        raise ConfigurationError(f"{source}: the task's volumes are in different places ({where}); one instance "
                                 "can only attach volumes of its own zone")
    backends = tuple(sorted({b for b, _, _ in common} & set(requirements.backends or {b for b, _, _ in common})))
    regions = tuple(sorted({r for _, r, _ in common} & set(requirements.regions or {r for _, r, _ in common})))
    if not backends or not regions:
        where = ", ".join(f"{b} {r}" for b, r, _ in sorted(common))
        raise ConfigurationError(f"{source}: the task's volumes are in {where}, outside the backends and regions the "
                                 "run allows")
    return dataclasses.replace(requirements, backends=backends, regions=regions)


def place_offers(store: StateStore, configuration, offers: Sequence[Offer], source: str) -> List[Offer]:
    """The offers where every network volume of the task can be attached, each narrowed to the zones where it can.
    An idle fleet instance is none of them: the run's stack attaches its volumes, and a reused instance's stack is
    its fleet's, made before the run (its offer's empty `zones` would otherwise pass for any zone of its region)."""

    candidates = _candidates(store, configuration, source)
    if not candidates:
        return list(offers)
    reused = [offer for offer in offers if isinstance(offer, InstanceOffer)]
    offers = [offer for offer in offers if not isinstance(offer, InstanceOffer)]
    if reused and not offers:
        raise ConfigurationError(f"{source}: an idle fleet instance cannot attach the task's network volumes (its "
                                 "stack is its fleet's), and the run may take no other (`fleets`, `creation_policy: "
                                 "reuse`)")
    placed = []
    for offer in offers:
        zones = set(offer.zones)
        for _, records in candidates:
            fitting = [r for r in records if _fits(r, offer)]
            if not fitting:
                break
            if offer.zones:
                zones &= {r.zone for r in fitting}
        else:
            if not offer.zones or zones:
                placed.append(dataclasses.replace(offer, zones=tuple(z for z in offer.zones if z in zones)))
    if offers and not placed:
        where = ", ".join(sorted({f"{r.backend} {r.zone}" for _, records in candidates for r in records}))
        unattachable = sorted({o.instance.name for o in offers
                               if not clouds.attaches_network_volumes(o.backend, o.instance.name)})
        why = (f" (of those that fit, {', '.join(unattachable[:4])}{' ...' if len(unattachable) > 4 else ''} take "
               "Hyperdisk only, and a GCP network volume is a pd-balanced disk)") if unattachable else ""
        raise ConfigurationError(f"{source}: no offer that fits the run is where its volumes are ({where}){why}; "
                                 f"see `dstack offers` there")
    return placed


def chosen_volumes(store: StateStore, configuration, offer: Offer) -> List[Tuple[VolumeRecord, str]]:
    """The volume each network mount point takes on `offer` (the first of its names that is there), with its path."""
    chosen = []
    for point, records in _candidates(store, configuration, "the run", busy_check=False):
        fitting = [r for r in records if _fits(r, offer)]
        if not fitting:
            raise ConfigurationError(f"none of volumes {', '.join(_names(point))} is in {offer.backend} "
                                     f"{offer.region} {', '.join(offer.zones)}")
        chosen.append((fitting[0], point.path))
    return chosen


def _attachment(record: VolumeRecord, index: int) -> VolumeAttachment:
    device = AWS_DEVICE_NAMES[index] if record.backend == "aws" else gcp_device_name(record.name)
    return VolumeAttachment(name=record.name, volume_id=record.volume_id, device_name=device)


def volume_attachments(configuration, offer: Offer, store: Optional[StateStore] = None
                       ) -> Tuple[VolumeAttachment, ...]:
    """What the run's stack attaches (stacks.volume_attach)."""
    if not network_mount_points(configuration):
        return ()
    chosen = chosen_volumes(store or StateStore(), configuration, offer)
    if len(chosen) > len(AWS_DEVICE_NAMES):
        raise ConfigurationError(f"a run attaches at most {len(AWS_DEVICE_NAMES)} volumes")
    return tuple(_attachment(record, i) for i, (record, _) in enumerate(chosen))


def _devices(attachment: VolumeAttachment, backend: str) -> Tuple[str, ...]:
    if backend == "gcp":
        return (gcp_device_path(attachment.device_name),)
    xen = "/dev/xvd" + attachment.device_name[-1]  # older (Xen) instance types rename sdX to xvdX
    return aws_device_path(attachment.volume_id), xen, attachment.device_name


def job_mounts(store: StateStore, configuration, offer: Offer) -> Mounts:
    """The host-side mounts of the run's job (provisioner.jobs.mounts)."""
    network = []
    if network_mount_points(configuration):
        chosen = chosen_volumes(store, configuration, offer)
        for index, (record, path) in enumerate(chosen):
            network.append(NetworkMount(record.name, _devices(_attachment(record, index), record.backend), path))
    instance = [InstanceMount(v.instance_path, v.path, v.optional) for v in getattr(configuration, "volumes", [])
                if isinstance(v, InstanceMountPoint)]
    return Mounts(tuple(network), tuple(instance))
