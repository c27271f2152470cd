"""Dev environments: dstack's grammar of `type: dev-environment`, the `Host NAME` entries, and a real run on a
namespace SSH host reached with the user's own `ssh` client.

The user's home is a folder of the test ($HOME): the product writes `$HOME/.ssh/config` there, never this machine's.
OpenSSH reads `~` from the password database, not $HOME, so `ssh` is given that config with `-F`."""

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from configuration.loader import parse_configuration
from tests.docker_daemon import IMAGE, docker_daemon  # noqa: F401 (fixture)
from tests.helpers import DATA, run_cli, write
from tests.test_runs import ps, spawn, wait_for_output, wait_status

GIT = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]


def one_commit_repo(repo: Path, files: dict) -> Path:
    """A git repository at `repo` whose one commit holds `files` (name: text)."""
    repo.mkdir()
    for name, text in files.items():
        (repo / name).write_text(text)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*GIT, "-C", str(repo), "add", "."], check=True)
    subprocess.run([*GIT, "-C", str(repo), "commit", "-qm", "one"], check=True)
    return repo


def parse(text):
    return parse_configuration(text, "d.dstack.yml")


# --- the grammar ---

def seed_dev_environments():
    text = (DATA / "task-reference.md").read_text()
    blocks = re.findall(r'editor-title="([^"]+)">\s*```yaml\n(.*?)```', text, re.S)
    return [body for _, body in blocks if "type: dev-environment" in body]


@pytest.mark.parametrize("index", range(3))
def test_the_seed_pages_dev_environments_with_commands_are_refused_naming_init_and_task(tmp_path, index):
    """dstack 0.22.5: `dev-environment.commands: Extra inputs are not permitted`; its field is `init`."""
    body = seed_dev_environments()[index]
    conf = write(tmp_path, ".dstack.yml", body)
    result = run_cli("apply", "-f", conf, "--dry-run", "-b", "aws")
    assert result.returncode == 1, result.stdout
    line = body.splitlines().index("commands:") + 1
    assert f"{conf}:{line}: dev-environment.commands: Extra inputs are not permitted" in result.stderr
    assert "`init`" in result.stderr and "`type: task`" in result.stderr
    assert "Traceback" not in result.stderr
    fixed = parse(body.replace("commands:", "init:"))
    assert fixed.init[0].startswith("pip install")


@pytest.mark.parametrize("text, field, expected", [
    ("", "ide", None),  # dstack's default: no IDE, SSH only
    ("ide: windsurf\n", "ide", "windsurf"),
    ("ide: zed\n", "ide", "zed"),
    ("inactivity_duration: 2h\n", "inactivity_duration", 7200),
    ("inactivity_duration: off\n", "inactivity_duration", None),
    ("inactivity_duration: 90\n", "inactivity_duration", 90),
    ("ide: vscode\nversion: 1a2b3c\n", "version", "1a2b3c"),
])
def test_dev_environment_fields(text, field, expected):
    assert getattr(parse(f"type: dev-environment\n{text}"), field) == expected


@pytest.mark.parametrize("text, message", [
    ("ide: emacs\n", "ide: 'emacs' is not allowed; input should be 'vscode', 'cursor', 'windsurf' or 'zed'"),
    ("version: 1a2b\n", "`version` requires `ide` to be set"),
    ("ide: windsurf\nversion: 1.2.3\n", "Invalid Windsurf version: '1.2.3' (expected `version@commit`"),
    ("ide: vscode\nversion: 'x; rm -rf ~'\n", "Invalid IDE version"),
    ("image: ubuntu\nentrypoint: bash\n", "`entrypoint` is not supported for a dev-environment"),
    ("nodes: 2\n", "unknown field 'nodes'"),
])
def test_what_a_dev_environment_cannot_be_is_refused_by_name(tmp_path, text, message):
    conf = write(tmp_path, "d.dstack.yml", f"type: dev-environment\n{text}")
    result = run_cli("apply", "-f", conf, "--dry-run", "-b", "aws")
    assert result.returncode == 1 and message in result.stderr, result.stderr


def test_the_local_backend_is_refused_naming_why(tmp_path):
    conf = write(tmp_path, "d.dstack.yml", "type: dev-environment\ninit: [echo hi]\n")
    result = run_cli("apply", "-f", conf, "--dry-run", "-b", "local")
    assert result.returncode == 1
    assert "a dev-environment is not supported on the local backend: it is reached with `ssh NAME`" in result.stderr


@pytest.mark.parametrize("backend, instance", [("aws", "aws:ec2/instance:Instance"),
                                               ("gcp", "gcp:compute/instance:Instance")])
def test_the_dry_run_renders_a_cloud_dev_environments_stack(tmp_path, backend, instance):
    pytest.importorskip(f"pulumi_{backend}")
    conf = write(tmp_path, "d.dstack.yml", "type: dev-environment\nname: dev-cloud\nide: vscode\ninit: [echo hi]\n"
                                           "ports: [8888]\nresources: {gpu: 24GB}\ninactivity_duration: 2h\n")
    result = run_cli("apply", "-f", conf, "--dry-run", "--json", "-b", backend)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["configuration"]["type"] == "dev-environment" and plan["configuration"]["inactivity_duration"] == 7200
    assert plan["offer"]["backend"] == backend and instance in {r["type"] for r in plan["resources"]}
    assert plan["configuration"]["ports"] == [{"local_port": 8888, "container_port": 8888}]


# --- the SSH entries ---

@pytest.fixture
def user_home(tmp_path, monkeypatch):
    home = tmp_path / "user-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_an_entry_is_written_replaced_and_removed_and_the_include_line_is_added_once(user_home, dstack_home):
    from provisioner.runs.ssh_entries import SSHEntry, add_entry, entries_path, has_entry, remove_entry

    config = user_home / ".ssh" / "config"
    config.parent.mkdir(mode=0o700)
    config.write_text("Host old\n    HostName example.invalid\n")
    message = add_entry(SSHEntry("dev1", "10.0.0.1", 2222, "ubuntu", "/k/key", ["ssh-ed25519 AAAA"]))
    assert message and "Include" in message and str(config) in message
    text = config.read_text()
    assert text.startswith(f"Include {entries_path()}\n") and "Host old\n    HostName example.invalid\n" in text
    assert add_entry(SSHEntry("dev2", "10.0.0.2")) is None  # the line is there: nothing said, nothing added
    assert add_entry(SSHEntry("dev1", "10.0.0.3", user="root", identity_file="/k/key")) is None
    assert config.read_text().count("Include") == 1
    entries = entries_path().read_text()
    assert entries.count("Host dev1\n") == 1 and "HostName 10.0.0.3" in entries and "10.0.0.1" not in entries
    assert oct(entries_path().stat().st_mode & 0o777) == "0o600"
    assert remove_entry("dev1") and not has_entry("dev1") and has_entry("dev2")
    assert not remove_entry("dev1")


def test_an_entry_behind_a_jump_host_and_with_host_keys(user_home, dstack_home):
    from provisioner.runs.ssh_entries import SSHEntry, add_entry, entries_path, known_hosts_path, remove_entry

    jump = SSHEntry("dev3-jump", "bastion.example", 22, "me", "/k/jump", ["ssh-ed25519 JJJJ"])
    add_entry(SSHEntry("dev3", "10.1.0.5", 22, "ubuntu", "/k/key", ["ssh-ed25519 KKKK"], jump=jump))
    entries = entries_path().read_text()
    assert "Host dev3\n" in entries and "    ProxyJump dev3-jump\n" in entries and "Host dev3-jump\n" in entries
    assert "    HostKeyAlias dev3\n" in entries and "    StrictHostKeyChecking yes\n" in entries
    assert known_hosts_path().read_text() == "dev3 ssh-ed25519 KKKK\ndev3-jump ssh-ed25519 JJJJ\n"
    remove_entry("dev3")
    assert entries_path().read_text() == "" and known_hosts_path().read_text() == ""


# --- a run on an SSH host, through the CLI ---

def ssh(home, name, *command, timeout=60):
    """The user's own OpenSSH client, with the test's ssh config (OpenSSH ignores $HOME: see the module's doc)."""
    return subprocess.run(["ssh", "-F", str(home / ".ssh" / "config"), "-o", "BatchMode=yes", name, *command],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def dev_setup(tmp_path, make_host, client_key, user_home, dstack_home):
    """A fleet of one namespace host, and a git repository holding the dev environment's configuration."""
    host = make_host()
    env = {"DSTACK_HOME": str(dstack_home), "HOME": str(user_home)}
    fleet = write(tmp_path, "fleet.dstack.yml", f"type: fleet\nname: lab\nssh_config:\n  user: root\n"
                  f"  identity_file: {client_key[0]}\n  hosts: [{host.address}]\n")
    assert run_cli("apply", "-f", fleet, "-y", env=env).returncode == 0
    return host, env, one_commit_repo(tmp_path / "project", {"version.txt": "v7\n"})


def host_processes(host, env):
    """The namespace's processes other than its sshd listener, once dstack's kept connection to the host
    (provisioner.host.keeper: its session and shells) has been ended."""
    from tests.test_keeper import end_keepers

    end_keepers(env["DSTACK_HOME"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(host.pids()) > 1:
        time.sleep(0.1)
    found = []
    for pid in host.pids():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if pid != str(host.process.pid) and not command.startswith("ip netns"):
            found.append(command)
    return found


def test_a_detached_dev_environment_is_reached_with_ssh_and_ends_after_inactivity(dev_setup, user_home):
    host, env, repo = dev_setup
    conf = repo / ".dstack.yml"
    conf.write_text("type: dev-environment\nname: dev-ssh\nide: vscode\nversion: 0f0e0d0c\ninactivity_duration: 10s\n"
                    "env: [MODE=dev]\ninit: [echo init-ran > init.txt]\n")
    applied = run_cli("apply", "-f", str(conf), "-d", "-y", "-b", "ssh", env=env)
    assert applied.returncode == 0, applied.stderr
    # a session open longer than inactivity_duration (from now, while the checks below run) keeps the run
    held = subprocess.Popen(["ssh", "-F", str(user_home / ".ssh" / "config"), "-o", "BatchMode=yes", "dev-ssh",
                             "sleep 16; echo still-here"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    assert f"Added `Include {Path(env['DSTACK_HOME']) / 'ssh' / 'config'}` to the top of " in applied.stderr
    workdir = f"{host.jobs_dir}/dev-ssh/repo"
    assert f"To open in VS Code: vscode://vscode-remote/ssh-remote+dev-ssh{workdir}" in applied.stderr
    session = ssh(user_home, "dev-ssh", "hostname; pwd; cat version.txt init.txt; echo $MODE")
    assert session.returncode == 0, session.stderr
    assert session.stdout.split() == [socket.gethostname(), workdir, "v7", "init-ran", "dev"]
    log = run_cli("logs", "dev-ssh", env=env).stdout  # the host has no way out: the IDE server's download says so
    assert "dstack: could not install the VS Code server 0f0e0d0c from https://update.code.visualstudio.com/" in log
    run = ps(env)["dev-ssh"]
    assert run["status"] == "running" and run["type"] == "dev-environment"
    assert run["dev_environment"]["ssh_host"] == "dev-ssh"
    assert run["dev_environment"]["ide_url"] == f"vscode://vscode-remote/ssh-remote+dev-ssh{workdir}"

    out, err = held.communicate(timeout=60)
    assert held.returncode == 0 and out == "still-here\n", err  # the end of the run would have closed it
    # its end starts the clock
    closed_at = time.monotonic()
    while time.monotonic() - closed_at < 40 and ps(env)["dev-ssh"]["status"] == "running":
        time.sleep(1)
    run = ps(env)["dev-ssh"]
    assert run["status"] == "terminated" and "inactivity_duration" in run["reason"]
    assert time.monotonic() - closed_at >= 8  # not before the limit (10 s, sampled every second)
    assert ssh(user_home, "dev-ssh", "true").returncode != 0  # the entry is gone with the run
    assert "dev-ssh" not in (Path(env["DSTACK_HOME"]) / "ssh" / "config").read_text()
    assert "dstack-dev-dev-ssh" not in (host.dir / "authorized_keys").read_text()
    assert host_processes(host, env) == []


def test_stop_removes_the_entry_and_leaves_nothing_on_the_host(dev_setup, user_home):
    host, env, repo = dev_setup
    conf = repo / ".dstack.yml"
    conf.write_text("type: dev-environment\nname: dev-stop\npython: '3.11'\n")
    applied = run_cli("apply", "-f", str(conf), "-d", "-y", "-b", "ssh", "--json", env=env)
    assert applied.returncode == 0, applied.stderr
    run = json.loads(applied.stdout)["run"]
    assert (run["type"], run["status"]) == ("dev-environment", "running")
    assert run["dev_environment"]["ssh_host"] == "dev-stop"
    version = ssh(user_home, "dev-stop", "python --version")
    assert version.returncode == 0 and version.stdout.startswith("Python 3.11"), version.stderr
    login = subprocess.run(["ssh", "-F", str(user_home / ".ssh" / "config"), "-o", "BatchMode=yes", "dev-stop"],
                           input="pwd; command -v python\n", capture_output=True, text=True, timeout=60)
    assert login.returncode == 0, login.stderr  # a login shell: the profile, then the run's folder and venv
    assert login.stdout.split() == [f"{host.jobs_dir}/dev-stop/repo", f"{host.jobs_dir}/dev-stop/venv/bin/python"]
    keys = (host.dir / "authorized_keys").read_text()
    assert 'command="' in keys and "dstack-dev-dev-stop" in keys
    stopped = run_cli("stop", "dev-stop", "-y", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert ssh(user_home, "dev-stop", "true").returncode != 0
    assert "Host dev-stop" not in (Path(env["DSTACK_HOME"]) / "ssh" / "config").read_text()
    assert (host.dir / "authorized_keys").read_text().strip() == host.client_public_key
    assert host_processes(host, env) == []
    assert not (Path(env["DSTACK_HOME"]) / "runs" / "dev-stop" / "ssh_key").exists()


def entry_works(home, name, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ssh(home, name, "true", timeout=20).returncode == 0:
            return True
        time.sleep(0.5)
    return False


def test_attach_writes_the_entry_again_and_being_attached_is_activity(dev_setup, user_home):
    from provisioner.runs.ssh_entries import remove_entry

    host, env, repo = dev_setup
    conf = repo / ".dstack.yml"
    conf.write_text("type: dev-environment\nname: dev-att\nide: cursor\ninactivity_duration: 8s\n"
                    "ports: ['*:18731']\n")
    assert run_cli("apply", "-f", str(conf), "-d", "-y", "-b", "ssh", env=env).returncode == 0
    # a session of the user's own keeps the run until the attached dstack is up, however long that takes here
    held = subprocess.Popen(["ssh", "-F", str(user_home / ".ssh" / "config"), "-o", "BatchMode=yes", "dev-att",
                             "echo up; cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    attached = None
    try:
        assert wait_for_output(held, b"up\n", timeout=60)
        assert remove_entry("dev-att") and ssh(user_home, "dev-att", "true").returncode != 0
        attached = spawn(["attach", "dev-att"], env)
        assert entry_works(user_home, "dev-att")
    finally:
        held.stdin.close()  # its `cat` ends, and with it the session
        held.wait(30)
    try:
        time.sleep(11)  # longer than inactivity_duration (sampled every second), with no ssh session but the attached
        assert ps(env)["dev-att"]["status"] == "running"  # dstack's
    finally:
        if attached is not None:
            attached.send_signal(signal.SIGINT)
            _, stderr = attached.communicate(timeout=30)
    assert f"To open in Cursor: cursor://vscode-remote/ssh-remote+dev-att{host.jobs_dir}/dev-att/repo" in \
        stderr.decode()
    assert "Port 18731 is at http://localhost:" in stderr.decode()  # the port forwarded again
    assert wait_status(env, "dev-att", "terminated", timeout=60)["reason"] == \
        "no SSH connection for inactivity_duration"


def test_an_attached_apply_announces_the_entry_streams_init_and_ctrl_c_ends_the_run(dev_setup, user_home):
    host, env, repo = dev_setup
    conf = repo / ".dstack.yml"
    conf.write_text("type: dev-environment\nname: dev-fg\ninit: [echo from-init]\n")
    applied = spawn(["apply", "-f", str(conf), "-y", "-b", "ssh"], env)
    try:
        output = wait_for_output(applied, b"dstack: dev environment dev-fg is ready\n", timeout=60)
        assert output.startswith(b"from-init\n")
        assert entry_works(user_home, "dev-fg")
        assert ps(env)["dev-fg"]["dev_environment"]["ssh_host"] == "dev-fg"
    finally:
        applied.send_signal(signal.SIGTERM)  # stops it; Ctrl-C with -y would detach
        _, stderr = applied.communicate(timeout=60)
    assert "dev-fg is ready: `ssh dev-fg` opens a shell in" in stderr.decode()
    run = ps(env)["dev-fg"]
    assert run["status"] == "terminated" and run["dev_environment"]["ssh_host"] is None
    assert ssh(user_home, "dev-fg", "true").returncode != 0
    assert host_processes(host, env) == []


# --- `image:`: sessions in the container ---

def test_an_image_dev_environments_sessions_run_in_its_container(docker_daemon, monkeypatch, tmp_path):  # noqa: F811
    """The job level on this machine with the tests' Docker daemon: what login.sh (the key's forced command) does
    with a session, and the key's line in and out of authorized_keys with the job."""
    from provisioner.host.transport import LocalTransport
    from provisioner.jobs.control import start_job, stop_job
    from provisioner.jobs.dev_env import DevSession, job_commands
    from provisioner.jobs.script import JobSpec
    from provisioner.jobs.uploads import LEGACY_REPO_DIR, Upload, UploadPlan, list_folder

    keys = tmp_path / "authorized_keys"  # never this machine's own
    keys.write_text("ssh-ed25519 AAAAother someone\n")
    monkeypatch.setenv("DSTACK_AUTHORIZED_KEYS", str(keys))
    monkeypatch.setenv("DOCKER_HOST", docker_daemon.host)
    local = LocalTransport(str(tmp_path / "jobs"))
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "data.txt").write_text("from the repo\n")
    job = JobSpec(run_name="dev-img", image=IMAGE, env={"MODE": "img"},
                  commands=job_commands("dev-img", [], ["echo made > /tmp/made"], None, None),
                  dev=DevSession("ssh-ed25519 AAAAdevkey dstack-dev-dev-img"),
                  uploads=UploadPlan([Upload(repo, list_folder(repo), LEGACY_REPO_DIR, "repo")]))
    start_job(local, job)
    folder = tmp_path / "jobs" / "dev-img"
    deadline, log = time.monotonic() + 60, folder / "output.log"  # (made by the job's start, a moment after)
    while b"dstack: dev environment dev-img is ready\n" not in (log.read_bytes() if log.exists() else b""):
        assert time.monotonic() < deadline and not (folder / "exit_code").exists(), log.read_text()
        time.sleep(0.2)
    assert keys.read_text() == (f'ssh-ed25519 AAAAother someone\ncommand="{folder}/login.sh" '
                                "ssh-ed25519 AAAAdevkey dstack-dev-dev-img\n")
    session = subprocess.run([str(folder / "login.sh")], capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, SSH_ORIGINAL_COMMAND="pwd; cat data.txt /tmp/made; echo $MODE"))
    assert session.returncode == 0, session.stderr
    assert session.stdout == "/workflow\nfrom the repo\nmade\nimg\n"
    login = subprocess.run([str(folder / "login.sh")], input="pwd\n", capture_output=True, text=True, timeout=60)
    assert (login.returncode, login.stdout) == (0, "/workflow\n"), login.stderr  # no command: a login shell
    stop_job(local, "dev-img", grace=5)
    assert keys.read_text() == "ssh-ed25519 AAAAother someone\n"


def test_an_init_that_fails_fails_the_detached_apply_and_leaves_no_entry(dev_setup, user_home):
    host, env, repo = dev_setup
    conf = repo / ".dstack.yml"
    conf.write_text("type: dev-environment\nname: dev-bad\ninit: [echo trying, exit 3]\n")
    applied = run_cli("apply", "-f", str(conf), "-d", "-y", "-b", "ssh", env=env)
    assert applied.returncode == 1
    assert "dev-bad: its job has ended (exit code 3) before `init` was done" in applied.stderr
    assert "Traceback" not in applied.stderr
    run = ps(env)["dev-bad"]
    assert run["status"] == "failed" and run["dev_environment"]["ssh_host"] is None
    assert not (Path(env["DSTACK_HOME"]) / "ssh" / "config").exists()
    assert "dstack-dev" not in (host.dir / "authorized_keys").read_text()
