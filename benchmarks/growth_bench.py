"""Costs as the state grows, each printed as a curve beside a baseline measured in the same run:

- `dstack ps` (wall time) with 10, 1,000 and 10,000 finished runs in the store (and two active ones), beside
  `python -c pass` and `dstack --help`;
- `dstack logs NAME` of a long output (1 GB by default): MB/s and the process's peak memory (max RSS), from the host
  (a local run's job folder) and from the local copy under $DSTACK_HOME/runs/NAME (a cloud run whose VM is gone),
  beside `cat` of the same file;
- the state store under 1, 5 and 20 concurrent writer processes (each creates its run, claims one contested run
  and writes 20 updates and 20 events): total time, `database is locked` errors, and how many won the claim.

Run: python benchmarks/growth_bench.py [--runs 10,1000,10000] [--log-mb 1024] [--writers 1,5,20] [--only ps]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def user_env(home: Path) -> dict:
    env = dict(os.environ, DSTACK_HOME=str(home))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode cached, as on a user's machine
    return env


def wall(argv, env: dict, runs: int = 3, stdout=subprocess.DEVNULL) -> float:
    """Median wall time after one warm-up run."""
    subprocess.run(argv, stdout=stdout, stderr=subprocess.DEVNULL, env=env, cwd=ROOT, check=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=stdout, stderr=subprocess.DEVNULL, env=env, cwd=ROOT, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fill_store(home: Path, count: int) -> None:
    """`count` finished runs, with a configuration and offer as real ones carry, and two active runs whose owner
    (this process) is alive, written in one transaction."""
    os.environ["DSTACK_HOME"] = str(home)
    from provisioner.host.owner import process_start_time
    from provisioner.store.records import RunRecord
    from provisioner.store.statuses import RunStatus
    from provisioner.store.store import StateStore

    store = StateStore()
    configuration = {"type": "task", "name": "train", "commands": ["pip install -r requirements.txt",
                                                                   "python train.py --epochs 10"],
                     "resources": {"gpu": {"name": ["A100"], "count": {"min": 1, "max": 1}}, "disk": "100GB.."},
                     "env": {"MODE": "fast"}, "ports": [8080], "backends": ["aws"]}
    offer = {"backend": "aws", "region": "us-east-1", "instance": {"name": "p4d.24xlarge", "resources": {
        "cpus": 96, "memory_mib": 1179648, "gpus": [{"name": "A100", "memory_mib": 40960}] * 8}}, "price": 32.77}
    records = [RunRecord(name=f"run-{i}", status=RunStatus.DONE, submitted_at=1e9 + i, backend="aws",
                         region="us-east-1", instance="p4d.24xlarge", price=32.77, started_at=1e9 + i + 30,
                         finished_at=1e9 + i + 600, exit_code=0, configuration=configuration, offer=offer,
                         host={"kind": "ssh", "hostname": "203.0.113.7", "port": 22, "user": "ubuntu"})
               for i in range(count)]
    records += [RunRecord(name=f"active-{i}", status=RunStatus.RUNNING, submitted_at=2e9 + i, backend="local",
                          owner_pid=os.getpid(), owner_started=process_start_time(os.getpid()),
                          host={"kind": "local"}, configuration=configuration) for i in range(2)]
    rows = [store._row(record) for record in records]
    with store._connect() as db:
        db.begin()
        db.executemany(f"INSERT INTO runs ({', '.join(rows[0])}) VALUES ({', '.join('?' for _ in rows[0])})",
                       [list(row.values()) for row in rows])
        db.commit()


PS_TARGET_S = 0.3  # issue 23: `dstack ps` with 10,000 runs in the store, wall time


def cpu_best(argv, env: dict, runs: int = 3) -> float:
    """The least CPU time (user + system) of `runs` runs: what load on the machine changes least."""
    import resource

    best = float("inf")
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best = min(best, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return best


def ps_curve(scratch: Path, counts) -> None:
    bare = wall([sys.executable, "-c", "pass"], user_env(scratch / "bare"))
    helped = wall([sys.executable, "-m", "cli.main", "--help"], user_env(scratch / "bare"))
    bare_cpu = cpu_best([sys.executable, "-c", "pass"], user_env(scratch / "bare"))
    print(f"== dstack ps, wall time, median of 3 (python -c pass {bare:.3f} s, dstack --help {helped:.3f} s); "
          f"target: under {PS_TARGET_S:.3f} s at 10,000 runs")
    first = None
    for count in counts:
        home = scratch / f"ps-{count}"
        fill_store(home, count)
        env = user_env(home)
        plain = wall([sys.executable, "-m", "cli.main", "ps"], env)
        as_json = wall([sys.executable, "-m", "cli.main", "ps", "--json"], env)
        last = wall([sys.executable, "-m", "cli.main", "ps", "-n", "20"], env)
        cpu = cpu_best([sys.executable, "-m", "cli.main", "ps"], env)
        first = first or plain
        verdict = ""
        if count == 10_000:
            verdict = f"   target {PS_TARGET_S:.3f} s: {'met' if plain < PS_TARGET_S else 'NOT met'}"
        print(f"  {count:>6} runs   ps {plain:6.3f} s ({plain / first:4.2f}x the first; CPU {cpu:5.3f} s, "
              f"{cpu / bare_cpu:4.1f}x python -c pass)   ps --json {as_json:6.3f} s   ps -n 20 {last:6.3f} s   "
              f"({plain / helped:4.2f}x --help){verdict}")


def logs_run(argv, env: dict, scratch: Path) -> tuple:
    """(seconds, peak RSS in MB) of one process, through GNU time (a child forked from this Python would count the
    memory it shared with it before exec)."""
    report = scratch / "time.out"
    start = time.perf_counter()
    subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(report), *argv], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env, cwd=ROOT, check=True)
    took = time.perf_counter() - start
    return took, int(report.read_text().split()[-1]) / 1024


def logs_curve(scratch: Path, megabytes: int) -> None:
    home = scratch / "logs"
    os.environ["DSTACK_HOME"] = str(home)
    from provisioner.store.records import RunRecord
    from provisioner.store.statuses import RunStatus
    from provisioner.store.store import StateStore

    job = home / "jobs" / "long"
    job.mkdir(parents=True)
    line = b"step 000123 loss 0.123456 lr 0.0003 tokens/s 123456.7 some more text of a training log\n"
    block = line * ((1 << 20) // len(line) + 1)
    with open(job / "output.log", "wb") as log:
        for _ in range(megabytes):
            log.write(block[:1 << 20])
    (job / "exit_code").write_text("0\n")
    store = StateStore()
    store.create_run(RunRecord(name="long", status=RunStatus.DONE, submitted_at=time.time(), backend="local",
                               host={"kind": "local"}, exit_code=0))
    env = user_env(home)
    size_mb = megabytes
    cat_s, cat_rss = logs_run(["cat", str(job / "output.log")], env, scratch)
    print(f"== dstack logs of a {size_mb} MB output, to /dev/null (MB/s; peak memory)")
    print(f"  cat of the file           {size_mb / cat_s:8.0f} MB/s  {cat_rss:6.0f} MB")
    host_s, host_rss = logs_run([sys.executable, "-m", "cli.main", "logs", "long"], env, scratch)
    print(f"  from the host (local run) {size_mb / host_s:8.0f} MB/s  {host_rss:6.0f} MB  ({host_s / cat_s:.1f}x cat)")
    copy = home / "runs" / "long"
    copy.mkdir(parents=True)
    os.link(job / "output.log", copy / "output.log")
    store.update_run("long", backend="aws", host=None)  # a cloud run whose VM is gone: the local copy is read
    copy_s, copy_rss = logs_run([sys.executable, "-m", "cli.main", "logs", "long"], env, scratch)
    print(f"  from the local copy       {size_mb / copy_s:8.0f} MB/s  {copy_rss:6.0f} MB  ({copy_s / cat_s:.1f}x cat)")


WRITER = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {root!r})
    from provisioner.store.records import RunRecord
    from provisioner.store.statuses import RunStatus
    from provisioner.store.store import StateStore

    me, start = sys.argv[1], float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.001)
    store = StateStore()
    store.create_run(RunRecord(name=me, status=RunStatus.PROVISIONING, submitted_at=time.time()))
    won = store.claim_run("contested", (RunStatus.SUBMITTED,), RunStatus.PROVISIONING)
    for step in range(20):
        store.add_event(me, "step", str(step))
        store.update_run(me, reason=f"step {{step}}")
    print(json.dumps({{"won": won, "took": time.time() - start}}))
""")


def writers_curve(scratch: Path, counts) -> None:
    script = scratch / "writer.py"
    script.write_text(WRITER.format(root=str(ROOT)))
    print("== the state store under concurrent writer processes (each: 1 insert, 1 claim, 20 updates, 20 events)")
    for count in counts:
        home = scratch / f"writers-{count}"
        os.environ["DSTACK_HOME"] = str(home)
        from provisioner.store.records import RunRecord
        from provisioner.store.statuses import RunStatus
        from provisioner.store.store import StateStore

        StateStore().create_run(RunRecord(name="contested", status=RunStatus.SUBMITTED, submitted_at=time.time()))
        start = time.time() + 2 + count * 0.1  # every writer has imported by then
        writers = [subprocess.Popen([sys.executable, str(script), f"w{i}", str(start)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=user_env(home)) for i in range(count)]
        results = [writer.communicate() for writer in writers]
        locked = sum(1 for _, err in results if "locked" in err)
        failed = sum(1 for writer in writers if writer.returncode != 0)
        done = [json.loads(out) for out, _ in results if out.strip()]
        slowest = max(d["took"] for d in done) if done else float("nan")
        writes = 42 * len(done)
        print(f"  {count:>3} writers  all done in {slowest:6.2f} s  ({writes / slowest:6.0f} writes/s)  "
              f"failed {failed}  `database is locked` {locked}  claim won by {sum(d['won'] for d in done)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="10,1000,10000")
    parser.add_argument("--log-mb", type=int, default=1024)
    parser.add_argument("--writers", default="1,5,20")
    parser.add_argument("--only", choices=("ps", "logs", "writers"), help="Run one curve alone")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dstack-growth-bench-"))
    try:
        if args.only in (None, "ps"):
            ps_curve(scratch, [int(n) for n in args.runs.split(",")])
        if args.only in (None, "logs"):
            logs_curve(scratch, args.log_mb)
        if args.only in (None, "writers"):
            writers_curve(scratch, [int(n) for n in args.writers.split(",")])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
