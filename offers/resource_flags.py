"""The resource flags' grammar (`--gpu H100:8`, `--cpu arm:16..`, `--memory 64GB..`, `--disk 500GB`) without
pydantic: `dstack offers` answers in a fraction of the time that importing pydantic and building the models takes.

`parse_resource_flags` gives the value that `configuration.resources` gives for the same text (same fields, same
`str()`, same `model_dump(mode="json")`), or raises `NotPlain` for any text it is not sure of, errors included: the
caller then takes the pydantic path, which gives its value or its error. So a value from here is always the models'
value, and every error is the models' error (tests.test_resource_flags compares both on many inputs).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

DEFAULT_DISK_GB = 100.0  # configuration.resources.DEFAULT_DISK_SIZE: `100GB..`
_INTEGER = re.compile(r"(?:0|[1-9][0-9]{0,8})\Z")  # what any int parser takes alike: no sign, zeros, `_` or spaces
_CPU_ARCHES = {"x86": "x86", "x86_64": "x86", "amd64": "x86", "arm": "arm", "arm64": "arm", "aarch64": "arm"}
_GPU_VENDORS = {"nvidia": "nvidia", "amd": "amd", "google": "google", "tpu": "google", "intel": "intel"}


class NotPlain(ValueError):
    """Text this module does not decide: an error, or a form only the models read (the models then answer)."""


class Memory(float):
    """A size in GB, printed as `configuration.resources.Memory` prints it."""

    def __str__(self) -> str:
        value = float(self)
        return f"{int(value)}GB" if value.is_integer() and value < 1e15 else f"{value!r}GB"

    __repr__ = __str__


def _memory(text: str) -> Memory:
    """configuration.resources.Memory.parse of a string."""
    text = text.replace(" ", "").lower()
    factor = 1.0
    for unit, unit_factor in (("tb", 1024.0), ("gb", 1.0), ("mb", 1 / 1024)):
        if text.endswith(unit):
            text, factor = text[: -len(unit)], unit_factor
            break
    try:
        number = float(text) * factor
    except ValueError:
        raise NotPlain(text) from None
    if math.isnan(number) or math.isinf(number) or number < 0:
        raise NotPlain(text)
    return Memory(number)


def _integer(text: str) -> int:
    if not _INTEGER.match(text):
        raise NotPlain(text)
    return int(text)


@dataclass(frozen=True)
class Range:
    min: Optional[float] = None
    max: Optional[float] = None

    def __str__(self) -> str:
        low = "" if self.min is None else str(self.min)
        high = "" if self.max is None else str(self.max)
        if self.min is not None and self.min == self.max:
            return low
        return f"{low}..{high}"

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def dump(self) -> dict:
        return {"min": self.min if self.min is None else _plain(self.min),
                "max": self.max if self.max is None else _plain(self.max)}


def _plain(value):
    return float(value) if isinstance(value, Memory) else value


def _range(text: str, end) -> Range:
    """configuration.resources.Range of a string, its ends read by `end`."""
    if ".." in text:
        parts = text.replace(" ", "").split("..")
        if len(parts) != 2:
            raise NotPlain(text)
        low, high = (end(part) if part else None for part in parts)
    else:
        low = high = end(text)
    if low is None and high is None or (low is not None and high is not None and low > high):
        raise NotPlain(text)
    return Range(low, high)


class _Enum(str):
    """An enum member as the models hold it: `.value` is its name (`arch.value == "arm"`)."""

    @property
    def value(self) -> str:
        return str(self)


@dataclass(frozen=True)
class CPUSpec:
    arch: Optional[_Enum] = None
    count: Range = Range(2)

    def __str__(self) -> str:
        return ":".join(part for part in (self.arch.value if self.arch else "", str(self.count)) if part)

    def dump(self) -> dict:
        return {"arch": self.arch and self.arch.value, "count": self.count.dump()}


@dataclass(frozen=True)
class GPUSpec:
    vendor: Optional[_Enum] = None
    name: Optional[List[str]] = None
    count: Range = Range(1)
    memory: Optional[Range] = None
    total_memory: Optional[Range] = None
    compute_capability: Optional[Tuple[int, int]] = None

    def __str__(self) -> str:
        parts = [self.vendor.value] if self.vendor else []
        parts += [",".join(self.name)] if self.name else []
        parts += [str(self.memory)] if self.memory else []
        return ":".join(parts + [str(self.count)])

    def dump(self) -> dict:
        return {"vendor": self.vendor and self.vendor.value, "name": None if self.name is None else list(self.name),
                "count": self.count.dump(), "memory": self.memory and self.memory.dump(),
                "total_memory": None, "compute_capability": None}


@dataclass(frozen=True)
class DiskSpec:
    size: Range

    def __str__(self) -> str:
        return str(self.size)


DEFAULT_GPU = GPUSpec(count=Range(0))


@dataclass(frozen=True)
class ResourcesSpec:
    """configuration.resources.ResourcesSpec as flags alone set it (no `shm_size`, no GPU total memory or compute
    capability: no flag gives them)."""

    cpu: CPUSpec = CPUSpec()
    memory: Range = Range(Memory(8))
    gpu: GPUSpec = DEFAULT_GPU
    disk: DiskSpec = DiskSpec(Range(Memory(DEFAULT_DISK_GB)))
    shm_size: None = None

    def describe(self) -> str:
        parts = [f"cpu={self.cpu}", f"mem={self.memory}"]
        if self.gpu.count.max != 0 and self.gpu != DEFAULT_GPU:
            parts.append(f"gpu={self.gpu}")
        parts.append(f"disk={self.disk}")
        return " ".join(parts)

    def model_dump(self, mode: str = "json") -> dict:
        """As the model's `model_dump(mode="json")`, key for key."""
        return {"cpu": self.cpu.dump(), "memory": self.memory.dump(), "shm_size": None, "gpu": self.gpu.dump(),
                "disk": {"size": self.disk.size.dump()}}


def _cpu(text: str) -> CPUSpec:
    arch, count = None, None
    for token in text.replace(" ", "").split(":"):
        if ".." in token or token.isdigit():
            if count is not None:
                raise NotPlain(text)
            count = _range(token, _integer)
        elif arch is None and token.lower() in _CPU_ARCHES:
            arch = _Enum(_CPU_ARCHES[token.lower()])
        else:
            raise NotPlain(text)
    return CPUSpec(arch, count or Range(2))


def _gpu(text: str) -> GPUSpec:
    spec: dict = {}
    for token in text.replace(" ", "").split(":"):
        if not token:
            raise NotPlain(text)
        if token.lower() in _GPU_VENDORS:
            key, value = "vendor", _Enum(_GPU_VENDORS[token.lower()])
        elif token[0].isalpha():
            names = [name.strip() for name in token.split(",")]
            if not all(names):
                raise NotPlain(text)
            key, value = "name", [name[4:] if name.startswith("tpu-") else name for name in names]
        elif any(c.isalpha() for c in token):
            key, value = "memory", _range(token, _memory)
        else:
            key, value = "count", _range(token, _integer)
        if key in spec:
            raise NotPlain(text)
        spec[key] = value
    return GPUSpec(**spec)


def parse_resource_flags(gpu: Optional[str], cpu: Optional[str], memory: Optional[str],
                         disk: Optional[str]) -> ResourcesSpec:
    """The default resources with each flag given (not None) in place of its field; NotPlain when a flag is one that
    only the models decide."""
    defaults = ResourcesSpec()
    return ResourcesSpec(
        cpu=defaults.cpu if cpu is None else _cpu(cpu),
        memory=defaults.memory if memory is None else _range(memory, _memory),
        gpu=defaults.gpu if gpu is None else _gpu(gpu),
        disk=defaults.disk if disk is None else DiskSpec(_range(disk, _memory)),
    )
