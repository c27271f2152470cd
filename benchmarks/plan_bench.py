"""How `dstack apply --dry-run --json` of a multi-node task grows with `nodes` (1, 100, 1000 = MAX_NODES by default),
on each cloud's stack: CPU time (user + system) and peak memory of the whole process, each against one node's in
the same run. Planning should stay about flat: the dry run renders three nodes through Pulumi's mocks and repeats
the last for the others (provisioner.planning.stack_plan.repeat_last_node).

Run: python benchmarks/plan_bench.py [--nodes 1 100 1000] [--backends aws gcp]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from configuration.policies import MAX_NODES  # noqa: E402


def measure(conf: Path, env: dict) -> tuple:
    """(CPU seconds, peak RSS in MB) of one dry run, from a probe process whose only child it is."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True); "
             "u = resource.getrusage(resource.RUSAGE_CHILDREN); print(u.ru_utime + u.ru_stime, u.ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "cli.main", "apply", "-f", str(conf),
                           "--dry-run", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    cpu, rss_kb = done.stdout.split()
    return float(cpu), int(rss_kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 100, MAX_NODES])
    parser.add_argument("--backends", nargs="+", default=["aws", "gcp"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ, DSTACK_HOME=str(Path(scratch) / "home"))
        for backend in args.backends:
            print(f"{backend}: apply --dry-run --json")
            baseline = None
            for nodes in args.nodes:
                conf = Path(scratch) / f"{backend}-{nodes}.dstack.yml"
                conf.write_text(f"type: task\nnodes: {nodes}\ncommands: [x]\nbackends: [{backend}]\n")
                cpu, rss = measure(conf, env)
                baseline = baseline or (cpu, rss)
                print(f"  nodes: {nodes:<5} CPU {cpu:6.2f} s ({cpu / baseline[0]:4.1f}x)   "
                      f"peak memory {rss:6.0f} MB ({rss / baseline[1]:4.1f}x)")


if __name__ == "__main__":
    main()
