"""A cloud backend that reuses idle fleet instances before creating any (provisioner.planning.reuse offers them), adds
an instance to a fleet of `nodes: MIN..MAX` for a run (provisioner.backends.fleet_stacks), and keeps a run's instance
as an implicit fleet when the task has `idle_duration`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List

from configuration.errors import DstackError
from provisioner.backends.cloud import fleet_key_path, run_note
from provisioner.backends.fleet_stacks import grow_fleet
from provisioner.backends.fleet_upkeep import ALIVE_STATES
from provisioner.host.access import HostAccess
from provisioner.jobs.nodes import rank_offers
from provisioner.jobs.team_keys import reachable_key
from provisioner.planning.reuse import GrowthOffer, InstanceOffer, kept_for, offer_record, stack_configuration
from provisioner.store.records import InstanceRecord
from provisioner.store.statuses import InstanceStatus
from provisioner.store.store import StateStore
from stacks.errors import CAPACITY, StackFailure
from stacks.losses import InstanceLoss
from stacks.progress import StepProgress


@dataclass
class ReusingBackend:
    """A cloud backend that reuses idle instances: an InstanceOffer is claimed (atomically: two runs never get one
    instance) rather than provisioned; a run with `idle_duration` provisions its instance as an implicit fleet named
    after it. Teardown hands a held instance back idle and destroys the stack of a run that holds none."""

    cloud: object  # provisioner.backends.cloud.CloudBackend
    store: StateStore

    @property
    def name(self) -> str:
        return self.cloud.name

    def provision(self, run_name, offer, configuration, report) -> List[HostAccess]:
        if isinstance(offer, GrowthOffer):  # an instance added to its fleet's stack, held by the run once up
            return grow_fleet(self.store, self.cloud.config, offer.fleet, run_name, report,
                              lambda message: self.store.add_event(run_name, "fleet", message))
        if isinstance(offer, InstanceOffer):
            self._check_alive(offer)
            record = next(r for r in self.store.list_instances(offer.fleet) if r.num == offer.num)
            key = reachable_key(self.store, record.host.get("identity_file"), f"fleet {offer.fleet} is a teammate's",
                                theirs=False)  # a teammate's fleet: its key unsealed into this home, before the claim
            if not self.store.claim_instance(offer.fleet, offer.num, run_name):
                raise StackFailure(CAPACITY, "zone", f"instance {offer.num} of fleet {offer.fleet} was taken by "
                                                     "another run")
            report_reuse(report, offer)
            return [HostAccess.from_json({**record.host, "identity_file": key})]
        if kept_for(configuration) == 0:
            return self.cloud.provision(run_name, offer, configuration, report)
        return self._provision_kept(run_name, offer, configuration, report)

    def _check_alive(self, offer: InstanceOffer) -> None:
        """Before the claim, the cloud is asked whether the instance's VM still runs: one that ended itself (its idle
        watchdog fired before the store's idle clock said so) is retired, and the run moves to the next offer."""
        fleet = self.store.get_cloud_fleet(offer.fleet)
        stack = (fleet or {}).get("stack")
        if not stack:
            return  # no stack recorded, nothing to ask about
        nodes = len(self.store.list_instances(offer.fleet))
        stack = {**stack, "tagged": stack.get("tagged", offer.fleet)}
        try:
            state = self.cloud.instance_state(stack, offer.zone, offer.num, nodes)
        except Exception as e:  # unknown is not running: a new instance is the safe choice
            raise StackFailure(CAPACITY, "zone", f"instance {offer.num} of fleet {offer.fleet}: its state could not "
                                                 f"be read ({str(e).splitlines()[0] if str(e) else e!r})") from None
        if state != "running":
            self.store.retire_instance(offer.fleet, offer.num)
            raise StackFailure(CAPACITY, "zone", f"instance {offer.num} of fleet {offer.fleet} is {state} (its VM "
                                                 "ended itself): it is retired, not reused")

    def _provision_kept(self, run_name, offer, configuration, report) -> List[HostAccess]:
        """The run's stack, recorded as the run's until it is up (a failure destroys it with the run), then as
        the implicit fleet's, whose instances the run holds."""
        fleet = self._free_fleet_name(run_name)
        stacks: list = []

        def record(stack: dict) -> None:
            stacks.append(stack)
            self.store.update_run(run_name, stack=stack)

        hosts = self.cloud.create_stack(fleet, offer, stack_configuration(configuration), report,
                                        fleet_key_path(fleet), record, note=run_note(self.store, run_name))
        offers = rank_offers(offer, len(hosts))  # node groups: each instance its own group's offer
        instances = [InstanceRecord(fleet=fleet, num=num, backend=offer.backend, offer=offer_record(offers[num]),
                                    host=host.to_json(), status=InstanceStatus.BUSY, run=run_name,
                                    idle_duration=kept_for(configuration)) for num, host in enumerate(hosts)]
        if not self.store.create_cloud_fleet(fleet, f"run {run_name}", offer.backend, {"idle_duration": kept_for(
                configuration)}, stacks[-1], instances):  # named meanwhile: the stack stays the run's, to destroy
            raise DstackError(f"a fleet named {fleet} was created while run {run_name}'s instance was provisioned "
                              "as a fleet of that name")
        self.store.update_run(run_name, stack=None)  # the fleet's now: the run's teardown must not destroy it
        return hosts

    def _free_fleet_name(self, run_name: str) -> str:
        taken = {f["name"] for f in self.store.list_cloud_fleets()} | {f["name"] for f in self.store.list_fleets()} \
            | {r.name for r in self.store.list_runs() if r.active and r.name != run_name}  # their stacks' names
        name, n = run_name, 1
        while name in taken:
            n += 1
            name = f"{run_name}-{n}"
        return name

    def losses(self, stack) -> list:
        return self.cloud.losses(stack)

    def held_losses(self, run_name: str) -> List["FleetInstanceLoss"]:
        """The fleet instances `run_name` holds that the cloud no longer runs, and why (a spot VM taken back is an
        interruption), asked by their ids (the fleet's stack records each id's number); a stack recorded before it
        did is asked by the instances' names, and an instance gone that way is not called an interruption."""
        found: List[FleetInstanceLoss] = []
        for fleet_name, held in _by_fleet(held_instances(self.store, run_name)).items():
            fleet = self.store.get_cloud_fleet(fleet_name)
            stack = (fleet or {}).get("stack")
            if not stack:
                continue
            nums = stack.get("instance_nums") or ([] if stack.get("numbered") else
                                                  list(range(len(stack.get("instance_ids") or []))))
            ids = dict(zip(nums, stack.get("instance_ids") or []))
            if all(i.num in ids for i in held):
                losses = {loss.instance_id: loss for loss in
                          self.cloud.losses({**stack, "instance_ids": [ids[i.num] for i in held]})}
                found += [FleetInstanceLoss(f"{ids[i.num]} (#{i.num} of fleet {fleet_name})", loss.interrupted,
                                            loss.why, loss.shut_itself_down, fleet=fleet_name, num=i.num)
                          for i in held for loss in [losses.get(ids[i.num])] if loss is not None]
                continue
            tagged = {**stack, "tagged": stack.get("tagged", fleet_name)}
            nodes = len(self.store.list_instances(fleet_name))
            for i in held:
                state = self.cloud.instance_state(tagged, (i.offer.get("zones") or [""])[0], i.num, nodes)
                if state not in ALIVE_STATES:
                    found.append(FleetInstanceLoss(f"#{i.num} of fleet {fleet_name}", False, f"is {state}",
                                                   fleet=fleet_name, num=i.num))
        return found

    def teardown(self, record, report) -> None:
        """A held instance is idle from when the run's job ended on it (the host's time, recorded by
        provisioner.jobs.run_jobs), not from now: its VM's idle watchdog counts from the job's end."""
        ended = [job.finished_at for job in self.store.list_jobs(record.name) if job.finished_at]
        if self.store.release_instance(record.name, idle_since=max(ended) if ended else None):
            return
        self.cloud.teardown(record, report)


@dataclass(frozen=True)
class FleetInstanceLoss(InstanceLoss):
    """A fleet instance's loss, with which instance it is: a run that loses it retires it (never handed back idle)."""

    fleet: str = ""
    num: int = 0


def held_instances(store: StateStore, run_name: str) -> List[InstanceRecord]:
    """The cloud fleet instances the run holds (one per node), in their fleets' order."""
    return [i for i in store.list_instances() if i.run == run_name and i.status == InstanceStatus.BUSY]


def _by_fleet(instances: List[InstanceRecord]) -> Dict[str, List[InstanceRecord]]:
    grouped: Dict[str, List[InstanceRecord]] = {}
    for instance in instances:
        grouped.setdefault(instance.fleet, []).append(instance)
    return grouped


def report_reuse(report: Callable, offer: InstanceOffer) -> None:
    report(StepProgress("reuse", "instance", f"{offer.fleet}/{offer.num}", "done", 0.0))
