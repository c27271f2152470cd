"""An SSH fleet's hosts shared by runs: every idle host that fits is tried, each claimed by one run only, busy hosts
after idle ones, and a run that finds none names each host it tried and why. Through the CLI, on namespace hosts."""

import json
import os
import subprocess
import sys

from provisioner.store.store import StateStore
from tests.helpers import ROOT, run_cli, write
from tests.test_runs import ps


def apply_fleet(tmp_path, env, client_key, hosts) -> None:
    fleet = write(tmp_path, "fleet.dstack.yml", f"type: fleet\nname: lab\nssh_config:\n  user: root\n"
                  f"  identity_file: {client_key[0]}\n  hosts: [{', '.join(h.address for h in hosts)}]\n")
    applied = run_cli("apply", "-f", fleet, "-y", env=env)
    assert applied.returncode == 0, applied.stderr


def task(tmp_path, name) -> str:
    return write(tmp_path, f"{name}.dstack.yml", f"type: task\nname: {name}\nbackends: [ssh]\ncommands: [sleep 300]\n")


def host_of(name) -> str:
    return StateStore().get_run(name).host["hostname"]


def abort_running(env) -> None:
    for name, run in ps(env).items():
        if run["status"] in ("running", "provisioning", "submitted"):
            run_cli("stop", name, "--abort", env=env)


def test_three_parallel_runs_on_a_three_host_fleet_each_run_on_a_host_of_its_own(tmp_path, dstack_home, make_host,
                                                                                  client_key):
    hosts = [make_host() for _ in range(3)]
    env = {"DSTACK_HOME": str(dstack_home)}
    apply_fleet(tmp_path, env, client_key, hosts)
    names = ["par-a", "par-b", "par-c"]
    applies = [subprocess.Popen([sys.executable, "-m", "cli.main", "apply", "-f", task(tmp_path, n), "-y", "-d"],
                                cwd=ROOT, env=dict(os.environ, **env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for n in names]
    try:
        outcomes = [(p.wait(180), p.stderr.read()) for p in applies]
        assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
        runs = ps(env)
        assert {n: runs[n]["status"] for n in names} == {n: "running" for n in names}
        assert sorted(host_of(n) for n in names) == sorted(h.address for h in hosts)
        assert sorted(runs[n]["instance"] for n in names) == sorted(h.address for h in hosts)  # the host it got
    finally:
        abort_running(env)


def test_runs_one_after_another_go_to_the_idle_hosts_and_then_name_every_busy_host(tmp_path, dstack_home, make_host,
                                                                                    client_key):
    hosts = [make_host() for _ in range(3)]
    env = {"DSTACK_HOME": str(dstack_home)}
    apply_fleet(tmp_path, env, client_key, hosts)
    try:
        taken = []
        for name in ("seq-a", "seq-b", "seq-c"):
            plan = json.loads(run_cli("apply", "-f", task(tmp_path, name), "--dry-run", "--json", env=env).stdout)
            assert plan["offer"]["instance"]["name"] not in taken  # busy hosts are not offered first
            result = run_cli("apply", "-f", task(tmp_path, name), "-y", "-d", env=env)
            assert result.returncode == 0, result.stderr
            assert "busy" not in result.stderr, result.stderr  # it went to an idle host straight away
            taken.append(host_of(name))
        assert sorted(taken) == sorted(h.address for h in hosts)

        result = run_cli("apply", "-f", task(tmp_path, "seq-d"), "-y", "-d", env=env)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "zone" not in result.stderr, result.stderr  # a fleet's host is no zone
        error = result.stderr[result.stderr.index("no offer could be provisioned"):]
        assert "tried 3:" in error, error
        for name in ("seq-a", "seq-b", "seq-c"):
            assert f"root@{host_of(name)}:22 is busy with run {name}" in error, error
        assert ps(env)["seq-d"]["status"] == "failed"
    finally:
        abort_running(env)


def test_a_run_tries_every_host_of_a_fleet_larger_than_the_offers_it_tries_of_a_cloud(tmp_path, dstack_home):
    """Eight hosts, each held by a run that this test owns (so `apply` leaves them be; none is ever reached): the
    run tries all eight, past MAX_OFFERS_TRIED and the plan's cheapest five, and names each with its holder."""
    from provisioner.host.access import HostAccess
    from provisioner.runs.failover import MAX_OFFERS_TRIED
    from provisioner.host.owner import current_owner
    from provisioner.store.records import RunRecord

    hosts = [HostAccess(kind="ssh", hostname=f"10.251.240.{i}", user="root") for i in range(10, 18)]
    assert len(hosts) > MAX_OFFERS_TRIED
    facts = {"cpus": 4, "arch": "x86_64", "memory_gib": 16.0, "disk_free_gb": 200.0, "gpus": [], "docker": False}
    store = StateStore()
    store.save_fleet("big", "big.dstack.yml", [{"access": h.to_json(), "facts": facts} for h in hosts])
    pid, started = current_owner()
    for number, host in enumerate(hosts):
        store.create_run(RunRecord(name=f"holder-{number}", status="provisioning", submitted_at=1.0, backend="ssh",
                                   owner_pid=pid, owner_started=started, host=host.to_json()))
    result = run_cli("apply", "-f", task(tmp_path, "ninth"), "-y", "-d", env={"DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = result.stderr[result.stderr.index("no offer could be provisioned"):]
    assert "tried 8:" in error, error
    for number, host in enumerate(hosts):
        assert f"ssh big {host.hostname}: capacity: root@{host.hostname}:22 is busy with run holder-{number}" \
            in error, error


def test_fleet_delete_one_instance_forgets_that_host_only_and_never_a_busy_one(dstack_home):
    """dstack's `fleet delete NAME -i N`: the SSH fleet's host #N is forgotten (the host itself untouched); a host a
    run holds is refused with its holder, an unknown number names the fleet's; the last host going forgets the
    fleet."""
    from provisioner.host.access import HostAccess
    from provisioner.host.owner import current_owner
    from provisioner.store.records import RunRecord

    hosts = [HostAccess(kind="ssh", hostname=f"10.251.241.{i}", user="root") for i in range(10, 13)]
    facts = {"cpus": 4, "arch": "x86_64", "memory_gib": 16.0, "disk_free_gb": 200.0, "gpus": [], "docker": False}
    store = StateStore()
    store.save_fleet("lab", "lab.dstack.yml", [{"access": h.to_json(), "facts": facts} for h in hosts])
    pid, started = current_owner()
    store.create_run(RunRecord(name="holder", status="running", submitted_at=1.0, backend="ssh", region="lab",
                               owner_pid=pid, owner_started=started, host=hosts[2].to_json()))
    env = {"DSTACK_HOME": str(dstack_home)}
    assert "10.251.241.11:22 (#1)" in run_cli("fleet", "get", "lab", env=env).stdout
    busy = run_cli("fleet", "delete", "lab", "-i", "1", "-i", "2", "-y", env=env)
    assert busy.returncode == 1 and "instance 2 of fleet lab (10.251.241.12) is in use by holder" in busy.stderr
    unknown = run_cli("fleet", "delete", "lab", "-i", "7", "-y", env=env)
    assert unknown.returncode == 1 and "fleet lab has no instance 7: its instances are 0..2" in unknown.stderr
    assert len(store.list_fleets()[0]["hosts"]) == 3  # refused: nothing removed
    deleted = run_cli("fleet", "delete", "lab", "-i", "1", "-y", env=env)
    assert deleted.returncode == 0, deleted.stderr
    listed = json.loads(run_cli("fleet", "get", "lab", "--json", env=env).stdout)["fleet"]["hosts"]
    assert [h["access"]["hostname"] for h in listed] == ["10.251.241.10", "10.251.241.12"]
    store.update_run("holder", status="done")
    assert run_cli("fleet", "delete", "lab", "-i", "0", "-i", "1", "-y", env=env).returncode == 0
    assert store.list_fleets() == []
