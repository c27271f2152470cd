"""What job.sh makes in the job folder before the commands start, with the shell's own builtins where it can: the MPI
host file, a cluster node's ssh config and `ssh`; and the names it uses for that, which a task's env never loses.
Through local jobs (the job script an SSH host runs) with a HOME of the test's own."""

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.host.access import HostAccess
from provisioner.host.transport import LocalTransport
from provisioner.jobs.cluster_ssh import authorize_command, cluster_ssh, revoke_command
from provisioner.jobs.control import start_job
from provisioner.jobs.script import JobSpec
from tests.helpers import wait_exit


@pytest.fixture
def local(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin")
    monkeypatch.setenv("DSTACK_PROFILE_TIMEOUT", "5")
    return LocalTransport(str(tmp_path / "jobs"))


def run(local: LocalTransport, spec: JobSpec) -> str:
    start_job(local, spec)
    code, log = wait_exit(local, spec.run_name, timeout=60)
    assert code == 0, log
    return log


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs an ssh client")
def test_a_cluster_nodes_host_file_ssh_config_and_ssh(local, tmp_path):
    hosts = [HostAccess("ssh", "10.251.9.1", 22, "root", host_key="ssh-ed25519 AAAAone"),
             HostAccess("ssh", "10.251.9.2", 2222, "bench", host_key="ssh-ed25519 AAAAtwo")]
    ssh, _ = cluster_ssh("pair", hosts)
    spec = JobSpec(run_name="pair", gpus=2, cluster_ssh=ssh,
                   env={"DSTACK_MASTER_NODE_IP": "10.251.9.1", "DSTACK_NODES_IPS": "10.251.9.1\n10.251.9.2"},
                   commands=['cat "$DSTACK_MPI_HOSTFILE"', "command -v ssh",
                             "ssh -G 10.251.9.2 2>/dev/null | grep -E '^(user|port|identityfile|userknownhostsfile|identitiesonly"
                             "|stricthostkeychecking) ' | sort"])
    folder = tmp_path / "jobs" / "pair"
    assert run(local, spec) == ("10.251.9.1 slots=2\n10.251.9.2 slots=2\n"
                                f"{folder}/bin/ssh\n"
                                f"identitiesonly yes\nidentityfile {folder}/cluster_key\nport 2222\n"
                                f"stricthostkeychecking true\nuser bench\nuserknownhostsfile {folder}/known_hosts\n")
    assert (folder / "ssh_config").read_text() == ssh.config.replace("JOB_DIR", str(folder))
    assert (folder / "known_hosts").read_text() == "10.251.9.1 ssh-ed25519 AAAAone\n10.251.9.2 ssh-ed25519 AAAAtwo\n"
    real = [line for line in (folder / "bin" / "ssh").read_text().splitlines() if line.startswith("exec ")]
    assert real == [f'exec {shutil.which("ssh", path="/usr/local/bin:/usr/bin:/bin")} -F "{folder}/ssh_config" "$@"']
    assert (mode(folder / "ssh_config"), mode(folder / "bin" / "ssh"), mode(folder / "mpi_hostfile")) == \
        (0o600, 0o700, 0o600)
    assert not (folder / "cluster_key").exists()  # gone with the job, as before


def test_a_single_nodes_host_file_has_its_own_address(local):
    log = run(local, JobSpec(run_name="one", commands=['cat "$DSTACK_MPI_HOSTFILE"', 'echo "$DSTACK_NODES_IPS"']))
    address = log.splitlines()[-1]
    assert address and log == f"{address} slots=1\n{address}\n"


def test_a_tasks_env_keeps_every_name_the_job_script_uses_for_itself(local, tmp_path):
    """job.sh's own shell variables are `__dstack_*`: a task's env of short names reaches the commands whole."""
    names = ["c", "k", "t", "p", "d", "v", "from", "shim", "CACHE", "PY", "REAL_SSH"]
    ssh, _ = cluster_ssh("names", [HostAccess("ssh", "10.251.9.1", 22, "root", host_key="ssh-ed25519 AAAAone")])
    spec = JobSpec(run_name="names", cluster_ssh=ssh, env={name: f"value of {name}" for name in names},
                   commands=[f'echo "${{{name}:-unset}}"' for name in names])
    assert run(local, spec) == "".join(f"value of {name}\n" for name in names)


@pytest.mark.parametrize("shell", ["sh", "bash", "busybox sh"])
def test_the_runs_key_line_is_added_once_and_removed_alone(tmp_path, shell):
    """authorize_command adds the line where it is missing (the file and its folder made 0600 and 0700), never twice,
    on a line of its own; revoke_command takes out that line alone, not another run's whose name starts alike. With
    the host's shells, which read the file themselves."""
    if shutil.which(shell.split()[0]) is None:
        pytest.skip(f"no {shell}")
    keys = tmp_path / "ssh" / "authorized_keys"
    env = {"PATH": "/usr/bin:/bin", "DSTACK_AUTHORIZED_KEYS": str(keys), "DSTACK_JOBS_DIR": str(tmp_path / "jobs")}
    line = 'from="10.251.9.1,10.251.9.2" ssh-ed25519 AAAA-run dstack-cluster-r1'

    def sh(command: str) -> None:
        assert subprocess.run([*shell.split(), "-c", command], env=env).returncode == 0

    sh(authorize_command(line))
    assert keys.read_text() == line + "\n"
    assert (mode(keys.parent), mode(keys)) == (0o700, 0o600)
    keys.write_text("ssh-ed25519 AAAA-users-own user@laptop\n" + line + "\nssh-rsa AAAA-last last-without-newline")
    sh(authorize_command(line))
    sh(authorize_command(line.replace("10.251.9.2", "10.251.9.3")))  # the run's, from wherever: there already
    assert keys.read_text().count("dstack-cluster-r1") == 1
    sh(authorize_command(line.replace("r1", "r10")))  # another run, whose name starts alike: added
    assert keys.read_text().endswith("last-without-newline\n" + line.replace("r1", "r10") + "\n")  # a line of its own
    keys.write_text(line.replace("r1", "r10") + "\n")
    sh(authorize_command(line))  # a run whose name starts another's: added all the same
    assert keys.read_text() == line.replace("r1", "r10") + "\n" + line + "\n"
    keys.write_text("ssh-ed25519 AAAA-users-own user@laptop\n" + line + "\n" + line.replace("r1", "r10") + "\n")
    sh(revoke_command("r1"))
    assert keys.read_text() == "ssh-ed25519 AAAA-users-own user@laptop\n" + line.replace("r1", "r10") + "\n"
    assert sorted(p.name for p in keys.parent.iterdir()) == ["authorized_keys"]


@pytest.mark.parametrize("shell", ["sh", "bash", "busybox sh"])
def test_an_upload_is_placed_as_before_by_the_shells_own_checks(tmp_path, shell):
    """dstack_place looks at what is there with the shell's tests (one `mv` for a new place in an existing folder):
    a new place, missing parents, an empty folder replaced, a folder merged into, a file replaced, a path ending in
    `/`, and a repo's `if_exists`."""
    if shutil.which(shell.split()[0]) is None:
        pytest.skip(f"no {shell}")
    from provisioner.jobs.script import _PLACE

    def upload(name: str, files: dict) -> str:
        source = tmp_path / "uploads" / name
        for path, text in files.items():
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            (source / path).write_text(text)
        return str(source)

    def place(source: str, dest: Path, if_exists: str = "''", end: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([*shell.split(), "-c", f"set -e\n{_PLACE}dstack_place \"$1\" \"$2\" {if_exists} what"
                               f"\necho placed", "sh", source, f"{dest}{end}"], capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin"})

    def tree(folder: Path) -> dict:
        return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}

    jobs = tmp_path / "job"
    jobs.mkdir()
    assert place(upload("u0", {"a.py": "a", "pkg/b.py": "b"}), jobs / "repo").stdout == "placed\n"
    assert tree(jobs / "repo") == {"a.py": "a", "pkg/b.py": "b"}
    assert place(upload("u1", {"x": "1"}), jobs / "deep" / "er" / "u").returncode == 0
    assert tree(jobs / "deep") == {"er/u/x": "1"}  # its missing parents made
    (jobs / "empty").mkdir()
    (tmp_path / "uploads" / "f").write_text("file")
    assert place(str(tmp_path / "uploads" / "f"), jobs / "empty").returncode == 0
    assert (jobs / "empty").read_text() == "file"  # an empty folder gives way to a file
    assert place(upload("u2", {"c.py": "c", "pkg/d.py": "d"}), jobs / "repo").returncode == 0
    assert tree(jobs / "repo") == {"a.py": "a", "c.py": "c", "pkg/b.py": "b", "pkg/d.py": "d"}  # merged
    (tmp_path / "uploads" / "g").write_text("new")
    assert place(str(tmp_path / "uploads" / "g"), jobs / "empty").returncode == 0
    assert (jobs / "empty").read_text() == "new"  # a file replaced
    assert place(upload("u3", {"e": "e"}), jobs / "slash", end="/").returncode == 0
    assert tree(jobs / "slash") == {"e": "e"}
    refused = place(upload("u4", {"z": "z"}), jobs / "repo", if_exists="error")
    assert refused.returncode == 1 and f"what: {jobs}/repo exists and is not empty (if_exists: error)" in refused.stderr
    kept = place(str(tmp_path / "uploads" / "u4"), jobs / "repo", if_exists="skip")
    assert kept.stdout == "placed\n" and "z" not in tree(jobs / "repo")
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == ["u4"]  # the others moved away
