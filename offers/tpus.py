"""GCP TPU slices as offers: dstack's names for them, and what each is made of (hosts, their CPUs and memory, HBM).

A slice is named `GENERATION-SIZE` (`v5litepod-8`, `v3-2048`; dstack drops the `tpu-` prefix that the catalogue
and older dstack names carry). SIZE counts TensorCores for v2, v3, v4 and v5p (two per chip) and chips for v5e
(`v5litepod`) and v6e. A slice runs on one TPU VM host or, past a host's chips, on several (a multi-host slice):
one job per host (`nodes:`, provisioner.jobs.nodes). The catalogue prices the whole slice and has no host figures;
those below are Google's per-host shapes (Cloud TPU "System architecture" and each generation's page; the single-host
v2, v3, v5e, v5p and v6e figures as gpuhunt lists them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

VENDOR = "google"
# A TPU VM's boot disk: its size is fixed (the TPU API takes none), and the slice's price covers it.
BOOT_DISK_GB = 100


@dataclass(frozen=True)
class Generation:
    cores_per_unit: int  # what one unit of SIZE is: 2 = TensorCores (two per chip), 1 = chips
    chips_per_host: int  # on a multi-host slice
    hbm_per_chip_gib: float
    host_shape: Tuple[int, float]  # (vCPUs, memory GiB) of a multi-host slice's host
    single_hosts: Dict[int, Tuple[int, float]]  # single-host SIZEs and their host's (vCPUs, memory GiB)


GENERATIONS: Dict[str, Generation] = {
    "v2": Generation(2, 4, 16, (96, 334), {8: (96, 334)}),
    "v3": Generation(2, 4, 32, (96, 334), {8: (96, 334)}),
    "v4": Generation(2, 4, 32, (240, 407), {8: (240, 407)}),
    "v5p": Generation(2, 4, 95, (208, 448), {8: (208, 448)}),
    "v5litepod": Generation(1, 4, 16, (112, 192), {1: (24, 48), 4: (112, 192), 8: (224, 384)}),
    "v6e": Generation(1, 4, 32, (180, 720), {1: (44, 176), 4: (180, 720), 8: (180, 1440)}),
}


@dataclass(frozen=True)
class TpuSlice:
    name: str  # dstack's: `v5litepod-8`
    generation: str
    size: int
    chips: int
    hosts: int
    host_cpus: int
    host_memory_gib: float

    @property
    def hbm_gib(self) -> float:
        """The slice's HBM in all (what the offer's one accelerator has, as dstack counts a TPU: one per slice)."""
        return self.chips * GENERATIONS[self.generation].hbm_per_chip_gib


def tpu_slice(name: str) -> Optional[TpuSlice]:
    """The slice a TPU name means (`v5litepod-8`, `tpu-v3-2048`), or None for a name that is not one."""
    base = name[4:] if name.startswith("tpu-") else name
    generation, _, size_text = base.rpartition("-")
    spec = GENERATIONS.get(generation)
    if spec is None or not size_text.isdigit() or int(size_text) < 1:
        return None
    size = int(size_text)
    if size % spec.cores_per_unit:
        return None
    chips = size // spec.cores_per_unit
    if size in spec.single_hosts:
        cpus, memory = spec.single_hosts[size]
        return TpuSlice(base, generation, size, chips, 1, cpus, memory)
    if chips % spec.chips_per_host or chips <= spec.chips_per_host:
        return None
    cpus, memory = spec.host_shape
    return TpuSlice(base, generation, size, chips, chips // spec.chips_per_host, cpus, memory)


def tpu_hosts(instance_type: str) -> int:
    """The TPU VM hosts of a slice (1 for anything that is not a TPU)."""
    found = tpu_slice(instance_type)
    return found.hosts if found is not None else 1
