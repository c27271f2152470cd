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

Each host's folder (its user's home, the jobs folder and its host cache) is a file system of its own, as a real
host's disk is: an ext4 image with a journal (mkfs.ext4's default) on a loop device. This machine's own file system
is ext4 without a journal, and without one ext4 skips, when it makes a new file, every inode removed in the last
30 s (`recently_deleted`, reading each one's inode block): 16 hosts on that one file system made each other's file
creations slower in proportion to all the hosts' removals, a cost that grows with N and that no cluster's hosts
share (measured here, 16 nodes: the hosts' CPU per node 41 ms on the shared file system, 29 ms on disks of their
own). `--shared-disk` puts all hosts' folders on this machine's file system, as before (and where loop devices can
not be mounted, the script says so and does the same).
Beside each kept figure: the CPU-seconds the whole machine was busy until the last first line (hosts, keepers
and client), and that as a share of its cores: near 100%, the figure is bound by this machine's CPU. Where cgroups
can count CPU time (cgroup v1 `cpuacct` or v2), that time is split: per node on the hosts (each host's sshd and all
it starts), in the keepers (per node) and in the client (`dstack apply` itself); other load on the machine is
in none of them.

The sizes take turns within each round (3, 8, 16, then 16, 8, 3, ...), so that the ratios compare figures taken
over the same minutes.

`--phases` adds one kept run of each size per round through benchmarks/run_phases.py, which marks the run's steps
(until the connect, the connect, the jobs' start on every node, the run's record, and from there to the last first
line) and prints each one's median per size and what it adds from the smallest size to the others: which steps
grow with N.

`--before CHECKOUT` measures another checkout's `dstack apply` (e.g. main before a change) in the same rounds, on
the same hosts: the machine's load changes by the minute, so only figures from the same rounds compare.

Run: sudo python benchmarks/cluster_bench.py [--runs N] [--sizes 3,8,16] [--before CHECKOUT] [--shared-disk]
                                             [--phases]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.run_phases import MARKS_ENV, PHASES, phases  # noqa: E402
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


class CpuGroups:
    """CPU time counted per part (hosts, keepers, client) in cgroups of this script's own; `usable` is False where
    this machine's cgroups cannot count it (the split is then not printed)."""

    PARTS = ("hosts", "keepers", "client")

    def __init__(self):
        v1, v2 = Path("/sys/fs/cgroup/cpuacct"), Path("/sys/fs/cgroup")
        self.v2 = not v1.is_dir() and (v2 / "cgroup.controllers").exists()
        base = v2 if self.v2 else v1
        self.paths = {part: base / f"cluster-bench-{os.getpid()}-{part}" for part in self.PARTS}
        try:
            for path in self.paths.values():
                path.mkdir(exist_ok=True)
            self.usable = True
        except OSError:
            self.usable = False

    def join(self, part: str, pids) -> None:
        """Each process of `pids` with all its threads (`cgroup.procs`; cgroup v1's `tasks` moved the one thread
        whose id is the pid: a keeper's threads started before, its connection's and those serving its clients,
        were counted nowhere)."""
        for pid in pids:
            try:
                (self.paths[part] / "cgroup.procs").write_text(str(pid))
            except OSError:  # gone meanwhile
                pass

    def seconds(self) -> tuple:
        if not self.usable:
            return (0.0,) * len(self.PARTS)
        if self.v2:
            return tuple(int(next(line.split()[1] for line in (path / "cpu.stat").read_text().splitlines()
                                  if line.startswith("usage_usec"))) / 1e6 for path in self.paths.values())
        return tuple(int((path / "cpuacct.usage").read_text()) / 1e9 for path in self.paths.values())

    def remove(self) -> None:
        for path in self.paths.values():
            root = path.parent / "cgroup.procs"
            for pid in (path / "cgroup.procs").read_text().split() if path.exists() else ():
                try:
                    root.write_text(pid)
                except OSError:
                    pass
            try:
                path.rmdir()
            except OSError:
                pass


def own_disk(host: NamespaceHost, images: Path) -> bool:
    """Mounts a new journaled ext4 image (a sparse file in `images`) on `host`'s folder, before the host writes
    anything there; False where this machine can not (no loop devices): the folder stays on the shared one."""
    image = images / f"disk-{host.index}.img"
    image.touch()
    os.truncate(image, 256 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True)
    if made.returncode != 0 or subprocess.run(["mount", "-o", "loop", str(image), str(host.dir)],
                                              capture_output=True).returncode != 0:
        image.unlink()
        return False
    return True


def unmount(hosts: list) -> None:
    """Each host's own disk unmounted (its files go with the image) and the mount point removed."""
    for host in hosts:
        subprocess.run(["umount", "-l", str(host.dir)], capture_output=True)
        shutil.rmtree(host.dir, ignore_errors=True)
    hosts.clear()


def keeper_pids(home: str) -> list:
    """The keepers of the runs' $DSTACK_HOME (not those of other commands on this machine)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if (entry.isdigit() and b"provisioner.host.keeper" in Path(f"/proc/{entry}/cmdline").read_bytes()
                    and f"DSTACK_HOME={home}".encode() in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")):
                found.append(entry)
        except OSError:
            pass
    return found


def one_run(env: dict, conf: Path, name: str, nodes: int, checkout: Path = ROOT, groups=None, hosts=(),
            command: Sequence[str] = ("-m", "cli.main")) -> tuple:
    """(seconds to each node's first line, rank order; seconds to the command's end; CPU seconds the whole machine
    was busy until the last first line: hosts, keepers and client together; that CPU time split as `groups` counts
    it: hosts, keepers, client), with the `dstack` of `checkout` (`command`: how the interpreter runs it)."""
    if groups is not None:
        for host in hosts:
            groups.join("hosts", host.pids())
        groups.join("keepers", keeper_pids(env["DSTACK_HOME"]))
    split_at_start = groups.seconds() if groups is not None else ()
    split = None
    start, busy_at_start, busy = time.perf_counter(), machine_busy_s(), None
    process = subprocess.Popen([sys.executable, *command, "apply", "-f", str(conf), "-y", "-n", name],
                               cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=(lambda: groups.join("client", [os.getpid()])) if groups else None)
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
                    if groups is not None:
                        split = tuple(now - then for now, then in zip(groups.seconds(), split_at_start))
    error = process.stderr.read().decode(errors="replace")
    process.wait()
    if process.returncode != 0 or len(firsts) != nodes:
        raise SystemExit(f"run {name} failed (exit {process.returncode}); first lines seen: {sorted(firsts)}\n"
                         f"{error[-1500:]}")
    return [firsts[rank] for rank in range(nodes)], time.perf_counter() - start, busy, split


def main() -> None:
    import statistics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="3,8,16")
    parser.add_argument("--before", metavar="CHECKOUT", help="another checkout of this project (e.g. main before a "
                        "change) whose `dstack apply` is measured beside, kept connections, in the same rounds")
    parser.add_argument("--phases", action="store_true", help="also one more kept run of each size in each round "
                        "with its steps marked (benchmarks/run_phases.py): where the time until the last first line "
                        "goes, and what each step adds from the smallest size to the others")
    parser.add_argument("--shared-disk", action="store_true", help="all hosts' folders on this machine's file "
                        "system (as before: one file system, without a journal here), not a disk of each host's own")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    require_namespaces()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        key = folder / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        hosts = [NamespaceHost(Path(f"{key}.pub").read_text().strip(), login_user="bench") for _ in range(max(sizes))]
        switch = Switch()
        mounted = []
        try:
            if not args.shared_disk:
                (folder / "disks").mkdir()
                for host in hosts:
                    if not own_disk(host, folder / "disks"):
                        print("loop devices can not be mounted here: the hosts share this machine's file system")
                        unmount(mounted)
                        break
                    mounted.append(host)
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
            disks = ("each host's folder on a disk of its own (ext4 with a journal)" if len(mounted) == len(hosts)
                     else "all hosts' folders on this machine's file system")
            print(f"`dstack apply` of an N-node task on a {len(hosts)}-host SSH fleet (namespace hosts; {disks}), "
                  f"median of {args.runs}, seconds (load {os.getloadavg()[0]:.1f}):")
            print("  nodes  last first line  end    | connecting each time: last first line  end"
                  + ("    | --before: last first line  end" if args.before else ""))
            figures, before_figures = {}, {}
            groups = CpuGroups()
            # Sizes take turns within each round, in the opposite order every other round: the machine's load
            # drifts by the minute, and a ratio of figures taken minutes apart would measure that drift too.
            found = {(nodes, label): [] for nodes in sizes for label in ("kept", "direct", "before", "phases")}
            for run in range(args.runs):
                for nodes in sizes if run % 2 == 0 else sizes[::-1]:
                    rounds = [("kept", "300", ROOT), ("direct", "0", ROOT)]
                    rounds += [("before", "300", Path(args.before))] if args.before else []
                    for label, persist, checkout in rounds:
                        found[nodes, label].append(one_run(dict(env, DSTACK_SSH_PERSIST=persist),
                                                           write_task(folder, nodes), f"bench-{nodes}-{label}-{run}",
                                                           nodes, checkout, groups, hosts))
                    if args.phases:
                        found[nodes, "phases"].append(phase_run(dict(env, DSTACK_SSH_PERSIST="300"), folder, nodes,
                                                                f"bench-{nodes}-phases-{run}"))
            for nodes in sizes:
                kept, direct, before = (found[nodes, label] for label in ("kept", "direct", "before"))
                figures[nodes] = statistics.median(max(firsts) for firsts, *_ in kept)
                line = (f"  {nodes:>5}  {figures[nodes]:15.2f}  {statistics.median(r[1] for r in kept):5.2f}  |"
                        f"  {statistics.median(max(firsts) for firsts, *_ in direct):36.2f}  "
                        f"{statistics.median(r[1] for r in direct):5.2f}")
                if before:
                    before_figures[nodes] = statistics.median(max(firsts) for firsts, *_ in before)
                    line += (f"  |  {before_figures[nodes]:24.2f}  "
                             f"{statistics.median(r[1] for r in before):5.2f}")
                cores = os.cpu_count() or 1
                line += (f"   (kept: the machine busy {cpu_split(kept, nodes, groups)}, "
                         f"{100 * statistics.median(r[2] for r in kept) / (cores * figures[nodes]):.0f}% of {cores} "
                         "cores" + (f"; --before: {cpu_split(before, nodes, groups)})" if before else ")"))
                print(line)
            if sizes[0] in figures:
                for nodes in sizes[1:]:
                    print(f"  {nodes} nodes / {sizes[0]} nodes (last first line): "
                          f"{figures[nodes] / figures[sizes[0]]:.2f}x"
                          + (f"; --before: {before_figures[nodes] / before_figures[sizes[0]]:.2f}x"
                             if before_figures else ""))
            if args.phases:
                print_phases(sizes, {nodes: found[nodes, "phases"] for nodes in sizes})
        finally:
            if "groups" in locals():
                groups.remove()
            switch.cleanup()
            for host in hosts:
                host.cleanup()
            unmount(mounted)


def cpu_split(results: list, nodes: int, groups: CpuGroups) -> str:
    """The median CPU-seconds until the last first line, and where cgroups count it, its split per node."""
    import statistics

    text = f"{statistics.median(r[2] for r in results):.2f} CPU-s until the last first line"
    if not groups.usable:
        return text
    hosts, keepers, client = (statistics.median(r[3][i] for r in results) for i in range(3))
    return (f"{text}: per node {1000 * hosts / nodes:.0f} ms on the hosts, {1000 * keepers / nodes:.0f} ms in "
            f"keepers; the client {client:.2f} s")


def phase_run(env: dict, folder: Path, nodes: int, name: str) -> dict:
    """One kept run through benchmarks/run_phases.py: {phase: seconds} (run_phases.PHASES)."""
    marks = folder / "marks.json"
    started = time.time()
    firsts, *_ = one_run(dict(env, **{MARKS_ENV: str(marks)}), write_task(folder, nodes), name, nodes,
                         command=(str(Path(__file__).resolve().parent / "run_phases.py"),))
    return phases(started, json.loads(marks.read_text()), started + max(firsts))


def print_phases(sizes: list, runs: dict) -> None:
    """Each phase's median per size, and what it adds from the smallest size to each other."""
    import statistics

    names = [name for name, *_ in PHASES]
    medians = {nodes: [statistics.median(run[name] for run in runs[nodes]) for name in names] for nodes in sizes}
    print(f"Where the time until the last first line goes (--phases: one more kept run of each size per round, its "
          f"steps marked; medians of {len(runs[sizes[0]])}, seconds):")
    print("  nodes  " + "  ".join(names) + "  (sum)")
    for nodes in sizes:
        print(f"  {nodes:>5}  " + "  ".join(f"{value:{len(name)}.3f}" for name, value in zip(names, medians[nodes]))
              + f"  {sum(medians[nodes]):.3f}")
    for nodes in sizes[1:]:
        print(f"  {nodes} - {sizes[0]}: " + "  ".join(f"{name} {now - then:+.3f}" for name, now, then
                                                       in zip(names, medians[nodes], medians[sizes[0]])))


def write_task(folder: Path, nodes: int) -> Path:
    conf = folder / f"cluster-{nodes}.dstack.yml"
    conf.write_text(TASK.format(nodes=nodes))
    return conf


if __name__ == "__main__":
    main()
