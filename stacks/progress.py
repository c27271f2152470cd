"""Turns the Pulumi engine's event stream into one line per resource step: what is being created or deleted, and
how long it took, for the progress display of `dstack apply` and `dstack stop`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional


@dataclass(frozen=True)
class StepProgress:
    op: str  # create, delete, update, refresh, ...
    type: str  # aws:ec2/instance:Instance
    name: str
    state: str  # started, done, failed
    seconds: Optional[float] = None


INSTANCE_TYPES = ("aws:ec2/instance:Instance", "gcp:compute/instance:Instance", "gcp:tpu/v2Vm:V2Vm")


class EngineEventTracker:
    """An `on_event` callback for `Stack.up`/`destroy` that reports StepProgress, skipping no-op steps; it keeps
    when the first VM's creation began (`launched_at`, on its clock), from which a VM's boot is timed."""

    def __init__(self, report: Callable[[StepProgress], None], clock: Callable[[], float] = time.monotonic):
        self._report = report
        self._clock = clock
        self._started: Dict[str, float] = {}
        self.launched_at: Optional[float] = None

    def __call__(self, event) -> None:
        for field, state in (("resource_pre_event", "started"), ("res_outputs_event", "done"),
                             ("res_op_failed_event", "failed")):
            step = getattr(event, field, None)
            if step is not None:
                self._step(step.metadata, state)

    def _step(self, metadata, state: str) -> None:
        op = getattr(metadata.op, "value", metadata.op)
        if op in ("same", "read") or metadata.type.startswith("pulumi:"):
            return
        name = metadata.urn.rsplit("::", 1)[-1]
        seconds = None
        if state == "started":
            self._started[metadata.urn] = self._clock()
            if op == "create" and metadata.type in INSTANCE_TYPES and self.launched_at is None:
                self.launched_at = self._started[metadata.urn]
        elif metadata.urn in self._started:
            seconds = self._clock() - self._started.pop(metadata.urn)
        self._report(StepProgress(op, metadata.type, name, state, seconds))
