"""A team on the simulated cloud (tests.cloudsim): two `$DSTACK_HOME`s sharing one team database
(tests/postgres_cluster.py) and one Pulumi backend folder (a `file://` backend standing in for the team's `s3://`
bucket, named in each home's config.yml). A stack one laptop made is found by name and destroyed from the other; an
instance of a teammate's cloud fleet is reused with its sealed key; no key dstack made is in the database in plain
text (docs/teams.md)."""

import json
import subprocess

import pytest

from tests.cloudsim.aws import instance_of
from tests.cloudsim.fixtures import wait_until
from tests.cloudsim.tasks import AWS_FLEET, aws_task
from tests.helpers import write

pytestmark = pytest.mark.cloudsim

PASSPHRASE = "the team's shared pulumi passphrase"


@pytest.fixture
def team(cloudsim, tmp_path, team_database):
    """Alice's and Bob's homes: the simulated clouds, the shared state folder as their Pulumi backend, the same
    Pulumi passphrase (the team key's default). Returns (homes by user, the shared folder)."""
    shared = tmp_path / "team-state"
    homes = {}
    for user in ("alice", "bob"):
        home = tmp_path / f"{user}-home"
        cloudsim.write_config(home)
        with open(home / "config.yml", "a") as config:
            config.write(f"pulumi:\n  backend_url: file://{shared}\n")
        (home / "pulumi").mkdir(mode=0o700)
        (home / "pulumi" / "passphrase").write_text(PASSPHRASE)
        (home / "pulumi" / "passphrase").chmod(0o600)
        homes[user] = home
    return homes, shared


def as_user(cloudsim, user, homes, *args, **env):
    return cloudsim.dstack(*args, home=homes[user], env={"DSTACK_USER": user, **env})


def database_dump(postgres_cluster, url: str) -> str:
    """What a copy of the team database holds (pg_dump's text), as someone who got hold of it would read it."""
    schema = url.split("search_path%3D")[1]
    dumped = subprocess.run([str(postgres_cluster.bin / "pg_dump"), "-n", schema, url.split("&options")[0]],
                            capture_output=True, text=True, timeout=60)
    assert dumped.returncode == 0, dumped.stderr
    return dumped.stdout


def sealed_paths(url: str) -> list:
    import psycopg

    with psycopg.connect(url) as db:
        return [row[0] for row in db.execute("SELECT path FROM sealed_files ORDER BY path")]


def assert_not_in(dump: str, key_text: str) -> None:
    """No line of the private key's body (nor the key's header) is in `dump`."""
    lines = key_text.strip().splitlines()
    assert "PRIVATE KEY" in lines[0] and "PRIVATE KEY" not in dump
    assert all(line not in dump for line in lines[1:-1])


def test_a_teammate_reads_and_stops_a_cloud_run_whose_stack_is_in_the_team_backend(cloudsim, team, tmp_path,
                                                                                   team_database, postgres_cluster):
    homes, shared = team
    conf = aws_task(tmp_path, "team-run", command="echo hello-team; sleep 300")
    started = as_user(cloudsim, "alice", homes, "apply", "-f", conf, "-b", "aws", "-y", "-d")
    assert started.returncode == 0, started.stdout + started.stderr
    [instance] = cloudsim.live("Instance")
    assert len(list((shared / ".cloudsim").glob("*.json"))) == 1  # the stack's state: the team's backend
    assert not any(homes[user].joinpath("pulumi", "state").exists() for user in homes)

    key = (homes["alice"] / "runs" / "team-run" / "id_ed25519").read_text()
    assert sealed_paths(team_database) == ["runs/team-run/id_ed25519"]
    assert_not_in(database_dump(postgres_cluster, team_database), key)

    listed = as_user(cloudsim, "bob", homes, "ps", "--json")
    [run] = json.loads(listed.stdout)["runs"]
    assert (run["name"], run["user"], run["status"]) == ("team-run", "alice", "running")
    refused = as_user(cloudsim, "bob", homes, "logs", "team-run", DSTACK_TEAM_KEY="not the team's")
    assert refused.returncode == 1 and refused.stderr == (
        "error: run team-run is alice's: its SSH key is sealed with the team key, which this laptop does not have "
        "(DSTACK_TEAM_KEY, or the team's Pulumi passphrase: docs/teams.md); its hosts cannot be reached from here\n")
    assert instance.live  # a refusal changes nothing
    logs = wait_until(lambda: "hello-team" in (shown := as_user(cloudsim, "bob", homes, "logs", "team-run")).stdout
                      and shown)
    assert logs.stdout == "hello-team\n"
    assert (homes["bob"] / "runs" / "team-run" / "id_ed25519").read_text() == key  # unsealed into Bob's home

    stopped = as_user(cloudsim, "bob", homes, "stop", "team-run", "-y")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert instance.deleted_by == "engine" and cloudsim.live() == []
    ended = as_user(cloudsim, "alice", homes, "ps", "-a", "--json")
    assert json.loads(ended.stdout)["runs"][0]["status"] == "terminated"


def test_a_teammates_cloud_fleet_is_reused_with_its_sealed_key_and_deleted_by_name(cloudsim, team, tmp_path,
                                                                                   team_database, postgres_cluster):
    homes, shared = team
    fleet = write(tmp_path, "fleet.dstack.yml", AWS_FLEET + "idle_duration: 1h\n")
    made = as_user(cloudsim, "alice", homes, "apply", "-f", fleet, "-y")
    assert made.returncode == 0, made.stdout + made.stderr
    instance = instance_of(cloudsim.world)
    fleet_key = (homes["alice"] / "fleets" / "pool" / "id_ed25519").read_text()
    dump = database_dump(postgres_cluster, team_database)
    assert sealed_paths(team_database) == ["fleets/pool/host-0", "fleets/pool/id_ed25519"]  # its host key too
    assert_not_in(dump, fleet_key)
    assert_not_in(dump, (homes["alice"] / "fleets" / "pool" / "host-0").read_text())

    table = as_user(cloudsim, "bob", homes, "fleet", "list")
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:3] == ["FLEET", "USER", "HOST"] and row.split()[:2] == ["pool", "alice"], table.stdout
    keyless = write(tmp_path, "k.dstack.yml", "type: task\nname: keyless\nfleets: [pool]\ncommands: [hostname]\n")
    refused = as_user(cloudsim, "bob", homes, "apply", "-f", keyless, "-y", DSTACK_TEAM_KEY="not the team's")
    assert refused.returncode == 1 and "fleet pool is a teammate's: its SSH key is sealed with the team key, which " \
        "this laptop does not have (DSTACK_TEAM_KEY, or the team's Pulumi passphrase" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    [idle] = json.loads(as_user(cloudsim, "bob", homes, "fleet", "list", "--json").stdout)["fleets"][0]["instances"]
    assert idle["status"] == "idle"  # nothing claimed
    run = write(tmp_path, "t.dstack.yml", "type: task\nname: bobs-run\nfleets: [pool]\ncommands: [hostname]\n")
    result = as_user(cloudsim, "bob", homes, "apply", "-f", run, "-y")
    assert result.returncode == 0, result.stdout + result.stderr
    assert instance.vm.name in result.stdout  # Bob's job ran on Alice's fleet's VM, reached with its unsealed key
    assert cloudsim.ever("Instance") == [instance]
    assert (homes["bob"] / "fleets" / "pool" / "id_ed25519").read_text() == fleet_key

    deleted = as_user(cloudsim, "bob", homes, "fleet", "delete", "pool", "-y")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert instance.deleted_by == "engine" and cloudsim.live() == []
    assert sealed_paths(team_database) == []  # the sealed key went with the fleet


def test_a_stack_in_a_laptops_own_pulumi_state_is_refused_from_another_home(cloudsim, tmp_path, team_database):
    """Without a shared backend the stack is in the state under the home that made it: another laptop would find
    an empty folder and destroy nothing while the VM bills on, so it says whose it is instead."""
    homes = {user: tmp_path / f"{user}-home" for user in ("alice", "bob")}
    for home in homes.values():
        cloudsim.write_config(home)
    conf = aws_task(tmp_path, "home-run", command="sleep 300")
    started = as_user(cloudsim, "alice", homes, "apply", "-f", conf, "-b", "aws", "-y", "-d",
                      DSTACK_TEAM_KEY="team key")
    assert started.returncode == 0, started.stdout + started.stderr
    refused = as_user(cloudsim, "bob", homes, "stop", "home-run", "-y", DSTACK_TEAM_KEY="team key")
    assert refused.returncode == 1
    assert (f"home-run's stack is in the Pulumi state of the home that made it (file://{homes['alice']}/pulumi/state)"
            ", not in a backend the team shares: only that laptop can destroy it") in refused.stderr, refused.stderr
    assert len(cloudsim.live("Instance")) == 1
    stopped = as_user(cloudsim, "alice", homes, "stop", "home-run", "-y", DSTACK_TEAM_KEY="team key")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert cloudsim.live() == []


def test_an_elastic_fleet_grown_from_two_laptops_keeps_every_instance(cloudsim, team, tmp_path, team_database,
                                                                      postgres_cluster):
    """Alice's fleet of 0..2: Bob's run adds instance 0 (its host key made in his home, sealed), then Alice's run
    adds instance 1: her `up` of the stack must carry instance 0's host key and the fleet's login key as the team
    holds them, else the key pair and instance 0 would be replaced."""
    homes, _ = team
    fleet = write(tmp_path, "fleet.dstack.yml", AWS_FLEET.replace("nodes: 1", "nodes: 0..2") + "idle_duration: 1h\n")
    made = as_user(cloudsim, "alice", homes, "apply", "-f", fleet, "-y")
    assert made.returncode == 0, made.stdout + made.stderr
    task = "type: task\nname: {name}\nfleets: [pool]\ncommands: ['echo on $(hostname)']\n"
    bobs = as_user(cloudsim, "bob", homes, "apply", "-f", write(tmp_path, "b.dstack.yml", task.format(name="b1")),
                   "-y")
    assert bobs.returncode == 0, bobs.stdout + bobs.stderr
    [first] = cloudsim.ever("Instance")
    assert sealed_paths(team_database) == ["fleets/pool/host-0", "fleets/pool/id_ed25519"]
    assert_not_in(database_dump(postgres_cluster, team_database),
                  (homes["bob"] / "fleets" / "pool" / "host-0").read_text())
    busy = as_user(cloudsim, "alice", homes, "apply", "-f", write(tmp_path, "a.dstack.yml",
                                                                  task.format(name="a1").replace(
                                                                      "'echo on $(hostname)'", "'sleep 20'")),
                   "-y", "-d")
    assert busy.returncode == 0, busy.stdout + busy.stderr  # instance 0 was idle: Alice's run holds it now
    grown = as_user(cloudsim, "alice", homes, "apply", "-f", write(tmp_path, "a2.dstack.yml", task.format(name="a2")),
                    "-y")
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert len(cloudsim.ever("Instance")) == 2 and first.live  # instance 1 added; instance 0 kept, not replaced
    assert [r.kind for r in cloudsim.ever("KeyPair")] == ["KeyPair"]  # one key pair, never replaced
    assert (homes["alice"] / "fleets" / "pool" / "host-0").read_text() == \
        (homes["bob"] / "fleets" / "pool" / "host-0").read_text()
    assert as_user(cloudsim, "alice", homes, "stop", "a1", "-y").returncode == 0
    deleted = as_user(cloudsim, "bob", homes, "fleet", "delete", "pool", "-y")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert cloudsim.live() == [] and sealed_paths(team_database) == []
