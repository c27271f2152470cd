"""The resources grammar of dstack (`cpu: 16..`, `memory: 200GB..`, `gpu: 40GB..80GB:4`, `disk: 500GB`).

Each model accepts the short string form through a `before` validator and the long mapping form through its
fields, and dumps to the mapping form that dstack's `ResourcesSpec` dumps to. `str()` of every value gives back a
string that parses to the same value.
"""

from __future__ import annotations

import enum
import math
from typing import Annotated, Any, Generic, List, Optional, Tuple, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

T = TypeVar("T", int, float)

_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
_NUMBER_OR_STRING = [{"type": "number"}, {"type": "string"}]


class StrictModel(BaseModel):
    """Rejects unknown fields, so that a typo is an error and not a silently ignored key."""

    model_config = ConfigDict(extra="forbid", validate_default=False)


def _finite(value: float, what: str) -> float:
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"Invalid {what}: {value}")
    if value < 0:
        raise ValueError(f"Invalid {what}: {value} (must not be negative)")
    return value


class Memory(float):
    """A size in gigabytes (GB means GiB, as in dstack). Written as `16GB`, `512MB`, `1TB`, or a bare number of GB."""

    @classmethod
    def parse(cls, v: Any) -> "Memory":
        if isinstance(v, bool):
            raise ValueError(f"Invalid memory size: {v}")
        if isinstance(v, (int, float)):
            return cls(_finite(float(v), "memory size"))
        if isinstance(v, str):
            text = v.replace(" ", "").lower()
            factor = 1.0
            for unit, unit_factor in (("tb", 1024.0), ("gb", 1.0), ("mb", 1 / 1024)):
                if text.endswith(unit):
                    text, factor = text[: -len(unit)], unit_factor
                    break
            try:
                number = float(text)
            except ValueError:
                raise ValueError(f"Invalid memory size: {v!r} (expected a number with MB, GB or TB)") from None
            return cls(_finite(number * factor, "memory size"))
        raise ValueError(f"Invalid memory size: {v!r}")

    def __str__(self) -> str:
        value = float(self)
        return f"{int(value)}GB" if value.is_integer() and value < 1e15 else f"{value!r}GB"

    __repr__ = __str__

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse, serialization=core_schema.plain_serializer_function_ser_schema(float)
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: GetJsonSchemaHandler) -> dict:
        return {"anyOf": _NUMBER_OR_STRING, "description": "A size: a number of GB, or a number with MB, GB or TB"}


class Range(BaseModel, Generic[T]):
    """`2`, `2..8`, `2..`, `..8` or `{min: 2, max: 8}`; either end may be open but not both."""

    model_config = ConfigDict(extra="forbid")

    min: Optional[T] = None
    max: Optional[T] = None

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"Invalid range: {v}")
        if isinstance(v, str) and ".." in v:
            parts = v.replace(" ", "").split("..")
            if len(parts) != 2:
                raise ValueError(f"Invalid range: {v!r} (expected MIN..MAX, MIN.. or ..MAX)")
            return {"min": parts[0] or None, "max": parts[1] or None}
        if isinstance(v, (str, int, float)):
            return {"min": v, "max": v}
        if isinstance(v, Range):
            return {"min": v.min, "max": v.max}
        return v

    @model_validator(mode="after")
    def _check(self) -> "Range":
        if self.min is None and self.max is None:
            raise ValueError("Invalid empty range: ..")
        for end in (self.min, self.max):
            if end is not None and end < 0:
                raise ValueError(f"Invalid range: {end} is negative")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"Invalid range order: {self}")
        return self

    def __str__(self) -> str:
        low = "" if self.min is None else str(self.min)
        high = "" if self.max is None else str(self.max)
        if self.min is not None and self.min == self.max:
            return low
        return f"{low}..{high}"

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: GetJsonSchemaHandler) -> dict:
        json_schema = handler(schema)
        return {"anyOf": [*_INT_OR_STRING, json_schema]}


class CPUArch(str, enum.Enum):
    X86 = "x86"
    ARM = "arm"

    @classmethod
    def cast(cls, v: str) -> "CPUArch":
        aliases = {"x86": cls.X86, "x86_64": cls.X86, "amd64": cls.X86, "arm": cls.ARM, "arm64": cls.ARM,
                   "aarch64": cls.ARM}
        try:
            return aliases[v.lower()]
        except KeyError:
            raise ValueError(f"Invalid CPU architecture: {v!r} (allowed: x86, arm)") from None


class GPUVendor(str, enum.Enum):
    NVIDIA = "nvidia"
    AMD = "amd"
    GOOGLE = "google"
    INTEL = "intel"

    @classmethod
    def cast(cls, v: str) -> "GPUVendor":
        name = v.lower()
        if name == "tpu":
            return cls.GOOGLE
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"Invalid GPU vendor: {v!r} (allowed: nvidia, amd, google or tpu, intel)") from None


DEFAULT_CPU_COUNT = Range[int](min=2)
DEFAULT_MEMORY_SIZE = Range[Memory](min=Memory(8))
DEFAULT_DISK_SIZE = Range[Memory](min=Memory(100))


class CPUSpec(StrictModel):
    arch: Annotated[Optional[CPUArch], Field(description="The CPU architecture, one of: `x86`, `arm`")] = None
    count: Annotated[Range[int], Field(description="The number of CPU cores (e.g. `8`, `16..`, `4..32`)")] = (
        DEFAULT_CPU_COUNT
    )

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"Invalid CPU spec: {v}")
        if isinstance(v, int):
            v = str(v)
        if isinstance(v, str):
            spec: dict = {}
            for token in v.replace(" ", "").split(":"):
                if not token:
                    raise ValueError(f"CPU spec contains empty token: {v}")
                if ".." in token or token.isdigit():
                    if "count" in spec:
                        raise ValueError(f"CPU spec count conflict: {v}")
                    spec["count"] = token
                else:
                    if "arch" in spec:
                        raise ValueError(f"CPU spec arch conflict: {v}")
                    spec["arch"] = CPUArch.cast(token)
            return spec
        if isinstance(v, dict) and set(v) <= {"min", "max"} and v:
            return {"count": v}
        return v

    @field_validator("arch", mode="before")
    @classmethod
    def _arch(cls, v: Any) -> Any:
        return CPUArch.cast(v) if isinstance(v, str) else v

    def __str__(self) -> str:
        return ":".join(part for part in (self.arch.value if self.arch else "", str(self.count)) if part)


class ComputeCapability(Tuple[int, int]):
    """`8.0` (YAML float or string) or `[8, 0]`; dumps as a two-item list, as dstack does."""

    @classmethod
    def parse(cls, v: Any) -> Tuple[int, int]:
        if isinstance(v, bool):
            raise ValueError(f"Invalid compute capability: {v}")
        if isinstance(v, (int, float)):
            v = str(float(v)) if isinstance(v, int) else repr(v)
        if isinstance(v, str):
            v = v.strip().split(".")
        if isinstance(v, (tuple, list)) and len(v) == 2:
            try:
                major, minor = int(v[0]), int(v[1])
            except (TypeError, ValueError):
                raise ValueError(f"Invalid compute capability: {v!r} (expected MAJOR.MINOR, e.g. 8.0)") from None
            if major < 0 or minor < 0:
                raise ValueError(f"Invalid compute capability: {v!r}")
            return major, minor
        raise ValueError(f"Invalid compute capability: {v!r} (expected MAJOR.MINOR, e.g. 8.0)")

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(list),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: GetJsonSchemaHandler) -> dict:
        return {"anyOf": [{"type": "number"}, {"type": "string"},
                          {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}]}


class GPUSpec(StrictModel):
    vendor: Annotated[
        Optional[GPUVendor],
        Field(description="The vendor of the GPU/accelerator, one of: `nvidia`, `amd`, `google` (alias: `tpu`), `intel`"),
    ] = None
    name: Annotated[
        Optional[List[str]], Field(description="The name of the GPU (e.g., `A100` or `H100`), or a list of names")
    ] = None
    count: Annotated[Range[int], Field(description="The number of GPUs (e.g. `2`, `1..8`)")] = Range[int](min=1)
    memory: Annotated[
        Optional[Range[Memory]],
        Field(description="The memory of each GPU (e.g., `16GB`). Can be a range (e.g. `16GB..`, or `16GB..80GB`)"),
    ] = None
    total_memory: Annotated[
        Optional[Range[Memory]],
        Field(description="The memory of all GPUs together (e.g., `32GB`). Can be a range (e.g. `64GB..`)"),
    ] = None
    compute_capability: Annotated[
        Optional[ComputeCapability],
        Field(description="The minimum compute capability of the GPU (e.g., `7.5`)"),
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"Invalid GPU spec: {v}")
        if isinstance(v, int):
            v = str(v)
        if not isinstance(v, str):
            return v
        spec: dict = {}
        for token in v.replace(" ", "").split(":"):
            if not token:
                raise ValueError(f"GPU spec contains empty token: {v}")
            try:
                vendor: Optional[GPUVendor] = GPUVendor.cast(token)
            except ValueError:
                vendor = None
            if vendor is not None:
                if "vendor" in spec:
                    raise ValueError(f"GPU spec vendor conflict: {v}")
                spec["vendor"] = vendor
            elif token[0].isalpha():  # a GPU name always starts with a letter
                if "name" in spec:
                    raise ValueError(f"GPU spec name conflict: {v}")
                spec["name"] = token.split(",")
                if any(not name for name in spec["name"]):
                    raise ValueError(f"GPU name can not be empty: {v}")
            elif any(c.isalpha() for c in token):  # memory always has a unit
                if "memory" in spec:
                    raise ValueError(f"GPU spec memory conflict: {v}")
                spec["memory"] = token
            else:
                if "count" in spec:
                    raise ValueError(f"GPU spec count conflict: {v}")
                spec["count"] = token
        return spec

    @field_validator("name", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        if v is None:
            return None
        names = v if isinstance(v, list) else [v]
        cleaned = []
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"GPU name must be a non-empty string: {name!r}")
            name = name.strip()
            cleaned.append(name[4:] if name.startswith("tpu-") else name)
        return cleaned

    @field_validator("vendor", mode="before")
    @classmethod
    def _vendor(cls, v: Any) -> Any:
        return GPUVendor.cast(v) if isinstance(v, str) else v

    def __str__(self) -> str:
        parts = []
        if self.vendor:
            parts.append(self.vendor.value)
        if self.name:
            parts.append(",".join(self.name))
        if self.memory:
            parts.append(str(self.memory))
        parts.append(str(self.count))
        return ":".join(parts)


class DiskSpec(StrictModel):
    size: Annotated[Range[Memory], Field(description="The disk size (e.g. `100GB`, `200GB..`)")]

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, v: Any) -> Any:
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            return {"size": v}
        return v

    def __str__(self) -> str:
        return str(self.size)


DEFAULT_DISK = DiskSpec(size=DEFAULT_DISK_SIZE)
# Without a `gpu` entry a run takes any number of GPUs, none included (dstack's default); a `gpu` entry without a
# count asks for at least one.
DEFAULT_GPU = GPUSpec(count=Range[int](min=0))


class ResourcesSpec(StrictModel):
    cpu: Annotated[
        CPUSpec, Field(description="The CPU requirements: a count or range, optionally with an arch (`x86:8`, `16..:arm`)")
    ] = CPUSpec()
    memory: Annotated[Range[Memory], Field(description="The RAM size (e.g., `8GB`, `200GB..`)")] = DEFAULT_MEMORY_SIZE
    shm_size: Annotated[
        Optional[Memory],
        Field(description="The size of shared memory (e.g., `8GB`); PyTorch data loaders may need more than the default. "
                          "With `image`: the container's; without: the job's own /dev/shm where the host gives root "
                          "(docs/runs.md)"),
    ] = None
    gpu: Annotated[
        GPUSpec,
        Field(description="The GPU requirements: a count, a string (`A100`, `80GB:2`, `nvidia:24GB..:1..2`) or a mapping"),
    ] = DEFAULT_GPU
    disk: Annotated[DiskSpec, Field(description="The disk size (e.g. `100GB..`)")] = DEFAULT_DISK

    def describe(self) -> str:
        """One line a person reads: `cpu=2.. mem=8GB.. gpu=A100:1 disk=100GB..`."""
        parts = [f"cpu={self.cpu}", f"mem={self.memory}"]
        if self.gpu.count.max != 0 and self.gpu != DEFAULT_GPU:
            parts.append(f"gpu={self.gpu}")
        if self.gpu.total_memory:
            parts.append(f"gpu_total_mem={self.gpu.total_memory}")
        if self.gpu.compute_capability:
            parts.append("cc={}.{}".format(*self.gpu.compute_capability))
        if self.shm_size is not None:
            parts.append(f"shm={self.shm_size}")
        parts.append(f"disk={self.disk}")
        return " ".join(parts)
