"""Where a run, a job, a cloud fleet's instance and a network volume stand: enums whose values are the strings the
store keeps and the CLI prints (`dstack ps`, `--json`), so a store written before they were enums reads the same."""

from __future__ import annotations

from enum import Enum


class _Status(str, Enum):
    """A status compares equal to its stored string and prints as it."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __hash__(self) -> int:  # as its string's, which it equals: a set or dict of strings finds it
        return hash(self.value)


class RunStatus(_Status):
    SUBMITTED = "submitted"
    PROVISIONING = "provisioning"
    PULLING = "pulling"  # an `image:` job started: its image is being pulled
    RUNNING = "running"
    TERMINATING = "terminating"  # its jobs are stopped and what it created is removed; then one of the three below
    DONE = "done"
    FAILED = "failed"
    TERMINATED = "terminated"

    def is_finished(self) -> bool:
        return self in (RunStatus.DONE, RunStatus.FAILED, RunStatus.TERMINATED)

    def is_active(self) -> bool:
        return not self.is_finished()


ACTIVE = tuple(s for s in RunStatus if s.is_active())
STARTED = (RunStatus.SUBMITTED, RunStatus.PROVISIONING, RunStatus.PULLING, RunStatus.RUNNING)
STARTING = (RunStatus.SUBMITTED, RunStatus.PROVISIONING)  # no job yet: it may be starting while its owner lives
RUNNING = (RunStatus.PULLING, RunStatus.RUNNING)  # the job's pid file exists


class JobStatus(_Status):
    """One node's job: `provisioning` (its host chosen), `running`, then how it ended."""

    PROVISIONING = "provisioning"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    TERMINATED = "terminated"

    def is_finished(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.TERMINATED)


class InstanceStatus(_Status):
    IDLE = "idle"
    BUSY = "busy"  # a run holds it
    PROVISIONING = "provisioning"  # a run adds it to its fleet's stack, and will hold it
    TERMINATING = "terminating"  # its fleet's stack is being destroyed


class VolumeStatus(_Status):
    SUBMITTED = "submitted"  # its stack is being created
    ACTIVE = "active"
    FAILED = "failed"  # its stack's `up` failed: `dstack volume delete` removes what was made
    DELETING = "deleting"
