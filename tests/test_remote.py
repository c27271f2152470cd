"""Remote execution against real sshd servers, each in its own network namespace with its own address."""

import threading
import time
import urllib.request

import pytest

from configuration.errors import ConfigurationError
from provisioner.host.liveness import Liveness
from provisioner.host.ports import PortForwarder, PortTaken, bind_local, ssh_opener
from provisioner.host.probe import PROBE_COMMAND, parse_probe
from provisioner.host.known_hosts import known_hosts_path
from provisioner.host.ssh import AuthenticationRefused, HostKeyChanged, SSHTarget, connect
from provisioner.host.transport import TransportError
from provisioner.jobs.control import job_state, read_log, start_job, stop_job
from provisioner.jobs.follow import LogFollower
from provisioner.jobs.script import JobSpec
from tests.helpers import wait_exit
from tests.netns_hosts import host_without


def target(host, client_key, **changes):
    """The host with its key given, as for a cloud VM: fleet host keys and known_hosts are tests/test_host_keys.py's."""
    fields = dict(hostname=host.address, port=22, user="root", identity_file=client_key[0],
                  host_key=host.host_public_key)
    fields.update(changes)
    return SSHTarget(**fields)


def test_probe_reads_the_host(make_host, client_key):
    host = make_host()
    ssh = connect(target(host, client_key), total_wait=10)
    facts = parse_probe(ssh.run(PROBE_COMMAND).text)
    ssh.close()
    assert facts.cpus >= 1 and facts.arch in ("x86", "arm") and facts.memory_gib > 1 and facts.disk_free_gb > 0
    assert facts.gpus == ()  # no GPU on the test machine


def test_task_with_env_and_args_gives_output_and_exit_code(make_host, client_key):
    host = make_host()
    ssh = connect(target(host, client_key), total_wait=10)
    job = JobSpec(run_name="t-env", commands=["echo \"token=$TOKEN mode=$MODE\"", "echo args: --lr '0.1 x' -v",
                                              "python -c 'import sys; print(sys.prefix.endswith(\"/venv\"))'"],
                  env={"TOKEN": "s3cr3t value", "MODE": "fast"}, python="3.11")
    start_job(ssh, job)
    code, log = wait_exit(ssh, "t-env")
    assert code == 0
    assert log.splitlines() == ["token=s3cr3t value mode=fast", "args: --lr 0.1 x -v", "True"]
    assert not (host.jobs_dir / "t-env" / "env").exists()  # the env file is gone once read
    assert (host.jobs_dir / "t-env" / "exit_code").read_text().strip() == "0"


def test_failing_command_exit_code(make_host, client_key):
    host = make_host()
    ssh = connect(target(host, client_key), total_wait=10)
    start_job(ssh, JobSpec(run_name="t-fail", commands=["echo before", "sh -c 'exit 7'", "echo never"]))
    code, log = wait_exit(ssh, "t-fail")
    assert (code, log) == (7, "before\n")
    assert job_state(ssh, "t-fail") == ("exited", 7)


def test_a_command_that_ends_without_reading_its_stdin_gives_its_exit_code_and_stderr(make_host, client_key):
    """As a job's start refused before it unpacks (the root check): the host closes the channel while the archive
    is still being sent (more than SSH's 2 MB window), which is the command's answer, not a lost connection."""
    host = make_host()
    ssh = connect(target(host, client_key), total_wait=10)
    try:
        for stdin in (b"x" * (8 << 20), (b"y" * (1 << 20) for _ in range(8))):
            refused = ssh.run("echo refused >&2; exit 3", stdin=stdin, timeout=30)
            assert (refused.code, refused.stderr) == (3, b"refused\n")
        assert ssh.run("echo still-connected").text == "still-connected\n"  # the connection itself is fine
    finally:
        ssh.close()


def test_forwarded_port_serves_http(make_host, client_key):
    host = make_host()
    ssh = connect(target(host, client_key), total_wait=10)
    (host.dir / "site").mkdir()
    (host.dir / "site" / "index.html").write_text("hello through the tunnel")
    start_job(ssh, JobSpec(run_name="t-http", commands=[
        f"cd {host.dir / 'site'}", "exec python3 -m http.server 18080 --bind 127.0.0.1"]))
    forwarder = PortForwarder(ssh_opener(lambda: ssh.transport))
    local = forwarder.forward(None, 18080)
    body = None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and body is None:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{local}/index.html", timeout=2).read().decode()
        except OSError:
            time.sleep(0.1)
    assert body == "hello through the tunnel"
    assert stop_job(ssh, "t-http", grace=2) is not None
    forwarder.close()


def test_taken_local_port_is_a_clear_error():
    holder = bind_local(None)
    port = holder.getsockname()[1]
    with pytest.raises(PortTaken, match=f"local port {port} is already in use"):
        bind_local(port)
    holder.close()


def test_link_cut_mid_run_loses_nothing(make_host, client_key):
    host = make_host()
    connect_target = target(host, client_key)
    ssh = connect(connect_target, total_wait=10)
    start_job(ssh, JobSpec(run_name="t-cut", commands=["for i in $(seq 1 40); do echo line $i; sleep 0.1; done"]))
    follower = LogFollower(lambda total_wait: connect(connect_target, total_wait=total_wait, connect_timeout=3),
                           "t-cut", live=Liveness(60))
    follower.transport = ssh
    received = bytearray()
    follower.poll(received.extend)
    host.link(False)
    time.sleep(1.5)
    # the job goes on while the link is down: check from inside the namespace
    check = host.in_namespace("sh", "-c", f"kill -0 -$(cat {host.jobs_dir / 't-cut' / 'pid'})")
    assert check.wait(5) == 0
    threading.Timer(1.0, host.link, args=(True,)).start()
    code = follower.follow(received.extend, interval=0.1)
    assert code == 0
    assert received.decode().splitlines() == [f"line {i}" for i in range(1, 41)]


def test_stop_terminates_the_job(make_host, client_key):
    host = make_host()
    ssh = connect(target(host, client_key), total_wait=10)
    start_job(ssh, JobSpec(run_name="t-stop", commands=["echo started", "sleep 300"]))
    deadline = time.monotonic() + 10
    while b"started" not in read_log(ssh, "t-stop", 0).data and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job_state(ssh, "t-stop") == ("running", None)
    code = stop_job(ssh, "t-stop", grace=3)
    assert code == 143  # 128 + SIGTERM
    assert job_state(ssh, "t-stop") == ("exited", 143)


def test_stop_kills_a_job_that_ignores_sigterm(make_host, client_key):
    host = make_host()
    ssh = connect(target(host, client_key), total_wait=10)
    start_job(ssh, JobSpec(run_name="t-kill", commands=["trap '' TERM", "echo started", "sleep 300 & wait"]))
    deadline = time.monotonic() + 10
    while b"started" not in read_log(ssh, "t-kill", 0).data and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    code = stop_job(ssh, "t-kill", grace=1)
    assert code == 137 and time.monotonic() - started < 10  # 128 + SIGKILL after the grace period


def test_known_host_key_is_required(make_host, client_key):
    host = make_host()
    connect(target(host, client_key, host_key=host.host_public_key), total_wait=10).close()
    other = make_host()
    with pytest.raises(HostKeyChanged):
        connect(target(host, client_key, host_key=other.host_public_key), total_wait=10)
    assert not known_hosts_path().exists()  # a VM's known key is not written to known_hosts


def test_a_booting_vm_is_waited_for_until_it_serves_the_runs_host_key_and_login_key(make_host, client_key, tmp_path):
    """A new GCP VM first serves a host key of its guest agent's and has not installed the login key yet; the first
    connection waits for both (only the run's host key is ever accepted), later connections fail at once."""
    import shutil
    import subprocess
    import threading

    host = make_host()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "runs_key")], check=True)
    runs_key = " ".join((tmp_path / "runs_key.pub").read_text().split()[:2])
    (host.dir / "authorized_keys").write_text("")
    with pytest.raises(HostKeyChanged):  # not booting: a key other than the run's fails at once
        connect(target(host, client_key, host_key=runs_key), total_wait=10)

    said = []

    def told(what: str) -> None:
        """Each step of the boot comes once the client has met the one before (fixed sleeps raced its backoff)."""
        deadline = time.monotonic() + 20
        while not any(what in line for line in said) and time.monotonic() < deadline:
            time.sleep(0.02)

    def cloud_init_finishes():
        told("does not serve the run's host key yet")
        host.stop_sshd()
        for suffix in ("", ".pub"):
            shutil.copy(tmp_path / f"runs_key{suffix}", host.dir / f"host_key{suffix}")
        host.start_sshd()
        told("does not accept the run's login key yet")
        (host.dir / "authorized_keys").write_text(client_key[1] + "\n")

    finishing = threading.Thread(target=cloud_init_finishes)
    finishing.start()
    started = time.monotonic()
    transport = connect(target(host, client_key, host_key=runs_key), total_wait=30, log=said.append, booting=True)
    finishing.join()
    assert transport.run("echo ready").text.strip() == "ready" and time.monotonic() - started < 25
    transport.close()
    assert any("does not serve the run's host key yet" in line for line in said)
    assert any("does not accept the run's login key yet" in line for line in said)


def test_wrong_key_refused_with_a_clear_message(make_host, client_key, tmp_path):
    import subprocess

    host = make_host()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    with pytest.raises(AuthenticationRefused, match=f"root@{host.address}:22 refused the SSH key with .*other"):
        connect(target(host, client_key, identity_file=str(tmp_path / "other")), total_wait=10)


def test_unreachable_host_gives_up_after_the_bounded_wait(make_host, client_key):
    host = make_host()
    host.stop_sshd()
    started = time.monotonic()
    with pytest.raises(TransportError, match="did not answer SSH within 2s"):
        connect(target(host, client_key), total_wait=2, connect_timeout=1)
    assert time.monotonic() - started < 6


def test_missing_identity_file_is_a_configuration_error(make_host, client_key, tmp_path):
    host = make_host()
    with pytest.raises(ConfigurationError, match="cannot read the SSH identity file"):
        connect(target(host, client_key, identity_file=str(tmp_path / "none")), total_wait=2)


def test_a_command_with_a_small_stdin_runs_in_the_kept_shell_as_sh_c_would_run_it(make_host, client_key, tmp_path):
    """A small stdin goes through the kept shell as a here-document, and the command is `eval`ed in a subshell of it
    (no `sh -c` started per command): quoting, comments, a here-document of its own, `exit`, stderr and every byte
    of stdin come out as under `sh -c` (LocalTransport), and the kept shell goes on after each."""
    from provisioner.host.transport import LocalTransport

    host = make_host()
    ssh = connect(target(host, client_key), total_wait=10)
    local = LocalTransport(str(tmp_path))
    data = bytes(range(256)) * 64 + b"'\"$HOME`x`\\\n# not a comment\n"
    commands = ["sha256sum | cut -c1-16; echo \"it's\" 'quoted \"twice\"' # a comment with ' and )",
                "read -r first; printf '[%s]\\n' \"$first\"; cat >&2",
                "cat <<'EOF'\nits own $here-document\nEOF\nwc -c",
                "head -c 3; exit 3",
                "f() { cat | wc -c; }\nf; echo \"$0\" \"$#\""]
    try:
        for command in commands:
            here, there = local.run(command, stdin=data), ssh.run(command, stdin=data, timeout=30)
            assert (there.code, there.stdout, there.stderr) == (here.code, here.stdout, here.stderr), command
        assert ssh.run("tr '\\0' ' ' < /proc/$$/cmdline", stdin=b"x").stdout == b"sh "  # the kept shell's own $$
        assert ssh.run("echo still-here").text == "still-here\n"
    finally:
        ssh.close()


def test_a_host_without_base64_gets_a_small_stdin_on_a_channel_of_its_own(make_host, client_key):
    """The kept shell looks for base64 in the same round trip as the command: where it has none, the command does
    not run there and goes, with its stdin, on a channel of its own (and so does every later one). The host logs in a
    user of its own: a channel starts the login user's shell, and root's here runs `pyenv init` from its .bashrc,
    whose rehash, racing other tests' logins, can add its complaint to the command's stderr."""
    host = host_without(make_host, "base64")
    ssh = connect(target(host, client_key, user="tester"), total_wait=10)
    try:
        assert ssh.run("command -v base64 || echo none").text == "none\n"
        for _ in range(2):
            result = ssh.run("sha256sum | cut -c1-16; echo \"it's\" >&2; exit 4", stdin=b"data", timeout=30)
            assert (result.code, result.text, result.stderr) == (4, "3a6eb0790f39ac87\n", b"it's\n")
        assert ssh.run("echo still-here").text == "still-here\n"
    finally:
        ssh.close()
