"""A host's kept SSH connection (provisioner.host.keeper): the next command uses it instead of logging in again, a
dead keeper is bypassed, its socket is its user's alone, it ends when idle, and host keys stay as strict."""

import os
import signal
import socket
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import run_cli, write
from tests.netns_hosts import SSHD


def counted_host(make_host, tmp_path):
    """A namespace host whose sshd logs each login (LogLevel INFO) to a file: (host, the number of logins so far)."""
    host = make_host()
    host.stop_sshd()
    config = host.dir / "sshd_config"
    config.write_text(config.read_text().replace("LogLevel ERROR", "LogLevel INFO"))
    start_logged_sshd(host, tmp_path)
    return host, lambda: (tmp_path / "sshd.log").read_text().count("Accepted publickey for root")


def start_logged_sshd(host, tmp_path) -> None:
    log = open(tmp_path / "sshd.log", "ab")
    host.process = host.in_namespace(SSHD, "-D", "-e", "-f", str(host.dir / "sshd_config"), stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host.address, 22), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)


def fleet_and_task(tmp_path, client_key, host, home_env):
    fleet = write(tmp_path, "fleet.dstack.yml", f"type: fleet\nname: kept\nssh_config:\n  identity_file: "
                  f"{client_key[0]}\n  hosts: [{host.address}]\n")
    registered = run_cli("apply", "-f", fleet, "-y", env=home_env)
    assert registered.returncode == 0, registered.stderr
    return write(tmp_path, "task.dstack.yml", "type: task\nbackends: [ssh]\ncommands: [echo kept-line]\n")


def apply(task, name, env):
    result = run_cli("apply", "-f", task, "-y", "-n", name, env=env)
    assert result.returncode == 0 and "kept-line" in result.stdout, result.stderr
    return result


def keeper_sockets(home) -> list:
    return sorted((Path(home) / "keepers").glob("*.sock"))


def keeper_pid(path: Path) -> int:
    """The keeper's pid, from its socket's peer credentials."""
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(f"/proc/self/fd/{folder}/{path.name}")  # a socket's path has at most 107 bytes
            pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    finally:
        os.close(folder)
    return pid


def end_keepers(home) -> None:
    """Ends every keeper of `home` (SIGTERM): their connections close, and their sessions end on the hosts."""
    for path in keeper_sockets(home):
        try:
            os.kill(keeper_pid(path), signal.SIGTERM)
        except OSError:  # a dead keeper's socket
            pass


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return True
        time.sleep(0.1)
    return False


def test_the_next_commands_use_the_kept_connection(tmp_path, home_env, make_host, client_key):
    host, logins = counted_host(make_host, tmp_path)
    task = fleet_and_task(tmp_path, client_key, host, home_env)
    after_registration = logins()
    assert after_registration == 1  # the fleet's probe left a keeper
    apply(task, "kept-1", home_env)
    apply(task, "kept-2", home_env)
    logs = run_cli("logs", "kept-1", env=home_env)
    assert logs.returncode == 0 and "kept-line" in logs.stdout
    assert logins() == after_registration  # no command logged in again
    assert len(keeper_sockets(home_env["DSTACK_HOME"])) == 1
    # and without a keeper (DSTACK_SSH_PERSIST=0) each command logs in itself
    apply(task, "direct", {**home_env, "DSTACK_SSH_PERSIST": "0"})
    assert logins() == after_registration + 1


def test_a_dead_keeper_is_bypassed_and_replaced(tmp_path, home_env, make_host, client_key):
    host, logins = counted_host(make_host, tmp_path)
    task = fleet_and_task(tmp_path, client_key, host, home_env)
    [path] = keeper_sockets(home_env["DSTACK_HOME"])
    pid = keeper_pid(path)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 10) and path.exists()  # its socket is left behind, stale
    before = logins()
    apply(task, "after-death", home_env)
    assert logins() == before + 1  # a new keeper logged in
    assert keeper_pid(path) != pid
    apply(task, "after-death-2", home_env)
    assert logins() == before + 1


def test_the_socket_is_the_users_alone_and_holds_no_secret(tmp_path, make_host, client_key):
    import shutil
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="dk-", dir="/tmp"))  # folders another user may pass through, up to it
    home.chmod(0o755)
    home_env = {"DSTACK_HOME": str(home / "h")}
    try:
        socket_checks(tmp_path, home_env, make_host, client_key)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def socket_checks(tmp_path, home_env, make_host, client_key):
    host, _ = counted_host(make_host, tmp_path)
    exported = "s3cret-for-apply-e-9f2c"  # a value exported for `apply -e NAME` stays with the command that read it
    fleet_and_task(tmp_path, client_key, host, {**home_env, "HF_TOKEN": exported})
    Path(home_env["DSTACK_HOME"]).chmod(0o755)
    [path] = keeper_sockets(home_env["DSTACK_HOME"])
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
    pid = keeper_pid(path)
    private = Path(client_key[0]).read_text().splitlines()[1]
    for part in ("cmdline", "environ"):
        assert private.encode() not in Path(f"/proc/{pid}/{part}").read_bytes()
        assert exported.encode() not in Path(f"/proc/{pid}/{part}").read_bytes()
    # another user: the folder keeps it out; and where the folder and socket were opened, the keeper refuses it
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.settimeout(5)\n"
             "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print('refused', e.errno); sys.exit()\n"
             "try:\n    s.sendall(b'\\x00\\x00\\x00\\x10{\"op\": \"hello\"}  ')\n    print('answer', repr(s.recv(100)))\n"
             "except OSError:\n    print('answer closed')\n")
    nobody = subprocess.run(["python3", "-c", probe, str(path)], user=65534, capture_output=True, text=True,
                            cwd="/")
    assert nobody.stdout.startswith("refused 13"), nobody.stderr  # EACCES
    path.parent.chmod(0o755)
    path.chmod(0o666)
    try:
        nobody = subprocess.run(["python3", "-c", probe, str(path)], user=65534, capture_output=True, text=True,
                                cwd="/")
    finally:
        path.parent.chmod(0o700)
        path.chmod(0o600)
    assert nobody.stdout.strip() in ("answer b''", "answer closed"), nobody.stderr  # closed without a word


def test_the_keeper_ends_when_idle(tmp_path, home_env, make_host, client_key):
    host, _ = counted_host(make_host, tmp_path)
    env = {**home_env, "DSTACK_SSH_PERSIST": "2"}
    fleet = write(tmp_path, "fleet.dstack.yml", f"type: fleet\nname: idle\nssh_config:\n  identity_file: "
                  f"{client_key[0]}\n  hosts: [{host.address}]\n")
    assert run_cli("apply", "-f", fleet, "-y", env=env).returncode == 0
    [path] = keeper_sockets(home_env["DSTACK_HOME"])
    pid = keeper_pid(path)
    assert wait_gone(pid, 15)
    assert not path.exists()


def test_a_changed_host_key_is_refused_through_a_live_keeper(tmp_path, home_env, make_host, client_key):
    host, _ = counted_host(make_host, tmp_path)
    task = fleet_and_task(tmp_path, client_key, host, home_env)
    apply(task, "before-change", home_env)
    [path] = keeper_sockets(home_env["DSTACK_HOME"])
    pid = keeper_pid(path)
    host.stop_sshd()  # the keeper's session outlives its listener, as on a host that was reinstalled behind it
    host.new_host_key()
    host.start_sshd()
    assert Path(f"/proc/{pid}").exists()
    result = run_cli("apply", "-f", task, "-y", "-n", "after-change", env=home_env)
    assert result.returncode == 1 and "kept-line" not in result.stdout
    assert f"the host key of {host.address}:22 is not the one expected" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (host.jobs_dir / "after-change").exists()  # nothing reached the host
    assert wait_gone(pid, 10)  # and the keeper ended


def test_a_host_serving_a_new_key_type_beside_the_recorded_key_keeps_its_kept_connection(tmp_path, home_env,
                                                                                          make_host, client_key):
    """The keeper's key check asks for the type of the key its connection was opened with, as a connection does: a
    host registered with its ECDSA key that serves an ed25519 key beside it since still has the recorded key."""
    host, logins = counted_host(make_host, tmp_path)
    ecdsa = host.dir / "host_key_ecdsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(ecdsa)], check=True)
    config = host.dir / "sshd_config"
    ed25519_line = f"HostKey {host.dir / 'host_key'}"
    host.stop_sshd()
    config.write_text(config.read_text().replace(ed25519_line, f"HostKey {ecdsa}"))  # ECDSA alone when registered
    start_logged_sshd(host, tmp_path)
    task = fleet_and_task(tmp_path, client_key, host, home_env)
    apply(task, "before-new-type", home_env)
    [path] = keeper_sockets(home_env["DSTACK_HOME"])
    pid, before = keeper_pid(path), logins()
    host.stop_sshd()  # the keeper's session outlives its listener
    config.write_text(config.read_text().replace(f"HostKey {ecdsa}", f"{ed25519_line}\nHostKey {ecdsa}"))
    start_logged_sshd(host, tmp_path)
    apply(task, "after-new-type", home_env)
    assert keeper_pid(path) == pid  # the same keeper: its check found the recorded key
    assert logins() == before  # and nothing logged in again


def test_an_announced_use_takes_the_key_check_begun_at_the_word(tmp_path, make_host, client_key, monkeypatch):
    """A command that announces its use of hosts (`apply` does, once planned: access.announce_use) has their keepers'
    key exchanges with the hosts begun at its word; its first client of each keeper takes that answer, and every later
    client has an exchange of its own, as the clients of a command that did not announce have."""
    from provisioner.host import keeper_wire
    from provisioner.host.access import HostAccess, announce_use

    host, _ = counted_host(make_host, tmp_path)
    access = HostAccess(kind="ssh", hostname=host.address, user="root", identity_file=client_key[0],
                        host_key=host.host_public_key)
    access.connect(total_wait=10).close()  # the keeper, connected
    exchanges = lambda: (tmp_path / "sshd.log").read_text().count("[preauth]")  # noqa: E731
    before = exchanges()
    for name, value in (("_announced_at", None), ("_told", set()), ("_used", set())):  # a command that announces
        monkeypatch.setattr(keeper_wire, name, value)  # as it begins, as `apply` does, not one that used it first
    announce_use([access])
    deadline = time.monotonic() + 10
    while exchanges() == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert exchanges() == before + 1  # the keeper's exchange, begun at the word
    host.stop_sshd()  # no new connection from now on: an exchange at the use would fail; the kept session lives on
    first = access.connect(total_wait=5)
    try:
        assert type(first).__name__ == "KeptTransport" and first.run("echo taken").text == "taken\n"
    finally:
        first.close()
    with pytest.raises(Exception, match="10.251"):  # the next client's own exchange fails: the keeper ends, and
        access.connect(total_wait=2)  # the direct connection finds no sshd


def test_apply_announces_the_hosts_it_takes_and_connects_through_their_checks(tmp_path, home_env, make_host,
                                                                              client_key, monkeypatch):
    """`apply` announces the hosts the last apply of its file took as it begins (where they were several), and those
    its first offer takes once planned: each one's key exchange begins at the first word, and the run's connection to
    it takes that exchange; a fleet host the run does not take is not asked."""
    from provisioner.host import keeper_wire

    folders = [tmp_path / name for name in "abc"]
    hosts = []
    for folder in folders:
        folder.mkdir()
        hosts.append(counted_host(make_host, folder)[0])
    fleet = write(tmp_path, "fleet.dstack.yml", f"type: fleet\nname: three\nssh_config:\n  identity_file: "
                  f"{client_key[0]}\n  hosts: [{', '.join(host.address for host in hosts)}]\n")
    assert run_cli("apply", "-f", fleet, "-y", env=home_env).returncode == 0
    task = write(tmp_path, "task.dstack.yml", "type: task\nnodes: 2\nbackends: [ssh]\ncommands: [echo kept-line]\n")
    apply(task, "first", home_env)
    taken = [(host.jobs_dir / "first").exists() for host in hosts]
    assert sorted(taken) == [False, True, True]
    exchanges = [lambda folder=folder: (folder / "sshd.log").read_text().count("[preauth]") for folder in folders]

    def new_exchanges(expected: list) -> list:
        """The exchanges per host since `before`, once they are `expected` (sshd logs one as its connection closes,
        a moment after the client's end) or 10 s have passed, and half a second more for any that should not come."""
        deadline = time.monotonic() + 10
        while [count() - was for count, was in zip(exchanges, before)] != expected and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
        return [count() - was for count, was in zip(exchanges, before)]

    before = [count() for count in exchanges]
    for name, value in (("_announced_at", None), ("_told", set()), ("_used", set())):
        monkeypatch.setattr(keeper_wire, name, value)
    keeper_wire.announce_remembered(str(Path(task).resolve()))  # what the next apply of the file says as it begins
    assert new_exchanges([int(t) for t in taken]) == [int(t) for t in taken]
    before = [count() for count in exchanges]
    apply(task, "announced", home_env)
    assert [(host.jobs_dir / "announced").exists() for host in hosts] == taken
    # per host taken: the exchange begun at the word, which the run's connection took, and the one of the run's end
    # (its cluster key line removed through a use of its own); a connection checking anew would make it three
    assert new_exchanges([2 * int(t) for t in taken]) == [2 * int(t) for t in taken]


@pytest.mark.parametrize("size", [10, 3 << 20])
def test_stdin_small_and_large_reaches_the_command(make_host, client_key, size):
    """Through the kept connection, a small stdin goes through the long-lived shell and a large one on a channel
    of its own; either way the command gets it byte for byte."""
    from provisioner.host.access import HostAccess

    host = make_host()
    access = HostAccess(kind="ssh", hostname=host.address, user="root", identity_file=client_key[0],
                        host_key=host.host_public_key)
    data = os.urandom(size)
    transport = access.connect(total_wait=10)
    try:
        assert type(transport).__name__ == "KeptTransport"
        result = transport.run("sha256sum | cut -c1-64; echo \"it's\" quoted", stdin=iter([data[:5], data[5:]]))
        import hashlib

        assert result.code == 0 and result.text.split("\n")[:2] == [hashlib.sha256(data).hexdigest(), "it's quoted"]
    finally:
        transport.close()


def test_the_first_read_of_a_log_waits_on_the_host_for_its_first_line(make_host, client_key):
    from provisioner.host.ssh import SSHTarget, connect
    from provisioner.jobs.control import read_log, start_job, stop_job
    from provisioner.jobs.script import JobSpec

    host = make_host()
    transport = connect(SSHTarget(host.address, identity_file=client_key[0], host_key=host.host_public_key),
                        total_wait=10)
    try:
        start_job(transport, JobSpec(run_name="late", commands=["sleep 1", "echo late-line", "sleep 30"]))
        assert read_log(transport, "late", 0).data == b""  # without a wait: what there is now
        assert read_log(transport, "late", 0, wait=30).data == b"late-line\n"  # one read, returning as it came
        stop_job(transport, "late", grace=1)
    finally:
        transport.close()


def test_a_cluster_key_removal_that_cannot_write_its_copy_leaves_authorized_keys_whole(tmp_path):
    """(Found by benchmarks/cluster_bench.py's hosts, whose folder their user may not write.) The removal writes the
    kept lines to a copy first; where it cannot, the file stays as it was instead of being emptied."""
    import tempfile

    from provisioner.jobs.cluster_ssh import revoke_command

    folder = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        folder.chmod(0o755)  # root's: the user may not create the copy here
        keys = folder / "authorized_keys"
        keys.write_text("ssh-ed25519 AAAA-users-own user@laptop\nssh-ed25519 AAAA-run dstack-cluster-r1\n")
        os.chown(keys, 65534, 65534)
        removal = subprocess.run(["sh", "-c", revoke_command("r1")], user=65534, cwd="/", capture_output=True,
                                 env={"PATH": os.environ["PATH"], "DSTACK_AUTHORIZED_KEYS": str(keys),
                                      "DSTACK_JOBS_DIR": str(tmp_path)})
        assert removal.returncode != 0
        assert "AAAA-users-own" in keys.read_text()
    finally:
        import shutil

        shutil.rmtree(folder)


def test_a_command_cut_short_is_not_read_as_the_next_ones_answer(make_host, client_key):
    """Ctrl-C while a command waits on the kept connection: the next command gets its own answer."""
    from provisioner.host.access import HostAccess

    host = make_host()
    access = HostAccess(kind="ssh", hostname=host.address, user="root", identity_file=client_key[0],
                        host_key=host.host_public_key)
    transport = access.connect(total_wait=10)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        assert type(transport).__name__ == "KeptTransport"
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(KeyboardInterrupt):
            transport.run("sleep 2; echo first")
        assert transport.run("echo second").text == "second\n"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        transport.close()
