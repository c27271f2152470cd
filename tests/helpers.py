"""Shared helpers of the tests."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def run_cli(*args, env=None, input=None, timeout=120):
    """Runs the installed `dstack` entry point as a user would, in a child process."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, env=full_env, input=input,
        timeout=timeout, cwd=ROOT,
    )
