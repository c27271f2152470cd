"""Issue 23: costs that stay flat as the store and the logs grow. `dstack ps` over many runs reads only the runs it
shows; `dstack logs` of a long output streams it in pieces, in constant memory (from the host and from the local
copy); 20 processes writing the store at once meet no `database is locked`, and a claim still has one winner.
Behaviour only: the speed is benchmarks/growth_bench.py's."""

import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
import time

from provisioner.host.owner import process_start_time
from provisioner.store.records import RunRecord
from provisioner.store.statuses import RunStatus
from provisioner.store.store import StateStore
from tests.helpers import ROOT, run_cli, write


def add_runs(store: StateStore, count: int, start: float, status=RunStatus.DONE, **fields) -> list:
    """`count` runs submitted a second apart from `start` on, written in one transaction."""
    records = [RunRecord(name=f"run-{start:.0f}-{i}", status=status, submitted_at=start + i, backend="aws",
                         region="us-east-1", instance="g5.xlarge", price=1.0, finished_at=start + i + 0.5,
                         exit_code=0, configuration={"type": "task", "commands": ["echo hi"]}, **fields)
               for i in range(count)]
    rows = [store._row(record) for record in records]
    with store._connect() as db:
        db.begin()
        columns = ", ".join(rows[0])
        db.executemany(f"INSERT INTO runs ({columns}) VALUES ({', '.join('?' for _ in rows[0])})",
                       [list(row.values()) for row in rows])
        db.commit()
    return [record.name for record in records]


def ps_names(env, *args) -> list:
    result = run_cli("ps", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    return [run["name"] for run in json.loads(result.stdout)["runs"]]


def test_ps_over_many_runs_shows_the_right_rows(dstack_home):
    env = {"DSTACK_HOME": str(dstack_home)}
    store = StateStore()
    old = add_runs(store, 1500, 1_000_000)
    owner = subprocess.Popen(["sleep", "120"])  # the live owner of the active runs: ps leaves them as they are
    try:
        active = add_runs(store, 2, 2_000_000, status=RunStatus.RUNNING, owner_pid=owner.pid,
                          owner_started=process_start_time(owner.pid), host={"kind": "local"})
        newer = add_runs(store, 3, 3_000_000)
        assert ps_names(env) == active[::-1]  # the active runs, newest first
        assert ps_names(env, "-n", "4") == newer[::-1] + active[-1:]
        assert len(ps_names(env, "-a")) == 1505
        table = run_cli("ps", env=env).stdout
        assert all(name in table for name in active) and newer[-1] not in table
    finally:
        owner.kill()
        owner.wait()
    store.update_run(active[0], status=RunStatus.DONE)
    store.update_run(active[1], status=RunStatus.DONE)
    table = run_cli("ps", env=env).stdout  # none active: the last run only, as dstack shows
    assert newer[-1] in table and newer[-2] not in table and old[0] not in table


def test_ps_reads_only_the_runs_it_shows(dstack_home):
    """A finished run deep in the store whose record no longer parses: listing the active runs or the last one
    never reads it (before, every `ps` read every run's whole record); `-a`, which shows it, still finds it."""
    env = {"DSTACK_HOME": str(dstack_home)}
    store = StateStore()
    add_runs(store, 1000, 1_000_000)
    last = add_runs(store, 1, 2_000_000)
    with store._connect() as db:
        db.execute("UPDATE runs SET configuration = '{broken' WHERE name = 'run-1000000-7'")
    shown = run_cli("ps", env=env)
    assert shown.returncode == 0 and last[0] in shown.stdout, shown.stderr
    assert ps_names(env, "-n", "5")[0] == last[0]
    everything = run_cli("ps", "-a", env=env)
    assert everything.returncode != 0 and "run-1000000-7's configuration is not valid JSON" in everything.stderr


def test_the_store_migrates_to_the_indexed_runs(dstack_home):
    import sqlite3

    StateStore()
    path = dstack_home / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript("DROP INDEX runs_by_status; DROP INDEX runs_by_submission; PRAGMA user_version = 8;")
    StateStore()
    with sqlite3.connect(path) as db:
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        plan = " ".join(str(row) for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM runs ORDER BY submitted_at DESC LIMIT 1"))
    assert {"runs_by_status", "runs_by_submission"} <= indexes and "runs_by_submission" in plan


def test_a_process_checks_the_store_file_whole_once(dstack_home, monkeypatch):
    """SQLite's quick_check reads every page: a command that opens the store several times (`ps`: its session, the
    idle fleets, each table) checks it once. A new file in its place is checked again."""
    from provisioner.store import connection

    checks = []
    execute = connection.SqliteDb.execute
    monkeypatch.setattr(connection.SqliteDb, "execute", lambda db, sql, parameters=(): (
        checks.append(sql) if "quick_check" in sql else None, execute(db, sql, parameters))[1])
    monkeypatch.setattr(connection, "_CHECKED", set())
    StateStore().create_run(RunRecord(name="a", status=RunStatus.DONE, submitted_at=1.0))
    for _ in range(3):
        assert StateStore().get_run("a") is not None
    assert len(checks) == 1
    (dstack_home / "state.db").rename(dstack_home / "copy.db")
    shutil.copy(dstack_home / "copy.db", dstack_home / "state.db")  # another file at the path
    assert StateStore().get_run("a") is not None and len(checks) == 2


WRITER = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {root!r})
    from configuration.errors import DstackError
    from provisioner.store.records import RunRecord
    from provisioner.store.statuses import RunStatus
    from provisioner.store.store import StateStore

    me, start = sys.argv[1], float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.001)
    store = StateStore()  # every process opens the new home at once: one makes the store
    won = {{}}
    try:
        store.create_run(RunRecord(name="contested", status=RunStatus.SUBMITTED, submitted_at=time.time()))
        won["create"] = True
    except DstackError as e:
        assert "already exists" in str(e), e
    store.create_run(RunRecord(name=me, status=RunStatus.PROVISIONING, submitted_at=time.time()))
    won["claim"] = store.claim_run("contested", (RunStatus.SUBMITTED,), RunStatus.PROVISIONING)
    claimed, held = store.claim_hosts(me, [{{"kind": "ssh", "hostname": "10.251.0.9", "port": 22}}], 1)
    won["host"] = claimed is not None
    for step in range(20):
        store.add_event(me, "step", str(step))
        store.update_run(me, reason=f"step {{step}}")
    print(json.dumps(won))
""")


def test_twenty_writer_processes_share_the_store_and_each_claim_has_one_winner(tmp_path, dstack_home):
    script = write(tmp_path, "writer.py", WRITER.format(root=str(ROOT)))
    start = time.time() + 3  # every writer has started (and imported) by then
    writers = [subprocess.Popen([sys.executable, script, f"writer-{i}", str(start)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=dict(os.environ, DSTACK_HOME=str(dstack_home)))
               for i in range(20)]
    results = [writer.communicate(timeout=120) for writer in writers]
    for (out, err), writer in zip(results, writers):
        assert writer.returncode == 0 and "locked" not in err, err
    won = [json.loads(out) for out, _ in results]
    assert sum(1 for w in won if w.get("create")) == 1
    assert sum(1 for w in won if w["claim"]) == 1
    assert sum(1 for w in won if w["host"]) == 1
    store = StateStore()
    assert len(store.list_runs()) == 21 and len(store.list_events()) == 20 * 20


LOG_MB = 200
MEMORY_LIMIT_MB = 120  # private memory (RLIMIT_DATA) a `dstack logs` process may take: well under the log's size


def within_memory(env, out_path, *args) -> subprocess.CompletedProcess:
    def limit():
        size = MEMORY_LIMIT_MB * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (size, size))

    with open(out_path, "wb") as out:
        return subprocess.run([sys.executable, "-m", "cli.main", *args], stdout=out, stderr=subprocess.PIPE,
                              env=dict(os.environ, **env), cwd=ROOT, preexec_fn=limit, timeout=300)


def test_logs_of_a_long_output_stream_in_constant_memory(tmp_path, dstack_home):
    """From the host (a local run's job folder) and from the local copy (a cloud run's, its VM gone): the whole
    output, byte for byte, by a process whose memory is capped well below the output's size."""
    env = {"DSTACK_HOME": str(dstack_home)}
    task = write(tmp_path, "t.dstack.yml", "type: task\nname: long\nbackends: [local]\ncommands:\n"
                 f"  - yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {LOG_MB * 1024 * 1024}\n")
    applied = run_cli("apply", "-f", task, "-y", "-d", env=env)
    assert applied.returncode == 0, applied.stderr
    job_log = dstack_home / "jobs" / "long" / "output.log"
    deadline = time.monotonic() + 120
    while not (dstack_home / "jobs" / "long" / "exit_code").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    expected_size = LOG_MB * 1024 * 1024
    assert job_log.stat().st_size == expected_size
    line = b"0123456789abcdefghijklmnopqrstuvwxyz\n"

    shown = within_memory(env, tmp_path / "from-host.txt", "logs", "long")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert (tmp_path / "from-host.txt").stat().st_size == expected_size
    with open(tmp_path / "from-host.txt", "rb") as f:
        assert f.read(len(line) * 3) == line * 3
    (tmp_path / "from-host.txt").unlink()

    listed = within_memory(env, tmp_path / "ps.txt", "ps", "-a")  # the run ended unattended: its log is copied here
    assert listed.returncode == 0, listed.stderr[-2000:]
    local_copy = dstack_home / "runs" / "long" / "output.log"
    assert local_copy.stat().st_size == expected_size
    store = StateStore()
    store.update_run("long", backend="aws")  # a cloud run's VM is gone: the local copy is what there is
    shown = within_memory(env, tmp_path / "from-copy.txt", "logs", "long")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert (tmp_path / "from-copy.txt").stat().st_size == expected_size


def test_logs_of_a_long_multi_node_output_stream_in_constant_memory(tmp_path, dstack_home):
    """Two nodes' copies kept locally (a cloud cluster whose VMs are gone), 70 MB each: interleaved line by line,
    every line once with its rank in front, by a process whose memory is capped below their size."""
    store = StateStore()
    store.create_run(RunRecord(name="pair", status=RunStatus.DONE, submitted_at=1.0, backend="aws",
                               host={"kind": "ssh", "hostname": "10.251.250.3", "user": "ubuntu"}))
    store.set_jobs("pair", [{"kind": "ssh", "hostname": f"10.251.250.{3 + rank}", "user": "ubuntu"} for rank in (0, 1)])
    folder = dstack_home / "runs" / "pair"
    folder.mkdir(parents=True)
    line = len(b"node 0 line %030d\n" % 0)
    line_count = (70 << 20) // line
    for rank, name in enumerate(("output.log", "output.node-1.log")):
        with open(folder / name, "wb") as log:
            block = b"".join(b"node %d line %030d\n" % (rank, n) for n in range(1000))
            for _ in range(line_count // 1000):
                log.write(block)
    shown = within_memory({"DSTACK_HOME": str(dstack_home)}, tmp_path / "pair.txt", "logs", "pair")
    assert shown.returncode == 0, shown.stderr[-2000:]
    with open(tmp_path / "pair.txt", "rb") as out:
        assert out.readline() == b"[0] node 0 line " + b"0" * 30 + b"\n"
        assert out.readline() == b"[1] node 1 line " + b"0" * 30 + b"\n"
    assert (tmp_path / "pair.txt").stat().st_size == 2 * (line_count // 1000) * 1000 * (line + len(b"[0] "))
