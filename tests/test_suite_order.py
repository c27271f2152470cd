"""The order the suite's tests start in (tests/conftest.py): longest first, by tests/durations.json where the
checkout has no pytest cache of its own (a fresh clone, as CI's)."""

import json
import subprocess
import sys

from tests.conftest import DURATIONS_FILE, committed_durations, write_durations
from tests.helpers import ROOT


def test_a_checkout_without_a_pytest_cache_starts_the_longest_committed_tests_first():
    durations = committed_durations()
    file = "tests/test_cluster.py"
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", file],
                            cwd=ROOT, capture_output=True, text=True, timeout=120).stdout.splitlines()
    collected = [line for line in listed if line.startswith(f"{file}::")]
    timed = [test for test in collected if test in durations]
    assert len(timed) > 10, "tests/durations.json lacks the tests of test_cluster.py"  # a new one: its guess orders it
    assert [durations[test] for test in timed] == sorted((durations[test] for test in timed), reverse=True)


def test_updated_durations_are_merged_rounded_and_drop_tests_whose_file_is_gone(monkeypatch, tmp_path):
    import tests.conftest as conftest

    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_kept.py").write_text("")
    path = tmp_path / "tests" / "durations.json"
    path.write_text(json.dumps({"tests/test_kept.py::test_old": 3.0, "tests/test_gone.py::test_x": 9.0,
                                "tests/test_kept.py::test_changed": 1.0}))
    monkeypatch.setattr(conftest, "DURATIONS_FILE", path)
    write_durations({"tests/test_kept.py::test_changed": 7.26, "tests/test_kept.py::test_new": 0.04})
    assert json.loads(path.read_text()) == {"tests/test_kept.py::test_changed": 7.3,
                                            "tests/test_kept.py::test_new": 0.0, "tests/test_kept.py::test_old": 3.0}
    assert DURATIONS_FILE.name == "durations.json"
