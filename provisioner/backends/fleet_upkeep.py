"""Keeping a cloud fleet of numbered instances as its `nodes` say, with no server to do it: the commands that read
fleets (`dstack apply`, `ps`, `fleet list`, `fleet get`) first repair each fleet (keep_fleets), and say what they did.

- A fleet made before instances were numbered is numbered as it is (number_instances), then kept as the others.

- An instance a dstack process was adding when it died (`provisioning`, its grow killed) is undone: the fleet's
  stack is brought up without it, and a VM its `up` made before Pulumi recorded it is swept by its name.
- An idle instance whose VM ended (taken back, terminated from outside, powered off; `fleet list` and `fleet get`
  ask the cloud, a run's claim finds it too: provisioner.backends.reusing) is removed from the stack.
- A fleet left with fewer instances than its `nodes` minimum (an instance ended, or was deleted with `-i`) gets new
  ones, idle, in the same `up`.

Each repair holds the fleet's stack lock (provisioner.backends.fleet_stacks), taken without waiting: a fleet another
command is changing (a run growing it) is left for the next command. A fleet that needs nothing is only read.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Callable, Dict, List, Optional

from configuration.backends import DstackConfig
from provisioner.backends.cloud import CloudBackend
from provisioner.backends.cloud_fleets import prepare_instance
from provisioner.backends.fleet_stacks import (bring_back, fleet_offer, fleet_stack_lock, host_key_path,
                                                 update_stack)
from provisioner.planning.reuse import fleet_idle_seconds, fleet_nodes, offer_record
from provisioner.store.errors import StoreDamaged
from provisioner.store.records import InstanceRecord
from provisioner.store.statuses import InstanceStatus
from provisioner.store.store import StateStore

ALIVE_STATES = ("running", "pending")


def keep_fleets(store: StateStore, config: DstackConfig, report: Callable, log: Callable[[str], None],
                ask_cloud: bool) -> None:
    """Repairs each cloud fleet of numbered instances (see the module); `ask_cloud`: whether each idle instance's VM
    is asked about first. A failure is logged, and the next command tries again."""
    for fleet in store.list_cloud_fleets():
        name = fleet["name"]
        try:
            if not (fleet.get("stack") or {}).get("numbered"):
                fleet = number_instances(store, fleet, log)
                if fleet is None:
                    continue
            ended = _ended(store, config, fleet) if ask_cloud else {}
            if ended or _needs_repair(store, fleet):
                _repair(store, config, name, ended, report, log)
        except StoreDamaged:
            raise  # the store's damage is every command's to report
        except Exception as e:  # one fleet's cloud error must not stop the command that happened to run this
            log(f"fleet {name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; the next "
                "`dstack ps` tries again")


def number_instances(store: StateStore, fleet: dict, log: Callable[[str], None]) -> Optional[dict]:
    """A fleet made from a fleet file before instances were numbered (its stack, of the `nodes` it was made with,
    records no numbers and no offer) numbered as it is, so it grows, shrinks and is kept as a new one: its N
    instances are #0..N-1, the numbers its rows have, and keep their cloud and Pulumi names (`legacy_nodes`,
    StackSpec) and their user data; the offer they were made from is the one it grows from. Only the record
    changes: no `up`. Returns the fleet as now recorded; None for a fleet that is not one (a run's implicit fleet,
    which never grows) or that another command is changing."""
    name = fleet["name"]
    nodes = (fleet.get("configuration") or {}).get("nodes")
    if not fleet.get("stack") or not isinstance(nodes, dict) or "min" not in nodes:  # as a fleet file records it
        return None
    with fleet_stack_lock(store, name, f"the numbering of {name} ({os.getpid()})", wait_s=0) as locked:
        fleet = store.get_cloud_fleet(name) if locked else None
        instances = store.list_instances(name)
        settled = instances and all(i.status in (InstanceStatus.IDLE, InstanceStatus.BUSY) for i in instances)
        if fleet is None or not fleet.get("stack") or fleet["stack"].get("numbered") or not settled:
            return None  # one `terminating` (being destroyed, or retired) goes whole, as fleets of its time did
        made = max(i.num for i in instances) + 1
        store.set_fleet_stack(name, {**fleet["stack"], "numbered": True, "legacy_nodes": made,
                                     "offer": instances[0].offer})
        log(f"Fleet {name}: made before instances were numbered; its instance{'s are' if made > 1 else ' is'} "
            f"{', '.join(f'#{n}' for n in range(made))} from now on (names kept), and it follows its `nodes` range")
        return store.get_cloud_fleet(name)


def _needs_repair(store: StateStore, fleet: dict) -> bool:
    """What the store alone says: an instance being added or removed (by a live command, or one that died, or
    retired: its VM ended), or fewer instances than the minimum. A fleet being destroyed whole (its stack marked
    `teardown`: StateStore.claim_fleet_teardown) is left to the command that retries it."""
    if fleet["stack"].get("teardown"):
        return False
    instances = store.list_instances(fleet["name"])
    low, _ = fleet_nodes(fleet)
    return len(instances) < low or any(i.status in (InstanceStatus.PROVISIONING, InstanceStatus.TERMINATING)
                                       for i in instances)


def _ended(store: StateStore, config: DstackConfig, fleet: dict) -> Dict[int, str]:
    """The fleet's idle instances whose VM the cloud no longer runs, with its state."""
    stack = fleet["stack"]
    idle = [i for i in store.list_instances(fleet["name"]) if i.status == InstanceStatus.IDLE]
    if not idle:
        return {}
    backend = CloudBackend(stack.get("backend") or fleet["backend"], config, store)
    stack = {**stack, "tagged": stack.get("tagged", fleet["name"])}
    states = {i.num: backend.instance_state(stack, (i.offer.get("zones") or [""])[0], i.num, len(idle))
              for i in idle}
    return {num: state for num, state in states.items() if state not in ALIVE_STATES}


def _repair(store: StateStore, config: DstackConfig, name: str, ended: Dict[int, str], report: Callable,
            log: Callable[[str], None]) -> None:
    with fleet_stack_lock(store, name, f"the upkeep of {name} ({os.getpid()})", wait_s=0) as locked:
        if not locked:
            return  # another command changes the fleet now; the next command looks again
        fleet = store.get_cloud_fleet(name)
        instances = store.list_instances(name)
        if fleet is None or fleet["stack"].get("teardown"):
            return
        # under the lock, an instance still `provisioning` has no live command adding it: its grow died
        dead = [i.num for i in instances if i.status == InstanceStatus.PROVISIONING]
        removed = store.claim_instances_removal(name, list(ended) + [i.num for i in instances
                                                                      if i.status == InstanceStatus.TERMINATING])
        kept = [i.num for i in instances if i.num not in removed and i.num not in dead]
        low, _ = fleet_nodes(fleet)
        used = set(kept) | set(removed) | set(dead)  # a number whose VM may linger is not given again now
        first = fleet["stack"].get("legacy_nodes", 0)  # a number made before numbering is never given again
        added = list(itertools.islice((n for n in itertools.count(first) if n not in used),
                                      max(0, low - len(kept))))
        if not (dead or removed or added):
            return  # what was read before the lock was a command's work in progress, done by now
        for num in dead:
            log(f"Fleet {name}: instance #{num} was being added by a dstack process that is gone; removing it")
        for num in removed:
            log(f"Fleet {name}: instance #{num} " + (f"is {ended[num]} in the cloud" if num in ended else
                                                    "was retired (its VM ended) or its removal cut short")
                + "; removing it")
        if added:
            log(f"Fleet {name}: {len(kept)} instance{'s' if len(kept) != 1 else ''}, below its `nodes` minimum of "
                f"{low}: adding {', '.join(f'#{n}' for n in added)}")
        _bring_up(store, config, fleet, kept, added, report, log)
        gone = sorted(set(dead) | set(removed))
        if gone:
            CloudBackend((fleet.get("stack") or {}).get("backend") or fleet["backend"], config,
                         store).sweep_instances(fleet["stack"], gone)  # a VM a killed `up` made unrecorded
            store.remove_instances(name, gone)
            for num in gone:
                host_key_path(name, num).unlink(missing_ok=True)


def _bring_up(store: StateStore, config: DstackConfig, fleet: dict, kept: List[int], added: List[int],
              report: Callable, log: Callable[[str], None]) -> None:
    """`up` of the fleet's stack with `kept` and `added`; the added instances idle once they answer. A failure
    brings the stack back to `kept` alone and is raised."""
    name = fleet["name"]
    offer = fleet_offer(store, fleet)
    idle = fleet_idle_seconds((fleet.get("configuration") or {}).get("idle_duration"))
    store.add_instances([InstanceRecord(fleet=name, num=num, backend=offer.backend, offer=offer_record(offer),
                                        host={}, status=InstanceStatus.PROVISIONING, idle_duration=idle)
                         for num in added])
    nums = sorted(kept + added)
    try:
        hosts = update_stack(store, config, fleet, nums, report)
        for num in added:
            prepare_instance(hosts[nums.index(num)], idle)
    except BaseException:
        if added:
            bring_back(store, config, fleet, sorted(kept), added, report, log)
        raise
    now = time.time()
    for num in added:
        store.set_instance(name, num, InstanceStatus.IDLE, host=hosts[nums.index(num)].to_json(), idle_since=now)
