"""The records the state store keeps: runs, their jobs (one per node), network volumes and cloud fleets' instances.
Hosts are kept as provisioner.host.access.HostAccess JSON, which this layer never interprets."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from provisioner.store.statuses import InstanceStatus, JobStatus, RunStatus, VolumeStatus


@dataclass
class RunRecord:
    name: str
    status: RunStatus
    submitted_at: float
    reason: Optional[str] = None
    backend: Optional[str] = None
    region: Optional[str] = None
    instance: Optional[str] = None
    price: Optional[float] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    exit_code: Optional[int] = None
    owner_pid: Optional[int] = None
    owner_started: Optional[int] = None  # the owner's start time (provisioner.host.owner): a reused pid is no owner
    detached: bool = False
    max_duration: Optional[int] = None
    host: Optional[dict] = None  # how to reach the job (provisioner.host.access.HostAccess)
    stack: Optional[dict] = None  # the cloud stack to destroy, recorded before `up`
    offer: Optional[dict] = None
    ports: Optional[list] = None  # [[local, remote], ...] as forwarded
    attempts: list = field(default_factory=list)  # offers tried and why they failed
    configuration: Optional[dict] = None
    owner_id: Optional[str] = None  # the $DSTACK_HOME that made it (configuration.owner); set by the store
    user_name: Optional[str] = None  # its user, as `dstack ps` shows it to the team

    @property
    def active(self) -> bool:
        return self.status.is_active()

    def summary(self, now: float) -> dict:
        """The shape of one run in `dstack ps --json` and `dstack apply --json`."""
        return {"name": self.name, "type": (self.configuration or {}).get("type", "task"), "status": self.status,
                "reason": self.reason, "backend": self.backend, "region": self.region, "instance": self.instance,
                "price": self.price,
                "cost": round(self.cost(now), 6), "exit_code": self.exit_code, "submitted_at": self.submitted_at,
                "age_s": round(now - self.submitted_at, 1), "ports": self.ports or [],
                "tags": (self.configuration or {}).get("tags") or {}, "user": self.user_name,
                "owner": self.owner_id}

    def cost(self, now: Optional[float] = None) -> float:
        if not self.price or not self.started_at:
            return 0.0
        end = self.finished_at or (now or time.time())
        return self.price * max(0.0, end - self.started_at) / 3600


@dataclass
class VolumeRecord:
    """A network volume: created by its own Pulumi stack (recorded before `up`), or registered (`external`)."""

    name: str
    status: VolumeStatus
    backend: str
    region: str
    created_at: float
    zone: Optional[str] = None
    size_gb: Optional[int] = None
    volume_id: Optional[str] = None  # the cloud's id: an EBS volume id, a GCP disk name
    external: bool = False  # registered with `volume_id`: never created or deleted by dstack
    stack: Optional[dict] = None
    configuration: Optional[dict] = None
    owner_id: Optional[str] = None  # as RunRecord's
    user_name: Optional[str] = None

    def summary(self) -> dict:
        """The shape of one volume in `dstack volume list --json`."""
        return {"name": self.name, "status": self.status, "backend": self.backend, "region": self.region,
                "zone": self.zone, "size_gb": self.size_gb, "volume_id": self.volume_id, "external": self.external,
                "created_at": self.created_at, "user": self.user_name}


@dataclass
class JobRecord:
    """One node's job of a run: its host (provisioner.host.access.HostAccess) and where it stands: `provisioning`
    (host chosen), `running`, then `done`, `failed` or `terminated` with its exit code."""
    run: str
    rank: int
    status: JobStatus
    host: Optional[dict] = None
    exit_code: Optional[int] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None

    def summary(self, host: Optional[str]) -> dict:
        """The shape of one job in `dstack ps --json`, with its `host` as the CLI describes it."""
        return {"node": self.rank, "status": self.status, "host": host, "exit_code": self.exit_code,
                "started_at": self.started_at, "finished_at": self.finished_at}


@dataclass
class InstanceRecord:
    """One instance of a cloud fleet: how to reach it, and whether a run holds it (`busy`) or it waits (`idle`)."""

    fleet: str
    num: int  # its index in the fleet's stack
    backend: str
    offer: dict  # the offer it was provisioned from (Offer.to_json)
    host: dict  # provisioner.host.access.HostAccess
    status: InstanceStatus = InstanceStatus.IDLE
    run: Optional[str] = None
    idle_since: Optional[float] = None
    idle_duration: Optional[int] = None  # seconds; None: kept until `dstack fleet delete`

    def to_json(self, now: float) -> dict:
        idle_for = round(now - self.idle_since, 1) if self.status == InstanceStatus.IDLE and self.idle_since else None
        return {"fleet": self.fleet, "instance_num": self.num, "backend": self.backend,
                "region": self.offer.get("region"), "instance_type": self.offer.get("instance", {}).get("name"),
                "price": self.offer.get("price"), "hostname": self.host.get("hostname"), "status": self.status,
                "run": self.run, "idle_for_s": idle_for, "idle_duration": self.idle_duration,
                "idle_since": self.idle_since if self.status == InstanceStatus.IDLE else None}
