"""`dstack metrics`: a running job's CPU, memory and GPUs, read on its host; GPUs through a fake `nvidia-smi` that
answers from the real H200 host's captured output (tests/data/gpu-hosts/h200-1x)."""

import json
import re
import time

import pytest

from provisioner.jobs.metrics import parse_gpus
from tests.helpers import DATA, run_cli

H200 = DATA / "gpu-hosts" / "h200-1x"

FAKE_NVIDIA_SMI = r'''#!/usr/bin/env python3
"""nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits], answered from a real host's `nvidia-smi -q -x`."""
import re, sys
xml = open(%(xml)r).read()
def tag(name):
    return re.search(r"<%%s>([^<]*)</%%s>" %% (name, name), xml).group(1).strip()
memory = xml[xml.index("<fb_memory_usage>"):]
values = {"index": "0", "name": tag("product_name"), "utilization.gpu": tag("gpu_util"),
          "memory.used": re.search(r"<used>([^<]*)</used>", memory).group(1),
          "memory.total": re.search(r"<total>([^<]*)</total>", memory).group(1)}
query = [a for a in sys.argv[1:] if a.startswith("--query-gpu=")][0].split("=", 1)[1].split(",")
form = [a for a in sys.argv[1:] if a.startswith("--format=")][0].split("=", 1)[1].split(",")
cells = [values[q] for q in query]
if "nounits" in form:
    cells = [re.sub(r" (%%|MiB)$", "", c) for c in cells]
if "noheader" not in form:
    print(", ".join(query))
print(", ".join(cells))
'''


def test_gpu_lines_parse_with_and_without_units():
    # The real host's format: `0, NVIDIA H200, 143771 MiB, 0 MiB, ...` (with units), and `[N/A]` where unsupported.
    line = H200.joinpath("nvidia-smi-query.csv").read_text().splitlines()[1]
    index, name, total, used = [c.strip() for c in line.split(",")][:4]
    with_units = parse_gpus([f"{index}, {name}, 7 %, {used}, {total}"])[0]
    without = parse_gpus([f"{index}, {name}, 7, {used.split()[0]}, {total.split()[0]}"])[0]
    assert with_units == without
    assert (with_units.name, with_units.utilization_percent, with_units.memory_used_mib,
            with_units.memory_total_mib) == ("NVIDIA H200", 7.0, 0.0, 143771.0)
    assert parse_gpus(["0, NVIDIA H200, [N/A], 0, 143771"])[0].utilization_percent is None
    assert parse_gpus(["index, name, utilization.gpu [%]", ""]) == []


@pytest.fixture
def fake_gpu_path(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(FAKE_NVIDIA_SMI % {"xml": str(H200 / "nvidia-smi-q.xml")})
    script.chmod(0o755)
    import os

    return f"{folder}:{os.environ['PATH']}"


def test_metrics_of_a_running_local_job(tmp_path, dstack_home, fake_gpu_path):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # the job gets busy.py from its repo
    conf = tmp_path / "busy.dstack.yml"
    # 64 MiB held, one core busy: the figures must show both.
    (tmp_path / "busy.py").write_text("held = b'x' * (64 * 2**20)\nprint('holding', flush=True)\nwhile True:\n    pass\n")
    conf.write_text("type: task\ncommands: [python3 busy.py]\n")
    env = {"DSTACK_HOME": str(dstack_home), "PATH": fake_gpu_path}
    started = run_cli("apply", "-f", str(conf), "-y", "-d", "-n", "busy", env=env)
    assert started.returncode == 0, started.stderr
    try:
        log, deadline = dstack_home / "jobs" / "busy" / "output.log", time.monotonic() + 30
        while (not log.exists() or "holding" not in log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)  # a loaded machine starts the job slowly: measured once the memory is held
        result = run_cli("metrics", "busy", "--json", env=env)
        assert result.returncode == 0, result.stderr
        found = json.loads(result.stdout)["metrics"]
        assert found["memory_bytes"] >= 64 * 2**20
        assert found["cpu_percent"] > 10  # one busy core reads ~100; the machine is shared
        assert found["gpus"] == [{"index": 0, "name": "NVIDIA H200", "utilization_percent": 0.0,
                                  "memory_used_mib": 0.0, "memory_total_mib": 143771.0}]
        table = run_cli("metrics", "busy", env=env)
        assert table.returncode == 0, table.stderr
        assert re.search(r"GPU 0 NVIDIA H200\s+0%", table.stdout)
        assert re.search(r"GPU 0 memory\s+0KiB\s+140.4GiB", table.stdout)
    finally:
        run_cli("stop", "-x", "-y", "busy", env=env)
    ended = run_cli("metrics", "busy", env=env)
    assert ended.returncode == 1 and "busy is terminated: metrics are read from a running job" in ended.stderr


def test_metrics_of_an_unknown_run_is_one_line(dstack_home):
    result = run_cli("metrics", "nope", env={"DSTACK_HOME": str(dstack_home)})
    assert result.returncode == 1 and result.stderr == "error: no run named nope (see `dstack ps -a`)\n"
