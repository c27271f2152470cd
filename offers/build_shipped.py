"""Builds the shipped catalogues (`offers/data/*.catalog`) from the snapshot CSVs in `shared/catalog/`.

A maintainer's tool, run when the snapshot changes: `python -m offers.build_shipped ../shared/catalog`.
Nothing at run time reads the CSVs.

AWS spot prices come from `aws_spot.csv` (per zone, accelerator types only): each joins the on-demand row of the same
type and zone; a spot zone that the on-demand data does not list for a type it lists in that region gets a row of its
own, at the region's on-demand price (AWS prices on-demand per region, not per zone).

GCP TPU rows (vendor `google`, `tpu-v5litepod-8`) become offers under dstack's names (`v5litepod-8`): one accelerator,
the whole slice, with the CPUs and memory of one of its hosts, which the data leaves empty (offers.tpus).

What is left out, and why (also in docs/offers.md): rows without an on-demand price (not offers), fractional GPUs
(AWS g6f/gr6f slices: a count below one GPU does not fit the grammar), Mac instances (dedicated hosts, not
provisioned here), accelerators no image has drivers for (NO_IMAGE_VENDORS) and AWS Local and Wavelength Zones (opt-in zones without a default subnet: offers.catalog.aws_availability_zone).
"""

from __future__ import annotations

import csv
import hashlib
import sys
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

from offers.catalog import SHIPPED_DIR, InstanceType, PriceRow, aws_availability_zone, write_catalog
from offers.gpus import NO_IMAGE_VENDORS, normalize_memory
from offers.tpus import VENDOR as TPU_VENDOR, tpu_slice

ARCHES = {"x86_64": "x86", "arm64": "arm"}
SOURCES = {
    "aws": {
        "snapshot": "2026-11-26",
        "sources": [
            "moto 5.2.1 instance_types.json and availability-zone offerings (specs, zones; May 2026)",
            "apache-libcloud 3.9.1 pricing.json ec2_linux (on-demand prices, 2025-03-02)",
            "tsaol/aws-gpu all_gpu_instances.js (GPU on-demand prices, 2026-01-21)",
        ],
        "gaps": "spot prices only for 62 GPU and accelerator types (2026-04-02); run `dstack offers --refresh` "
                "with AWS credentials for current spot prices of every type",
        "spot_snapshot": "2026-04-02",
    },
    "gcp": {
        "snapshot": "2026-11-26",
        "sources": ["anycloud-sh/catalog gcp/vms.csv at 62ff0a98 (Cloud Billing Catalog SKUs, 2026-05-20)"],
        "gaps": "no local SSD sizes; N1 + attachable GPU combinations are separate offers; TPU hosts' CPUs and "
                "memory from Google's per-host shapes (offers.tpus)",
    },
}


# What the snapshot gives v6e slices of every size in three regions (asia-east1, southamerica-east1, us-central2),
# on demand and spot alike (and as the spot price of southamerica-west1): not a price but upstream's stand-in for one
# it found none for. Such rows are left out, and such a spot price is none.
TPU_UNPRICED = 700.0


SpotPrices = Dict[Tuple[str, str, str], float]  # (instance type, region, zone) -> USD/hour


def read_spot_prices(csv_path: Path) -> SpotPrices:
    with csv_path.open(newline="") as f:
        return {(r["instance_type"], r["region"], r["zone"]): float(r["price_spot"]) for r in csv.DictReader(f)}


def read_rows(csv_path: Path, spot_prices: Optional[SpotPrices] = None) -> Iterator[PriceRow]:
    """The catalogue rows of one cloud's CSV; `spot_prices` fills the spot price of rows that have none."""
    unjoined = dict(spot_prices or {})
    listed: Dict[Tuple[str, str], PriceRow] = {}
    with csv_path.open(newline="") as f:
        for r in csv.DictReader(f):
            if r["gpu_vendor"] == TPU_VENDOR:
                instance = tpu_instance(r)
                if instance is None or not r["price_ondemand"] or float(r["price_ondemand"]) == TPU_UNPRICED:
                    continue
            else:
                instance = instance_type(r)
                if instance is None or not r["price_ondemand"]:
                    continue
            if r["provider"] == "aws" and not aws_availability_zone(r["region"], r["zone"]):
                continue
            spot_price = float(r["price_spot"]) if r["price_spot"] else None
            if r["gpu_vendor"] == TPU_VENDOR and spot_price == TPU_UNPRICED:
                spot_price = None
            key = (instance.name, r["region"], r["zone"])
            if spot_price is None and key in unjoined:
                spot_price = unjoined[key]
            unjoined.pop(key, None)
            row = PriceRow(instance, r["region"], r["zone"], float(r["price_ondemand"]), spot_price)
            listed[(instance.name, r["region"])] = row
            yield row
    for (name, region, zone), spot_price in sorted(unjoined.items()):
        if not aws_availability_zone(region, zone):  # the spot CSV is AWS's
            continue
        known = listed.get((name, region))
        if known is not None and known.instance.spot_supported:
            yield known._replace(zone=zone, spot_price=spot_price)


def instance_type(r: Dict[str, str]) -> Optional[InstanceType]:
    """A CSV row's instance type, or None where it is no offer (see the module's docstring)."""
    vendor, name = r["gpu_vendor"], r["gpu_name"]
    count = float(r["gpu_count"] or 0)
    if not r["cpu"] or r["arch"] not in ARCHES or vendor in NO_IMAGE_VENDORS or (name and count < 1):
        return None
    return InstanceType(
        name=r["instance_type"],
        cpus=int(float(r["cpu"])),
        memory_gib=float(r["memory_gib"]),
        gpu_vendor=vendor,
        gpu_name=name,
        gpu_count=int(count),
        gpu_memory_gib=normalize_memory(name, float(r["gpu_memory_gib"])) if name else 0.0,
        arch=ARCHES[r["arch"]],
        spot_supported=r["spot_supported"] == "1",
    )


def tpu_instance(r: Dict[str, str]) -> Optional[InstanceType]:
    """A TPU slice row as dstack offers it: named `v5litepod-8`, one accelerator of the slice's HBM, one host's CPUs
    and memory (x86); None for a slice shape offers.tpus does not know."""
    found = tpu_slice(r["instance_type"])
    if found is None:
        return None
    return InstanceType(name=found.name, cpus=found.host_cpus, memory_gib=found.host_memory_gib, gpu_vendor=TPU_VENDOR,
                        gpu_name=found.name, gpu_count=1, gpu_memory_gib=found.hbm_gib, arch="x86",
                        spot_supported=r["spot_supported"] == "1")


def build(shared_catalog: Path, out_dir: Path = SHIPPED_DIR) -> None:
    for backend in ("aws", "gcp"):
        csv_path = shared_catalog / f"{backend}.csv"
        meta = dict(SOURCES[backend], csv_sha256=hashlib.sha256(csv_path.read_bytes()).hexdigest())
        spot_prices = None
        if backend == "aws":
            spot_csv = shared_catalog / "aws_spot.csv"
            meta["spot_csv_sha256"] = hashlib.sha256(spot_csv.read_bytes()).hexdigest()
            spot_prices = read_spot_prices(spot_csv)
        groups = write_catalog(out_dir / f"{backend}.catalog", backend, read_rows(csv_path, spot_prices), meta)
        print(f"{backend}: {groups} price groups -> {out_dir / f'{backend}.catalog'}")


if __name__ == "__main__":
    build(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/catalog"))
