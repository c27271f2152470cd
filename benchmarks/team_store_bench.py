"""What a team database's store call costs with the session a command keeps (provisioner.store.postgres) against
the baseline of a new session per call (as before), measured in the same run: N reads of one run and N events
written, on a throwaway PostgreSQL cluster on a Unix socket (tests/postgres_cluster.py: Debian's postgresql, root,
`runuser`). A Unix socket is the cheapest a session gets: over a network each new session adds round trips (and a
TLS handshake), so the ratio here is a floor.

Run: sudo python benchmarks/team_store_bench.py [--calls N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provisioner.store import postgres  # noqa: E402
from provisioner.store.records import RunRecord  # noqa: E402
from provisioner.store.store import StateStore  # noqa: E402
from tests.postgres_cluster import Cluster  # noqa: E402


@contextmanager
def session_per_call():
    """The baseline: every store call opens its own session and closes it after (the first slice's behaviour)."""
    kept = postgres.TeamDatabase._kept_connection

    def fresh(database):
        connection = database._connection()
        postgres._every_kept.append((os.getpid(), connection))
        return connection

    real_settle = postgres._settle
    postgres.TeamDatabase._kept_connection = fresh
    postgres._settle = postgres._close
    try:
        yield
    finally:
        postgres.TeamDatabase._kept_connection = kept
        postgres._settle = real_settle


def measure(store: StateStore, calls: int, tag: str) -> float:
    started = time.perf_counter()
    for n in range(calls):
        store.get_run("bench")
        store.add_event("bench", "note", f"{tag} {n}")
    return (time.perf_counter() - started) / (2 * calls)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    calls = parser.parse_args().calls
    os.environ["DSTACK_HOME"] = tempfile.mkdtemp(prefix="dstack-bench-home-")
    cluster = Cluster().start()
    try:
        store = StateStore(url=cluster.new_database())
        store.create_run(RunRecord(name="bench", status="running", submitted_at=time.time()))
        measure(store, 10, "warm-up")
        with session_per_call():
            baseline = measure(store, calls, "baseline")
        kept = measure(store, calls, "kept")
    finally:
        cluster.stop()
    print(f"store call, a new session each (baseline): {baseline * 1000:.2f} ms")
    print(f"store call, the command's kept session:     {kept * 1000:.2f} ms")
    print(f"ratio baseline / kept: {baseline / kept:.1f}x ({calls} reads and {calls} writes each; load "
          f"{os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
