"""The run's lifecycle events: recorded by the runner at each step in the state store's `events` table (added by
migration to older stores), and shown by `dstack event`."""

import json
import sqlite3
import time

import pytest

from configuration.backends import DstackConfig
from configuration.loader import parse_configuration
from provisioner.runs.failover import NoCapacity, provision_with_failover
from provisioner.runs.session import RunSession
from provisioner.runs.teardown import finish_run
from provisioner.store.records import RunRecord
from provisioner.store.schema import SCHEMA_VERSION
from provisioner.store.store import StateStore
from tests.helpers import run_cli
from tests.test_failover import CAPACITY, FakeCloud, offer


def kinds(store, run):
    return [(e["kind"], e["message"]) for e in store.list_events(run)]


def test_a_version_2_store_gets_the_events_table(dstack_home):
    dstack_home.mkdir(parents=True)
    old = sqlite3.connect(dstack_home / "state.db")
    old.executescript("""
        CREATE TABLE runs (name TEXT PRIMARY KEY, status TEXT NOT NULL, reason TEXT, backend TEXT, region TEXT,
            instance TEXT, price REAL, submitted_at REAL NOT NULL, started_at REAL, finished_at REAL,
            exit_code INTEGER, owner_pid INTEGER, owner_started INTEGER, detached INTEGER NOT NULL DEFAULT 0,
            max_duration INTEGER, host TEXT, stack TEXT, offer TEXT, ports TEXT, attempts TEXT, configuration TEXT);
        CREATE TABLE fleets (name TEXT PRIMARY KEY, source TEXT, hosts TEXT NOT NULL, created_at REAL NOT NULL);
        INSERT INTO runs (name, status, submitted_at) VALUES ('old', 'done', 1.0);
        PRAGMA user_version = 2;
    """)
    old.close()
    store = StateStore()  # a version-2 store has no events table: brought up to date, not judged damaged
    assert store.get_run("old").status == "done"
    store.add_event("old", "note", "after the migration", at=5.0)
    assert store.list_events("old") == [{"id": 1, "run": "old", "at": 5.0, "kind": "note",
                                         "message": "after the migration"}]
    check = sqlite3.connect(store.path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 9
    check.close()


def test_a_current_store_without_its_events_table_is_damage(dstack_home):
    StateStore()
    db = sqlite3.connect(dstack_home / "state.db")
    db.execute("DROP TABLE events")
    db.commit()
    db.close()
    with pytest.raises(Exception, match="its events table is missing"):
        StateStore()


def test_events_filter_by_run_time_and_id_and_go_with_the_run():
    store = StateStore()
    store.create_run(RunRecord(name="a", status="done", submitted_at=1.0))
    store.add_event("a", "submitted", at=10.0)
    store.add_event("b", "submitted", at=11.0)
    store.add_event("a", "done", at=20.0)
    assert [e["kind"] for e in store.list_events("a")] == ["submitted", "done"]
    assert [e["run"] for e in store.list_events()] == ["a", "b", "a"]
    assert [e["kind"] for e in store.list_events("a", since=15.0)] == ["done"]
    assert [e["run"] for e in store.list_events(after_id=2)] == ["a"]
    store.delete_run("a")
    assert store.list_events("a") == [] and len(store.list_events("b")) == 1


def test_each_offer_tried_and_why_it_failed_is_an_event(monkeypatch):
    store = StateStore()
    cloud = FakeCloud("aws", {"us-east-1": CAPACITY, "us-west-2": CAPACITY})
    monkeypatch.setattr(RunSession, "backend", lambda self, name: cloud)
    session = RunSession(store=store, config=DstackConfig())
    store.create_run(RunRecord(name="ev", status="submitted", submitted_at=time.time()))
    conf = parse_configuration("type: task\ncommands: [x]\n", "x.dstack.yml")
    with pytest.raises(NoCapacity):
        provision_with_failover(session, "ev", [offer("aws", "us-east-1", "us-east-1a", 1.0),
                                                offer("aws", "us-west-2", "us-west-2a", 2.0)], conf)
    events = kinds(store, "ev")
    assert [k for k, _ in events] == ["offer", "offer-failed", "offer", "offer-failed"]
    assert events[0][1] == "trying aws us-east-1 g5.xlarge in us-east-1a at $1.0100/hour"
    assert events[1][1].startswith("aws us-east-1 g5.xlarge in us-east-1a: capacity: ")
    assert "InsufficientInstanceCapacity" in events[1][1]


def test_teardown_steps_are_events(monkeypatch):
    from stacks.progress import StepProgress

    class Stack:
        def teardown(self, record, report):
            report(StepProgress("delete", "aws:ec2/instance:Instance", "vm", "started", None))
            report(StepProgress("delete", "aws:ec2/instance:Instance", "vm", "done", 3.0))

    store = StateStore()
    monkeypatch.setattr(RunSession, "backend", lambda self, name: Stack())
    store.create_run(RunRecord(name="td", status="running", submitted_at=1.0, backend="aws"))
    finish_run(RunSession(store=store, config=DstackConfig()), "td", "failed", "exit code 3", 3)
    assert kinds(store, "td") == [("terminating", "exit code 3"), ("teardown", "delete Instance vm: done"),
                                  ("failed", "exit code 3")]


def test_dstack_event_shows_a_local_run_lifecycle(tmp_path, dstack_home):
    conf = tmp_path / "t.dstack.yml"
    conf.write_text("type: task\ncommands: ['exit 3']\n")
    env = {"DSTACK_HOME": str(dstack_home)}
    run = run_cli("apply", "-f", str(conf), "-y", "-n", "three", env=env)
    assert run.returncode == 3, run.stderr
    document = json.loads(run_cli("event", "three", "--json", env=env).stdout)
    assert [e["kind"] for e in document["events"]] == ["submitted", "offer", "provisioned", "started", "exited",
                                                       "terminating", "failed"]
    assert document["events"][4]["message"] == "exit code 3"
    times = [e["at"] for e in document["events"]]
    assert times == sorted(times) and time.time() - 120 < times[0] <= times[-1] <= time.time()
    table = run_cli("event", "three", env=env).stdout
    assert "TIME" in table and "three  exited       exit code 3" in table
    assert run_cli("event", "--since", "1h", "--json", env=env).stdout == run_cli("event", "--json", env=env).stdout
    assert json.loads(run_cli("event", "--since", "2099-01-01T00:00:00Z", "--json", env=env).stdout) == {"events": []}
    missing = run_cli("event", "nope", env=env)
    assert missing.returncode == 1 and missing.stderr == "error: no run named nope (see `dstack ps -a`)\n"
