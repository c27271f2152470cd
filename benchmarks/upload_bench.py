"""Upload speed against a real sshd in a network namespace (needs root and iproute2): `scp -O -r` of a folder
against dstack's upload of the same folder (one gzip stream of per-file members, packed while it is sent, over
paramiko), measured in the same run, for two folders:

- `mix`: half incompressible (weights), half text (code, logs), 8 files of each;
- `text`: a text-heavy repository, Python's own standard library sources (real code, about 4:1 under gzip).

Run: sudo python benchmarks/upload_bench.py [--mb 100] [--runs 3] [--folders mix,text]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provisioner.jobs.control import start_job  # noqa
from provisioner.jobs.script import JobSpec  # noqa
from provisioner.jobs.uploads import Upload, UploadPlan, list_folder  # noqa
from provisioner.host.ssh import SSHTarget, connect  # noqa
from tests.netns_hosts import NamespaceHost, namespaces_available  # noqa: E402


def make_folder(folder: Path, megabytes: int) -> None:
    """Half incompressible (weights), half text (code, logs): 8 files of each."""
    folder.mkdir()
    part = megabytes * 1024 * 1024 // 16
    for i in range(8):
        (folder / f"weights-{i}.bin").write_bytes(os.urandom(part))
        (folder / f"code-{i}.py").write_text(("def f(x):\n    return x * %d\n" % i) * (part // 28))


def make_text_folder(folder: Path, megabytes: int) -> None:
    """Python's standard library sources, copied round after round until the folder holds `megabytes`."""
    sources = sorted(Path(os.__file__).parent.rglob("*.py"))
    folder.mkdir()
    total, budget, round_ = 0, megabytes * 1024 * 1024, 0
    while total < budget:
        for index, source in enumerate(sources):
            if total >= budget:
                break
            data = source.read_bytes()
            (folder / f"r{round_}-{index}-{source.name}").write_bytes(data)
            total += len(data)
        round_ += 1


FOLDERS = {"mix": (make_folder, "half random, half text"), "text": (make_text_folder, "Python's stdlib sources")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--folders", default="mix,text")
    args = parser.parse_args()
    reason = namespaces_available()
    if reason:
        sys.exit(f"cannot run: {reason}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that `finally` removes the namespace
    work = Path(tempfile.mkdtemp(prefix="dstack-upload-bench-"))
    os.environ["DSTACK_HOME"] = str(work / "home")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "key")], check=True)
    host = NamespaceHost((work / "key.pub").read_text().strip()).start()
    try:
        scp = ["scp", "-O", "-q", "-r", "-i", str(work / "key"), "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null"]
        ssh = connect(SSHTarget(host.address, 22, "root", str(work / "key"), host_key=host.host_public_key),
                      total_wait=10)
        for kind in args.folders.split(","):
            make, what = FOLDERS[kind]
            folder = work / kind
            make(folder, args.mb)
            size = sum(p.stat().st_size for p in folder.iterdir()) / 1024 / 1024
            plan = UploadPlan([Upload(folder, list_folder(folder), ".", "bench")])
            scp_times, dstack_times = [], []
            for i in range(args.runs):
                start = time.perf_counter()
                subprocess.run(scp + [str(folder), f"root@{host.address}:{host.dir}/scp-{i}"], check=True)
                scp_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                start_job(ssh, JobSpec(run_name=f"bench-{i}", commands=["true"], uploads=plan))
                dstack_times.append(time.perf_counter() - start)
                shutil.rmtree(host.dir / f"scp-{i}", ignore_errors=True)
                shutil.rmtree(host.jobs_dir / f"bench-{i}", ignore_errors=True)
            scp_s, dstack_s = statistics.median(scp_times), statistics.median(dstack_times)
            print(f"== {kind}: {size:.0f} MB in {len(plan.uploads[0].files)} files ({what}) to {host.address}, "
                  f"median of {args.runs}")
            print(f"scp -O -r            {scp_s:6.2f} s")
            print(f"dstack upload        {dstack_s:6.2f} s  ({dstack_s / scp_s:.2f}x scp; includes unpacking and "
                  "starting the job)")
            shutil.rmtree(folder, ignore_errors=True)
        ssh.close()
    finally:
        host.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
