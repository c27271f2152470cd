"""How long a multi-node run takes to start: `dstack apply` of a `nodes: N` task (N = 3, 8, 16) on an SSH fleet of
16 network namespace hosts (tests.netns_hosts, joined by a switch), from the command's start to the first output
line of each node (the last of them is the figure), and to the command's end; each through the hosts' kept
connections (provisioner.host.keeper_client) and, as the baseline in the same run, connecting each time
(DSTACK_SSH_PERSIST=0, as before keepers). Needs root, `ip` and sshd, as the tests' namespace hosts do; traffic
stays on 10.251.0.0/16 (the hosts this script makes).

Each host logs in a user of its own (`bench`, its home in the host's folder): the namespace hosts share this
machine's files, and as root every node's job would read root's login profile, whose `pyenv init` takes a lock
that all of them share (8 logins at once take ~12x one login here), which hosts of a real cluster never do. The
hosts also share this machine's cores: each node's job start (login shell, Python venv) is CPU work on the same
2 cores, so the figure grows with N here even where every step runs in parallel.
Beside each kept figure: the CPU-seconds the whole machine was busy until the last first line (hosts, keepers
and client), and that as a share of its cores: near 100%, the figure is bound by this machine's CPU.

`--before CHECKOUT` measures another checkout's `dstack apply` (e.g. main before a change) in the same rounds, on
the same hosts: the machine's load changes by the minute, so only figures from the same rounds compare.

Run: sudo python benchmarks/cluster_bench.py [--runs N] [--sizes 3,8,16] [--before CHECKOUT]
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.netns_hosts import NamespaceHost, Switch, require_namespaces  # noqa: E402

TASK = "type: task\nnodes: {nodes}\nbackends: [ssh]\ncommands: ['echo first line of $DSTACK_NODE_RANK', 'sleep 1']\n"


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def machine_busy_s() -> float:
    """CPU seconds this machine's cores have spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def one_run(env: dict, conf: Path, name: str, nodes: int, checkout: Path = ROOT) -> tuple:
    """(seconds to each node's first line, rank order; seconds to the command's end; CPU seconds the whole machine
    was busy until the last first line: hosts, keepers and client together), with the `dstack` of `checkout`."""
    start, busy_at_start, busy = time.perf_counter(), machine_busy_s(), None
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "apply", "-f", str(conf), "-y", "-n", name],
                               cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    firsts: dict = {}
    buffered = b""
    while process.poll() is None or buffered:
        ready, _, _ = select.select([process.stdout], [], [], 0.05)
        data = os.read(process.stdout.fileno(), 65536) if ready else b""
        if not data and process.poll() is not None:
            break
        buffered += data
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            if b"first line of" in line:
                firsts.setdefault(int(line.split()[0].strip(b"[]")), time.perf_counter() - start)
                if busy is None and len(firsts) == nodes:
                    busy = machine_busy_s() - busy_at_start
    error = process.stderr.read().decode(errors="replace")
    process.wait()
    if process.returncode != 0 or len(firsts) != nodes:
        raise SystemExit(f"run {name} failed (exit {process.returncode}); first lines seen: {sorted(firsts)}\n"
                         f"{error[-1500:]}")
    return [firsts[rank] for rank in range(nodes)], time.perf_counter() - start, busy


def main() -> None:
    import statistics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="3,8,16")
    parser.add_argument("--before", metavar="CHECKOUT", help="another checkout of this project (e.g. main before a "
                        "change) whose `dstack apply` is measured beside, kept connections, in the same rounds")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    require_namespaces()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        key = folder / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        hosts = [NamespaceHost(Path(f"{key}.pub").read_text().strip(), login_user="bench") for _ in range(max(sizes))]
        switch = Switch()
        try:
            for host in hosts:
                host.start()
                for path in (host.dir, host.dir / "authorized_keys"):  # its user adds and removes cluster keys
                    os.chown(path, host.uid, host.uid)
            switch.start()
            for host in hosts:
                switch.join(host)
            env = dict(os.environ, DSTACK_HOME=str(folder / "home"))
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            fleet = folder / "fleet.dstack.yml"
            fleet.write_text(f"type: fleet\nname: bench\nssh_config:\n  user: bench\n  identity_file: {key}\n"
                             f"  hosts: [{', '.join(h.address for h in hosts)}]\n")
            applied = cli(env, "apply", "-f", str(fleet), "-y")
            if applied.returncode != 0:
                raise SystemExit(applied.stderr)
            cli(env, "apply", "-f", str(write_task(folder, 1)), "-y", "-n", "warm-up")  # bytecode caches
            print(f"`dstack apply` of an N-node task on a {len(hosts)}-host SSH fleet (namespace hosts), median of "
                  f"{args.runs}, seconds (load {os.getloadavg()[0]:.1f}):")
            print("  nodes  last first line  end    | connecting each time: last first line  end"
                  + ("    | --before: last first line  end" if args.before else ""))
            figures, before_figures = {}, {}
            for nodes in sizes:
                conf = write_task(folder, nodes)
                kept, direct, before = [], [], []
                for run in range(args.runs):
                    rounds = [("kept", "300", kept, ROOT), ("direct", "0", direct, ROOT)]
                    rounds += [("before", "300", before, Path(args.before))] if args.before else []
                    for label, persist, found, checkout in rounds:
                        firsts, end, busy = one_run(dict(env, DSTACK_SSH_PERSIST=persist), conf,
                                                    f"bench-{nodes}-{label}-{run}", nodes, checkout)
                        found.append((max(firsts), end, busy))
                figures[nodes] = statistics.median(first for first, _, _ in kept)
                line = (f"  {nodes:>5}  {figures[nodes]:15.2f}  {statistics.median(e for _, e, _ in kept):5.2f}  |"
                        f"  {statistics.median(first for first, _, _ in direct):36.2f}  "
                        f"{statistics.median(e for _, e, _ in direct):5.2f}")
                if before:
                    before_figures[nodes] = statistics.median(first for first, _, _ in before)
                    line += (f"  |  {before_figures[nodes]:24.2f}  "
                             f"{statistics.median(e for _, e, _ in before):5.2f}")
                busy = statistics.median(b for _, _, b in kept)
                cores = os.cpu_count() or 1
                line += (f"   (kept: the machine busy {busy:.2f} CPU-s until the last first line, "
                         f"{100 * busy / (cores * figures[nodes]):.0f}% of {cores} cores"
                         + (f"; --before: {statistics.median(b for _, _, b in before):.2f} CPU-s)" if before else ")"))
                print(line)
            if sizes[0] in figures:
                for nodes in sizes[1:]:
                    print(f"  {nodes} nodes / {sizes[0]} nodes (last first line): "
                          f"{figures[nodes] / figures[sizes[0]]:.2f}x"
                          + (f"; --before: {before_figures[nodes] / before_figures[sizes[0]]:.2f}x"
                             if before_figures else ""))
        finally:
            switch.cleanup()
            for host in hosts:
                host.cleanup()


def write_task(folder: Path, nodes: int) -> Path:
    conf = folder / f"cluster-{nodes}.dstack.yml"
    conf.write_text(TASK.format(nodes=nodes))
    return conf


if __name__ == "__main__":
    main()
