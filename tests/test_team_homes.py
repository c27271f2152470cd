"""Two `$DSTACK_HOME`s sharing one team database (tests/postgres_cluster.py), through the CLI: a teammate's run
attached to, its events and metrics read; the team's fleets and volumes listed with their USER and acted on; names
unique per team; a dev environment's key sealed (never in the database in plain text) and unsealed by a teammate's
`attach`; the errors of an unreachable or newer database on every listing command."""

import json
import signal
import time
from pathlib import Path

import pytest

from provisioner.store.records import VolumeRecord
from provisioner.store.schema import SCHEMA_VERSION
from provisioner.store.store import StateStore
from tests.helpers import run_cli, write
from tests.test_dev_environments import entry_works, one_commit_repo, ssh
from tests.test_runs import spawn
from tests.test_team_store import one_host_fleet, ps_json, schema_table, two_homes  # noqa: F401 (fixture)


def test_a_teammate_attaches_to_and_reads_the_events_and_metrics_of_a_run(tmp_path, two_homes, make_host,
                                                                          client_key, team_database,
                                                                          postgres_cluster):
    from tests.test_cloudsim_team import database_dump

    alice, bob = two_homes
    one_host_fleet(tmp_path, alice, make_host(), client_key)
    assert run_cli("secret", "set", "HF_TOKEN", input="hf_team_secret_value_0123\n", env=alice).returncode == 0
    started = tmp_path / "started"
    conf = write(tmp_path, "t.dstack.yml", "type: task\nname: shared-run\nbackends: [ssh]\n"
                 "env: ['HF_TOKEN=${{ secrets.HF_TOKEN }}', API_KEY=sk-literal-secret-4567]\n"
                 f"commands: ['echo from alice', 'touch {started}', 'while [ ! -e {started}.end ]; do sleep 0.2; "
                 "done', 'echo finished']\n")
    applied = run_cli("apply", "-f", conf, "-y", "-d", env=alice)
    assert applied.returncode == 0, applied.stderr
    dump = database_dump(postgres_cluster, team_database)  # the run's configuration keeps `[secret]` in their place
    assert "shared-run" in dump and "[secret]" in dump
    assert "hf_team_secret_value" not in dump and "sk-literal-secret" not in dump
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    events = run_cli("event", "shared-run", env=bob)
    assert events.returncode == 0, events.stderr
    assert "submitted" in events.stdout and "started" in events.stdout
    metrics = run_cli("metrics", "shared-run", "--json", env=bob)
    assert metrics.returncode == 0, metrics.stderr
    assert json.loads(metrics.stdout)["metrics"]["memory_bytes"] > 0
    (tmp_path / "bob-user").mkdir()
    attached = spawn(["attach", "shared-run", "--logs"], {**bob, "HOME": str(tmp_path / "bob-user")})
    time.sleep(2)
    started.with_name("started.end").touch()
    out, err = attached.communicate(timeout=60)
    assert attached.returncode == 0, err
    assert out.decode() == "from alice\nfinished\n", err
    assert ps_json(alice)["shared-run"]["status"] == "done"


def test_the_teams_fleets_and_volumes_are_listed_with_their_user_and_names_are_the_teams(tmp_path, two_homes,
                                                                                        make_host, client_key,
                                                                                        monkeypatch):
    alice, bob = two_homes
    one_host_fleet(tmp_path, alice, make_host(), client_key)
    monkeypatch.setenv("DSTACK_HOME", alice["DSTACK_HOME"])
    monkeypatch.setenv("DSTACK_USER", "alice")
    StateStore().create_volume(VolumeRecord(name="data", status="active", backend="aws", region="us-east-1",
                                            created_at=1.0, volume_id="vol-1", external=True))
    fleets = run_cli("fleet", "list", env=bob)
    header, row = fleets.stdout.splitlines()[:2]
    assert header.split()[:3] == ["FLEET", "USER", "HOST"] and row.split()[:2] == ["shared", "alice"], fleets.stdout
    assert json.loads(run_cli("fleet", "list", "--json", env=bob).stdout)["fleets"][0]["user"] == "alice"
    volumes = run_cli("volume", "list", env=bob)
    header, row = volumes.stdout.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "USER", "BACKEND"] and row.split()[:3] == ["data", "alice", "aws"]
    alone = run_cli("fleet", "list", env={"DSTACK_HOME": str(tmp_path / "solo"), "DSTACK_DATABASE_URL": ""})
    assert alone.stdout.startswith("No fleets")  # this home's own SQLite store: no USER column, no team

    taken = write(tmp_path, "bobs-fleet.dstack.yml", "type: fleet\nname: shared\nssh_config:\n  user: root\n"
                  f"  identity_file: {client_key[0]}\n  hosts: [10.251.250.77]\n")
    refused = run_cli("apply", "-f", taken, "-y", env=bob)
    assert refused.returncode == 1 and "fleet shared is alice's: pick another name, or `dstack fleet delete shared`" \
        in refused.stderr, refused.stderr
    assert json.loads(run_cli("fleet", "list", "--json", env=bob).stdout)["fleets"][0]["source"].endswith(
        "fleet.dstack.yml")  # Alice's, unchanged

    assert run_cli("volume", "delete", "data", "-y", env=bob).returncode == 0  # a registered one: forgotten
    assert run_cli("fleet", "delete", "shared", "-y", env=bob).returncode == 0
    assert run_cli("fleet", "list", env=alice).stdout.startswith("No fleets")
    assert run_cli("volume", "list", env=alice).stdout.startswith("No volumes")


def test_a_dev_environments_key_is_sealed_and_a_teammates_attach_unseals_it(tmp_path, two_homes, make_host,
                                                                            client_key, team_database,
                                                                            postgres_cluster):
    from tests.test_cloudsim_team import assert_not_in, database_dump

    alice, bob = two_homes
    alice = {**alice, "HOME": str(tmp_path / "alice-user"), "DSTACK_TEAM_KEY": "team key"}
    bob_home = tmp_path / "bob-user"
    bob = {**bob, "HOME": str(bob_home), "DSTACK_TEAM_KEY": "team key"}
    for user in (alice, bob):
        Path(user["HOME"]).mkdir()
    one_host_fleet(tmp_path, alice, make_host(), client_key)
    repo = one_commit_repo(tmp_path / "project", {".dstack.yml": "type: dev-environment\nname: dev-team\n"})
    applied = run_cli("apply", "-f", str(repo / ".dstack.yml"), "-d", "-y", "-b", "ssh", env=alice)
    assert applied.returncode == 0, applied.stderr
    try:
        key = (Path(alice["DSTACK_HOME"]) / "runs" / "dev-team" / "ssh_key").read_text()
        assert schema_table(team_database, "SELECT path, run FROM sealed_files") == [("runs/dev-team/ssh_key",
                                                                                      "dev-team")]
        assert_not_in(database_dump(postgres_cluster, team_database), key)

        refused = run_cli("attach", "dev-team", env={**bob, "DSTACK_TEAM_KEY": "another key"})
        assert refused.returncode == 1 and refused.stderr == (
            "error: run dev-team is alice's: its SSH key is sealed with the team key, which this laptop does not "
            "have (DSTACK_TEAM_KEY, or the team's Pulumi passphrase: docs/teams.md); its hosts cannot be reached "
            "from here\n")
        attached = spawn(["attach", "dev-team"], bob)
        try:
            assert entry_works(bob_home, "dev-team")  # Bob's own ssh, with the key unsealed into his home
            assert ssh(bob_home, "dev-team", "echo in-alices-dev").stdout == "in-alices-dev\n"
        finally:
            attached.send_signal(signal.SIGINT)
            attached.communicate(timeout=30)
        assert (Path(bob["DSTACK_HOME"]) / "runs" / "dev-team" / "ssh_key").read_text() == key
    finally:
        assert run_cli("stop", "dev-team", "-y", env=alice).returncode == 0


@pytest.mark.parametrize("argv", [["ps"], ["fleet", "list"], ["volume", "list"], ["event"], ["logs", "x"],
                                  ["stop", "x", "-y"]])
def test_a_newer_or_unreachable_team_database_is_one_error_on_every_command_never_an_empty_list(
        team_database, home_env, tmp_path, argv):
    StateStore()
    schema_table(team_database, "UPDATE dstack_schema SET version = 99")
    newer = run_cli(*argv, env=home_env)
    assert newer.returncode == 1 and newer.stdout == "", newer.stdout
    assert newer.stderr.endswith(f"was written by a newer dstack (schema 99, this one knows {SCHEMA_VERSION}); "
                                 "upgrade dstack\n") and len(newer.stderr.splitlines()) == 1
    gone = run_cli(*argv, env={**home_env, "DSTACK_DATABASE_URL": f"postgresql://u@/x?host={tmp_path}/none"})
    assert gone.returncode == 1 and gone.stdout == "" and len(gone.stderr.splitlines()) == 1
    assert gone.stderr.startswith(f"error: cannot reach the team database x on {tmp_path}/none: ")


def test_a_dev_environment_without_the_team_key_is_refused_before_a_host_is_claimed(tmp_path, two_homes, make_host,
                                                                                   client_key):
    """Its key is made once a host is claimed, and a team database takes it sealed only: a laptop without the team
    key is told so first, with no run recorded and the host left free."""
    alice, _ = two_homes
    alice = {**alice, "HOME": str(tmp_path / "alice-user")}
    Path(alice["HOME"]).mkdir()
    one_host_fleet(tmp_path, alice, make_host(), client_key)
    repo = one_commit_repo(tmp_path / "project", {".dstack.yml": "type: dev-environment\nname: dev-nokey\n"})
    refused = run_cli("apply", "-f", str(repo / ".dstack.yml"), "-d", "-y", "-b", "ssh", env=alice)
    assert refused.returncode == 1 and "set DSTACK_TEAM_KEY" in refused.stderr, refused.stderr
    assert "run dev-nokey is recorded in" in refused.stderr and "Connecting" not in refused.stderr
    assert "dev-nokey" not in ps_json(alice)  # no record written (before, a `failed` one, after its host's claim)
