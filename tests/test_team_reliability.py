"""The team database's connection over a command: one session kept for the command (counted in the server's log),
and a session the server ends in the middle of `apply` (pg_terminate_backend from another session, as a restart or
an idle timeout does) replaced before its next use: the command goes on and nothing is recorded twice."""

import os
import subprocess
import sys
import time

import psycopg

from tests.helpers import ROOT, run_cli, write
from tests.test_team_store import one_host_fleet, ps_json, schema_table, two_homes  # noqa: F401 (fixture)


def test_a_command_keeps_one_connection(tmp_path, two_homes, make_host, client_key, postgres_cluster):
    alice, _ = two_homes
    run_cli("ps", env=alice)  # the schema made
    before = postgres_cluster.connections()
    assert run_cli("ps", "-a", env=alice).returncode == 0
    assert postgres_cluster.connections() - before == 1
    one_host_fleet(tmp_path, alice, make_host(), client_key)
    conf = write(tmp_path, "t.dstack.yml", "type: task\nname: counted\nbackends: [ssh]\ncommands: [echo hi]\n")
    before = postgres_cluster.connections()
    applied = run_cli("apply", "-f", conf, "-y", env=alice)
    assert applied.returncode == 0, applied.stderr
    # dozens of store calls (the run, its jobs, events, claims; 38 sessions when each opened its own): one session
    # for the command (and one for a thread of its own that records a node's progress, should one)
    assert postgres_cluster.connections() - before <= 2, postgres_cluster.connections() - before


def test_a_connection_ended_by_the_server_mid_apply_is_replaced_and_nothing_is_recorded_twice(
        tmp_path, two_homes, make_host, client_key, team_database):
    alice, _ = two_homes
    one_host_fleet(tmp_path, alice, make_host(), client_key)
    started, release = tmp_path / "started", tmp_path / "release"
    conf = write(tmp_path, "t.dstack.yml", "type: task\nname: cut\nbackends: [ssh]\ncommands: ['echo before', "
                 f"'touch {started}', 'while [ ! -e {release} ]; do sleep 0.2; done', 'echo after']\n")
    apply = subprocess.Popen([sys.executable, "-m", "cli.main", "apply", "-f", conf, "-y"], cwd=ROOT,
                             env={**os.environ, **alice}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline and apply.poll() is None:
        time.sleep(0.1)
    assert started.exists(), apply.communicate()
    admin_url = team_database.split("&options")[0]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        ended = admin.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                              "WHERE application_name = 'dstack' AND datname = 'team'").fetchone()[0]
    assert ended >= 1  # the apply's kept session, held while it follows the job
    release.touch()
    out, err = apply.communicate(timeout=120)
    assert apply.returncode == 0, err
    assert out == "before\nafter\n"
    assert ps_json(alice)["cut"]["status"] == "done"
    kinds = schema_table(team_database, "SELECT kind, count(*) FROM events WHERE run = 'cut' GROUP BY kind")
    assert kinds and all(count == 1 for _, count in kinds), kinds
    assert schema_table(team_database, "SELECT count(*) FROM runs") == [(1,)]
    assert schema_table(team_database, "SELECT rank, status FROM jobs WHERE run = 'cut'") == [(0, "done")]


def test_a_store_call_inside_anothers_block_has_a_session_of_its_own(team_database):
    """The kept session is the outer block's: a call made inside it (nested) must neither commit nor roll back the
    outer transaction, nor see what it has not committed."""
    from provisioner.store.records import RunRecord
    from provisioner.store.store import StateStore

    store = StateStore()
    store.create_run(RunRecord(name="outer", status="running", submitted_at=1.0))
    with store._connect() as db:
        db.begin()
        db.execute("UPDATE runs SET reason = 'outer' WHERE name = 'outer'")
        store.add_event("outer", "note", "inner")  # its own session, committed on its own
        assert store.get_run("outer").reason is None  # the outer change is not committed yet
    assert store.get_run("outer").reason is None  # left uncommitted: rolled back, not committed by the inner call
    assert [e["message"] for e in store.list_events("outer")] == ["inner"]
    with store._connect() as db:
        db.begin()
        db.execute("UPDATE runs SET reason = 'kept' WHERE name = 'outer'")
        db.commit()
    assert store.get_run("outer").reason == "kept"
