"""Builds the shipped catalogues (`offers/data/*.catalog`) from the snapshot CSVs in `shared/catalog/`.

A maintainer's tool, run when the snapshot changes: `python -m offers.build_shipped ../shared/catalog`.
Nothing at run time reads the CSVs.

What is left out, and why (also in docs/offers.md): rows without an on-demand price (not offers), TPUs (no host
VM in the data; out of scope), fractional GPUs (AWS g6f/gr6f slices: a count below one GPU does not fit the grammar),
and Mac instances (dedicated hosts, not provisioned here).
"""

from __future__ import annotations

import csv
import hashlib
import sys
from pathlib import Path
from typing import Iterator

from offers.catalog import SHIPPED_DIR, InstanceType, PriceRow, write_catalog
from offers.gpus import normalize_memory

ARCHES = {"x86_64": "x86", "arm64": "arm"}
SOURCES = {
    "aws": {
        "snapshot": "2026-11-26",
        "sources": [
            "moto 5.2.1 instance_types.json and availability-zone offerings (specs, zones; May 2026)",
            "apache-libcloud 3.9.1 pricing.json ec2_linux (on-demand prices, 2025-03-02)",
            "tsaol/aws-gpu all_gpu_instances.js (GPU on-demand prices, 2026-01-21)",
        ],
        "gaps": "no spot prices (run `dstack offers --refresh` with AWS credentials to fetch them)",
    },
    "gcp": {
        "snapshot": "2026-11-26",
        "sources": ["anycloud-sh/catalog gcp/vms.csv at 62ff0a98 (Cloud Billing Catalog SKUs, 2026-05-20)"],
        "gaps": "no local SSD sizes; N1 + attachable GPU combinations are separate offers",
    },
}


def read_rows(csv_path: Path) -> Iterator[PriceRow]:
    with csv_path.open(newline="") as f:
        for r in csv.DictReader(f):
            if not r["price_ondemand"] or not r["cpu"] or r["arch"] not in ARCHES:
                continue
            vendor, name = r["gpu_vendor"], r["gpu_name"]
            count = float(r["gpu_count"] or 0)
            if vendor == "google" or (name and count < 1):
                continue
            memory = normalize_memory(name, float(r["gpu_memory_gib"])) if name else 0.0
            spot_price = float(r["price_spot"]) if r["price_spot"] else None
            instance = InstanceType(
                name=r["instance_type"],
                cpus=int(float(r["cpu"])),
                memory_gib=float(r["memory_gib"]),
                gpu_vendor=vendor,
                gpu_name=name,
                gpu_count=int(count),
                gpu_memory_gib=memory,
                arch=ARCHES[r["arch"]],
                spot_supported=r["spot_supported"] == "1",
            )
            yield PriceRow(instance, r["region"], r["zone"], float(r["price_ondemand"]), spot_price)


def build(shared_catalog: Path, out_dir: Path = SHIPPED_DIR) -> None:
    for backend in ("aws", "gcp"):
        csv_path = shared_catalog / f"{backend}.csv"
        meta = dict(SOURCES[backend], csv_sha256=hashlib.sha256(csv_path.read_bytes()).hexdigest())
        groups = write_catalog(out_dir / f"{backend}.catalog", backend, read_rows(csv_path), meta)
        print(f"{backend}: {groups} price groups -> {out_dir / f'{backend}.catalog'}")


if __name__ == "__main__":
    build(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/catalog"))
