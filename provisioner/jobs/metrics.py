"""A running job's resource use, read on its host in one round trip: CPU and memory from /proc (the job's process
group, and its container's processes for `image:` jobs), each GPU's utilization and memory from
`nvidia-smi --query-gpu`. CPU is measured over SAMPLE_S: /proc's counters are read before and after."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from provisioner.host.transport import Transport, TransportError
from provisioner.jobs.layout import job_folder

SAMPLE_S = 1.0
GPU_QUERY = "index,name,utilization.gpu,memory.used,memory.total"
_SECTION = "--dstack-metrics--"


@dataclass
class GpuUse:
    index: int
    name: str
    utilization_percent: Optional[float]
    memory_used_mib: Optional[float]
    memory_total_mib: Optional[float]


@dataclass
class JobMetrics:
    cpu_percent: float  # 100 is one core busy
    cpu_count: int
    memory_bytes: int
    memory_total_bytes: int
    processes: int
    gpus: List[GpuUse] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def metrics_command(run_name: str) -> str:
    folder = job_folder(run_name)
    container = shlex.quote(f"dstack-{run_name}")
    snapshot = (f"echo {_SECTION}; date +%s.%N; cat /proc/[0-9]*/stat 2>/dev/null; echo {_SECTION}; "
                f"(docker top {container} -eo pid 2>/dev/null || sudo -n docker top {container} -eo pid 2>/dev/null) "
                "| tail -n +2")
    return (f"cd {folder} 2>/dev/null && [ -s pid ] || {{ echo 'no job' >&2; exit 3; }}; "
            f"[ -f exit_code ] && {{ echo 'ended' >&2; exit 4; }}; "
            f"cat pid; getconf CLK_TCK; getconf PAGESIZE; nproc; grep MemTotal /proc/meminfo; "
            f"{snapshot}; sleep {SAMPLE_S}; {snapshot}; echo {_SECTION}; "
            f"nvidia-smi --query-gpu={GPU_QUERY} --format=csv,noheader,nounits 2>/dev/null || true")


def read_metrics(transport: Transport, run_name: str) -> JobMetrics:
    result = transport.run(metrics_command(run_name), timeout=30)
    if result.code == 3:
        raise TransportError(f"{transport.description} holds no job of run {run_name}")
    if result.code == 4:
        raise TransportError(f"the job of run {run_name} has ended")
    if result.code != 0:
        raise TransportError(f"reading metrics on {transport.description} failed: "
                             f"{result.stderr.decode(errors='replace').strip()}")
    return parse_metrics(result.text)


def parse_metrics(text: str) -> JobMetrics:
    head, time1, stats1, pids1, time2, stats2, pids2, gpus = _sections(text)
    pgid, ticks_per_s, page_size, cpus, mem_total = head[:5]
    pgid, ticks_per_s, page_size, cpus = int(pgid), int(ticks_per_s), int(page_size), int(cpus)
    before = _job_processes(stats1, pgid, _pids(pids1))
    after = _job_processes(stats2, pgid, _pids(pids2))
    elapsed = max(float(time2[0]) - float(time1[0]), 1e-3)
    ticks = sum(t - before[pid][0] for pid, (t, _) in after.items() if pid in before)
    return JobMetrics(
        cpu_percent=round(100.0 * ticks / ticks_per_s / elapsed, 1),
        cpu_count=cpus,
        memory_bytes=sum(rss for _, rss in after.values()) * page_size,
        memory_total_bytes=int(mem_total.split()[1]) * 1024,
        processes=len(after),
        gpus=parse_gpus(gpus),
    )


def _sections(text: str) -> Tuple[List[str], ...]:
    parts = [p.strip().splitlines() for p in text.split(_SECTION)]
    head, first, first_pids, second, second_pids, gpus = parts
    return head, first[:1], first[1:], first_pids, second[:1], second[1:], second_pids, gpus


def _pids(lines: List[str]) -> set:
    return {int(line) for line in (line.strip() for line in lines) if line.isdigit()}


def _job_processes(lines: List[str], pgid: int, extra: set) -> Dict[int, Tuple[int, int]]:
    """pid -> (utime + stime ticks, resident pages) of the processes in the job's group or container."""
    found = {}
    for line in lines:
        pid_text, _, rest = line.partition(" ")
        fields = rest.rpartition(")")[2].split()  # after the command name, which may hold spaces
        if not pid_text.isdigit() or len(fields) < 22:
            continue
        pid = int(pid_text)
        if int(fields[2]) == pgid or pid in extra:  # fields[2] is the process group
            found[pid] = (int(fields[11]) + int(fields[12]), int(fields[21]))
    return found


def parse_gpus(lines: List[str]) -> List[GpuUse]:
    """`nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total` lines, with or without units
    (`nounits`) and with `[N/A]` where a value is not supported."""
    gpus = []
    for line in lines:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 5 or not cells[0].isdigit():
            continue
        gpus.append(GpuUse(int(cells[0]), cells[1], *(_number(c) for c in cells[2:])))
    return gpus


def _number(cell: str) -> Optional[float]:
    value = cell.removesuffix("%").removesuffix("MiB").strip()
    try:
        return float(value)
    except ValueError:  # [N/A], [Not Supported]
        return None
