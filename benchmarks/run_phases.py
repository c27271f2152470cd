"""`dstack` with the times a run's steps began and ended written out (cluster_bench.py --phases): where an N-node
start spends the time until its last first line.

Run as `python benchmarks/run_phases.py ARGS...` (as `python -m cli.main ARGS...`) with DSTACK_BENCH_MARKS naming
the file that gets, at exit, {mark: time.time()}: each step's first begin and its last end. The steps are patched
into their modules as these are imported, not imported early: an import made here before the command's own would
move its cost (and the kept connections' early key checks the command begins first) to other places in the
timeline.
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import importlib.machinery
import json
import os
import runpy
import sys
import time
from pathlib import Path

MARKS_ENV = "DSTACK_BENCH_MARKS"
# the steps between the command's start and its nodes' first lines: (module, class, method, step)
STEPS = (("provisioner.jobs.run_jobs", "RunJobs", "connect", "connect"),
         ("provisioner.jobs.run_jobs", "RunJobs", "start", "start"),
         ("provisioner.store.run_tables", "RunTables", "run_started", "record"))
# what cluster_bench prints, each from one mark to the next: from the command's start (by the parent's clock, as is
# the last first line) to the last first line; "connect" includes making the jobs' specs, "jobs' start" is every
# node's until the last has started
PHASES = (("until the connect", None, "connect-begin"), ("connect", "connect-begin", "start-begin"),
          ("jobs' start", "start-begin", "record-begin"), ("record", "record-begin", "record-end"),
          ("to the last first line", "record-end", "last-first-line"))


def timed(step: str, method, marks: dict):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        marks.setdefault(f"{step}-begin", time.time())
        try:
            return method(*args, **kwargs)
        finally:
            marks[f"{step}-end"] = time.time()
    return wrapper


class _StepPatcher(importlib.abc.MetaPathFinder):
    """Finds the steps' modules as the path would, and patches each step's method once its module has run."""

    def __init__(self, marks: dict):
        self.marks = marks

    def find_spec(self, name, path, target=None):
        steps = [step for step in STEPS if step[0] == name]
        if not steps:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            for _, owner, method, step in steps:
                cls = getattr(module, owner)
                setattr(cls, method, timed(step, getattr(cls, method), self.marks))

        spec.loader.exec_module = exec_module
        return spec


def phases(started: float, marks: dict, last_first_line: float) -> dict:
    """{phase: seconds} of one run (PHASES): `started` and `last_first_line` by the parent's clock (time.time())."""
    at = {**marks, "last-first-line": last_first_line}
    return {name: at[end] - (started if begin is None else at[begin]) for name, begin, end in PHASES}


def main() -> None:
    marks: dict = {}
    sys.meta_path.insert(0, _StepPatcher(marks))

    def write() -> None:
        Path(os.environ[MARKS_ENV]).write_text(json.dumps(marks))

    atexit.register(write)
    sys.path[0] = os.getcwd()  # as `python -m`: the checkout it runs in, not this script's folder
    runpy.run_module("cli.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
