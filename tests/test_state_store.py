"""The state store under damage and a full disk: no traceback, the damaged file kept aside and named, the jobs it
leaves running named, reading commands working on a full disk; and `dstack logs` when the output is gone."""

import json
import os
import random
import sqlite3
import time
from pathlib import Path

import pytest

from provisioner.host.access import HostAccess
from provisioner.host.transport import LocalTransport
from provisioner.jobs.control import start_job
from provisioner.jobs.script import JobSpec
from provisioner.store.damage import COPY_SIDE_FILES
from provisioner.store.errors import StoreDamaged
from provisioner.store.records import RunRecord
from provisioner.store.schema import SCHEMA_VERSION
from provisioner.store.store import StateStore
from tests.full_disk import small_disk
from tests.helpers import run_cli, write


def running_local_run(home: Path, name: str) -> int:
    """A detached local run whose job (sleep) is running, as `apply -d` leaves it; returns the job's group."""
    store = StateStore()
    store.create_run(RunRecord(name=name, status="running", submitted_at=time.time(), backend="local",
                               region="local", host=HostAccess(kind="local").to_json(), detached=True,
                               started_at=time.time()))
    return start_job(LocalTransport(str(home / "jobs")), JobSpec(run_name=name, commands=["sleep 300"]))


@pytest.fixture
def live_job(dstack_home):
    pgid = running_local_run(dstack_home, "survivor")
    yield pgid
    try:
        os.killpg(pgid, 9)
    except ProcessLookupError:
        pass


def garbage_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[4096:] = random.Random(13).randbytes(len(data) - 4096)  # every page but the header's
    path.write_bytes(bytes(data))


def bad_json(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("UPDATE runs SET host = '{\"kind\": ' WHERE name = 'survivor'")
    db.commit()
    db.close()


def text_for_a_number(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("UPDATE runs SET submitted_at = 'yesterday' WHERE name = 'survivor'")
    db.commit()
    db.close()


def drop_runs(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("DROP TABLE runs")
    db.commit()
    db.close()


def directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


DAMAGE = {
    "truncated": (lambda p: os.truncate(p, p.stat().st_size // 2), "SQLite"),
    "garbage pages": (garbage_pages, "SQLite"),
    "bad JSON column": (bad_json, "run survivor's host is not valid JSON"),
    "text for a number": (text_for_a_number, "run survivor's submitted_at is not a number"),
    "a directory": (directory, "it is a directory, not a file"),
    "not a database": (lambda p: p.write_text("type: task\ncommands: [echo]\n" * 200), "file is not a database"),
    "zero bytes": (lambda p: os.truncate(p, 0), "it holds no tables: it was truncated or emptied"),
    "table dropped": (drop_runs, "its runs table is missing"),
    "deleted": (lambda p: p.unlink(), "it is gone, though dstack recorded runs in it before"),
}


@pytest.mark.parametrize("command", [["ps"], ["logs", "survivor"], ["stop", "survivor"]])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_store_is_named_set_aside_and_its_running_job_named(damage, command, dstack_home, live_job):
    path = dstack_home / "state.db"
    spoil, reason = DAMAGE[damage]
    spoil(path)
    result = run_cli(*command, env={"DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "" and len(result.stderr.splitlines()) <= 4, result.stderr
    assert f"the state store {path} is damaged: " in result.stderr and reason in result.stderr
    assert f"job survivor is still running on this machine (`kill -TERM -{live_job}` stops it)" in result.stderr
    kept = sorted(p.name for p in dstack_home.glob("state.db.damaged-*") if not p.name.endswith(COPY_SIDE_FILES))
    if damage == "deleted":
        assert kept == [] and "The next dstack command starts a new, empty store" in result.stderr
    else:
        assert len(kept) == 1 and f"It was moved to {kept[0]}, for inspection" in result.stderr
    os.killpg(live_job, 0)  # the job was left alone: it is the user's to stop


def test_the_store_salvages_a_damaged_copy_without_reaching_any_host(dstack_home, monkeypatch):
    """The state store never calls up: a damaged store is set aside and its error carries the hosts the copy still
    names (a fleet's and an active run's), for the caller to search; the store itself connects to none of them."""
    from provisioner.host import access
    from provisioner.jobs.orphans import salvaged_accesses

    store = StateStore()
    fleet_host = HostAccess(kind="ssh", hostname="10.251.240.7", port=2222, user="me")
    run_host = HostAccess(kind="ssh", hostname="10.251.240.8", user="root")
    store.save_fleet("mine", "fleet.dstack.yml", [{"access": fleet_host.to_json(), "facts": {}}])
    store.create_run(RunRecord(name="cloudy", status="running", submitted_at=1.0, backend="aws", region="us-east-1",
                               host=run_host.to_json()))
    store.create_run(RunRecord(name="old", status="done", submitted_at=1.0, host={"kind": "local"}))
    store.create_run(RunRecord(name="survivor", status="running", submitted_at=1.0, host={"kind": "local"}))
    bad_json(store.path)  # the `survivor` row's host is damaged; the others can still be read
    connected = []
    monkeypatch.setattr(access.HostAccess, "connect", lambda self, *a, **k: connected.append(self) or 1 / 0)
    with pytest.raises(StoreDamaged) as damaged:
        StateStore().list_runs()
    error = damaged.value
    assert connected == []
    assert fleet_host.to_json() in error.hosts and run_host.to_json() in error.hosts
    assert {"kind": "local"} not in error.hosts  # a finished run's host is no place to look
    assert [a.description for a in salvaged_accesses(error.hosts)] == ["this machine", "me@10.251.240.7:2222",
                                                                      "root@10.251.240.8:22"]
    assert error.head[0].startswith(f"the state store {store.path} is damaged: run survivor's host is not valid JSON")
    assert error.tail == ["run cloudy was active on aws us-east-1: `dstack gc` lists the cloud resources that runs "
                          "left behind", "fleet mine must be registered again: `dstack apply -f fleet.dstack.yml`"]
    assert str(error) == "\n".join(error.head + error.tail)


def test_after_the_damage_ps_starts_afresh_and_still_names_the_running_job(dstack_home, live_job):
    os.truncate(dstack_home / "state.db", 0)
    env = {"DSTACK_HOME": str(dstack_home)}
    assert run_cli("ps", env=env).returncode == 1
    again = run_cli("ps", "-a", env=env)
    assert again.returncode == 0 and again.stdout.strip() == "No runs."
    assert (f"warning: job survivor is still running on this machine (`kill -TERM -{live_job}` stops it), but no "
            f"active run in {dstack_home / 'state.db'} knows it") in again.stderr


def test_a_damaged_store_names_the_jobs_on_its_fleet_hosts(dstack_home, make_host, client_key):
    from provisioner.host.ssh import connect

    host = make_host()
    access = HostAccess(kind="ssh", hostname=host.address, user="root", identity_file=client_key[0],
                        host_key=host.host_public_key)
    transport = connect(access.ssh_target(), total_wait=10)
    pgid = start_job(transport, JobSpec(run_name="far-away", commands=["sleep 300"]))
    try:
        store = StateStore()
        store.save_fleet("lab", "/src/lab.dstack.yml", [{"access": access.to_json(), "facts": {}}])
        store.create_run(RunRecord(name="far-away", status="running", submitted_at=time.time(), backend="ssh",
                                   region="lab", host=access.to_json(), detached=True))
        bad = sqlite3.connect(store.path)
        bad.execute("UPDATE runs SET configuration = '[1, 2' WHERE name = 'far-away'")
        bad.commit()
        bad.close()
        result = run_cli("ps", env={"DSTACK_HOME": str(dstack_home)})
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "run far-away's configuration is not valid JSON" in result.stderr
        assert (f"job far-away is still running on root@{host.address}:22 (`kill -TERM -{pgid}` on that host "
                "stops it)") in result.stderr
        assert "fleet lab must be registered again: `dstack apply -f /src/lab.dstack.yml`" in result.stderr
    finally:
        transport.run(f"kill -9 -{pgid}")
        transport.close()


def test_a_version_3_store_gets_the_volumes_jobs_and_fleet_tables(dstack_home):
    from configuration.errors import ConfigurationError
    from provisioner.store.records import VolumeRecord
    from provisioner.store.schema import SCHEMA

    dstack_home.mkdir(parents=True)
    old = sqlite3.connect(dstack_home / "state.db")
    before_owners = SCHEMA.replace(",\n    owner_id TEXT,\n    user_name TEXT", "")  # version 6 added them
    old.executescript(before_owners[:before_owners.index("CREATE TABLE IF NOT EXISTS volumes")] +
                      "PRAGMA user_version = 3;")
    old.execute("INSERT INTO runs (name, status, submitted_at) VALUES ('old', 'done', 1.0)")
    old.commit()
    old.close()
    store = StateStore()  # brought up to date, not judged damaged
    assert store.get_run("old").status == "done" and store.list_volumes() == []
    store.create_volume(VolumeRecord(name="v", status="active", backend="aws", region="r", created_at=1.0))
    assert [v.name for v in store.list_volumes()] == ["v"]
    with pytest.raises(ConfigurationError, match="a volume named v already exists"):
        store.create_volume(VolumeRecord(name="v", status="active", backend="aws", region="r", created_at=1.0))
    store.create_run(RunRecord(name="r", status="provisioning", submitted_at=1.0))
    store.set_jobs("r", [HostAccess(kind="ssh", hostname="10.251.240.2", user="root").to_json()])
    assert [job.host["hostname"] for job in store.list_jobs("r")] == ["10.251.240.2"]
    assert store.create_cloud_fleet("f1", "x", "aws", {}, None)
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 9
    db.close()


def test_statuses_written_as_strings_read_as_enums_and_print_unchanged(dstack_home):
    """A store written before statuses were enums (plain strings, every status of each kind) reads the same: each
    status is its enum, compares equal to its string and prints as it; `ps --json`'s shapes are unchanged."""
    from provisioner.store.statuses import InstanceStatus, JobStatus, RunStatus, VolumeStatus

    store = StateStore()
    db = sqlite3.connect(store.path)
    for status in ("submitted", "provisioning", "pulling", "running", "terminating", "done", "failed", "terminated"):
        db.execute("INSERT INTO runs (name, status, submitted_at) VALUES (?, ?, 1.0)", (f"r-{status}", status))
    for rank, status in enumerate(("provisioning", "running", "done", "failed", "terminated")):
        db.execute("INSERT INTO jobs (run, rank, status) VALUES ('r-running', ?, ?)", (rank, status))
    for status in ("submitted", "active", "failed", "deleting"):
        db.execute("INSERT INTO volumes (name, status, backend, region, created_at) VALUES (?, ?, 'aws', 'r', 1.0)",
                   (f"v-{status}", status))
    for num, status in enumerate(("idle", "busy", "terminating")):
        db.execute("INSERT INTO instances (fleet, num, backend, offer, host, status) VALUES ('f', ?, 'aws', '{}', "
                   "'{}', ?)", (num, status))
    db.commit()
    db.close()
    runs = {r.name: r for r in store.list_runs()}
    assert all(type(r.status) is RunStatus and r.name == f"r-{r.status}" for r in runs.values())
    assert sorted(r.name for r in runs.values() if r.status.is_finished()) == ["r-done", "r-failed", "r-terminated"]
    assert runs["r-pulling"].active and not runs["r-done"].active
    summary = runs["r-failed"].summary(2.0)
    assert summary["status"] == "failed" and json.loads(json.dumps(summary))["status"] == "failed"
    assert f"{runs['r-running'].status:>9}|{runs['r-running'].status}" == "  running|running"
    jobs = store.list_jobs("r-running")
    assert [type(j.status) for j in jobs] == [JobStatus] * 5
    assert [j.status.is_finished() for j in jobs] == [False, False, True, True, True]
    assert [j.summary(None)["status"] for j in jobs] == ["provisioning", "running", "done", "failed", "terminated"]
    assert {v.name: v.status for v in store.list_volumes()} == {f"v-{s}": VolumeStatus(s) for s in
                                                               ("submitted", "active", "failed", "deleting")}
    assert [i.status for i in store.list_instances()] == [InstanceStatus.IDLE, InstanceStatus.BUSY,
                                                          InstanceStatus.TERMINATING]
    assert store.claim_instance("f", 0, "r-running") and store.list_instances()[0].status == "busy"


def test_a_status_no_dstack_writes_is_damage(dstack_home):
    store = StateStore()
    db = sqlite3.connect(store.path)
    db.execute("INSERT INTO runs (name, status, submitted_at) VALUES ('odd', 'exploded', 1.0)")
    db.commit()
    db.close()
    with pytest.raises(StoreDamaged, match="run odd's status 'exploded' is not one dstack writes"):
        store.list_runs()


def test_an_old_store_is_brought_up_to_date(dstack_home):
    dstack_home.mkdir(parents=True)
    old = sqlite3.connect(dstack_home / "state.db")
    old.executescript("""
        CREATE TABLE runs (name TEXT PRIMARY KEY, status TEXT NOT NULL, reason TEXT, backend TEXT, region TEXT,
            instance TEXT, price REAL, submitted_at REAL NOT NULL, started_at REAL, finished_at REAL,
            exit_code INTEGER, owner_pid INTEGER, detached INTEGER NOT NULL DEFAULT 0, max_duration INTEGER,
            host TEXT, stack TEXT, offer TEXT, ports TEXT, attempts TEXT, configuration TEXT);
        CREATE TABLE fleets (name TEXT PRIMARY KEY, source TEXT, hosts TEXT NOT NULL, created_at REAL NOT NULL);
        INSERT INTO runs (name, status, submitted_at, owner_pid, host) VALUES ('old', 'done', 1.0, 12, '{"kind": "local"}');
    """)
    old.close()
    store = StateStore()
    record = store.get_run("old")
    assert (record.status, record.owner_pid, record.owner_started, record.host) == ("done", 12, None, {"kind": "local"})
    store.create_run(RunRecord(name="new", status="running", submitted_at=2.0, owner_pid=13, owner_started=99))
    assert (store.get_run("new").owner_pid, store.get_run("new").owner_started) == (13, 99)
    check = sqlite3.connect(store.path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    check.close()
    assert store.marker.exists()


def test_a_store_another_process_makes_meanwhile_is_no_damage(monkeypatch, dstack_home):
    """Two commands in a new home: one finds the file without tables while the other is making them, and must
    not take the other's marker, written just after, for a store that was emptied."""
    dstack_home.mkdir()
    (dstack_home / "state.db").touch()  # what the other's first connection leaves, for a moment
    read_schema = StateStore._schema
    first = []

    def schema_then_the_other_finishes(db):
        found = read_schema(db)
        if not first:
            first.append(found)
            StateStore()  # the other command makes the tables, then the marker
        return found

    monkeypatch.setattr(StateStore, "_schema", staticmethod(schema_then_the_other_finishes))
    store = StateStore()
    assert first == [(set(), 0)] and store.list_runs() == []
    assert not list(dstack_home.glob("state.db.damaged-*"))


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """$DSTACK_HOME on a small tmpfs (tests/full_disk.py): the home, and a function that fills the disk."""
    with small_disk(tmp_path) as (mount, fill):
        home = mount / "home"
        monkeypatch.setenv("DSTACK_HOME", str(home))
        yield home, fill


def test_on_a_full_disk_reading_commands_work_and_writing_ones_say_so(tmp_path, full_disk):
    home, fill = full_disk
    env = {"DSTACK_HOME": str(home)}
    conf = write(tmp_path, "t.dstack.yml", "type: task\nname: before-full\ncommands: [echo written earlier]\n")
    assert run_cli("apply", "-f", conf, "-y", env=env).returncode == 0
    fill()
    listed = run_cli("ps", "-a", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [r["name"] for r in json.loads(listed.stdout)["runs"]] == ["before-full"]
    shown = run_cli("logs", "before-full", env=env)
    assert (shown.returncode, shown.stdout) == (0, "written earlier\n"), shown.stderr
    again = write(tmp_path, "u.dstack.yml", "type: task\nname: after-full\ncommands: [echo never]\n")
    for argv in (["apply", "-f", again, "-y"], ["delete", "before-full"]):
        refused = run_cli(*argv, env=env)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert f"error: cannot write {home / 'state.db'}: the disk is full" in refused.stderr


def test_logs_of_a_run_whose_output_is_gone_say_so(tmp_path, dstack_home):
    import shutil

    env = {"DSTACK_HOME": str(dstack_home)}
    conf = write(tmp_path, "t.dstack.yml", "type: task\nname: gone-logs\ncommands: [echo kept]\n")
    assert run_cli("apply", "-f", conf, "-y", env=env).returncode == 0
    shutil.rmtree(dstack_home / "jobs" / "gone-logs")
    copy = run_cli("logs", "gone-logs", env=env)  # the copy kept under runs/ still has it
    assert (copy.returncode, copy.stdout) == (0, "kept\n")
    shutil.rmtree(dstack_home / "runs" / "gone-logs")
    gone = run_cli("logs", "gone-logs", env=env)
    assert gone.returncode == 1 and gone.stdout == ""
    assert (f"error: the output of gone-logs is gone: its job folder on this machine holds no log any more, and the "
            f"copy dstack keeps ({dstack_home / 'runs' / 'gone-logs' / 'output.log'}) does not exist") in gone.stderr


def test_deleting_a_run_never_takes_an_active_run_of_the_name(dstack_home):
    """`dstack delete NAME` read the run finished; a new run of the name submitted before the delete is kept (the
    check and the delete are one statement), and the command says what it is instead of 'deleted'."""
    store = StateStore()
    store.create_run(RunRecord(name="again", status="submitted", submitted_at=time.time()))
    store.add_event("again", "submitted", "the new run's")
    assert store.delete_run("again") is False
    assert store.get_run("again").status == "submitted" and len(store.list_events("again")) == 1
    result = run_cli("delete", "again", env={"DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 1 and "again is submitted" in result.stderr and "deleted" not in result.stderr
    store.update_run("again", status="done")
    assert store.delete_run("again") is True
    assert store.get_run("again") is None and store.list_events("again") == []


def test_a_runs_start_is_recorded_in_one_commit_and_its_event_only_with_the_claim(dstack_home, monkeypatch):
    """run_started: the last wave's jobs running, the run's status and its `started` event in one transaction (one
    fsync); a run a `dstack stop` claimed meanwhile keeps its status and gets no `started` event, its jobs are still
    recorded started (the stop that follows ends them)."""
    from provisioner.store.connection import SqliteDb
    from provisioner.store.statuses import JobStatus, RunStatus

    store = StateStore()
    hosts = [HostAccess(kind="ssh", hostname=f"10.251.240.{n}", user="root").to_json() for n in (2, 3)]
    for name in ("won", "lost"):
        store.create_run(RunRecord(name=name, status=RunStatus.PROVISIONING, submitted_at=time.time()))
        store.set_jobs(name, hosts)
    store.claim_run("lost", (RunStatus.PROVISIONING,), RunStatus.TERMINATING)
    commits = []
    real_commit = SqliteDb.commit
    monkeypatch.setattr(SqliteDb, "commit", lambda db: (commits.append(1), real_commit(db))[1])
    assert store.run_started("won", {0: 10.0, 1: 11.0}, (RunStatus.PROVISIONING,), RunStatus.RUNNING, "on a, b",
                             started_at=12.0) is True
    assert len(commits) == 1
    assert store.run_started("lost", {0: 10.0, 1: 11.0}, (RunStatus.PROVISIONING,), RunStatus.RUNNING, "on a, b",
                             started_at=12.0) is False
    assert len(commits) == 2
    won, lost = store.get_run("won"), store.get_run("lost")
    assert won.status is RunStatus.RUNNING and won.started_at == 12.0 and lost.status is RunStatus.TERMINATING
    assert [(e["kind"], e["message"]) for e in store.list_events("won")] == [("started", "on a, b")]
    assert store.list_events("lost") == []
    for name in ("won", "lost"):
        assert [(job.status, job.started_at) for job in store.list_jobs(name)] == [(JobStatus.RUNNING, 10.0),
                                                                                   (JobStatus.RUNNING, 11.0)]
