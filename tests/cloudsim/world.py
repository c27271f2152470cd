"""The simulated cloud's state: every resource it accepted (metered from creation to deletion), every refusal, the
VMs (tests.cloudsim.guest) and what their guests asked of the machine (power-off, timers, sshd restarts).

Providers (tests.cloudsim.aws, tests.cloudsim.gcp) decide what a registration does; this module keeps the books
and runs the VMs' side: a watcher thread reads each VM's events and acts on them (a power-off stops the VM, or
deletes it where the cloud says so; `systemd-run --on-active` keeps a timer the test fires with `fire` or `advance`).
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from tests.cloudsim.cloud_init import VmBoot, boot
from tests.cloudsim.guest import GuestVM


class Refusal(Exception):
    """The cloud's answer to a request it refuses: the provider's error text, as its SDK reports it."""


@dataclass
class Resource:
    backend: str  # aws or gcp
    type: str  # the Pulumi type token
    name: str  # the Pulumi resource name
    id: str  # the cloud's id, as the provider's state holds it
    stack: str
    region: str
    zone: Optional[str]
    inputs: dict
    outputs: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)  # AWS tags or GCP labels, the provider's defaults merged
    created_at: float = field(default_factory=time.time)
    deleted_at: Optional[float] = None
    deleted_by: Optional[str] = None  # engine, guest (the VM ended itself), sweep, cloud (spot taken back)
    stopped: bool = False  # a stopped VM: no processes, its disk still billed
    vm: Optional[GuestVM] = None
    boots: List[VmBoot] = field(default_factory=list)
    events: List[tuple] = field(default_factory=list)  # (time, what the guest asked for)
    extra: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.type.rsplit(":", 1)[-1]

    @property
    def live(self) -> bool:
        return self.deleted_at is None

    @property
    def seconds(self) -> float:
        """How long it existed (billed): from creation to deletion, or to now."""
        return (self.deleted_at or time.time()) - self.created_at

    def __repr__(self) -> str:
        state = "live" if self.live else f"deleted by {self.deleted_by}"
        return f"<{self.backend} {self.kind} {self.id} {state}{' stopped' if self.stopped else ''}>"


@dataclass
class Timer:
    resource: Resource
    unit: str
    due_at: float
    argv: List[str]
    action: Optional[Callable[[], None]] = None  # the cloud's own doing at that time (a spot VM taken back)


def seconds_of(text: str) -> float:
    """A systemd time span (`20min`, `5m`, `300s`, `2h`, `3d`, `300`), as `--on-active=` takes it."""
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        total += float(number) * {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600,
                                  "d": 86400, "day": 86400, "days": 86400}[unit]
    return total


class World:
    def __init__(self, folder: Path):
        self.folder = folder
        self.lock = threading.RLock()
        self.resources: List[Resource] = []
        self.refusals: List[tuple] = []  # (time, type, name, text)
        self.timeline: List[tuple] = []  # (time, what): created, deleted, refused, guest events
        self.timers: List[Timer] = []
        self.clock_offset = 0.0  # `advance` moves the VMs' clock forward
        self.counter = itertools.count(1)
        self.on_power_off: Dict[str, Callable[[Resource], None]] = {}  # backend -> what a guest power-off does
        self.never_boot = 0  # how many of the next VMs never serve SSH (a broken image, a VM that never comes up)
        self.events_lock = threading.RLock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    # --- the books -----------------------------------------------------------------------------------------------

    def next_number(self) -> int:
        return next(self.counter)

    def add(self, resource: Resource) -> Resource:
        with self.lock:
            self.resources.append(resource)
            self.timeline.append((resource.created_at, f"created {resource.kind} {resource.id}"))
        return resource

    def refuse(self, typ: str, name: str, text: str) -> Refusal:
        with self.lock:
            self.refusals.append((time.time(), typ, name, text))
            self.timeline.append((time.time(), f"refused {typ.rsplit(':', 1)[-1]} {name}: {text[:120]}"))
        return Refusal(text)

    def find(self, resource_id: str, live: bool = True) -> Optional[Resource]:
        with self.lock:
            return next((r for r in self.resources if r.id == resource_id and (r.live or not live)), None)

    def live(self, kind: Optional[str] = None, backend: Optional[str] = None) -> List[Resource]:
        return self.select(kind, backend, live=True)

    def select(self, kind: Optional[str] = None, backend: Optional[str] = None,
               live: Optional[bool] = None) -> List[Resource]:
        with self.lock:
            return [r for r in self.resources if (kind is None or r.kind == kind)
                    and (backend is None or r.backend == backend) and (live is None or r.live == live)]

    def _keep_last_events(self, resource: Resource) -> None:
        """What a VM's guest recorded and nobody read yet, kept (not acted on) before the VM stops."""
        vm = resource.vm
        if vm is not None and vm.running:
            with self.events_lock:
                for event in vm.new_events():
                    resource.events.append((float(event[0]), " ".join(event[1:])))

    def delete(self, resource: Resource, by: str) -> None:
        """Marks it deleted (its VM goes, and its timers)."""
        self._keep_last_events(resource)
        with self.lock:
            if not resource.live:
                return
            resource.deleted_at, resource.deleted_by = time.time(), by
            self.timeline.append((resource.deleted_at, f"deleted {resource.kind} {resource.id} by {by}"))
            self.timers = [t for t in self.timers if t.resource is not resource]
            vm = resource.vm
        if vm is not None:
            vm.remove()

    def stop_vm(self, resource: Resource, why: str) -> None:
        """The VM is stopped: its processes end, its disk (the VM's layer) stays, and so does the bill for it."""
        self._keep_last_events(resource)
        with self.lock:
            resource.stopped = True
            self.timeline.append((time.time(), f"stopped {resource.kind} {resource.id}: {why}"))
            self.timers = [t for t in self.timers if t.resource is not resource]
        if resource.vm is not None:
            resource.vm.halt()

    def start_vm(self, resource: Resource, user_data: str, keys: List[str], gcp: bool, hosts_lines=(),
                 ca_bundle: Optional[str] = None, agent_first: bool = False) -> GuestVM:
        """The VM of an instance just created: its sandbox, then cloud-init, sshd among it (unless `never_boot`
        counts it: its sandbox runs, nothing answers)."""
        name = resource.inputs.get("name") or resource.labels.get("Name") or resource.id.rsplit("/", 1)[-1]
        vm = GuestVM(name[:63], hosts_lines, ca_bundle)
        try:
            vm.create()
            resource.vm = vm
            resource.extra.update(user_data=user_data, keys=keys, gcp=gcp)
            if self.never_boot > 0:
                self.never_boot -= 1
                vm.boot()
                resource.events.append((self.now(), "never boots: no cloud-init, no sshd"))
            else:
                resource.boots.append(boot(vm, user_data, True, keys, gcp, agent_first))
        except BaseException:
            resource.vm = None
            vm.cleanup()
            raise
        return vm

    @staticmethod
    def attach(instance: Resource, device: str, folder: Path) -> None:
        """A network disk on the instance's VM (and again after each reboot)."""
        instance.extra.setdefault("disks", []).append((device, folder))
        instance.vm.attach_disk(device, folder)

    def reboot(self, resource: Resource) -> None:
        """The VM restarts (a guest reboot, a host maintenance that is no live migration): its processes end, its
        disk stays, cloud-init runs its every-boot part."""
        vm = resource.vm
        vm.halt()
        self.timers = [t for t in self.timers if t.resource is not resource]
        with self.lock:
            self.timeline.append((time.time(), f"rebooted {resource.kind} {resource.id}"))
        record = boot(vm, resource.extra["user_data"], False, resource.extra["keys"], resource.extra["gcp"])
        for device, folder in resource.extra.get("disks", []):
            vm.attach_disk(device, folder)
        resource.boots.append(record)

    def boot_errors(self) -> List[str]:
        with self.lock:
            return [f"{r.id}: {error}" for r in self.resources for boot in r.boots for error in boot.errors]

    # --- the guests' requests ------------------------------------------------------------------------------------

    def now(self) -> float:
        return time.time() + self.clock_offset

    def advance(self, seconds: float) -> None:
        """The VMs' clock moves forward: their timers due by then fire."""
        self.clock_offset += seconds
        self._fire_due()

    def fire(self, resource: Resource, unit: str) -> None:
        """Fires a VM's timer now (its command runs in the VM)."""
        self.read_events()
        with self.lock:
            timer = next((t for t in self.timers if t.resource is resource and t.unit == unit), None)
            if timer is None:
                raise KeyError(f"{resource.id} has no timer {unit}: {[t.unit for t in self.timers]}")
            self.timers.remove(timer)
        self._run_timer(timer)

    def schedule(self, resource: Resource, unit: str, delay: float, action: Callable[[], None]) -> None:
        """The cloud does `action` to the resource `delay` seconds on (by the VMs' clock); dropped with the resource."""
        with self.lock:
            self.timers.append(Timer(resource, unit, self.now() + delay, [], action))

    def timers_of(self, resource: Resource) -> Dict[str, float]:
        """Unit -> seconds until it fires."""
        self.read_events()
        with self.lock:
            return {t.unit: t.due_at - self.now() for t in self.timers if t.resource is resource}

    def _fire_due(self) -> None:
        with self.lock:
            due = [t for t in self.timers if t.due_at <= self.now()]
            self.timers = [t for t in self.timers if t not in due]
        for timer in due:
            self._run_timer(timer)

    def _run_timer(self, timer: Timer) -> None:
        resource = timer.resource
        with self.lock:
            self.timeline.append((time.time(), f"timer {timer.unit} of {resource.id} fired"))
        if timer.action is not None:
            timer.action()
        elif timer.argv == ["cloudsim:power-off"]:
            self._power_off(resource, f"{timer.unit} (scheduled shutdown)")
        elif resource.vm is not None and resource.vm.running:
            resource.vm.spawn(timer.argv)

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            self.read_events()
            self._fire_due()

    def read_events(self) -> None:
        """Acts on what the VMs' guests asked for since the last read (the watcher does it every 0.1 s; a test's
        query does it first, so that it sees what a `dstack` process that has ended made its VM do)."""
        with self.events_lock:
            with self.lock:
                running = [r for r in self.resources if r.live and r.vm is not None and r.vm.running]
            for resource in running:
                try:
                    for event in resource.vm.new_events():
                        self._guest_event(resource, event)
                except Exception as e:  # a VM that went meanwhile
                    if resource.live and resource.vm is not None:
                        resource.events.append((time.time(), f"watcher error: {e}"))

    def _guest_event(self, resource: Resource, event: List[str]) -> None:
        command, args = event[1], event[2:]
        resource.events.append((float(event[0]), " ".join([command, *args])))
        with self.lock:
            self.timeline.append((float(event[0]), f"guest {resource.id}: {' '.join([command, *args])}"))
        if command == "systemd-run":
            options = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.startswith("--") and "=" in a}
            argv = list(itertools.dropwhile(lambda a: a.startswith("-"), args))
            delay = seconds_of(options.get("--on-active", "0"))
            unit = options.get("--unit", f"run-{self.next_number()}")
            with self.lock:
                self.timers = [t for t in self.timers if not (t.resource is resource and t.unit == unit)]
                self.timers.append(Timer(resource, unit, self.now() + delay, argv))
        elif command == "systemctl" and args[:1] == ["stop"]:
            unit = args[-1].removesuffix(".timer").removesuffix(".service")
            with self.lock:
                self.timers = [t for t in self.timers if not (t.resource is resource and t.unit == unit)]
        elif command == "systemctl" and args[:1] in (["restart"], ["reload"]) and args[-1] in ("ssh", "sshd"):
            resource.vm.restart_sshd()
        elif command == "systemctl" and args[:1] == ["poweroff"] or command in ("poweroff", "halt"):
            self._power_off(resource, command)
        elif command == "shutdown":
            self._shutdown(resource, args)

    def _shutdown(self, resource: Resource, args: List[str]) -> None:
        """`shutdown [-h|-P] [now|+M|hh:mm]`, `shutdown -c`: systemd's shutdown."""
        if "-c" in args:
            with self.lock:
                self.timers = [t for t in self.timers if not (t.resource is resource and t.unit == "shutdown")]
            return
        when = next((a for a in args if not a.startswith("-")), "+1")
        if when == "now" or when == "+0":
            self._power_off(resource, "shutdown now")
            return
        delay = float(when[1:]) * 60 if when.startswith("+") else 60
        with self.lock:
            self.timers = [t for t in self.timers if not (t.resource is resource and t.unit == "shutdown")]
            self.timers.append(Timer(resource, "shutdown", self.now() + delay, ["cloudsim:power-off"]))

    def _power_off(self, resource: Resource, why: str) -> None:
        if not resource.live or resource.stopped:
            return
        self.on_power_off[resource.backend](resource)

    def close(self) -> None:
        self._stop.set()
        self._watcher.join(5)
        with self.lock:
            vms = [r.vm for r in self.resources if r.vm is not None]
        for vm in vms:
            vm.cleanup()
