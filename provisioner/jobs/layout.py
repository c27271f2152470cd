"""A job's place on its host: the jobs folder, each run's folder in it, the files the job script writes there that
others read (see provisioner.jobs.script for the whole layout), and the exit codes it reserves."""

from __future__ import annotations

import shlex

# Written just before the commands (or the container) start: "running" for `startup_order`.
BEGUN_FILE = "begun"


JOBS_ROOT = '"${DSTACK_JOBS_DIR:-$HOME/.dstack-jobs}"'  # as a shell word, expanded on the host


def job_folder(run_name: str) -> str:
    """The job folder as a shell word, expanded on the host."""
    return f"{JOBS_ROOT}/{shlex.quote(run_name)}"


TIMED_OUT = 124  # the exit code of a job stopped at max_duration (as timeout(1) reports it)


UNDERUTILIZED = 122  # the exit code of a job stopped by its utilization_policy


INACTIVE = 121  # the exit code of a dev environment stopped by its inactivity_duration (provisioner.jobs.dev_env)


PROFILE_ENV = "profile.env"  # the login profile's environment, which job.sh sources first (provisioner.jobs.launch)
