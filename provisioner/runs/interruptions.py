"""A run's spot VM taken back by its cloud (an interruption), told apart from a host that merely stopped answering
and from a VM that ended otherwise: first from the cloud's spot interruption notice, which the host reads and
records while the VM still runs (provisioner.jobs.spot_notice), else by asking the cloud
(stacks.clouds.instance_losses) once a node's connection is lost. With `retry: {on_events: [interruption]}` the
run goes back to `submitted`: its stack is destroyed (network volumes are stacks of their own and stay), the
interrupted zone is blocked for INTERRUPTED_ZONE_BLOCK_S, and the offers are tried again; the job starts again from
its commands, with DSTACK_RUN_ATTEMPT one higher. Without it, or past `retry.duration`, the run ends `terminated`
(interrupted). A run on a cloud fleet's instance is told the same way; the instance it lost is retired, not handed
back idle (provisioner.backends.reusing.FleetInstanceLoss), and the fleet's upkeep removes it from its stack."""

from __future__ import annotations

import dataclasses
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from configuration.home import append_private
from offers.offer import Offer
from provisioner.backends.reusing import FleetInstanceLoss, held_instances
from provisioner.runs.failover import retry_deadline
from provisioner.runs.session import RunSession
from provisioner.runs.teardown import finish_run, teardown_progress
from provisioner.store.records import RunRecord
from provisioner.store.run_files import local_log_path
from provisioner.store.statuses import RUNNING, RunStatus
from stacks.losses import InstanceLoss

ATTEMPT_VARIABLE = "DSTACK_RUN_ATTEMPT"  # 1 for the run's first attempt; dstack 0.22 has no such variable
INTERRUPTED_ZONE_BLOCK_S = 900  # how long a zone that took a spot VM back is skipped by the run's next attempts
CLOUD_BACKENDS = ("aws", "gcp")


class Interrupted(Exception):
    """Instances of the run are gone (`losses`): taken back (an interruption) or ended otherwise."""

    def __init__(self, losses: Sequence[InstanceLoss]):
        super().__init__(describe(losses))
        self.losses = list(losses)

    @property
    def interruption(self) -> bool:
        return any(loss.interrupted for loss in self.losses)


def describe(losses: Iterable[InstanceLoss]) -> str:
    return "; ".join(f"instance {loss.instance_id} {loss.why}" for loss in losses)


def lost_instances(session: RunSession, run_name: str) -> List[InstanceLoss]:
    """What the cloud says of the run's instances that no longer run: those of its own cloud stack, or the cloud
    fleet instances it holds (provisioner.backends.reusing); empty for a run on hosts of its own, or when the cloud
    cannot be asked (said, not raised: the run is then kept as a host that stopped answering is)."""
    record = session.store.get_run(run_name)
    if record is None or record.backend not in CLOUD_BACKENDS:
        return []
    if not record.stack and not held_instances(session.store, run_name):
        return []
    try:
        backend = session.backend(record.backend)
        return backend.losses(record.stack) if record.stack else backend.held_losses(run_name)
    except Exception as e:  # the cloud's API unreachable or refusing: nothing is known
        text = str(e).strip().splitlines()
        session.reporter.info(f"could not ask {record.backend} whether {run_name}'s instances still run: "
                              f"{text[0] if text else type(e).__name__}")
        return []


def may_have_notice(store, record: RunRecord) -> bool:
    """Whether the run's hosts may have had a spot interruption notice: a run of its own cloud stack whose policy
    lets it take spot VMs (runs default to on-demand), or one that holds a spot instance of a cloud fleet; `dstack
    ps` asks only those hosts."""
    if record.backend not in CLOUD_BACKENDS:
        return False
    if record.stack:
        return (record.configuration or {}).get("spot_policy") in ("spot", "auto")
    return any(i.offer.get("spot") for i in held_instances(store, record.name))


def notice_losses(session: RunSession, run_name: str, notices: Dict[int, str]) -> List[InstanceLoss]:
    """The instances whose hosts had the cloud's spot interruption notice (`notices`: rank -> its text, read on the
    host: provisioner.jobs.spot_notice), each an interruption to come: the run is told now, while the VM still runs,
    not once the cloud has taken it back. A cloud fleet's instance that the run holds is found by its host (each
    node's job records it). Empty for a run on hosts of its own."""
    store = session.store
    record = store.get_run(run_name)
    if record is None or record.backend not in CLOUD_BACKENDS:
        return []
    if record.stack:
        ids = list(record.stack.get("instance_ids") or [])
        return [InstanceLoss(str(ids[rank]) if rank < len(ids) else f"of node {rank}", True, f"got the {text}")
                for rank, text in sorted(notices.items())]
    held = {_address(i.host): i for i in held_instances(store, run_name)}
    hosts = {job.rank: _address(job.host) for job in store.list_jobs(run_name)}
    return [FleetInstanceLoss(f"#{held[hosts[rank]].num} of fleet {held[hosts[rank]].fleet}", True,
                              f"got the {text}", fleet=held[hosts[rank]].fleet, num=held[hosts[rank]].num)
            for rank, text in sorted(notices.items()) if hosts.get(rank) in held]


def _address(host: Optional[dict]) -> tuple:
    host = host or {}
    return host.get("hostname"), host.get("port")


def retire_lost(session: RunSession, run_name: str, losses: Sequence[InstanceLoss]) -> None:
    """The cloud fleet instances among `losses` retired (before the run's teardown hands the others back idle): no
    run is given a VM being taken back, and the fleet's upkeep removes each from its stack, replacing it while the
    fleet is below its `nodes` minimum."""
    for loss in losses:
        if isinstance(loss, FleetInstanceLoss):
            session.store.retire_held_instance(loss.fleet, loss.num, run_name)


def raise_if_lost(session: RunSession, run_name: str) -> None:
    """For a log follower that lost its connection: Interrupted at once when the cloud says the VM is gone, rather
    than after the host's liveness timeout."""
    losses = lost_instances(session, run_name)
    if losses:
        raise Interrupted(losses)


def record_loss(session: RunSession, run_name: str, losses: Sequence[InstanceLoss], attempt: int) -> None:
    """The loss said, kept as an event, and written at the end of each node's log (with the time)."""
    kind = "interrupted" if any(loss.interrupted for loss in losses) else "instance-lost"
    text = describe(losses)
    session.store.add_event(run_name, kind, f"attempt {attempt}: {text}")
    session.reporter.info(f"{run_name}: {text}")
    line = f"[dstack {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC] attempt {attempt}: {text}\n".encode()
    for job in session.store.list_jobs(run_name) or [None]:
        with append_private(local_log_path(run_name, job.rank if job is not None else 0)) as log:
            log.write(line)


def end_lost(session: RunSession, run_name: str, losses: Sequence[InstanceLoss]) -> Optional[RunRecord]:
    """Ends a run whose instances are gone: `terminated` (interrupted) after an interruption; `terminated` when
    they powered themselves off (dstack arms that only once the job has ended: its exit code went with the VM);
    else `failed`. Its jobs are not asked to stop (their hosts are gone, or go with the stack). None when another
    process (`dstack stop`) claimed the run first."""
    if not session.store.claim_run(run_name, RUNNING, RunStatus.TERMINATING):
        return None
    retire_lost(session, run_name, losses)
    if any(loss.interrupted for loss in losses):
        return finish_run(session, run_name, RunStatus.TERMINATED, "interrupted")
    if all(loss.shut_itself_down for loss in losses):
        return finish_run(session, run_name, RunStatus.TERMINATED, "the instance powered itself off after the job")
    return finish_run(session, run_name, RunStatus.FAILED, f"instance gone: {describe(losses)}")


def retries_interruption(configuration, record: RunRecord) -> bool:
    """Whether the run starts again after an interruption now: `interruption` in `retry.on_events`, within
    `retry.duration` of its submission; a task (a dev environment's session is not carried over)."""
    deadline = retry_deadline(configuration, "interruption", record.submitted_at)
    return configuration.type == "task" and deadline is not None and time.time() < deadline


@dataclasses.dataclass
class ZoneBlocks:
    """Zones that took a spot VM of the run back, each skipped until its time (INTERRUPTED_ZONE_BLOCK_S)."""

    until: Dict[Tuple[str, str, str], float] = dataclasses.field(default_factory=dict)

    def block(self, backend: str, region: str, zone: str) -> None:
        self.until[(backend, region, zone)] = time.time() + INTERRUPTED_ZONE_BLOCK_S

    def open_offers(self, offers: Sequence[Offer]) -> List[Offer]:
        """The offers without the zones blocked now (an offer none of whose zones is open is left out); all of
        them when that leaves none (a network volume pins the run to its zone: better that zone than no offer)."""
        now, kept = time.time(), []
        for offer in offers:
            zones = tuple(z for z in offer.zones if self.until.get((offer.backend, offer.region, z), 0) <= now)
            if offer.zones and not zones:
                continue
            kept.append(offer if zones == tuple(offer.zones) else dataclasses.replace(offer, zones=zones))
        return kept or list(offers)


def back_to_submitted(session: RunSession, run_name: str, offer: Offer, blocks: ZoneBlocks, attempt: int,
                      losses: Sequence[InstanceLoss] = ()) -> bool:
    """The run back to `submitted` for its next attempt: its stack destroyed (volumes stay), or the fleet instances
    it lost retired and the others handed back idle; the interrupted zone blocked. False when `dstack stop` claimed
    the run first (it finishes it)."""
    store = session.store
    record = store.get_run(run_name)
    if not store.claim_run(run_name, RUNNING, RunStatus.SUBMITTED, host=None):
        return False
    retire_lost(session, run_name, losses)
    zone = (record.stack or {}).get("zone") or (offer.zones[0] if offer.zones else "")
    if record.backend:
        session.backend(record.backend).teardown(record, teardown_progress(session, run_name))
        store.update_run(run_name, stack=None)
    if zone:
        blocks.block(offer.backend, offer.region, zone)
    blocked = f"; {zone} skipped for {INTERRUPTED_ZONE_BLOCK_S // 60} min" if zone else ""
    store.add_event(run_name, "resubmitted", f"attempt {attempt + 1}: the offers are tried again{blocked}")
    session.reporter.info(f"{run_name}: retrying on interruption: attempt {attempt + 1}{blocked}")
    return True
