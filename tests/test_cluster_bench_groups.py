"""benchmarks/cluster_bench.py's CPU split: a process joined to a part is counted with all its threads, those it
started before it was joined too (a keeper's connection thread and its client threads; cgroup v1's `tasks` file moved
the pid's own thread alone)."""

import subprocess
import sys

import pytest

sys.path.insert(0, "benchmarks")
from cluster_bench import CpuGroups  # noqa: E402

BUSY_THREAD = """
import sys, threading, time
go = threading.Event()
def burn():
    go.wait()
    end = time.thread_time() + 0.3
    while time.thread_time() < end:
        pass
worker = threading.Thread(target=burn)
worker.start()
print("started", flush=True)
sys.stdin.readline()
go.set()
worker.join()
"""


def test_a_joined_process_is_counted_with_the_threads_it_had():
    groups = CpuGroups()
    if not groups.usable:
        pytest.skip("this machine's cgroups cannot count CPU time here (not root?)")
    process = subprocess.Popen([sys.executable, "-c", BUSY_THREAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout.readline() == b"started\n"  # its thread is there before it is joined
        before = groups.seconds()
        groups.join("keepers", [process.pid])
        process.communicate(b"go\n", timeout=30)
        keepers = groups.seconds()[1] - before[1]
    finally:
        groups.remove()
    assert keepers >= 0.25
