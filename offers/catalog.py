"""The offer catalogue of one cloud: instance types and their prices per region, in a file that loads without
parsing (a fraction of a millisecond: `dstack offers` reads two at every start).

File layout (`*.catalog`): the magic line `DSTACK-CATALOG 2\\n`, a 4-byte header length, the header (snapshot
metadata, instance types, string tables, column descriptors) in Python's `marshal` format (lists, dicts, strings and
numbers only: read back as they were, with no text to parse), then the numeric columns as raw little-endian arrays,
copied as they are. Format 1 (still read: a catalogue refreshed by an earlier version) held the same header as JSON
and everything in one zlib stream. Price groups are sorted by instance type, so each type owns one contiguous slice
of the columns and a query only decodes the prices of the types that match it.

The shipped files live in `offers/data/`; `dstack offers --refresh` writes `$DSTACK_HOME/catalog/<cloud>.catalog`,
which then wins over the shipped one.
"""

from __future__ import annotations

import json
import marshal
import math
import struct
import sys
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from configuration.home import dstack_home

MAGIC = b"DSTACK-CATALOG 2\n"
MAGIC_ZLIB_JSON = b"DSTACK-CATALOG 1\n"
_MARSHAL_VERSION = 4  # read by every Python 3 since 3.4
SHIPPED_DIR = Path(__file__).parent / "data"
SHIPPED_BACKENDS = ("aws", "gcp")
_COLUMNS = (("region", "H"), ("zoneset", "I"), ("price", "d"), ("spot_price", "d"))


class InstanceType(NamedTuple):
    """An instance type as offered, including an attached-GPU choice (GCP N1 + N x T4 is its own entry)."""

    name: str
    cpus: int
    memory_gib: float
    gpu_vendor: str  # "" when there is no accelerator
    gpu_name: str
    gpu_count: int
    gpu_memory_gib: float
    arch: str  # "x86" or "arm"
    spot_supported: bool


class PriceRow(NamedTuple):
    """One row of input to `write_catalog`: a type's prices in one zone (or a whole region when zone is "")."""

    instance: InstanceType
    region: str
    zone: str
    price: float
    spot_price: Optional[float]


@dataclass
class Catalog:
    backend: str
    meta: dict
    types: List[InstanceType]
    type_slices: List[Tuple[int, int]]
    regions: List[str]
    zonesets: List[str]
    region: array
    zoneset: array
    price: array
    spot_price: array  # NaN where the cloud has no spot price
    path: Path

    def zones(self, group: int) -> List[str]:
        text = self.zonesets[self.zoneset[group]]
        return text.split(",") if text else []

    def __len__(self) -> int:
        return len(self.price)


def write_catalog(path: Path, backend: str, rows: Iterable[PriceRow], meta: dict) -> int:
    """Group zone rows into (type, region, prices) groups and write them; returns the number of groups."""
    groups: Dict[Tuple[InstanceType, str, float, Optional[float]], List[str]] = {}
    for row in rows:
        zones = groups.setdefault((row.instance, row.region, row.price, row.spot_price), [])
        if row.zone and row.zone not in zones:
            zones.append(row.zone)
    ordered = sorted(groups.items(), key=lambda item: (item[0][0], item[0][1], item[0][2]))
    types: List[InstanceType] = []
    type_index: Dict[InstanceType, int] = {}
    slices: List[List[int]] = []
    regions: Dict[str, int] = {}
    zonesets: Dict[str, int] = {}
    columns = {name: array(code) for name, code in _COLUMNS}
    for i, ((instance, region, price, spot_price), zones) in enumerate(ordered):
        if instance not in type_index:
            type_index[instance] = len(types)
            types.append(instance)
            slices.append([i, i])
        slices[type_index[instance]][1] = i + 1
        columns["region"].append(regions.setdefault(region, len(regions)))
        columns["zoneset"].append(zonesets.setdefault(",".join(sorted(zones)), len(zonesets)))
        columns["price"].append(price)
        columns["spot_price"].append(math.nan if spot_price is None else spot_price)
    header = {
        "backend": backend,
        "meta": meta,
        "types": [list(t) + s for t, s in zip(types, slices)],
        "regions": list(regions),
        "zonesets": list(zonesets),
        "columns": [[name, code, len(columns[name])] for name, code in _COLUMNS],
    }
    body = [marshal.dumps(header, _MARSHAL_VERSION)]
    for name, _ in _COLUMNS:
        column = columns[name]
        if sys.byteorder != "little":
            column.byteswap()
        body.append(column.tobytes())
    payload = struct.pack("<I", len(body[0])) + b"".join(body)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(MAGIC + payload)
    tmp.replace(path)
    return len(ordered)


def read_catalog(path: Path) -> Catalog:
    raw = path.read_bytes()
    if raw.startswith(MAGIC):
        payload = memoryview(raw)[len(MAGIC):]
        (header_len,) = struct.unpack_from("<I", payload)
        header = marshal.loads(payload[4:4 + header_len])
    elif raw.startswith(MAGIC_ZLIB_JSON):
        payload = memoryview(zlib.decompress(raw[len(MAGIC_ZLIB_JSON):]))
        (header_len,) = struct.unpack_from("<I", payload)
        header = json.loads(bytes(payload[4:4 + header_len]))
    else:
        raise ValueError(f"{path}: not a catalogue file")
    offset = 4 + header_len
    arrays = {}
    for name, code, count in header["columns"]:
        column = array(code)
        end = offset + column.itemsize * count
        column.frombytes(payload[offset:end])
        if sys.byteorder != "little":
            column.byteswap()
        arrays[name] = column
        offset = end
    types = [InstanceType._make(t[:9]) for t in header["types"]]
    slices = [(t[9], t[10]) for t in header["types"]]
    return Catalog(
        backend=header["backend"], meta=header["meta"], types=types, type_slices=slices, regions=header["regions"],
        zonesets=header["zonesets"], path=path, **arrays,
    )


def aws_availability_zone(region: str, zone: str) -> bool:
    """Whether an AWS zone is an Availability Zone proper: the region's name and one letter (`us-east-1a`). Local
    Zones (`us-east-1-atl-2a`) and Wavelength Zones (`us-east-1-wl1-bos-wlz-1`) are no offers: each needs the
    account's opt-in and has no default subnet, so a run there fails (offers.build_shipped and offers.aws_refresh
    leave them out)."""
    return len(zone) == len(region) + 1 and zone.startswith(region) and "a" <= zone[-1] <= "z"


def catalog_path(backend: str) -> Path:
    """The refreshed catalogue under $DSTACK_HOME when there is one, else the shipped snapshot."""
    refreshed = dstack_home() / "catalog" / f"{backend}.catalog"
    return refreshed if refreshed.exists() else SHIPPED_DIR / f"{backend}.catalog"


def load_catalogs(backends: Optional[Sequence[str]] = None) -> List[Catalog]:
    wanted = [b for b in SHIPPED_BACKENDS if backends is None or b in backends]
    return [read_catalog(catalog_path(b)) for b in wanted]
