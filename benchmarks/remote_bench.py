"""Remote execution latency against a real sshd in a network namespace (needs root and iproute2):

1. one command on an open connection: paramiko's way (its own socket with Nagle on, `exec_command`, so the user's
   shell and .bashrc start for every command) against ours (TCP_NODELAY, one long-lived `sh` per connection);
2. one HTTP request through a forwarded port, both ways;
3. `dstack apply` of a task on a ready SSH fleet host, from the command's start to the job's first log line (the
   whole process; and its CPU time, less sensitive to other load), through the host's kept connection (provisioner.host.keeper_client) and without one
   (DSTACK_SSH_PERSIST=0: each command connects, as before keepers), runs of the two alternating; beside them, in the
   same run, a bare `python -c pass` and one command's round trip on a new SSH connection. Then where the time goes
   (medians over the kept runs, each millisecond counted once, in the innermost part it falls in): the interpreter's
   start, imports, the state store, the connection (to the keeper, or SSH's handshake), the job's upload and start,
   the first poll, the rest of the CLI (plan, output); and on the host, the job's own start (the wrapper to the
   first command: login profile, Python venv).

Run: sudo python benchmarks/remote_bench.py [--runs N]
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PHASES_ENV = "DSTACK_BENCH_PHASES"  # the child writes its breakdown (JSON) to this file


def instrument() -> None:
    """In the child (`--as-dstack`): each part's time, attributed to the innermost part running, until the job's
    first output is written; the breakdown is written at exit."""
    import importlib._bootstrap as bootstrap
    import threading

    started = time.time()
    spent: dict = {}
    stack = ["cli"]
    marks = {"started": started}
    state = {"at": time.perf_counter(), "frozen": False}
    main_thread = threading.get_ident()

    def switch(to=None) -> None:
        now = time.perf_counter()
        if not state["frozen"]:
            spent[stack[-1]] = spent.get(stack[-1], 0.0) + now - state["at"]
        state["at"] = now
        if to is None:
            stack.pop()
        else:
            stack.append(to)

    def timed(name, function):
        def wrapper(*args, **kwargs):
            if threading.get_ident() != main_thread:
                return function(*args, **kwargs)
            switch(name)
            try:
                return function(*args, **kwargs)
            finally:
                switch()
        return wrapper

    bootstrap._find_and_load = timed("imports", bootstrap._find_and_load)
    from provisioner.host import access
    from provisioner.jobs import control, run_jobs
    from provisioner.store import store

    for name in dir(store.StateStore):
        if not name.startswith("_") and callable(getattr(store.StateStore, name)):
            setattr(store.StateStore, name, timed("store", getattr(store.StateStore, name)))
    access.HostAccess.connect = timed("connect", access.HostAccess.connect)
    run_jobs.start_job = timed("upload and start", control.start_job)

    def started_job(function):
        def wrapper(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            finally:
                switch("first poll")
        return wrapper

    run_jobs.RunJobs.start = started_job(run_jobs.RunJobs.start)
    from cli import output

    write = output.write_stdout

    def first_write(data: bytes) -> None:
        if not state["frozen"]:
            switch("after")
            state["frozen"] = True
            marks["first_output"] = time.time()
        write(data)

    output.write_stdout = first_write

    def report() -> None:
        with open(os.environ[PHASES_ENV], "w") as f:
            json.dump({"spent": spent, "marks": marks}, f)

    atexit.register(report)


def nagle_connection(target):
    """A connection the way paramiko makes it by default: its own socket, Nagle on."""
    import paramiko

    from provisioner.host.ssh import SSHTransport

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(target.hostname, port=target.port, username=target.user, key_filename=target.identity_file,
                   allow_agent=False, look_for_keys=False)
    return SSHTransport(client, target)


def median_ms(action, runs: int) -> float:
    import statistics

    action()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def apply_once(task: str, name: str, env: dict, phases: Path, jobs_dir: Path, other: Optional[str] = None) -> dict:
    """One `dstack apply`: seconds to the first line, the child's breakdown, the host's job start. `other`: the
    checkout of another version of dstack, run as it is (no breakdown)."""
    import resource

    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    start_wall, start = time.time(), time.perf_counter()
    command = ["-m", "cli.main"] if other else [str(Path(__file__).resolve()), "--as-dstack"]
    process = subprocess.Popen([sys.executable, *command, "apply", "-f", task, "-y", "-n", name],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=dict(env, **{PHASES_ENV: str(phases)}), cwd=other or ROOT)
    line = process.stdout.readline()
    elapsed = time.perf_counter() - start
    _, err = process.communicate(timeout=120)
    if process.returncode != 0 or not line:
        sys.exit(f"dstack apply {name} failed ({process.returncode}): {err.decode(errors='replace')[-2000:]}")
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime  # the whole command's, to its end
    if other:
        return {"first_line": elapsed, "cpu": cpu}
    found = json.loads(phases.read_text())
    found["first_line"] = elapsed
    found["cpu"] = cpu
    found["spent"]["interpreter"] = found["marks"]["started"] - start_wall
    folder = jobs_dir / name
    found["host"] = (folder / "begun").stat().st_mtime - (folder / "pid").stat().st_mtime
    return found


PARTS = ("interpreter", "imports", "store", "connect", "upload and start", "first poll", "cli")


def main() -> None:  # the imports the child (`--as-dstack`) has no use for are made here
    import argparse
    import socket
    import statistics
    import tempfile
    import urllib.request

    from provisioner.host.ports import PortForwarder, ssh_opener
    from provisioner.host.ssh import SSHTarget, connect
    from provisioner.jobs.control import start_job, stop_job
    from provisioner.jobs.script import JobSpec
    from tests.netns_hosts import NamespaceHost, namespaces_available

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--before", metavar="CHECKOUT", help="another checkout of this project (e.g. the commit "
                        "before keepers) whose `dstack apply` is measured beside, in the same rounds")
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
        print(f"paramiko exec_command, Nagle  {median_ms(naive, args.runs):7.1f} ms  (the user's shell and .bashrc "
              "per command)")
        print(f"dstack (NODELAY, one shell)   {median_ms(lambda: fast.run('true'), args.runs):7.1f} ms")

        (host.dir / "site").mkdir()
        (host.dir / "site" / "index.html").write_text("x" * 100)
        start_job(fast, JobSpec(run_name="bench-http", commands=[
            f"cd {host.dir / 'site'}", "exec python3 -m http.server 18090 --bind 127.0.0.1"]))
        deadline = time.monotonic() + 30
        while fast.run("exec 3<>/dev/tcp/127.0.0.1/18090", timeout=5).code != 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # (bash's /dev/tcp: the server listens)
        print(f"\n== one HTTP request through a forwarded port (median of {args.runs})")
        for label, connection in (("paramiko default (Nagle on)", slow), ("dstack (TCP_NODELAY)", fast)):
            forwarder = PortForwarder(ssh_opener(lambda c=connection: c.transport))
            port = forwarder.forward(None, 18090)
            url = f"http://127.0.0.1:{port}/index.html"
            print(f"{label:29s} {median_ms(lambda: urllib.request.urlopen(url, timeout=5).read(), args.runs):7.1f} ms")
            forwarder.close()
        stop_job(fast, "bench-http", grace=1)
        fast.close()
        slow.close()

        home = os.environ["DSTACK_HOME"]
        env = dict(os.environ, DSTACK_HOME=home)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        fleet = work / "fleet.dstack.yml"
        fleet.write_text(f"type: fleet\nname: bench\nssh_config:\n  identity_file: {work / 'key'}\n"
                         f"  hosts: [{host.address}]\n")
        subprocess.run([sys.executable, "-m", "cli.main", "apply", "-f", str(fleet), "-y"], cwd=ROOT, check=True,
                       env=env, capture_output=True)
        task = work / "task.dstack.yml"
        task.write_text("type: task\nbackends: [ssh]\ncommands: [echo first line]\n")
        runs = max(3, args.runs // 3)
        kept, direct, before, bare, round_trip = [], [], [], [], []
        for i in range(runs + 1):  # the first round warms the bytecode caches
            for persist, found in (("300", kept), ("0", direct)):
                result = apply_once(str(task), f"bench-{persist}-{i}", dict(env, DSTACK_SSH_PERSIST=persist),
                                    work / "phases.json", host.jobs_dir)
                if i:
                    found.append(result)
            if args.before:
                result = apply_once(str(task), f"bench-before-{i}", env, work / "phases.json", host.jobs_dir,
                                    args.before)
                if i:
                    before.append(result)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append(time.perf_counter() - started)
            started = time.perf_counter()
            connect(target, total_wait=10).close()
            round_trip.append(time.perf_counter() - started)

        def median(results, key=lambda r: r["first_line"]):
            return statistics.median(key(r) for r in results)

        print(f"\n== dstack apply on a ready fleet host, to the job's first log line (median of {runs}; load "
              f"{os.getloadavg()[0]:.1f})")
        cpu = lambda r: r["cpu"]  # noqa: E731
        print("                               first line       the command's CPU time (this machine's side)")
        print(f"through the kept connection    {median(kept):6.2f} s          {median(kept, cpu):6.2f} s")
        print(f"connecting each time           {median(direct):6.2f} s  x{median(direct) / median(kept):.2f}   "
              f"{median(direct, cpu):6.2f} s  x{median(direct, cpu) / median(kept, cpu):.2f}")
        if before:
            print(f"--before {args.before:21s} {median(before):6.2f} s  x{median(before) / median(kept):.2f}   "
                  f"{median(before, cpu):6.2f} s  x{median(before, cpu) / median(kept, cpu):.2f}")
        print(f"bare `python -c pass`          {statistics.median(bare):6.2f} s   "
              f"apply is {median(kept) / statistics.median(bare):.1f}x")
        print(f"a new SSH connection (in-process, paramiko imported)  {statistics.median(round_trip):6.3f} s")
        print("\n   where the time goes (s)     kept   connecting each time")
        for part in PARTS:
            print(f"   {part:26s} {median(kept, lambda r: r['spent'].get(part, 0.0)):6.3f}   "
                  f"{median(direct, lambda r: r['spent'].get(part, 0.0)):6.3f}")
        print(f"   on the host: wrapper to the job's first command (login profile, venv)   "
              f"{median(kept, lambda r: r['host']):6.3f}   {median(direct, lambda r: r['host']):6.3f}")
    finally:
        host.cleanup()
        socket.setdefaulttimeout(None)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--as-dstack":
        del sys.argv[1]
        instrument()
        from cli.main import main as dstack_main

        dstack_main()
    else:
        main()
