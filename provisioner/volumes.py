"""Network volumes: created in a Pulumi stack of their own (or registered with `volume_id`), recorded in the state
store before `up` so a crash can be finished, deleted unless a run uses them; and what a task's `volumes` mean for
its run: the volumes must exist, its offers are those where they are, its stack attaches them and its host mounts
them (provisioner.mounts).

A run holds every volume it names (all the names of a `name: [a, b]` list) while it is active: `dstack volume
delete` is refused and another run cannot take them.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, List, Optional, Sequence, Set, Tuple

from configuration.backends import DstackConfig
from configuration.errors import ConfigurationError
from configuration.owner import owner_id
from configuration.policies import InstanceMountPoint, VolumeMountPoint
from configuration.volumes import VolumeConfiguration
from offers.offer import Offer
from provisioner.mounts import InstanceMount, Mounts, NetworkMount
from provisioner.state import VolumeRecord, StateStore
from stacks.volume_spec import (AWS_DEVICE_NAMES, VolumeAttachment, VolumeSpec, aws_device_path, gcp_device_name,
                                gcp_device_path)

Place = Tuple[str, str, Optional[str]]  # backend, region, zone


# --- the volume's own stack ---

def first_zone(backend: str, region: str) -> str:
    """The zone a volume without `availability_zone` goes to: the region's first in the offer catalogue (a regular
    zone: `us-east-1a`, `us-central1-a`; not a Local Zone such as `us-east-1-atl-2a`)."""
    import re

    from offers.catalog import load_catalogs

    regular = re.compile(re.escape(region) + ("[a-z]" if backend == "aws" else "-[a-z]") + r"\Z")
    for catalog in load_catalogs([backend]):
        if region not in catalog.regions:
            continue
        index = catalog.regions.index(region)
        zones = {zone for group in range(len(catalog)) if catalog.region[group] == index
                 for zone in catalog.zones(group) if regular.match(zone)}
        if zones:
            return sorted(zones)[0]
    raise ConfigurationError(f"no zone of {backend} region {region} is known: set `availability_zone`")


def volume_spec(name: str, configuration: VolumeConfiguration, config: DstackConfig) -> VolumeSpec:
    backend_config = config.backend(configuration.backend)
    return VolumeSpec(name=name, backend=configuration.backend, region=configuration.region,
                      zone=configuration.availability_zone or first_zone(configuration.backend, configuration.region),
                      size_gb=int(configuration.size or 0), owner=owner_id(),
                      gcp_project_id=getattr(backend_config, "project_id", None),
                      user_tags=tuple(sorted((configuration.tags or {}).items())))


def program_for_volume(spec: VolumeSpec) -> Callable[[], None]:
    if spec.backend == "aws":
        from stacks.aws_volume import aws_volume_program

        return lambda: aws_volume_program(spec)
    from stacks.gcp_volume import gcp_volume_program

    return lambda: gcp_volume_program(spec)


def check_volume(configuration: VolumeConfiguration, source: str) -> None:
    """Fields of a volume configuration acted upon here, or refused by name."""
    if configuration.auto_cleanup_duration is not None and configuration.auto_cleanup_duration >= 0:
        raise ConfigurationError(f"{source}: `auto_cleanup_duration` is not supported yet: delete the volume with "
                                 "`dstack volume delete NAME` (or set `auto_cleanup_duration: off`)")
    if configuration.is_external:
        ignored = [f"`{field}`" for field in ("size", "tags") if getattr(configuration, field)]
        if ignored:
            raise ConfigurationError(f"{source}: {' and '.join(ignored)} would do nothing to an existing volume "
                                     "(`volume_id`): it keeps its own; remove them, or create a volume without "
                                     "`volume_id`")
    if configuration.is_external and configuration.availability_zone is None:
        raise ConfigurationError(f"{source}: registering an existing volume (`volume_id`) needs its "
                                 "`availability_zone`: a run's instance must be in the same zone to attach it")


def volume_plan(name: str, configuration: VolumeConfiguration, config: DstackConfig, source: str) -> dict:
    """What `dstack apply --dry-run` prints for a volume: its configuration and the resources its stack would
    create (none when an existing volume is registered)."""
    check_volume(configuration, source)
    document = {"volume": {**configuration.model_dump(mode="json"), "name": name}}
    if configuration.is_external:
        document["resources"] = []
        return document
    from stacks.extras import require_extra
    from stacks.render import render_program

    require_extra(configuration.backend, f"rendering the {configuration.backend} stack of volume {name}")
    spec = volume_spec(name, configuration, config)
    document["volume"]["availability_zone"] = spec.zone
    document["resources"] = render_program(program_for_volume(spec), spec.stack_name)
    return document


def create_volume(store: StateStore, config: DstackConfig, name: str, configuration: VolumeConfiguration,
                  source: str, report: Callable) -> VolumeRecord:
    """Registers an existing volume, or creates one in its stack; the record is written before `up`."""
    check_volume(configuration, source)
    record = VolumeRecord(name=name, status="submitted", backend=configuration.backend, region=configuration.region,
                          zone=configuration.availability_zone, created_at=time.time(),
                          size_gb=int(configuration.size) if configuration.size else None,
                          volume_id=configuration.volume_id, external=configuration.is_external,
                          configuration=configuration.model_dump(mode="json"))
    if record.external:
        store.create_volume(dataclasses.replace(record, status="active"))
        return store.get_volume(name)
    from provisioner.backends import CloudBackend
    from stacks.automation import open_stack, require_pulumi, stack_up, state_settings
    from stacks.extras import require_extra
    from stacks.progress import EngineEventTracker

    require_extra(configuration.backend, f"volume {name}")
    require_pulumi()
    CloudBackend(configuration.backend, config, store).check_credentials(configuration.region)
    spec = volume_spec(name, configuration, config)
    settings = state_settings(config.pulumi.backend_url)
    store.create_volume(dataclasses.replace(record, zone=spec.zone, stack={
        "backend": spec.backend, "name": spec.stack_name, "owner": spec.owner, "region": spec.region,
        "backend_url": settings.backend_url}))
    try:
        outputs = stack_up(open_stack(spec.stack_name, program_for_volume(spec), settings),
                           on_event=EngineEventTracker(report))
    except BaseException:
        store.update_volume(name, status="failed")
        raise
    store.update_volume(name, status="active", volume_id=str(outputs["volume_id"]), zone=str(outputs["zone"]))
    return store.get_volume(name)


def delete_volume(store: StateStore, config: DstackConfig, name: str, report: Callable) -> VolumeRecord:
    """Destroys the volume's stack (a registered volume is only forgotten); refused while a run uses it."""
    record = store.get_volume(name)
    if record is None:
        raise ConfigurationError(f"no volume named {name} (see `dstack volume list`)")
    users = runs_using(store, name)
    if users:
        raise ConfigurationError(f"volume {name} is in use by run {', '.join(users)}: stop it first "
                                 f"(`dstack stop {users[0]}`)")
    if record.stack:
        from provisioner.backends import CloudBackend
        from stacks.automation import open_stack, stack_destroy, state_settings
        from stacks.extras import require_extra
        from stacks.progress import EngineEventTracker

        require_extra(record.backend, f"deleting volume {name}")
        CloudBackend(record.backend, config, store).check_credentials(record.region)
        store.update_volume(name, status="deleting")
        stack = open_stack(record.stack["name"], lambda: None, state_settings(record.stack.get("backend_url")))
        stack_destroy(stack, on_event=EngineEventTracker(report))
    store.delete_volume(name)
    return record


# --- a task's volumes ---

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
            if record.status != "active":
                raise ConfigurationError(f"{source}: volume {name} is {record.status}, not active")
            users = runs_using(store, name) if busy_check else []
            if users:
                raise ConfigurationError(f"{source}: volume {name} is in use by run {', '.join(users)}")
            records.append(record)
        found.append((point, records))
    return found


def _fits(record: VolumeRecord, offer: Offer) -> bool:
    return (record.backend == offer.backend and record.region == offer.region
            and (not offer.zones or record.zone in offer.zones))


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
    from provisioner.instances import InstanceOffer

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
        raise ConfigurationError(f"{source}: no offer that fits the run is where its volumes are ({where}); "
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
    """The host-side mounts of the run's job (provisioner.mounts)."""
    network = []
    if network_mount_points(configuration):
        chosen = chosen_volumes(store, configuration, offer)
        for index, (record, path) in enumerate(chosen):
            network.append(NetworkMount(record.name, _devices(_attachment(record, index), record.backend), path))
    instance = [InstanceMount(v.instance_path, v.path, v.optional) for v in getattr(configuration, "volumes", [])
                if isinstance(v, InstanceMountPoint)]
    return Mounts(tuple(network), tuple(instance))
