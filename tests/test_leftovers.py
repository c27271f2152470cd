"""What a run must not leave behind or hide, through the `dstack` command on namespace hosts: secret values in the
job folder once the job has ended, the cluster key on a node that was unreachable at the end (removed at the next
contact), `files` written outside the job folder, a failure's reason cut short; and the message of a remote shell
that ended under a command."""

import hashlib
import os

from tests.helpers import run_cli, write
from tests.test_faults import add_fleet
from tests.test_runs import ps

SECRET = "tok_0leftover0secret0value"


def files_holding(folder, needle: str) -> list:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_a_secret_in_commands_is_gone_from_the_host_once_the_job_ends(tmp_path, home_env, make_host, client_key):
    host = make_host()
    add_fleet(tmp_path, home_env, client_key, [host])
    assert run_cli("secret", "set", "API_TOKEN", input=SECRET, env=home_env).returncode == 0
    done = write(tmp_path, "done.dstack.yml", "type: task\nname: ends\nbackends: [ssh]\n"
                 "commands: ['printf %s ${{ secrets.API_TOKEN }} | sha256sum']\n")
    result = run_cli("apply", "-f", done, "-y", env=home_env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == hashlib.sha256(SECRET.encode()).hexdigest()  # the job had it
    assert files_holding(host.jobs_dir, SECRET) == []
    assert (host.jobs_dir / "ends" / "output.log").exists() and not (host.jobs_dir / "ends" / "job.sh").exists()
    stopped = write(tmp_path, "stopped.dstack.yml", "type: task\nname: stopped\nbackends: [ssh]\n"
                    "commands: ['TOKEN=${{ secrets.API_TOKEN }}', 'sleep 300']\n")
    assert run_cli("apply", "-f", stopped, "-y", "-d", env=home_env, timeout=300).returncode == 0
    assert files_holding(host.jobs_dir, SECRET) == [str(host.jobs_dir / "stopped" / "job.sh")]  # while it runs
    assert run_cli("stop", "stopped", "-x", "-y", env=home_env, timeout=120).returncode == 0
    assert files_holding(host.jobs_dir, SECRET) == []


def test_a_cluster_key_left_on_an_unreachable_node_goes_at_the_next_contact(tmp_path, home_env, make_host,
                                                                            client_key):
    hosts = [make_host(), make_host()]
    add_fleet(tmp_path, home_env, client_key, hosts)
    before = {host.address: (host.dir / "authorized_keys").read_text() for host in hosts}
    conf = write(tmp_path, "pair.dstack.yml", "type: task\nname: pair\nnodes: 2\nbackends: [ssh]\n"
                 "commands: [sleep 300]\n")
    assert run_cli("apply", "-f", conf, "-y", "-d", env=home_env, timeout=300).returncode == 0
    worker = ps(home_env)["pair"]["jobs"][1]["host"]  # root@10.251.N.2:22
    away = next(host for host in hosts if f"@{host.address}:" in worker)
    assert "dstack-cluster-pair" in (away.dir / "authorized_keys").read_text()
    away.link(False)
    try:  # a stop tries an unreachable host for DSTACK_HOST_TIMEOUT at most (30 s by default), twice here
        stop = run_cli("stop", "pair", "-x", "-y", env=dict(home_env, DSTACK_HOST_TIMEOUT="5"), timeout=300)
    finally:
        away.link(True)
    assert stop.returncode == 0, stop.stderr
    assert (f"could not remove pair's cluster key from {worker}'s authorized_keys (the line ending "
            "`dstack-cluster-pair`)") in stop.stderr
    assert f"dstack removes it at its next connection to {worker}" in stop.stderr
    assert "dstack-cluster-pair" in (away.dir / "authorized_keys").read_text()
    again = write(tmp_path, "again.dstack.yml", "type: task\nname: again\nnodes: 2\nbackends: [ssh]\n"
                  "commands: ['true']\n")
    result = run_cli("apply", "-f", again, "-y", env=home_env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (f"removed run pair's cluster key from {worker}, which could not be reached when pair ended"
            in result.stderr), result.stderr
    assert {host.address: (host.dir / "authorized_keys").read_text() for host in hosts} == before
    assert not (away.jobs_dir / "pair" / "cluster_key").exists()
    later = run_cli("apply", "-f", again, "-y", "-n", "third", env=home_env, timeout=300)
    assert later.returncode == 0 and "cluster key" not in later.stderr, later.stderr  # said once, done once



def test_a_cluster_whose_port_is_taken_fails_before_its_jobs_and_leaves_no_cluster_key(tmp_path, home_env, make_host,
                                                                                         client_key):
    """The nodes get the run's line as they are connected to, before the port is bound: the run's teardown takes it
    away again from every node."""
    import socket

    hosts = [make_host(), make_host()]
    add_fleet(tmp_path, home_env, client_key, hosts)
    before = {host.address: (host.dir / "authorized_keys").read_text() for host in hosts}
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    conf = write(tmp_path, "ported.dstack.yml", "type: task\nname: ported\nnodes: 2\nbackends: [ssh]\n"
                 f"ports: ['{port}:8000']\ncommands: ['echo never']\n")
    try:
        result = run_cli("apply", "-f", conf, "-y", env=home_env, timeout=300)
    finally:
        holder.close()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"local port {port} is already in use by another program" in result.stderr
    assert ps(home_env)["ported"]["status"] == "failed"
    assert {host.address: (host.dir / "authorized_keys").read_text() for host in hosts} == before
    assert not any((host.jobs_dir / "ported" / "output.log").exists() for host in hosts)  # no job started


def test_a_node_that_cannot_take_the_cluster_key_fails_the_run_by_name_and_the_others_lose_it(
        tmp_path, home_env, make_host, client_key):
    """The login user may write one host's authorized_keys (and its folder, where the removal writes its copy) and not
    the other's (root's, readable by all)."""
    writable, refusing = make_host(login_user="worker"), make_host(login_user="worker")
    for path in (writable.dir, writable.dir / "authorized_keys"):
        os.chown(path, writable.uid, writable.uid)
    (refusing.dir / "authorized_keys").chmod(0o644)
    before = {host.address: (host.dir / "authorized_keys").read_text() for host in (writable, refusing)}
    fleet = write(tmp_path, "workers.dstack.yml", "type: fleet\nname: workers\nssh_config:\n  user: worker\n"
                  f"  identity_file: {client_key[0]}\n  hosts: [{writable.address}, {refusing.address}]\n")
    assert run_cli("apply", "-f", fleet, "-y", env=home_env).returncode == 0
    conf = write(tmp_path, "keyless.dstack.yml", "type: task\nname: keyless\nnodes: 2\nbackends: [ssh]\n"
                 "commands: ['echo never']\n")
    result = run_cli("apply", "-f", conf, "-y", env=home_env, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    rank = [job["host"] for job in ps(home_env)["keyless"]["jobs"]].index(f"worker@{refusing.address}:22")
    assert (f"keyless: node {rank} (worker@{refusing.address}:22): cannot add the run's key to authorized_keys: "
            in result.stderr), result.stderr
    assert "Permission denied" in result.stderr
    assert ps(home_env)["keyless"]["status"] == "failed"
    assert {host.address: (host.dir / "authorized_keys").read_text() for host in (writable, refusing)} == before
    assert not any((host.jobs_dir / "keyless" / "output.log").exists() for host in (writable, refusing))

def test_a_files_target_that_climbs_out_of_the_job_folder_is_refused(tmp_path, home_env, dstack_home):
    (tmp_path / "data.txt").write_text("data\n")
    climbing = write(tmp_path, "out.dstack.yml", "type: task\nname: climb\nbackends: [local]\n"
                     "files: ['data.txt:../../escaped.txt']\ncommands: ['true']\n")
    for extra in (["--dry-run"], ["-y"]):
        result = run_cli("apply", "-f", climbing, *extra, env=home_env)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert (f"error: {climbing}: files[0]: `../../escaped.txt` leaves the job folder (relative paths are "
                "relative to the working directory, repo/ in it); write an absolute path to put it elsewhere on "
                "the host") in result.stderr, result.stderr
    assert not list(dstack_home.rglob("escaped.txt"))
    inside = write(tmp_path, "in.dstack.yml", "type: task\nname: beside\nbackends: [local]\n"
                   "files: ['data.txt:../beside.txt']\ncommands: ['cat ../beside.txt']\n")
    result = run_cli("apply", "-f", inside, "-y", env=home_env)
    assert (result.returncode, result.stdout) == (0, "data\n"), result.stderr


def test_ps_shows_the_whole_reason_of_a_failure(tmp_path, home_env, make_host, client_key):
    host = make_host()
    add_fleet(tmp_path, home_env, client_key, [host])
    holder = write(tmp_path, "holder.dstack.yml", "type: task\nname: holder\nbackends: [ssh]\ncommands: [sleep 300]\n")
    assert run_cli("apply", "-f", holder, "-y", "-d", env=home_env, timeout=300).returncode == 0
    second = write(tmp_path, "second.dstack.yml", "type: task\nname: second\nbackends: [ssh]\ncommands: ['true']\n")
    failed = run_cli("apply", "-f", second, "-y", env=home_env, timeout=300)
    assert failed.returncode == 1, failed.stderr
    reason = ps(home_env)["second"]["reason"]
    assert reason.startswith("no offer could be provisioned; tried 1: ssh lab ") and reason.endswith(
        f"capacity: root@{host.address}:22 is busy with run holder"), reason
    table = run_cli("ps", "-a", "-v", env=home_env).stdout
    assert reason in table and reason not in run_cli("ps", "-a", env=home_env).stdout  # errors under -v, as dstack
    assert run_cli("stop", "holder", "-x", "-y", env=home_env).returncode == 0


def test_ps_shows_a_reason_as_written(home_env):
    from provisioner.store.records import RunRecord
    from provisioner.store.store import StateStore

    reason = "node 1: [bold]root@10.251.9.2:22[/bold] said :warning: no"  # no markup, no emoji
    StateStore().create_run(RunRecord(name="odd", status="failed", submitted_at=1.0, reason=reason))
    assert reason in run_cli("ps", "-a", "-v", env=home_env).stdout


def test_a_remote_shell_that_ends_under_a_command_is_said_as_such(make_host, client_key):
    import pytest

    from provisioner.host.access import HostAccess
    from provisioner.host.transport import TransportError

    host = make_host()
    access = HostAccess(kind="ssh", hostname=host.address, user="root", identity_file=client_key[0],
                        host_key=host.host_public_key)
    transport = access.connect(total_wait=10)
    try:
        assert transport.run("echo before").text == "before\n"
        with pytest.raises(TransportError) as lost:
            transport.run("kill -KILL $$")  # the long-lived shell itself
        assert str(lost.value) == (f"root@{host.address}:22: connection lost: the remote shell ended before the "
                                   "command finished")
        assert transport.run("echo after").text == "after\n"  # a new shell for the next command
    finally:
        transport.close()

