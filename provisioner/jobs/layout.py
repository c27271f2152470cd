"""A job's place on its host: the jobs folder, each run's folder in it, the files the job script writes there that
others read (see provisioner.jobs.script for the whole layout), and the exit codes it reserves."""

from __future__ import annotations

import shlex
from typing import Optional

# Written just before the commands (or the container) start: "running" for `startup_order`.
BEGUN_FILE = "begun"


JOBS_ROOT = '"${DSTACK_JOBS_DIR:-$HOME/.dstack-jobs}"'  # as a shell word, expanded on the host


def job_folder(run_name: str) -> str:
    """The job folder as a shell word, expanded on the host."""
    return f"{JOBS_ROOT}/{shlex.quote(run_name)}"


TIMED_OUT = 124  # the exit code of a job stopped at max_duration (as timeout(1) reports it)


UNDERUTILIZED = 122  # the exit code of a job stopped by its utilization_policy


INACTIVE = 121  # the exit code of a dev environment stopped by its inactivity_duration (provisioner.jobs.dev_env)


# The word the job wrapper writes after the exit code when it ended the job itself, by the field that did: a
# command's own `exit 124` is a failure like any other, never read as max_duration.
ENDED_BY = {"max_duration": TIMED_OUT, "utilization_policy": UNDERUTILIZED, "inactivity_duration": INACTIVE}


class EndedByDstack(int):
    """The exit code of a job that dstack ended by one of its fields (ENDED_BY), told apart by its type from the
    same number exited by the job's commands; it passes wherever an exit code does."""


def parse_exit_code(text: str) -> Optional[int]:
    """The exit code in the job folder's `exit_code` file ("CODE" or "CODE FIELD", see ENDED_BY); None when the
    text holds none (the job has not ended)."""
    words = text.split()
    if not words or not words[0].lstrip("-").isdigit():
        return None
    code = int(words[0])
    return EndedByDstack(code) if len(words) > 1 and ENDED_BY.get(words[1]) == code else code


def recorded_exit_code(code: Optional[int], terminated: bool) -> Optional[int]:
    """An exit code as the store keeps it (a plain number beside the job's status), typed again: a reserved code
    of a job recorded `terminated` is one dstack gave it (a failed job's is its commands' own)."""
    return EndedByDstack(code) if terminated and code in ENDED_BY.values() else code


PROFILE_ENV = "profile.env"  # the login profile's environment, which job.sh sources first (provisioner.jobs.launch)


# A folder of the jobs folder (dot-named: no run's) where a host keeps what is slow to make for every job and the
# same for all of them while what it came from is unchanged: the login profile's environment
# (provisioner.jobs.launch), the interpreter found and a venv template (provisioner.jobs.python_env).
HOST_CACHE = ".host-cache"
