"""What a host has: CPUs and architecture, memory, free disk, GPUs (nvidia-smi, amd-smi), Docker and its IPv4
addresses, gathered in one round trip and parsed into an InstanceType that the solver matches like a cloud offer."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from offers.catalog import InstanceType
from offers.gpus import normalize_memory

# One shell command, one round trip; each section starts with a `---name` line.
PROBE_COMMAND = "; ".join([
    "echo ---nproc", "nproc",
    "echo ---arch", "uname -m",
    "echo ---meminfo", "cat /proc/meminfo",
    "echo ---df", "df -B1 -P \"$HOME\"",
    "echo ---nvidia", "nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits 2>/dev/null || true",
    "echo ---amd", "amd-smi static --asic --vram --json 2>/dev/null || true",
    "echo ---docker", "command -v docker || true",
    "echo ---addresses", "ip -o -4 addr show 2>/dev/null || hostname -I 2>/dev/null || true",
    "echo ---end",
])
ARCHES = {"x86_64": "x86", "amd64": "x86", "aarch64": "arm", "arm64": "arm"}


@dataclass(frozen=True)
class HostFacts:
    cpus: int
    arch: str
    memory_gib: float
    disk_free_gb: float
    gpus: Tuple[Tuple[str, str, float], ...]  # (vendor, name, memory GB) per GPU
    docker: bool
    addresses: Tuple[str, ...] = ()  # the host's own IPv4 addresses, loopback left out

    def instance_type(self, name: str) -> InstanceType:
        vendor, gpu, memory = self.gpus[0] if self.gpus else ("", "", 0.0)
        return InstanceType(name=name, cpus=self.cpus, memory_gib=round(self.memory_gib, 2), gpu_vendor=vendor,
                            gpu_name=gpu, gpu_count=len(self.gpus), gpu_memory_gib=memory, arch=self.arch,
                            spot_supported=False)

    def to_json(self) -> dict:
        return {"cpus": self.cpus, "arch": self.arch, "memory_gib": self.memory_gib,
                "disk_free_gb": self.disk_free_gb, "gpus": [list(g) for g in self.gpus], "docker": self.docker,
                "addresses": list(self.addresses)}

    @classmethod
    def from_json(cls, data: dict) -> "HostFacts":
        return cls(data["cpus"], data["arch"], data["memory_gib"], data["disk_free_gb"],
                   tuple(tuple(g) for g in data["gpus"]), data["docker"], tuple(data.get("addresses", ())))


def split_sections(output: str) -> Dict[str, str]:
    sections: Dict[str, List[str]] = {}
    current: Optional[str] = None
    for line in output.splitlines():
        if line.startswith("---") and re.fullmatch(r"---[a-z]+", line.strip()):
            current = line.strip()[3:]
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {k: "\n".join(v).strip() for k, v in sections.items()}


def nvidia_gpu_name(raw: str) -> str:
    """`NVIDIA H200` -> H200, `NVIDIA A100-SXM4-80GB` -> A100, `Tesla T4` -> T4, `NVIDIA H100 80GB HBM3` -> H100,
    `NVIDIA RTX A6000` -> A6000, `NVIDIA GeForce RTX 4090` -> RTX4090."""
    name = re.sub(r"^(NVIDIA|Tesla|Quadro)\s+", "", raw.strip())
    name = re.sub(r"^GeForce\s+", "", name)
    if name.startswith("RTX A") or name.startswith("RTX PRO"):
        return name.split(" ", 1)[1] if name.startswith("RTX A") else name
    if name.startswith("RTX "):
        return "RTX" + name.split()[1]
    return re.split(r"[-\s]", name)[0]


def parse_nvidia(text: str) -> List[Tuple[str, str, float]]:
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 or not parts[1].replace(" MiB", "").isdigit():
            continue
        name = nvidia_gpu_name(parts[0])
        memory_gib = int(parts[1].replace(" MiB", "")) / 1024
        gpus.append(("nvidia", name, normalize_memory(name, round(memory_gib, 2))))
    return gpus


def parse_amd(text: str) -> List[Tuple[str, str, float]]:
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return []
    gpus = []
    for gpu in data if isinstance(data, list) else data.get("gpu_data", []):
        asic = gpu.get("asic", {})
        name = str(asic.get("market_name", "AMD GPU")).replace("AMD Instinct ", "").replace(" ", "")
        vram = gpu.get("vram", {}).get("size", {})
        size = vram.get("value", 0) if isinstance(vram, dict) else vram
        unit = vram.get("unit", "MB") if isinstance(vram, dict) else "MB"
        memory = float(size) / 1024 if unit.upper() in ("MB", "MIB") else float(size)
        gpus.append(("amd", name, normalize_memory(name, round(memory, 2))))
    return gpus


def parse_addresses(text: str) -> Tuple[str, ...]:
    """IPv4 addresses from `ip -o -4 addr show` (`inet 10.0.0.5/24`) or `hostname -I`; loopback left out."""
    found = re.findall(r"\binet\s+(\d+\.\d+\.\d+\.\d+)", text) or re.findall(r"\b(\d+\.\d+\.\d+\.\d+)\b", text)
    return tuple(dict.fromkeys(a for a in found if not a.startswith("127.")))


def parse_probe(output: str) -> HostFacts:
    s = split_sections(output)
    if "end" not in s:
        raise ValueError("the host probe did not finish: " + output[-200:])
    memory_kb = int(re.search(r"MemTotal:\s+(\d+)\s*kB", s["meminfo"]).group(1))
    df_line = s["df"].splitlines()[-1].split()
    arch = s["arch"].strip()
    return HostFacts(
        cpus=int(s["nproc"].strip()),
        arch=ARCHES.get(arch, arch),
        memory_gib=round(memory_kb / 1024 / 1024, 2),
        disk_free_gb=round(int(df_line[3]) / 1024 ** 3, 1),
        gpus=tuple(parse_nvidia(s.get("nvidia", "")) + parse_amd(s.get("amd", ""))),
        docker=bool(s.get("docker", "").strip()),
        addresses=parse_addresses(s.get("addresses", "")),
    )
