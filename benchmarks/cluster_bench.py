"""How long a multi-node run takes to start: `dstack apply` of a `nodes: 3` task on an SSH fleet of three network
namespace hosts (tests.netns_hosts, joined by a switch), from the command's start to the first output line of each
node, and to the command's end. Needs root, `ip` and sshd, as the tests' namespace hosts do; traffic stays on
10.251.0.0/16 (the hosts this script makes).

Run: sudo python benchmarks/cluster_bench.py [--runs N]
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

NODES = 3
TASK = (f"type: task\nnodes: {NODES}\nbackends: [ssh]\n"
        "commands: ['echo first line of $DSTACK_NODE_RANK', 'sleep 1']\n")


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def one_run(env: dict, conf: Path, name: str) -> tuple:
    """(seconds to each node's first line, rank order; seconds to the command's end)."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "apply", "-f", str(conf), "-y", "-n", name],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
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
    process.wait()
    if process.returncode != 0 or len(firsts) != NODES:
        raise SystemExit(f"run {name} failed (exit {process.returncode}); first lines seen: {sorted(firsts)}")
    return [firsts[rank] for rank in range(NODES)], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    require_namespaces()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        key = folder / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        hosts = [NamespaceHost(Path(f"{key}.pub").read_text().strip()) for _ in range(NODES)]
        switch = Switch()
        try:
            for host in hosts:
                host.start()
            switch.start()
            for host in hosts:
                switch.join(host)
            env = dict(os.environ, DSTACK_HOME=str(folder / "home"))
            fleet = folder / "fleet.dstack.yml"
            fleet.write_text(f"type: fleet\nname: bench\nssh_config:\n  user: root\n  identity_file: {key}\n"
                             f"  hosts: [{', '.join(h.address for h in hosts)}]\n")
            applied = cli(env, "apply", "-f", str(fleet), "-y")
            if applied.returncode != 0:
                raise SystemExit(applied.stderr)
            conf = folder / "cluster.dstack.yml"
            conf.write_text(TASK)
            print(f"`dstack apply` of a {NODES}-node task on a {NODES}-host SSH fleet (namespace hosts), seconds:")
            print("  run  " + "  ".join(f"node {rank} first line" for rank in range(NODES)) + "  all nodes  end")
            for run in range(1, args.runs + 1):
                firsts, end = one_run(env, conf, f"bench-{run}")
                print(f"  {run:>3}  " + "  ".join(f"{t:17.2f}" for t in firsts) + f"  {max(firsts):9.2f}  {end:4.2f}")
        finally:
            switch.cleanup()
            for host in hosts:
                host.cleanup()


if __name__ == "__main__":
    main()
