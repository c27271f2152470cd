"""benchmarks/run_phases.py (cluster_bench.py --phases): the steps' marks of a real `dstack apply`, patched in as
their modules are imported (never importing them itself), and phases that follow each other to the last line."""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from run_phases import MARKS_ENV, PHASES, STEPS, phases  # noqa: E402

PATCHED_LATE = f"""
import sys
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "benchmarks")!r}]
from run_phases import STEPS, _StepPatcher
sys.meta_path.insert(0, _StepPatcher({{}}))
print(sorted({{module for module, *_ in STEPS}} & set(sys.modules)))
import provisioner.jobs.run_jobs, provisioner.store.store
for module, owner, method, _ in STEPS:
    print(getattr(getattr(sys.modules[module], owner), method).__wrapped__.__qualname__)
"""


def test_the_steps_are_patched_as_their_modules_are_imported_and_not_imported_before():
    result = subprocess.run([sys.executable, "-c", PATCHED_LATE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", *(f"{owner}.{method}" for _, owner, method, _ in STEPS)]


def test_a_runs_marks_come_in_its_steps_order_and_its_phases_add_up_to_its_first_line(tmp_path, dstack_home):
    task = tmp_path / "t.dstack.yml"
    task.write_text("type: task\ncommands: ['echo first']\n")
    marks = tmp_path / "marks.json"
    env = dict(os.environ, DSTACK_HOME=str(dstack_home), **{MARKS_ENV: str(marks)})
    started = time.time()
    process = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "run_phases.py"), "apply", "-f", str(task),
                                "-y"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_line = process.stdout.readline()
    first_line_at = time.time()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0 and first_line == "first\n", stderr
    at = json.loads(marks.read_text())
    order = ["connect-begin", "connect-end", "start-begin", "record-begin", "record-end", "start-end"]
    assert sorted(at, key=at.get) == order and started < at["connect-begin"] and at["start-end"] < first_line_at
    found = phases(started, at, first_line_at)
    assert list(found) == [name for name, *_ in PHASES] and all(seconds >= 0 for seconds in found.values())
    assert sum(found.values()) == pytest.approx(first_line_at - started)
