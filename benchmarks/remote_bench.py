"""Remote execution latency against a real sshd in a network namespace (needs root and iproute2):

1. one command on an open connection: paramiko's way (its own socket with Nagle on, `exec_command`, so the user's
   shell and .bashrc start for every command) against ours (TCP_NODELAY, one long-lived `sh` per connection);
2. one HTTP request through a forwarded port, both ways;
3. `dstack apply` of a task on an SSH fleet host, from start to the job's first log line (the whole process).

Run: sudo python benchmarks/remote_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provisioner.jobs.control import start_job, stop_job  # noqa
from provisioner.jobs.script import JobSpec  # noqa
from provisioner.host.ports import PortForwarder, ssh_opener  # noqa
from provisioner.host.ssh import SSHTarget, SSHTransport, connect  # noqa
from tests.netns_hosts import NamespaceHost, namespaces_available  # noqa: E402


def nagle_connection(target: SSHTarget) -> SSHTransport:
    """A connection the way paramiko makes it by default: its own socket, Nagle on."""
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(target.hostname, port=target.port, username=target.user, key_filename=target.identity_file,
                   allow_agent=False, look_for_keys=False)
    return SSHTransport(client, target)


def median_ms(action, runs: int) -> float:
    action()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def first_line_seconds(task: str, home: str, runs: int) -> float:
    times = []
    env = dict(os.environ, DSTACK_HOME=home)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    dstack = Path(sys.executable).with_name("dstack")
    command = [str(dstack)] if dstack.exists() else [sys.executable, "-m", "cli.main"]
    for i in range(runs + 1):
        start = time.perf_counter()
        process = subprocess.Popen(command + ["apply", "-f", task, "-y", "-n", f"bench-{i}"], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        process.stdout.readline()
        elapsed = time.perf_counter() - start
        process.wait(60)
        if i:  # the first run warms the bytecode caches
            times.append(elapsed)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    reason = namespaces_available()
    if reason:
        sys.exit(f"cannot run: {reason}")
    work = Path(tempfile.mkdtemp(prefix="dstack-bench-"))
    os.environ["DSTACK_HOME"] = str(work / "home")  # known_hosts and state stay out of the user's ~/.dstack
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "key")], check=True)
    host = NamespaceHost((work / "key.pub").read_text().strip()).start()
    try:
        target = SSHTarget(host.address, 22, "root", str(work / "key"), host_key=host.host_public_key)
        fast = connect(target, total_wait=10)
        slow = nagle_connection(target)

        def naive():
            _, out, _ = slow._client.exec_command("true")
            out.channel.recv_exit_status()

        print(f"== one command on an open connection (median of {args.runs})")
        print(f"paramiko exec_command, Nagle  {median_ms(naive, args.runs):7.1f} ms  (the user's shell and .bashrc per command)")
        print(f"dstack (NODELAY, one shell)   {median_ms(lambda: fast.run('true'), args.runs):7.1f} ms")

        (host.dir / "site").mkdir()
        (host.dir / "site" / "index.html").write_text("x" * 100)
        start_job(fast, JobSpec(run_name="bench-http", commands=[
            f"cd {host.dir / 'site'}", "exec python3 -m http.server 18090 --bind 127.0.0.1"]))
        time.sleep(1.0)
        print(f"\n== one HTTP request through a forwarded port (median of {args.runs})")
        for label, connection in (("paramiko default (Nagle on)", slow), ("dstack (TCP_NODELAY)", fast)):
            forwarder = PortForwarder(ssh_opener(lambda c=connection: c.transport))
            port = forwarder.forward(None, 18090)
            url = f"http://127.0.0.1:{port}/index.html"
            print(f"{label:29s} {median_ms(lambda: urllib.request.urlopen(url, timeout=5).read(), args.runs):7.1f} ms")
            forwarder.close()
        stop_job(fast, "bench-http", grace=1)

        home = os.environ["DSTACK_HOME"]
        fleet = work / "fleet.dstack.yml"
        fleet.write_text(f"type: fleet\nname: bench\nssh_config:\n  identity_file: {work / 'key'}\n"
                         f"  hosts: [{host.address}]\n")
        subprocess.run([sys.executable, "-m", "cli.main", "apply", "-f", str(fleet), "-y"], cwd=ROOT, check=True,
                       env=dict(os.environ, DSTACK_HOME=home), capture_output=True)
        task = work / "task.dstack.yml"
        task.write_text("type: task\nbackends: [ssh]\ncommands: [echo first line]\n")
        runs = max(3, args.runs // 6)
        print(f"\n== dstack apply on a ready fleet host, to the job's first log line (median of {runs})")
        print(f"dstack apply -y                {first_line_seconds(str(task), home, runs):6.2f} s")
    finally:
        host.cleanup()
        socket.setdefaulttimeout(None)


if __name__ == "__main__":
    main()
