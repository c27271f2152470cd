"""A cloud fleet's stack as a list of numbered instances (`nodes: MIN..MAX`): a run adds one (`grow_fleet`), an idle
one goes alone (`shrink_fleet`: idle past the fleet's idle_duration, or `dstack fleet delete NAME -i N`), each by an
`up` of the same stack with the new list. An instance keeps its number, so its resources keep their names (and its
host key, kept under `$DSTACK_HOME/fleets/NAME/`, keeps its user data): the engine adds or deletes only what changed,
never replacing an instance, busy or not. A lock in the store (StateStore.lock_fleet_stack) lets one `up` of a
fleet's stack run at a time; the next sees the instances the last one added.
"""

from __future__ import annotations

import itertools
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from configuration.backends import DstackConfig
from configuration.errors import ConfigurationError, DstackError
from configuration.home import dstack_home
from configuration.owner import owner_id
from offers.offer import Offer
from provisioner.backends.cloud import CloudBackend, fleet_key_path
from provisioner.host.access import HostAccess
from provisioner.host.keys import kept_host_key
from provisioner.host.owner import current_owner, owner_alive
from provisioner.jobs.team_keys import fleet_keys_as_the_team_has_them, seal_fleet_keys
from provisioner.planning.reuse import fleet_idle_seconds, fleet_nodes, offer_record, record_offer
from provisioner.store.records import InstanceRecord
from provisioner.store.statuses import InstanceStatus
from provisioner.store.store import StateStore
from stacks.errors import CAPACITY, StackFailure
from stacks.progress import StepProgress
from stacks.spec import HostKey

LOCK_WAIT_S = 900  # how long a run waits for another command's `up` of the fleet's stack
LOCK_STALE_S = 1800  # a lock held longer than this is a dead command's: longer than any `up` and boot
LOCK_POLL_S = 0.5


@dataclass(frozen=True)
class FleetShape:
    """What a stack program reads of a configuration, for a fleet: its instances (`instance_nums`, or `nodes`
    unnumbered), placed as `placement` says, with no job deadline and no task ports (stacks are made per fleet,
    not per run)."""

    nodes: int
    placement: Optional[str]
    tags: Optional[Dict[str, str]]
    max_duration: Optional[int] = None
    ports: Tuple = ()
    volumes: Tuple = ()
    instance_nums: Optional[Tuple[int, ...]] = None
    legacy_nodes: int = 0  # a fleet made before numbering: its first instances keep their names (StackSpec)


def numbered_shape(configuration: dict, nums: Sequence[int], legacy_nodes: int = 0) -> FleetShape:
    """The shape of a fleet's stack with instances `nums`, from its recorded configuration."""
    return FleetShape(nodes=len(nums), placement=configuration.get("placement"), tags=configuration.get("tags"),
                      instance_nums=tuple(sorted(nums)), legacy_nodes=legacy_nodes)


def host_key_path(fleet: str, num: int):
    return dstack_home() / "fleets" / fleet / f"host-{num}"


def fleet_host_keys(store: StateStore, fleet: str, nums: Sequence[int]) -> Tuple[HostKey, ...]:
    """Each instance's host key, made once and kept (0600) while the instance lives; with a team database, the
    fleet's keys as the team holds them first, and sealed there once made (provisioner.jobs.team_keys)."""
    fleet_keys_as_the_team_has_them(store, fleet)
    keys = tuple(kept_host_key(host_key_path(fleet, num)) for num in sorted(nums))
    seal_fleet_keys(store, fleet)
    return keys


def recorder(store: StateStore, name: str, offer: Offer) -> Callable[[dict], None]:
    """Records the fleet's stack as CloudBackend.create_stack hands it over, with the offer its instances are made
    from (a run growing the fleet makes the next one from it, in the same zone)."""
    return lambda stack: store.set_fleet_stack(name, {**stack, "offer": offer_record(offer)})


@contextmanager
def fleet_stack_lock(store: StateStore, name: str, holder: str, wait_s: float = LOCK_WAIT_S,
                     log: Callable[[str], None] = lambda message: None) -> Iterator[bool]:
    """Holds the fleet's stack lock for `holder`: yields True once taken, or False after `wait_s` without it (0:
    one try). A lock whose holder died (holder_dead) is taken over. Released on the way out."""
    deadline = time.monotonic() + wait_s
    told = False
    pid, started = current_owner()
    process = {"pid": pid, "started": started, "owner_id": owner_id()}
    while True:
        other = store.lock_fleet_stack(name, holder, time.time(), LOCK_STALE_S, process, holder_dead)
        if other is None:
            break
        if time.monotonic() >= deadline:
            yield False
            return
        if not told:
            log(f"Fleet {name}: waiting for {other}, which is changing its instances")
            told = True
        time.sleep(LOCK_POLL_S)
    try:
        yield True
    finally:
        store.unlock_fleet_stack(name, holder)


def holder_dead(lock: dict) -> bool:
    """Whether the process holding a fleet stack's lock (as recorded) is known dead: one of this home (this
    machine) whose pid and start time no longer match a live process. A holder on another machine, or one recorded
    before holders had their process, counts as alive until its lock is stale (LOCK_STALE_S)."""
    return bool(lock.get("pid")) and lock.get("owner_id") == owner_id() and \
        not owner_alive(lock["pid"], lock.get("started"))


def fleet_offer(store: StateStore, fleet: dict) -> Offer:
    stack = fleet.get("stack") or {}
    if stack.get("offer"):
        return record_offer(stack["offer"])
    instances = store.list_instances(fleet["name"])
    if not instances:
        raise DstackError(f"fleet {fleet['name']}: no offer is recorded to make its instances from")
    return record_offer(instances[0].offer)


def update_stack(store: StateStore, config: DstackConfig, fleet: dict, nums: Sequence[int],
                 report: Callable) -> List[HostAccess]:
    """`up` of the fleet's stack with instances `nums` (the caller holds its lock): the hosts, in `nums` order."""
    name, offer = fleet["name"], fleet_offer(store, fleet)
    backend = CloudBackend((fleet.get("stack") or {}).get("backend") or offer.backend, config, store)
    legacy = (fleet.get("stack") or {}).get("legacy_nodes", 0)
    shape = numbered_shape(fleet.get("configuration") or {}, nums, legacy)
    return backend.create_stack(name, offer, shape, report,
                                fleet_key_path(name), recorder(store, name, offer),
                                host_keys=_host_keys(store, name, sorted(nums), legacy), update=True,
                                existing=fleet.get("stack"))


def bring_back(store: StateStore, config: DstackConfig, fleet: dict, kept: Sequence[int], added: Sequence[int],
               report: Callable, log: Callable[[str], None]) -> None:
    """After an `up` that was to add instances `added` failed (or was cut short): the stack brought back to `kept`
    (what is left is found again by the next command, `fleet delete` or `dstack gc`), the added instances' rows and
    host keys removed. The caller holds the stack's lock."""
    name = fleet["name"]
    log(f"Fleet {name}: {', '.join(f'#{n}' for n in added)} could not be added; bringing its stack back to the "
        "instances it had")
    try:
        update_stack(store, config, store.get_cloud_fleet(name) or fleet, kept, report)
    except Exception as e:
        log(f"warning: fleet {name}: its stack could not be brought back: {str(e).splitlines()[0]}")
    store.remove_instances(name, list(added))
    for num in added:
        host_key_path(name, num).unlink(missing_ok=True)


def _host_keys(store: StateStore, name: str, nums: Sequence[int], legacy: int) -> Tuple[HostKey, ...]:
    """Each instance's host key (fleet_host_keys); an instance made before numbering (`legacy`) was made with a key
    that was not kept: the public key recorded with it verifies it, and its user data is never changed
    (StackSpec.made_before_numbering), so no private key goes into it."""
    kept = dict(zip([n for n in nums if n >= legacy], fleet_host_keys(store, name, [n for n in nums if n >= legacy])))
    recorded = {i.num: i.host.get("host_key") or "" for i in store.list_instances(name)} if legacy else {}
    return tuple(kept[n] if n >= legacy else HostKey(NOT_KEPT, recorded.get(n, "")) for n in nums)


NOT_KEPT = "(a host key made before fleet instances were numbered: not kept)"


def grow_fleet(store: StateStore, config: DstackConfig, name: str, run_name: str, report: Callable,
               log: Callable[[str], None]) -> List[HostAccess]:
    """Adds an instance to cloud fleet `name` for run `run_name`, which holds it (`busy`) once it answers. A fleet
    at its `nodes` maximum by then (other runs grew it first) is a capacity miss: the run moves to its next offer.
    A failed `up` brings the stack back to the instances it had."""
    with fleet_stack_lock(store, name, run_name, log=log) as locked:
        if not locked:
            raise StackFailure(CAPACITY, "offer", f"fleet {name}: another command kept changing its instances for "
                                                  f"{LOCK_WAIT_S}s")
        fleet = store.get_cloud_fleet(name)
        if fleet is None:
            raise StackFailure(CAPACITY, "offer", f"fleet {name} was deleted")
        low, high = fleet_nodes(fleet)
        instances = store.list_instances(name)
        if len(instances) >= high:
            raise StackFailure(CAPACITY, "offer", f"fleet {name} has its {len(instances)} of {low}..{high} instances "
                                                  "(other runs grew it first)")
        taken = {i.num for i in instances}
        num = next(n for n in itertools.count((fleet.get("stack") or {}).get("legacy_nodes", 0)) if n not in taken)
        offer = fleet_offer(store, fleet)
        report(StepProgress("grow", "fleet", f"{name}: instance {len(instances) + 1} of {low}..{high} (#{num})",
                            "started"))
        store.add_instances([InstanceRecord(fleet=name, num=num, backend=offer.backend, offer=offer_record(offer),
                                            host={}, status=InstanceStatus.PROVISIONING, run=run_name,
                                            idle_duration=fleet_idle_seconds(
                                                (fleet.get("configuration") or {}).get("idle_duration")))])
        nums = sorted(taken | {num})
        try:
            hosts = update_stack(store, config, fleet, nums, report)
        except BaseException:
            bring_back(store, config, fleet, sorted(taken), [num], report, log)
            raise
        host = hosts[nums.index(num)]
        store.set_instance(name, num, InstanceStatus.BUSY, host=host.to_json())
        report(StepProgress("grow", "fleet", f"{name}: instance #{num}", "done"))
        return [host]


def shrink_fleet(store: StateStore, config: DstackConfig, name: str, nums: Sequence[int], report: Callable,
                 wait_s: float = LOCK_WAIT_S) -> List[int]:
    """Removes the idle instances `nums` of fleet `name` by an `up` without them; returns those removed (none when
    the lock stayed taken for `wait_s`). A busy one is kept: it is refused by the caller first, or stays for the
    next expiry."""
    holder = f"a removal of instances ({uuid.uuid4().hex[:8]})"
    with fleet_stack_lock(store, name, holder, wait_s=wait_s) as locked:
        if not locked:
            return []
        removed = store.claim_instances_removal(name, nums)
        if not removed:
            return []
        fleet = store.get_cloud_fleet(name)
        kept = [i.num for i in store.list_instances(name) if i.num not in removed]
        update_stack(store, config, fleet, kept, report)
        store.remove_instances(name, removed)
        for num in removed:
            host_key_path(name, num).unlink(missing_ok=True)
        return removed


def expired_above_min(store: StateStore, fleet: dict, now: float) -> List[int]:
    """The instances of a fleet of numbered instances that have been idle past their idle_duration, as many as
    keep it at its `nodes` minimum, longest idle first."""
    if not (fleet.get("stack") or {}).get("numbered"):
        return []
    low, _ = fleet_nodes(fleet)
    instances = store.list_instances(fleet["name"])
    expired = sorted((i for i in instances if i.status == InstanceStatus.IDLE and i.idle_duration is not None
                      and i.idle_since is not None and now >= i.idle_since + i.idle_duration),
                     key=lambda i: i.idle_since)
    return [i.num for i in expired[:max(0, len(instances) - low)]]


def delete_instances(store: StateStore, config: DstackConfig, name: str, nums: Sequence[int],
                     report: Callable) -> List[int]:
    """`dstack fleet delete NAME -i N`: those instances of a cloud fleet destroyed; refused, with nothing changed,
    for a number the fleet does not have, a busy one, or a fleet whose instances are not numbered."""
    fleet = store.get_cloud_fleet(name)
    if fleet is None:
        raise ConfigurationError(f"no fleet named {name} (see `dstack fleet list`)")
    if not (fleet.get("stack") or {}).get("numbered"):
        raise ConfigurationError(f"fleet {name}'s instances live and go together in one stack (it was made before "
                                 f"instances were numbered): `dstack fleet delete {name}` destroys them all")
    instances = {i.num: i for i in store.list_instances(name)}
    unknown = sorted(set(nums) - set(instances))
    if unknown:
        raise ConfigurationError(f"fleet {name} has no instance {unknown[0]}: its instances are "
                                 f"{', '.join(str(n) for n in sorted(instances)) or 'none'} "
                                 f"(see `dstack fleet get {name}`)")
    busy = [instances[n] for n in sorted(set(nums)) if instances[n].status not in (InstanceStatus.IDLE,
                                                                                   InstanceStatus.TERMINATING)]
    if busy:
        raise ConfigurationError(f"instance {busy[0].num} of fleet {name} is in use by {busy[0].run or 'a run'}; "
                                 "stop it first (`dstack stop`)")
    removed = shrink_fleet(store, config, name, sorted(set(nums)), report)
    missed = sorted(set(nums) - set(removed))
    if missed:
        raise ConfigurationError(f"instance {missed[0]} of fleet {name} was taken by a run meanwhile, or another "
                                 "command is changing the fleet: try again")
    return removed
