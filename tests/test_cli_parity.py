"""dstack 0.22.5's commands and flags as a weekly dstack user types them (issue 25, items 7 to 10): help in one
style, `-v`, `destroy`, `event list` and its filters, `ps` (the last run, a GPU column, errors under `-v`,
`--format`), `fleet`/`volume` `-w -v`, `offer`'s flags, zone and `$/GPU` columns, and `attach` (`--logs`,
`--since`, `--job`, `-p`, `--host`, `--ssh-identity`, the `Host NAME` entry of a task)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from cli.app import COMMANDS
from tests.helpers import ROOT, free_port, run_cli, write
from tests.test_runs import spawn, wait_for_output, wait_status

SUBCOMMANDS = {"fleet": ["list", "get", "delete"], "volume": ["list", "get", "delete"],
               "secret": ["set", "get", "list", "delete"], "schedule": ["list", "tick", "run"], "config": ["check"]}


def record_run(name, status="done", submitted_at=1.0, **fields):
    from provisioner.store.records import RunRecord
    from provisioner.store.store import StateStore

    StateStore().create_run(RunRecord(name=name, status=status, submitted_at=submitted_at, **fields))


# --- item 9: help texts ---

def test_every_help_text_has_one_style_and_no_typer_internals():
    pages = [[name] for name in COMMANDS] + [[group, sub] for group, subs in SUBCOMMANDS.items() for sub in subs]
    for words in pages:
        result = run_cli(*words, "--help")
        assert result.returncode == 0, (words, result.stderr)
        text = result.stdout
        usage = text.splitlines()[0]
        assert usage.startswith(f"Usage: dstack {' '.join(words)}"), (words, usage)
        assert "{" not in usage, (words, usage)  # `{name}`: a required argument is NAME
        assert not re.search(r"<(str|int|bool|float|list|path|text)", text), (words, text)
        assert "--install-completion" not in text and "╭" not in text and "│" not in text, (words, text)


def test_version_short_flag_and_destroy_alias():
    assert run_cli("-v").stdout == run_cli("--version").stdout == "dstack 0.1.0\n"
    record_run("finished")
    destroyed = run_cli("destroy", "finished")
    assert destroyed.returncode == 0, destroyed.stderr
    assert run_cli("ps", "-a", "--json").stdout.count('"name"') == 0


# --- item 8: event ---

def test_event_list_and_dstacks_filters():
    from provisioner.store.store import StateStore

    record_run("alpha", backend="ssh", region="lab")
    record_run("beta", backend="local", region="local", submitted_at=2.0)
    store = StateStore()
    for run in ("alpha", "beta"):
        store.add_event(run, "submitted", f"{run} went in")

    def runs_of(*args):
        result = run_cli("event", *args, "--json")
        assert result.returncode == 0, result.stderr
        return sorted({e["run"] for e in json.loads(result.stdout)["events"]})

    assert runs_of("list") == runs_of() == ["alpha", "beta"]
    assert runs_of("list", "alpha") == runs_of("alpha") == ["alpha"]
    assert runs_of("--target-run", "beta") == runs_of("list", "--within-run", "beta") == ["beta"]
    assert runs_of("--target-run", "alpha", "--target-run", "beta") == ["alpha", "beta"]
    assert runs_of("--within-fleet", "lab") == ["alpha"]  # the runs that ran on the fleet's hosts
    assert runs_of("--include-target-type", "run") == ["alpha", "beta"]
    fleet = run_cli("event", "--target-fleet", "lab", "--json")
    assert fleet.returncode == 0 and json.loads(fleet.stdout) == {"events": []}
    assert "warning: --target-fleet: only runs (and their jobs) have events here" in fleet.stderr
    both = run_cli("event", "--target-run", "alpha", "--target-volume", "v")
    assert both.returncode == 2 and "--target-run and --target-volume exclude each other" in both.stderr
    assert run_cli("event", "--target-run", "nope").stderr == "error: no run named nope (see `dstack ps -a`)\n"


# --- item 8: ps ---

H100X8 = {"instance": {"name": "p5.48xlarge", "resources": {"gpus": [{"name": "H100", "memory_mib": 81920}] * 8}}}


def test_ps_shows_the_last_run_a_gpu_column_and_errors_only_when_verbose():
    record_run("older", status="failed", reason="no offer could be provisioned: quota")
    record_run("newest", status="done", submitted_at=2.0, backend="aws", offer=H100X8)
    lines = run_cli("ps").stdout.splitlines()  # none active: the last run, as dstack's `ps`
    assert lines[0].split() == ["NAME", "STATUS", "BACKEND", "REGION", "INSTANCE", "GPU", "$/HOUR", "COST", "AGE"]
    assert len(lines) == 2 and lines[1].split()[:6] == ["newest", "done", "aws", "-", "-", "H100:80GB:8"]
    table = run_cli("ps", "-a").stdout
    assert "older" in table and "quota" not in table
    verbose = run_cli("ps", "-a", "-v").stdout
    assert "ERROR" in verbose and "no offer could be provisioned: quota" in verbose
    assert json.loads(run_cli("ps", "--json").stdout) == {"runs": []}  # our JSON: active runs unless -a/-n
    as_format = json.loads(run_cli("ps", "-a", "--format", "json").stdout)
    assert [r["name"] for r in as_format["runs"]] == ["newest", "older"]
    assert as_format["runs"][0]["gpu"] == "H100:80GB:8" and as_format["runs"][1]["gpu"] is None
    bad = run_cli("ps", "--format", "yaml")
    assert bad.returncode == 2 and "'yaml' is not one of plain, json" in bad.stderr


# --- item 8: fleet and volume -w -v ---

def test_fleet_and_volume_lists_take_watch_and_verbose():
    from provisioner.store.records import VolumeRecord
    from provisioner.store.store import StateStore

    store = StateStore()
    store.save_fleet("lab", "/home/me/fleet.dstack.yml", [])
    store.create_volume(VolumeRecord(name="data", status="active", backend="aws", region="us-east-1",
                                     created_at=time.time(), zone="us-east-1a", size_gb=100, volume_id="vol-1",
                                     external=True))
    for command in (["fleet"], ["fleet", "list"]):
        plain, verbose = run_cli(*command).stdout, run_cli(*command, "-v").stdout
        assert "SOURCE" not in plain.split() and {"SOURCE", "CREATED"} <= set(verbose.split()), verbose
    for command in (["volume"], ["volume", "list"]):
        plain, verbose = run_cli(*command).stdout, run_cli(*command, "-v").stdout
        assert "CREATED" not in plain.split() and {"REGION", "CREATED", "us-east-1"} <= set(verbose.split()), verbose
    for command in (["fleet", "-w"], ["volume", "list", "-w", "-v"]):
        watcher = subprocess.Popen([sys.executable, "-m", "cli.main", *command], cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=dict(os.environ))
        header = b"FLEET" if command[0] == "fleet" else b"NAME"
        seen = wait_for_output(watcher, header, timeout=30)
        deadline = time.monotonic() + 30
        while seen.count(header) < 2 and time.monotonic() < deadline:  # printed again after 2 s
            seen += watcher.stdout.read() or b""
            time.sleep(0.1)
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=30) == 0 and seen.count(header) >= 2, seen


# --- items 8 and 10: offer ---

def test_offer_takes_dstacks_format_and_profile_flags():
    args = ["--gpu", "H100:8", "--max-offers", "2", "-b", "aws"]
    as_json = run_cli("offer", *args, "--json")
    assert as_json.returncode == 0 and run_cli("offer", *args, "--format", "json").stdout == as_json.stdout
    flags = run_cli("offer", *args, "--format", "json", "--spot-policy", "on-demand", "--max-duration", "2h",
                    "--retry", "--retry-duration", "1h", "--idle-duration", "30m", "--dont-destroy", "--no-profile")
    assert flags.returncode == 0, flags.stderr
    assert {o["instance"]["resources"]["spot"] for o in json.loads(flags.stdout)["offers"]} == {False}
    for bad, hint in ((["--max-duration", "soon"], "--max-duration"), (["--profile", "p"], "--profile"),
                      (["--fleet", "nope"], "--fleet"), (["--format", "xml"], "--format")):
        result = run_cli("offer", *args, *bad)
        assert result.returncode == 2 and hint in result.stderr, result.stderr
    reuse = json.loads(run_cli("offer", "-R", "--json").stdout)["offers"]
    assert reuse and {o["backend"] for o in reuse} <= {"local", "ssh"}


def test_offer_rows_per_zone_show_their_zone():
    lines = run_cli("offer", "--gpu", "A10G", "-b", "aws", "-r", "us-east-1", "--spot", "--max-offers",
                    "20").stdout.splitlines()
    header = lines[1].split()
    assert header[:5] == ["#", "BACKEND", "REGION", "ZONE", "INSTANCE"]
    rows = [line.split()[1:] for line in lines[2:] if line.strip()[:1].isdigit()]
    same_type = [row for row in rows if row[3] == "g5.xlarge"]
    assert len(same_type) > 1 and len({row[2] for row in same_type}) == len(same_type)  # told apart by zone
    assert not any(row[2].startswith("us-east-1") for row in rows), rows  # the zone after its region


def test_offer_group_by_gpu_shows_the_price_per_gpu():
    args = ["offer", "--gpu", "H100:8", "-b", "aws", "--on-demand", "--group-by", "gpu"]
    table = run_cli(*args).stdout
    assert "$/GPU" in table.splitlines()[1]
    [group] = json.loads(run_cli(*args, "--json").stdout)["groups"]
    offers = json.loads(run_cli("offer", "--gpu", "H100:8", "-b", "aws", "--on-demand", "--json",
                                "--max-offers", "1000").stdout)["offers"]
    cheapest = min(o["price"] for o in offers)
    assert group["price_per_gpu"]["min"] == pytest.approx(cheapest / 8, abs=1e-5)
    repeated = json.loads(run_cli(*args, "--group-by", "backend", "--json").stdout)["groups"]
    assert repeated[0]["backend"] == "aws"  # `--group-by` repeated, as dstack takes it


# --- item 7: attach ---

TICKS = "commands: ['for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.5; done']\n"


def test_attach_replays_no_output_unless_logs(tmp_path, home_env):
    conf = write(tmp_path, "a.dstack.yml", f"type: task\nname: quiet\n{TICKS}")
    assert run_cli("apply", "-f", conf, "-y", "-d", env=home_env).returncode == 0
    quiet = run_cli("attach", "quiet", env=home_env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "" and "Attached to quiet" in quiet.stderr and "exit code 0" in quiet.stderr
    wait_status(home_env, "quiet", "done")
    again = write(tmp_path, "b.dstack.yml", f"type: task\nname: loud\n{TICKS}")
    assert run_cli("apply", "-f", again, "-y", "-d", env=home_env).returncode == 0
    for flags, message in ((["--since", "1m"], "add --logs"), (["--job", "1"], "loud has one node, 0"),
                           (["-p", "x:1"], "Invalid port")):
        result = run_cli("attach", "loud", *flags, env=home_env)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    loud = run_cli("attach", "loud", "--logs", env=home_env)
    assert loud.returncode == 0 and loud.stdout == "".join(f"tick {i}\n" for i in range(1, 7)), loud.stderr


def test_attach_remaps_ports_and_binds_another_address(tmp_path, home_env):
    port, local = free_port(), free_port()
    conf = write(tmp_path, "w.dstack.yml", f"type: task\nname: web\nports: [{port}]\ncommands: "
                 f"['python3 -m http.server {port} --bind 127.0.0.1']\n")
    assert run_cli("apply", "-f", conf, "-y", "-d", env=home_env).returncode == 0
    attached = spawn(["attach", "web", "-p", f"{local}:{port}", "--host", "127.0.0.2"], home_env)
    try:
        body, deadline = None, time.monotonic() + 30
        while body is None and time.monotonic() < deadline:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.2:{local}/", timeout=5).read()
            except OSError:
                time.sleep(0.2)
        assert body is not None and b"Directory listing" in body
    finally:
        attached.send_signal(signal.SIGINT)
        _, stderr = attached.communicate(timeout=30)
        run_cli("stop", "web", "-x", "-y", env=home_env)
    assert f"Port {port} is at http://127.0.0.2:{local}" in stderr.decode()
    assert "Detached; web goes on" in stderr.decode()


def test_attach_writes_a_tasks_ssh_entry_with_the_identity_given(tmp_path, make_host, client_key, dstack_home,
                                                                monkeypatch):
    from tests.test_dev_environments import ssh
    from tests.test_faults import add_fleet

    user_home = tmp_path / "user-home"
    user_home.mkdir()
    monkeypatch.setenv("HOME", str(user_home))
    env = {"DSTACK_HOME": str(dstack_home), "HOME": str(user_home)}
    host = make_host()
    add_fleet(tmp_path, env, client_key, [host])
    conf = write(tmp_path, "t.dstack.yml", "type: task\nname: on-host\nbackends: [ssh]\ncommands: [sleep 300]\n")
    assert run_cli("apply", "-f", conf, "-y", "-d", env=env, timeout=300).returncode == 0
    identity = tmp_path / "my-key"
    identity.write_bytes(open(client_key[0], "rb").read())
    identity.chmod(0o600)
    missing = run_cli("attach", "on-host", "--ssh-identity", str(tmp_path / "none"), env=env)
    assert missing.returncode == 1 and "--ssh-identity" in missing.stderr and "no such file" in missing.stderr
    attached = spawn(["attach", "on-host", "--ssh-identity", str(identity)], env)
    try:
        entries = dstack_home / "ssh" / "config"
        deadline = time.monotonic() + 60
        while not (entries.exists() and "Host on-host" in entries.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert f"IdentityFile {identity}" in entries.read_text()
        reached = ssh(user_home, "on-host", "cat /proc/sys/kernel/hostname || hostname")
        assert reached.returncode == 0, reached.stderr
    finally:
        attached.send_signal(signal.SIGINT)
        attached.communicate(timeout=30)
    assert run_cli("stop", "on-host", "-x", "-y", env=env, timeout=120).returncode == 0
    assert "Host on-host" not in entries.read_text()  # the run's end removes its entry
