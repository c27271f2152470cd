"""A run on a reused instance against the first run on the same host: `dstack apply` to the job's first log line.

The cloud instance is a namespace host (sshd in a network namespace, needs root and iproute2). The cloud is stood in
for at the backend boundary: each `dstack apply` here runs the real CLI in a child process whose
CloudBackend.create_stack returns that host (after `--provision-s`, 0 by default: a real cloud adds minutes of VM
creation and boot to every first run), whose destroy_stack does nothing and whose instance_state (the reused VM's
state, asked before the claim: a real cloud adds an API call to a reuse) says `running`; the Pulumi CLI and
credentials are not asked for. The job wrapper's VM power-off is left out (the namespace host is this machine).
Everything else (plan, claim, job, teardown, store, the host's kept connection) is the real code. Where the time
goes is printed for both kinds of run (benchmarks/remote_bench.py's breakdown).

Each round: a first run with `idle_duration` (its instance kept as the implicit fleet `first-N`), then a run pinned
to that fleet (`fleets: [first-N]`), which reuses the instance; then the fleet is deleted.

Run: sudo python benchmarks/reuse_bench.py [--rounds N] [--provision-s S]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOST_ENV = "DSTACK_BENCH_HOST"  # the stand-in cloud's host, as HostAccess JSON, for the child process
PROVISION_ENV = "DSTACK_BENCH_PROVISION_S"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from remote_bench import PARTS, PHASES_ENV, instrument  # noqa: E402


def stand_in_cloud() -> None:
    """In the child: CloudBackend's stack boundary over the namespace host."""
    from provisioner.backends.cloud import CloudBackend
    from provisioner.host.access import HostAccess
    from provisioner.host.keys import generate_key
    from provisioner.runs import job_specs
    from stacks import clouds

    access = HostAccess.from_json(json.loads(os.environ[HOST_ENV]))

    def create_stack(self, name, offer, configuration, report, key_path, record_stack, note=None):
        generate_key(key_path, f"dstack-run-{name}")
        record_stack({"backend": self.name, "name": f"{name}-bench", "owner": "bench", "region": offer.region})
        time.sleep(float(os.environ.get(PROVISION_ENV, "0")))
        return [access]

    CloudBackend.create_stack = create_stack
    clouds.setup_problems = lambda backend, purpose: []  # no Pulumi CLI or credentials needed: nothing is created
    CloudBackend.destroy_stack = lambda self, name, stack, report: None
    CloudBackend.instance_state = lambda self, stack, zone, rank, nodes: "running"  # (a real cloud: an API call)
    # A cloud VM's job wrapper schedules the VM's power-off; the namespace host is this machine: never here.
    job_specs.power_off_minutes = lambda configuration, offer: None


def dstack(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--as-dstack", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def first_line(task: Path, name: str, env: dict, phases: Path) -> dict:
    """Seconds to the first line, and the child's breakdown (remote_bench.instrument)."""
    start_wall, start = time.time(), time.perf_counter()
    process = dstack("apply", "-f", str(task), "-y", "-n", name, env=dict(env, **{PHASES_ENV: str(phases)}))
    line = process.stdout.readline()
    elapsed = time.perf_counter() - start
    _, err = process.communicate(timeout=120)
    if process.returncode != 0 or not line:
        sys.exit(f"dstack apply {name} failed ({process.returncode}): {err.decode(errors='replace')[-2000:]}")
    found = json.loads(phases.read_text())
    found["spent"]["interpreter"] = found["marks"]["started"] - start_wall
    return {"first_line": elapsed, "spent": found["spent"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--provision-s", type=float, default=0.0,
                        help="seconds the stand-in create_stack waits, as a cloud's VM creation would")
    args = parser.parse_args()
    from tests.netns_hosts import NamespaceHost, namespaces_available

    reason = namespaces_available()
    if reason:
        sys.exit(f"cannot run: {reason}")
    work = Path(tempfile.mkdtemp(prefix="dstack-reuse-bench-"))
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "key")], check=True)
    host = NamespaceHost((work / "key.pub").read_text().strip()).start()
    try:
        access = {"kind": "ssh", "hostname": host.address, "port": 22, "user": "root",
                  "identity_file": str(work / "key"), "host_key": host.host_public_key, "internal_ip": None}
        env = dict(os.environ, DSTACK_HOME=str(work / "home"), **{HOST_ENV: json.dumps(access),
                                                                   PROVISION_ENV: str(args.provision_s)})
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        first_times, reused_times = [], []
        for n in range(args.rounds + 1):  # round 0 warms the bytecode caches
            first = work / "first.dstack.yml"
            first.write_text("type: task\nbackends: [aws]\nregions: [us-east-1]\nidle_duration: 1h\n"
                             "commands: [echo first line]\n")
            reused = work / "reused.dstack.yml"
            reused.write_text(f"type: task\nfleets: [first-{n}]\ncommands: [echo first line]\n")
            a = first_line(first, f"first-{n}", env, work / "phases.json")
            b = first_line(reused, f"reused-{n}", env, work / "phases.json")
            dstack("fleet", "delete", f"first-{n}", "-y", env=env).communicate(timeout=120)
            if n:
                first_times.append(a)
                reused_times.append(b)
        a = statistics.median(r["first_line"] for r in first_times)
        b = statistics.median(r["first_line"] for r in reused_times)
        print(f"== dstack apply to the job's first log line (median of {args.rounds} rounds; load "
              f"{os.getloadavg()[0]:.1f})")
        print(f"first run on the host (stand-in create_stack, {args.provision_s:g} s)  {a:6.2f} s")
        print(f"run on the reused host                              {b:6.2f} s")
        print(f"ratio first / reused                                {a / b:6.2f}")
        if not args.provision_s:
            print("(a real cloud adds its VM creation and boot, minutes, to the first run only)")
        print("\n   where the time goes (s)     first   reused")
        for part in PARTS:
            print(f"   {part:26s} {statistics.median(r['spent'].get(part, 0.0) for r in first_times):6.3f}   "
                  f"{statistics.median(r['spent'].get(part, 0.0) for r in reused_times):6.3f}")
    finally:
        host.cleanup()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--as-dstack":
        del sys.argv[1]
        instrument()
        stand_in_cloud()
        from cli.main import main as dstack_main

        dstack_main()
    else:
        main()
