"""The Pulumi engine's stand-in, in the dstack process (tests.cloudsim.cli installs it): `open_stack` hands out a
SimStack, which runs the real stack program under Pulumi's mocks and sends each resource registration and lookup
to the simulated cloud (tests.cloudsim.server), as the engine sends them to the provider.

As the engine does, it keeps the stack's state (what was created, with its cloud id) in the state backend's folder
(`file://` backends: `<state>/.cloudsim/STACK.json`), writing each resource as the cloud answers: a process killed
between the cloud's answer and that write leaves a resource no state knows (a "pending create"), which only the
leftover sweeps find, as with the real engine. A refusal fails `up` with the engine's text around the provider's
(`error: update failed`, the resource, the provider's message), which the real code classifies (stacks.errors).
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional

SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # pulumi.runtime.rpc._special_secret_sig
SIG = "4dabf18193072939515e22adb298388d"  # pulumi.runtime.rpc._special_sig_key


class SimClient:
    """JSON requests to the simulator's engine API."""

    def __init__(self, url: str):
        self.url = url

    def post(self, op: str, payload: dict) -> dict:
        request = urllib.request.Request(f"{self.url}/engine/{op}", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())


def plain(value):
    """Inputs in wire form with their secrets opened (the cloud receives them so)."""
    if isinstance(value, dict):
        if value.get(SIG) == SECRET_SIG:
            return plain(value.get("value"))
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def provider_config(inputs: dict) -> dict:
    """A provider's inputs: the engine hands its object-valued settings over as JSON text."""
    config = {}
    for key, value in inputs.items():
        if isinstance(value, str) and value[:1] in ("{", "["):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        config[key] = value
    return config


def short_type(typ: str) -> str:
    """`aws:ec2/instance:Instance` as the engine names it in errors: `aws:ec2:Instance`."""
    package, module, name = typ.split(":")
    return f"{package}:{module.split('/')[0]}:{name}"


class Refused(Exception):
    """The cloud refused a registration or a lookup: `text` is the engine's error output."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


def _command_error(text: str):
    from pulumi.automation._cmd import CommandResult
    from pulumi.automation.errors import CommandError

    return CommandError(CommandResult(stdout="", stderr=text, code=255))


class StackState:
    """A stack's resources in creation order, with their cloud ids, in a JSON file of the state backend."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.data = json.loads(path.read_text()) if path.exists() else {"resources": [], "outputs": {}}

    @property
    def resources(self) -> List[dict]:
        return self.data["resources"]

    def add(self, resource: dict) -> None:
        with self.lock:
            self.resources.append(resource)
            self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data, indent=1))
        temporary.replace(self.path)


def state_path(settings, stack_name: str) -> Path:
    url = settings.backend_url
    if not url.startswith("file://"):
        raise ValueError(f"the simulated engine keeps state in file:// backends only, not {url}")
    return Path(url[len("file://"):]) / ".cloudsim" / f"{stack_name}.json"


class SimStack:
    def __init__(self, name: str, program: Callable[[], None], settings, client: SimClient):
        self.name = name
        self.program = program
        self.client = client
        self.state = StackState(state_path(settings, name))
        self.workspace = SimpleNamespace(remove_stack=self._remove)

    def _remove(self, name: str) -> None:
        self.state.path.unlink(missing_ok=True)

    # --- up ------------------------------------------------------------------------------------------------------

    def up(self, on_event: Optional[Callable] = None, **_):
        import pulumi

        providers: Dict[str, dict] = {}
        options: Dict[tuple, dict] = {}
        inflight = threading.Semaphore(64)
        refusals: List[str] = []
        cancelled = threading.Event()
        stack = self
        known = {r["urn"]: r for r in self.state.resources}
        registered: set = set()  # what the program declares; the rest of the state goes after it, as in the engine

        def event(kind: str, typ: str, urn: str, op: str = "create") -> None:
            if on_event is not None:
                metadata = SimpleNamespace(op=op, type=typ, urn=urn)
                on_event(SimpleNamespace(**{kind: SimpleNamespace(metadata=metadata)}))

        class Mocks(pulumi.runtime.Mocks):
            def new_resource(self, args):
                if args.typ.startswith("pulumi:providers:"):
                    provider_id = f"provider-{len(providers)}-{os.getpid()}"
                    providers[provider_id] = {"package": args.typ.rsplit(":", 1)[-1],
                                              **provider_config(plain(dict(args.inputs)))}
                    return [provider_id, dict(args.inputs)]
                if cancelled.is_set():
                    raise Refused("error: update canceled")
                urn = f"{stack.name}::{args.typ}::{args.name}"
                registered.add(urn)
                if urn in known:  # already created by an earlier `up` of this stack: the engine leaves it
                    return [known[urn]["id"], known[urn]["outputs"]]
                provider = providers.get((args.provider or "").rsplit("::", 1)[-1], {})
                with inflight:
                    event("resource_pre_event", args.typ, urn)
                    answer = stack.client.post("register", {
                        "stack": stack.name, "type": args.typ, "name": args.name, "inputs": plain(dict(args.inputs)),
                        "provider": provider, "options": options.get((args.typ, args.name), {}), "pid": os.getpid()})
                    if "error" in answer:
                        event("res_op_failed_event", args.typ, urn)
                        text = (f"error: update failed\n  {short_type(args.typ)} ({args.name}):\n"
                                f"    error: {answer['error']}")
                        refusals.append(text)
                        raise Refused(text)
                    outputs = {**dict(args.inputs), **answer["outputs"]}
                    stack.state.add({"urn": urn, "type": args.typ, "name": args.name, "id": answer["id"],
                                     "backend": args.typ.split(":")[0], "outputs": outputs})
                    event("res_outputs_event", args.typ, urn)
                    return [answer["id"], outputs]

            def call(self, args):
                provider = providers.get((args.provider or "").rsplit("::", 1)[-1], {})
                answer = stack.client.post("call", {"token": args.token, "args": plain(dict(args.args)),
                                                    "provider": provider})
                if "error" in answer:
                    text = f"error: {answer['error']}"
                    refusals.append(text)
                    raise Refused(text)
                return answer["result"]

        exports: dict = {}

        def program():
            exported: dict = {}
            real_export = pulumi.export
            pulumi.export = lambda key, value: exported.__setitem__(key, value)
            try:
                self.program()
            finally:
                pulumi.export = real_export
            return pulumi.Output.from_input(exported).apply(exports.update)

        from pulumi.runtime.mocks import MockMonitor

        class Monitor(MockMonitor):
            """The engine sees a registration's options, which the mocks do not: `ignore_changes` is kept."""

            def RegisterResource(self, request):
                options[(request.type, request.name)] = {"ignoreChanges": list(request.ignoreChanges)}
                return super().RegisterResource(request)

        mocks = Mocks()
        pulumi.runtime.set_mocks(mocks, project="dstack", stack=self.name, preview=False, monitor=Monitor(mocks))
        try:
            pulumi.runtime.test(program)()
        except KeyboardInterrupt:
            cancelled.set()
            self._drain(inflight)
            raise
        except BaseException as e:  # what the engine reports: the cloud's refusal, else the program's exception
            cancelled.set()
            self._drain(inflight)
            if refusals:
                raise _command_error(refusals[0]) from None
            detail = "".join(traceback.format_exception_only(type(e), e)).strip()
            raise _command_error("error: an unhandled error occurred: Program failed with an unhandled exception:\n"
                                 f"    {detail}") from None
        finally:
            pulumi.runtime.settings.SETTINGS.monitor = None
        self._delete([r for r in self.state.resources if r["urn"] not in registered], on_event)
        self.state.data["outputs"] = exports
        self.state.save()
        return SimpleNamespace(outputs={k: SimpleNamespace(value=v, secret=False) for k, v in exports.items()})

    @staticmethod
    def _drain(inflight: threading.Semaphore, wait_s: float = 30) -> None:
        """The engine's cancel: the registrations under way finish (and are recorded) first."""
        deadline = time.monotonic() + wait_s
        taken = 0
        while taken < 64 and time.monotonic() < deadline:
            if inflight.acquire(timeout=0.05):
                taken += 1
        for _ in range(taken):
            inflight.release()

    # --- refresh, destroy ------------------------------------------------------------------------------------------

    def refresh(self, **_):
        """Drops what the cloud no longer has (a VM that deleted itself, a sweep's work)."""
        resources = self.state.resources
        if not resources:
            return
        gone = set(self.client.post("exists", {"ids": [r["id"] for r in resources],
                                                "types": [r["type"] for r in resources]})["gone"])
        self.state.data["resources"] = [r for r in resources if r["id"] not in gone]
        self.state.save()

    def destroy(self, on_event: Optional[Callable] = None, **_):
        """Deletes the stack's resources, the last created first (dependents before what they depend on)."""
        self._delete(list(self.state.resources), on_event)

    def _delete(self, resources: List[dict], on_event: Optional[Callable]) -> None:
        """Deletes `resources` of the stack's state, the last created first: all of them for `destroy`, those its
        program no longer declares for `up` (a fleet's instance removed from its list)."""
        for resource in reversed(resources):
            urn = resource["urn"]
            if on_event is not None:
                metadata = SimpleNamespace(op="delete", type=resource["type"], urn=urn)
                on_event(SimpleNamespace(resource_pre_event=SimpleNamespace(metadata=metadata)))
            answer = self.client.post("delete", {"type": resource["type"], "id": resource["id"],
                                                 "pid": os.getpid()})
            if "error" in answer:
                raise _command_error(f"error: destroy failed\n  {short_type(resource['type'])} ({resource['name']}):"
                                     f"\n    error: {answer['error']}")
            self.state.data["resources"].remove(resource)
            self.state.save()
            if on_event is not None:
                metadata = SimpleNamespace(op="delete", type=resource["type"], urn=urn)
                on_event(SimpleNamespace(res_outputs_event=SimpleNamespace(metadata=metadata)))


def list_stacks(settings) -> List[dict]:
    """`dstack stacks`: the stacks this state backend holds."""
    folder = state_path(settings, "x").parent
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = json.loads(path.read_text())
        found.append({"name": path.stem, "resources": len(data["resources"]), "outputs": data.get("outputs", {})})
    return found
