"""Network volumes' own stacks: a volume is created in a Pulumi stack of its own (or registered with `volume_id`),
recorded in the state store before `up` so a crash can be finished, and deleted unless a run uses it (what a task's
`volumes` mean for its run is provisioner.planning.task_volumes)."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from configuration.backends import DstackConfig
from configuration.errors import ConfigurationError
from configuration.owner import owner_id
from configuration.volumes import VolumeConfiguration
from offers.catalog import load_catalogs
from provisioner.planning.task_volumes import runs_using
from provisioner.store.records import VolumeRecord
from provisioner.store.statuses import VolumeStatus
from provisioner.store.store import StateStore
from stacks import clouds
from stacks.progress import EngineEventTracker
from stacks.volume_spec import VolumeSpec


def first_zone(backend: str, region: str) -> str:
    """The zone a volume without `availability_zone` goes to: the region's first in the offer catalogue (a regular
    zone: `us-east-1a`, `us-central1-a`; not a Local Zone such as `us-east-1-atl-2a`)."""
    import re

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
    document["resources"] = render_program(clouds.volume_program_for(spec), spec.stack_name)
    return document


def create_volume(store: StateStore, config: DstackConfig, name: str, configuration: VolumeConfiguration,
                  source: str, report: Callable) -> VolumeRecord:
    """Registers an existing volume, or creates one in its stack; the record is written before `up`."""
    check_volume(configuration, source)
    record = VolumeRecord(name=name, status=VolumeStatus.SUBMITTED, backend=configuration.backend,
                          region=configuration.region,
                          zone=configuration.availability_zone, created_at=time.time(),
                          size_gb=int(configuration.size) if configuration.size else None,
                          volume_id=configuration.volume_id, external=configuration.is_external,
                          configuration=configuration.model_dump(mode="json"))
    if record.external:
        store.create_volume(dataclasses.replace(record, status=VolumeStatus.ACTIVE))
        return store.get_volume(name)
    from stacks.automation import open_stack, require_pulumi, stack_up, state_settings
    from stacks.extras import require_extra

    require_extra(configuration.backend, f"volume {name}")
    require_pulumi()
    clouds.check_credentials(configuration.backend, configuration.region)
    spec = volume_spec(name, configuration, config)
    settings = state_settings(config.pulumi.backend_url)
    store.create_volume(dataclasses.replace(record, zone=spec.zone, stack={
        "backend": spec.backend, "name": spec.stack_name, "owner": spec.owner, "region": spec.region,
        "backend_url": settings.backend_url, "home_state": not config.pulumi.backend_url}))
    try:
        outputs = stack_up(open_stack(spec.stack_name, clouds.volume_program_for(spec), settings),
                           on_event=EngineEventTracker(report))
    except BaseException:
        store.update_volume(name, status=VolumeStatus.FAILED)
        raise
    store.update_volume(name, status=VolumeStatus.ACTIVE, volume_id=str(outputs["volume_id"]),
                        zone=str(outputs["zone"]))
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
        from provisioner.backends.cloud import recorded_state
        from stacks.automation import open_stack, stack_destroy
        from stacks.extras import require_extra

        require_extra(record.backend, f"deleting volume {name}")
        clouds.check_credentials(record.backend, record.region)
        settings = recorded_state(record.stack, f"volume {name}")
        store.update_volume(name, status=VolumeStatus.DELETING)
        stack = open_stack(record.stack["name"], lambda: None, settings)
        stack_destroy(stack, on_event=EngineEventTracker(report))
    store.delete_volume(name)
    return record
