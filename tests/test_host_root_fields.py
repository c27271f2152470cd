"""Issue 20: a task without `image:` honours `resources.shm_size` (its own /dev/shm, a tmpfs in a mount namespace of
the job's) and `privileged: true` (the commands as root) where the host gives root, and is refused by name, naming
the host, where it does not. Through the CLI: this machine (the local backend, as root and as an ordinary user) and
namespace SSH hosts (root, and a login user without sudo). The machine's own /dev/shm is never touched: the namespace
hosts share this machine's mounts, so each test compares it before and after."""

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, run_cli, write

SHM_TASK = ("type: task\nname: {name}\nbackends: [{backend}]\nresources: {{shm_size: 0.25GB}}\n"
            "commands: ['df -m /dev/shm | tail -1', 'echo uid=$(id -u)']\n")
PRIVILEGED_TASK = "type: task\nname: {name}\nbackends: [{backend}]\nprivileged: true\ncommands: ['echo uid=$(id -u)']\n"


def machine_shm():
    """This machine's /dev/shm as its mount table and the filesystem say: (the mount line's fields, its size)."""
    lines = [line.split(" - ")[0].split()[3:] for line in open("/proc/1/mountinfo") if line.split()[4] == "/dev/shm"]
    stat = os.statvfs("/dev/shm")
    return lines, stat.f_blocks * stat.f_frsize


@pytest.fixture
def untouched_shm():
    before = machine_shm()
    yield
    assert machine_shm() == before


def apply_fleet(tmp_path, env, client_key, host, user):
    fleet = write(tmp_path, "fleet.dstack.yml", f"type: fleet\nname: lab\nssh_config:\n  user: {user}\n"
                  f"  identity_file: {client_key[0]}\n  hosts: [{host.address}]\n")
    applied = run_cli("apply", "-f", fleet, "-y", env=env)
    assert applied.returncode == 0, applied.stderr


def shm_line(output: str) -> list:
    return next(line.split() for line in output.splitlines() if "/dev/shm" in line)


def test_shm_size_without_image_is_the_jobs_own_dev_shm_on_this_machine(tmp_path, dstack_home, untouched_shm):
    env = {"DSTACK_HOME": str(dstack_home)}
    task = write(tmp_path, "shm.dstack.yml", SHM_TASK.format(name="shm-local", backend="local"))
    plan = run_cli("apply", "-f", task, "--dry-run", env=env)
    assert plan.returncode == 0, plan.stderr
    done = run_cli("apply", "-f", task, "-y", env=env)
    assert done.returncode == 0, done.stderr
    assert shm_line(done.stdout)[:2] == ["dstack-shm", "256"]  # `df -m`: a 256 MiB filesystem of the job's own
    assert "uid=0" in done.stdout  # dstack runs as root here; the job ran as its user, root


def test_shm_size_and_privileged_on_an_ssh_host_whose_user_is_root(tmp_path, dstack_home, make_host, client_key,
                                                                    untouched_shm):
    env = {"DSTACK_HOME": str(dstack_home)}
    host = make_host()
    apply_fleet(tmp_path, env, client_key, host, "root")
    task = write(tmp_path, "shm.dstack.yml", SHM_TASK.format(name="shm-ssh", backend="ssh"))
    done = run_cli("apply", "-f", task, "-y", env=env)
    assert done.returncode == 0, done.stderr
    assert shm_line(done.stdout)[:2] == ["dstack-shm", "256"]
    task = write(tmp_path, "priv.dstack.yml", PRIVILEGED_TASK.format(name="priv-ssh", backend="ssh"))
    done = run_cli("apply", "-f", task, "-y", env=env)
    assert done.returncode == 0 and "uid=0" in done.stdout, done.stderr


def test_an_ssh_host_whose_user_has_no_sudo_is_refused_by_name_before_the_job_starts(tmp_path, dstack_home, make_host,
                                                                                      client_key, untouched_shm):
    env = {"DSTACK_HOME": str(dstack_home)}
    host = make_host(login_user="worker")
    apply_fleet(tmp_path, env, client_key, host, "worker")
    plain = write(tmp_path, "plain.dstack.yml", "type: task\nname: plain\nbackends: [ssh]\n"
                  "commands: ['echo uid=$(id -u)']\n")
    done = run_cli("apply", "-f", plain, "-y", env=env)  # the host works for a task that needs no root
    assert done.returncode == 0 and f"uid={host.uid}" in done.stdout, done.stderr
    for name, text, what in (("shm-nosudo", SHM_TASK, "resources.shm_size"),
                             ("priv-nosudo", PRIVILEGED_TASK, "privileged: true")):
        refused = run_cli("apply", "-f", write(tmp_path, f"{name}.dstack.yml", text.format(name=name, backend="ssh")),
                          "-y", env=env)
        assert refused.returncode != 0
        assert f"worker@{host.address}" in refused.stderr or host.address in refused.stderr, refused.stderr
        assert f"worker can not become root here (it is not root and has no passwordless sudo), which {what} " \
               "without image: needs" in refused.stderr
        assert "Traceback" not in refused.stderr, refused.stderr
        assert not (host.jobs_dir / name / "output.log").exists()  # refused before anything ran


def test_this_machine_as_an_ordinary_user_refuses_shm_size_and_privileged_naming_it(tmp_path):
    """dstack run as `nobody` (with only the right to read /root, where this machine's Python lives)."""
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    for name, text, field in (("shm", SHM_TASK, "resources.shm_size"), ("priv", PRIVILEGED_TASK, "privileged")):
        path = write(tmp_path, f"{name}.dstack.yml", text.format(name=name, backend="local"))
        done = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps",
                               "+dac_read_search", "--ambient-caps", "+dac_read_search", "env", f"HOME={home}",
                               f"DSTACK_HOME={home}", sys.executable, "-m", "cli.main", "apply", "-f", path,
                               "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1
        assert done.stderr == (f"error: {path}: `{field}` without `image:` needs root on this machine (the local "
                               "backend): dstack runs as neither root nor a user with passwordless sudo here; run it "
                               "as one, use `image:`, or an SSH fleet or cloud backend\n")


def test_dstack_server_access_is_refused_saying_what_to_do_instead(tmp_path):
    path = write(tmp_path, "x.dstack.yml", "type: task\ncommands: [x]\ndstack: true\n")
    refused = run_cli("apply", "-f", path, "--dry-run", "-b", "local")
    assert refused.returncode == 1
    assert "`dstack` is not supported: there is no dstack server to reach" in refused.stderr
    assert "remove it" in refused.stderr and "`env` or `secrets`" in refused.stderr
