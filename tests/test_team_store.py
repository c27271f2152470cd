"""The team database (DSTACK_DATABASE_URL, PostgreSQL): the store's tables on both engines, its schema versions, its
errors, and two `$DSTACK_HOME`s sharing runs, fleets and claims through it (tests/postgres_cluster.py's server)."""

import json
import os
import subprocess
import sys
import time

import pytest

from configuration.errors import ConfigurationError, DstackError
from configuration.owner import owner_id
from provisioner.store.records import InstanceRecord, RunRecord, VolumeRecord
from provisioner.store.schema import SCHEMA, SCHEMA_VERSION, postgres_statement
from provisioner.store.statuses import InstanceStatus
from provisioner.store.store import StateStore
from tests.helpers import ROOT, run_cli, write

HOST = {"kind": "ssh", "hostname": "10.251.250.9", "port": 22, "user": "root"}  # never connected to


def test_every_table_reads_back_what_was_written(store_engine, monkeypatch):
    monkeypatch.setenv("DSTACK_USER", "alice")
    store = StateStore()
    assert (store.team is None) == (store_engine == "sqlite")
    store.create_run(RunRecord(name="r1", status="running", submitted_at=1.5, backend="ssh", price=0.25,
                               owner_started=2 ** 40, host=HOST, ports=[[8000, 80]], configuration={"type": "task"}))
    store.create_run(RunRecord(name="r2", status="submitted", submitted_at=2.5))
    with pytest.raises(ConfigurationError, match="a run named r1 already exists"):
        store.create_run(RunRecord(name="r1", status="running", submitted_at=3.0))
    record = store.get_run("r1")
    assert (record.host, record.ports, record.owner_started, record.price) == (HOST, [[8000, 80]], 2 ** 40, 0.25)
    assert (record.owner_id, record.user_name, record.detached) == (owner_id(), "alice", False)
    assert record.summary(2.0)["user"] == "alice"
    assert [r.name for r in store.list_runs()] == ["r2", "r1"]
    assert store.update_run("r2", detached=True, attempts=[{"offer": "x"}]).attempts == [{"offer": "x"}]
    assert store.claim_run("r1", ("running",), "terminating", reason="stopped")
    assert not store.claim_run("r1", ("running",), "terminating")
    assert store.get_run("r1").reason == "stopped" and store.get_run("nope") is None
    with pytest.raises(DstackError, match="no longer holds run gone"):
        store.update_run("gone", status="done")

    store.set_jobs("r2", [HOST, {**HOST, "hostname": "10.251.250.10"}])
    store.update_job("r2", 1, status="done", exit_code=3)
    assert [(j.rank, j.status, j.exit_code) for j in store.list_jobs("r2")] == [(0, "provisioning", None),
                                                                                (1, "done", 3)]
    assert store.busy_hosts() == {("10.251.250.9", 22): "r2", ("10.251.250.10", 22): "r2"}

    for kind in ("submitted", "provisioned", "exited"):
        store.add_event("r2", kind, f"{kind}!", at=10.0 + len(kind))
    events = store.list_events("r2")
    assert [e["kind"] for e in events] == ["submitted", "provisioned", "exited"]
    assert [e["kind"] for e in store.list_events("r2", after_id=events[0]["id"], since=17.0)] == ["provisioned"]

    store.add_key_left("r2", HOST)
    store.add_key_left("r2", HOST)  # once only
    assert store.keys_left({**HOST, "internal_ip": None}) == [("r2", HOST)]
    store.remove_key_left("r2", HOST)
    assert store.keys_left(HOST) == []
    assert store.delete_run("r2") is False  # active: kept
    store.update_run("r2", status="done")
    assert store.delete_run("r2") is True
    assert store.get_run("r2") is None and store.list_events("r2") == [] and store.list_jobs("r2") == []

    store.save_fleet("lab", "a.yml", [{"access": HOST}])
    store.save_fleet("lab", "b.yml", [])  # applied again: replaced
    assert [(f["name"], f["source"], f["hosts"], f["user"]) for f in store.list_fleets()] == [("lab", "b.yml", [],
                                                                                               "alice")]
    assert store.delete_fleet("lab") and not store.delete_fleet("lab")

    store.create_volume(VolumeRecord(name="v", status="submitted", backend="aws", region="r", created_at=1.0,
                                     stack={"name": "s"}))
    with pytest.raises(ConfigurationError, match="a volume named v already exists"):
        store.create_volume(VolumeRecord(name="v", status="active", backend="aws", region="r", created_at=1.0))
    store.update_volume("v", status="active", volume_id="vol-1")
    volume = store.get_volume("v")
    assert (volume.status, volume.volume_id, volume.stack, volume.external, volume.user_name) == (
        "active", "vol-1", {"name": "s"}, False, "alice")
    store.delete_volume("v")
    assert store.list_volumes() == []

    idle = InstanceRecord("f1", 0, "aws", {"price": 1.0}, HOST, idle_since=1.0, idle_duration=60)
    assert store.create_cloud_fleet("f1", "x", "aws", {"nodes": 1}, None, [idle])
    assert not store.create_cloud_fleet("f1", "x", "aws", {}, None)
    store.add_instances([InstanceRecord("f1", 1, "aws", {}, HOST, idle_since=1.0)])
    assert store.get_cloud_fleet("f1")["user"] == "alice"
    assert store.claim_instance("f1", 0, "a") and not store.claim_instance("f1", 0, "b")
    assert not store.claim_fleet_teardown("f1")  # a run holds one
    assert store.release_instance("a", idle_since=5.0) and store.retire_instance("f1", 1)
    assert not store.claim_fleet_teardown("f1", expired_at=30.0) and store.claim_fleet_teardown("f1", expired_at=70.0)
    assert {i.status for i in store.list_instances("f1")} == {InstanceStatus.TERMINATING}
    store.delete_cloud_fleet("f1")
    assert store.list_cloud_fleets() == [] and store.list_instances() == []


def schema_table(url: str, statement: str, parameters=()) -> list:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        cursor = db.execute(statement, parameters)
        return cursor.fetchall() if cursor.description else []


def test_a_version_5_team_database_is_brought_up_to_date(team_database):
    before_owners = SCHEMA.replace(",\n    owner_id TEXT,\n    user_name TEXT", "")
    for statement in before_owners.split(";"):
        if statement.strip():
            schema_table(team_database, postgres_statement(statement))
    schema_table(team_database, "CREATE TABLE dstack_schema (version INTEGER NOT NULL)")
    schema_table(team_database, "INSERT INTO dstack_schema VALUES (5)")
    schema_table(team_database, "INSERT INTO runs (name, status, submitted_at) VALUES ('old', 'done', 1.0)")
    store = StateStore()
    assert (store.get_run("old").status, store.get_run("old").owner_id) == ("done", None)
    store.create_run(RunRecord(name="new", status="done", submitted_at=2.0))
    assert store.get_run("new").owner_id == owner_id()
    assert schema_table(team_database, "SELECT version FROM dstack_schema") == [(SCHEMA_VERSION,)]


def test_a_newer_team_database_is_refused(team_database, home_env):
    StateStore()
    schema_table(team_database, "UPDATE dstack_schema SET version = 99")
    result = run_cli("ps", env=home_env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: the team database team on {team_database.split('host=')[1].split('&')[0]}"
                                     f" was written by a newer dstack (schema 99, this one knows {SCHEMA_VERSION}); "
                                     "upgrade dstack")


@pytest.mark.parametrize("spoil, reason", [
    ("UPDATE runs SET host = '{\"kind\": ' WHERE name = 'survivor'", "run survivor's host is not valid JSON"),
    ("UPDATE runs SET status = 'exploded' WHERE name = 'survivor'",
     "run survivor's status 'exploded' is not one dstack writes"),
    ("DROP TABLE jobs", "its jobs table is missing"),
])
def test_a_damaged_team_database_is_one_clear_error_never_an_empty_list(team_database, home_env, spoil, reason):
    StateStore().create_run(RunRecord(name="survivor", status="running", submitted_at=1.0, host=HOST, detached=True))
    schema_table(team_database, spoil)
    for argv in (["ps"], ["ps", "--json"], ["stop", "survivor"]):
        result = run_cli(*argv, env=home_env)
        assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr, result.stderr
        assert f"is damaged: {reason}; dstack changed nothing" in result.stderr and len(result.stderr.splitlines()) == 1
    assert schema_table(team_database, "SELECT count(*) FROM runs") == [(1,)]  # nothing set aside or emptied


def test_an_unreachable_team_database_is_named_without_its_password(home_env, tmp_path):
    url = f"postgresql://alice:s3cret-pw@/teamdb?host={tmp_path}/nowhere"
    result = run_cli("ps", env={**home_env, "DSTACK_DATABASE_URL": url})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: cannot reach the team database teamdb on {tmp_path}/nowhere: ")
    assert "(tried 3 times; `dstack config check` reports the database)" in result.stderr
    assert "s3cret" not in result.stderr


def test_the_config_file_names_the_database_and_the_variable_wins(postgres_cluster, dstack_home, home_env,
                                                                   monkeypatch):
    monkeypatch.delenv("DSTACK_DATABASE_URL", raising=False)
    url = postgres_cluster.new_database()
    dstack_home.mkdir()
    (dstack_home / "config.yml").write_text(f"database: {url}\n")
    StateStore().create_run(RunRecord(name="in-team", status="done", submitted_at=1.0))
    assert not (dstack_home / "state.db").exists()
    listed = run_cli("ps", "-a", "--json", env=home_env)
    assert [r["name"] for r in json.loads(listed.stdout)["runs"]] == ["in-team"], listed.stderr
    wrong = run_cli("ps", env={**home_env, "DSTACK_DATABASE_URL": "mysql://u:pw@db/x"})
    assert wrong.returncode == 1 and wrong.stderr == (
        "error: DSTACK_DATABASE_URL: mysql://u@db/x is not a PostgreSQL URL (postgresql://user@host/dbname); unset it "
        "to keep the state in this home's SQLite store\n")


# --- two homes, one team database -----------------------------------------------------------------------------------

@pytest.fixture
def two_homes(tmp_path, team_database):
    """Alice's and Bob's `$DSTACK_HOME`s (environments for `dstack`), sharing the team database."""
    return ({"DSTACK_HOME": str(tmp_path / "alice-home"), "DSTACK_USER": "alice"},
            {"DSTACK_HOME": str(tmp_path / "bob-home"), "DSTACK_USER": "bob"})


def ps_json(env, *flags) -> dict:
    result = run_cli("ps", "-a", "--json", *flags, env=env)
    assert result.returncode == 0, result.stderr
    return {r["name"]: r for r in json.loads(result.stdout)["runs"]}


def one_host_fleet(tmp_path, env, host, client_key) -> None:
    fleet = write(tmp_path, "fleet.dstack.yml", f"type: fleet\nname: shared\nssh_config:\n  user: root\n"
                  f"  identity_file: {client_key[0]}\n  hosts: [{host.address}]\n")
    applied = run_cli("apply", "-f", fleet, "-y", env=env)
    assert applied.returncode == 0, applied.stderr


def test_a_teammate_sees_reads_and_stops_a_detached_run(tmp_path, two_homes, make_host, client_key):
    alice, bob = two_homes
    one_host_fleet(tmp_path, alice, make_host(), client_key)
    conf = write(tmp_path, "t.dstack.yml", "type: task\nname: shared-run\nbackends: [ssh]\n"
                 "commands: [echo from alice, sleep 300]\n")
    applied = run_cli("apply", "-f", conf, "-y", "-d", env=alice)
    assert applied.returncode == 0, applied.stderr
    seen = ps_json(bob)["shared-run"]
    assert (seen["status"], seen["user"], seen["backend"]) == ("running", "alice", "ssh")
    assert "shared-run" not in ps_json(bob, "--mine")
    table = run_cli("ps", env=bob).stdout
    assert table.split()[:3] == ["NAME", "USER", "STATUS"] and "alice" in table
    deadline = time.monotonic() + 30
    while "from alice" not in (logs := run_cli("logs", "shared-run", env=bob)).stdout and time.monotonic() < deadline:
        time.sleep(0.5)
    assert logs.stdout == "from alice\n", logs.stderr
    stopped = run_cli("stop", "shared-run", "-y", env=bob)
    assert stopped.returncode == 0, stopped.stderr
    assert ps_json(alice)["shared-run"]["status"] == "terminated"


def test_a_teammates_local_run_is_left_to_them(tmp_path, two_homes):
    alice, bob = two_homes
    conf = write(tmp_path, "t.dstack.yml", "type: task\nname: on-alices-laptop\ncommands: [sleep 300]\n")
    assert run_cli("apply", "-f", conf, "-y", "-d", env=alice).returncode == 0
    try:
        assert ps_json(bob)["on-alices-laptop"]["status"] == "running"  # its job is on another machine: not "gone"
        refused = run_cli("stop", "on-alices-laptop", "-y", env=bob)
        assert refused.returncode == 1 and refused.stderr == (
            "error: run on-alices-laptop is alice's and runs on their machine (backend local): only they can stop "
            "it\n")
    finally:
        assert run_cli("stop", "on-alices-laptop", "--abort", "-y", env=alice).returncode == 0
    assert ps_json(bob)["on-alices-laptop"]["status"] == "terminated"


def test_parallel_applies_from_two_homes_never_double_book_a_host(tmp_path, two_homes, make_host, client_key):
    alice, bob = two_homes
    one_host_fleet(tmp_path, alice, make_host(), client_key)
    for trial in range(3):
        applies = []
        for env in (alice, bob):
            conf = write(tmp_path, f"{env['DSTACK_USER']}.dstack.yml", f"type: task\nname: {env['DSTACK_USER']}-{trial}"
                         "\nbackends: [ssh]\ncommands: [sleep 300]\n")
            applies.append(subprocess.Popen([sys.executable, "-m", "cli.main", "apply", "-f", conf, "-y", "-d"],
                                            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True))
        outcomes = [(p.wait(120), p.stderr.read()) for p in applies]
        assert sorted(code for code, _ in outcomes) == [0, 1], outcomes
        assert "is busy with run" in next(err for code, err in outcomes if code == 1)
        winner = next(name for name, run in ps_json(alice).items() if run["status"] == "running")
        assert run_cli("stop", winner, "--abort", "-y", env=bob).returncode == 0


# --- dstack state migrate -------------------------------------------------------------------------------------------

def sqlite_home_with_records(home_env) -> None:
    """A SQLite store holding a finished run (with jobs, events and a key left), an SSH fleet, a volume and a cloud
    fleet with an instance, as this home's commands leave them."""
    store = StateStore()
    assert store.team is None
    store.create_run(RunRecord(name="old-run", status="done", submitted_at=5.0, host=HOST, exit_code=0,
                               configuration={"type": "task", "commands": ["echo [secret]"]}))
    store.set_jobs("old-run", [HOST])
    for kind in ("submitted", "exited"):
        store.add_event("old-run", kind, kind)
    store.add_key_left("old-run", HOST)
    store.save_fleet("lab", "lab.dstack.yml", [{"access": HOST, "facts": {}}])
    store.create_volume(VolumeRecord(name="data", status="active", backend="aws", region="r", created_at=1.0,
                                     volume_id="vol-1", external=True))
    store.create_cloud_fleet("cf", "cf.yml", "aws", {"nodes": 1}, {"name": "stack"},
                             [InstanceRecord("cf", 0, "aws", {"price": 1.0}, HOST, idle_since=1.0)])


def every_record(store) -> tuple:
    return ([(r.name, r.status, r.host, r.configuration, r.owner_id) for r in store.list_runs()],
            [(j.rank, j.host) for j in store.list_jobs("old-run")],
            [(e["kind"], e["at"] > 0) for e in store.list_events("old-run")], store.keys_left(HOST),
            [(f["name"], f["hosts"]) for f in store.list_fleets()], [v.summary() for v in store.list_volumes()],
            [(f["name"], f["stack"]) for f in store.list_cloud_fleets()],
            [(i.fleet, i.host, i.status) for i in store.list_instances()])


def test_state_migrate_moves_a_home_to_the_team_database_and_back(postgres_cluster, dstack_home, home_env,
                                                                   monkeypatch):
    monkeypatch.delenv("DSTACK_DATABASE_URL", raising=False)
    sqlite_home_with_records(home_env)
    before = every_record(StateStore())
    url = postgres_cluster.new_database()
    moved = run_cli("state", "migrate", "--to", url, env=home_env)
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.startswith("Moved 1 runs, 1 fleets, 1 volumes, 1 cloud fleets to the team database team")
    assert not (dstack_home / "state.db").exists() and not (dstack_home / "state.db.marker").exists()
    assert len(list(dstack_home.glob("state.db.migrated-*"))) == 1
    assert every_record(StateStore(url=url)) == before
    listed = run_cli("ps", "-a", "--json", env={**home_env, "DSTACK_DATABASE_URL": url})
    assert [r["name"] for r in json.loads(listed.stdout)["runs"]] == ["old-run"], listed.stderr

    back = run_cli("state", "migrate", "--to", "sqlite", env={**home_env, "DSTACK_DATABASE_URL": url})
    assert back.returncode == 0, back.stderr
    assert back.stdout.startswith("Moved 1 runs, 1 fleets, 1 volumes, 1 cloud fleets of this home from the team "
                                  f"database team on {postgres_cluster.folder} to {dstack_home / 'state.db'}")
    assert every_record(StateStore()) == before
    assert every_record(StateStore(url=url)) == ([], [], [], [], [], [], [], [])


def test_state_migrate_refuses_names_the_team_holds_and_copies_nothing(postgres_cluster, home_env, monkeypatch):
    monkeypatch.delenv("DSTACK_DATABASE_URL", raising=False)
    sqlite_home_with_records(home_env)
    url = postgres_cluster.new_database()
    team = StateStore(url=url)
    team.create_run(RunRecord(name="old-run", status="running", submitted_at=1.0))
    team.save_fleet("lab", "theirs.yml", [])
    refused = run_cli("state", "migrate", "--to", url, env=home_env)
    assert refused.returncode == 1 and refused.stderr == (
        f"error: the team database team on {postgres_cluster.folder} already holds fleet lab, run old-run: nothing "
        "was copied (rename or delete those first)\n")
    assert [v.name for v in StateStore().list_volumes()] == ["data"]  # the SQLite store is untouched and in use
    assert team.list_volumes() == [] and [f["source"] for f in team.list_fleets()] == ["theirs.yml"]
    wrong = run_cli("state", "migrate", "--to", "mysql://u:pw@h/x", env=home_env)
    assert wrong.returncode == 1 and "--to: mysql://u@h/x is not a PostgreSQL URL" in wrong.stderr


def test_config_check_reports_the_team_database(team_database, home_env, tmp_path):
    StateStore()
    checked = run_cli("config", "check", "--json", env=home_env)
    assert checked.returncode == 0, checked.stderr
    line = json.loads(checked.stdout)["checks"][0]
    assert (line["backend"], line["subject"], line["status"]) == ("state", "database", "ok")
    assert line["detail"].startswith(f"the team database team on ") and f"reachable, schema {SCHEMA_VERSION}; " \
        "connect " in line["detail"] and " ms, round trip " in line["detail"]
    schema_table(team_database, "UPDATE dstack_schema SET version = 99")
    newer = run_cli("config", "check", env=home_env)
    assert newer.returncode == 1 and "fail state  database     the team database team on " in newer.stdout
    assert "schema 99 was written by a newer dstack" in newer.stdout
    gone = run_cli("config", "check", env={**home_env,
                                           "DSTACK_DATABASE_URL": f"postgresql://u:pw@/x?host={tmp_path}/none"})
    assert gone.returncode == 1 and f"cannot reach the team database x on {tmp_path}/none" in gone.stdout
    assert "pw" not in gone.stdout.replace("pwd", "")


def test_a_dropped_connection_is_read_again_and_a_write_reported_once(team_database, monkeypatch):
    """The server ends the connection in the middle of an operation (pg_terminate_backend, as a restart or a
    network cut does): a read goes again on a new connection; a write is reported, never repeated."""
    from provisioner.store.errors import ConnectionLost
    from provisioner.store.postgres import PostgresDb

    store = StateStore()
    store.create_run(RunRecord(name="kept", status="running", submitted_at=1.0))
    real_execute, cut = PostgresDb.execute, []

    def cut_once(self, sql, parameters=()):
        if not cut and not sql.startswith("SELECT table_name"):
            cut.append(sql)
            try:
                real_execute(self, "SELECT pg_terminate_backend(pg_backend_pid())")
            except Exception:  # the server's goodbye, for this connection
                pass
        return real_execute(self, sql, parameters)

    monkeypatch.setattr(PostgresDb, "execute", cut_once)
    assert [r.name for r in store.list_runs()] == ["kept"] and cut
    cut.clear()
    with pytest.raises(ConnectionLost, match="lost the connection to the team database team on .*: what this command "
                                             "was writing may not be recorded"):
        store.add_event("kept", "note", "once")
    assert cut and store.list_events("kept") == []  # not written, and not tried again behind the user's back


def test_a_run_key_is_sealed_and_only_the_team_key_reaches_a_teammates_host(team_database, home_env, make_host,
                                                                             client_key, monkeypatch, tmp_path):
    """Alice's run (as her laptop records a cloud run: its login key under her home, sealed into the team
    database) on a host this laptop never had a key for: Bob reaches it with the team key, not without it."""
    from pathlib import Path

    from provisioner.host.access import HostAccess
    from provisioner.host.ssh import connect
    from provisioner.jobs.control import start_job
    from provisioner.jobs.script import JobSpec
    from provisioner.jobs.team_keys import seal_home_key

    host = make_host()
    private = Path(client_key[0]).read_bytes()
    alice_key = tmp_path / "alice-home" / "runs" / "far" / "id_ed25519"
    alice_key.parent.mkdir(parents=True)
    alice_key.write_bytes(private)
    access = HostAccess(kind="ssh", hostname=host.address, user="root", identity_file=str(alice_key),
                        host_key=host.host_public_key)
    store = StateStore()
    store.create_run(RunRecord(name="far", status="running", submitted_at=time.time(), backend="ssh", region="lab",
                               host=access.to_json(), detached=True, started_at=time.time(), owner_id="a11ce000",
                               user_name="alice"))
    monkeypatch.setenv("DSTACK_TEAM_KEY", "the-team-key")
    seal_home_key(store, alice_key)
    transport = connect(access.ssh_target(), total_wait=10)
    pgid = start_job(transport, JobSpec(run_name="far", commands=["echo sealed-ok", "sleep 300"]))
    alice_key.unlink()  # her laptop's file is not on Bob's
    try:
        [(sealed,)] = schema_table(team_database, "SELECT sealed FROM sealed_files WHERE run = 'far'")
        body = b"".join(private.splitlines()[1:-1]).decode()
        assert sealed.startswith("dstack-sealed-v1:") and "PRIVATE KEY" not in sealed and body[:40] not in sealed
        for wrong in ({"DSTACK_TEAM_KEY": "another-key"}, {"DSTACK_TEAM_KEY": ""}):
            listed = ps_json({**home_env, **wrong})["far"]  # the records, without the key
            assert (listed["user"], listed["status"], listed["jobs"][0]["host"]) == ("alice", "running",
                                                                                    f"root@{host.address}:22")
            refused = run_cli("logs", "far", env={**home_env, **wrong})
            assert refused.returncode == 1 and refused.stderr == (
                "error: run far is alice's: its SSH key is sealed with the team key, which this laptop does not have "
                "(DSTACK_TEAM_KEY, or the team's Pulumi passphrase: docs/teams.md); its hosts cannot be reached from "
                "here\n")
        team = {**home_env, "DSTACK_TEAM_KEY": "the-team-key"}
        deadline = time.monotonic() + 30
        while "sealed-ok" not in (shown := run_cli("logs", "far", env=team)).stdout and time.monotonic() < deadline:
            time.sleep(0.5)
        assert shown.stdout == "sealed-ok\n", shown.stderr
        stopped = run_cli("stop", "far", "-y", env=team)
        assert stopped.returncode == 0 and ps_json(team)["far"]["status"] == "terminated", stopped.stderr
        assert transport.run(f"kill -0 -{pgid} 2>/dev/null || echo gone").text.strip() == "gone"
    finally:
        transport.run(f"kill -9 -{pgid} 2>/dev/null; true")
        transport.close()
