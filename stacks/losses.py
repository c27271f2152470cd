"""A cloud instance of a run that is no longer running, and why: what tells a spot interruption (the cloud took the
VM back; the run may start again elsewhere) from any other end (the run fails)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceLoss:
    instance_id: str
    interrupted: bool  # the cloud took a spot VM back (AWS spot interruption, GCP preemption)
    why: str  # for the run's log and events: what happened, and when where the cloud says
    shut_itself_down: bool = False  # the guest powered off (dstack's idle power-off once the job has ended)
