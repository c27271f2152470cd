"""Rebuilds the AWS catalogue from the live APIs (`dstack offers --refresh`) into `$DSTACK_HOME/catalog/aws.catalog`.

Calls, per the EC2 and Pricing API references:
- `ec2.describe_instance_types` (once, in the first region): vCPUs, memory, GPUs or Neuron devices, architecture, spot;
- `ec2.describe_instance_type_offerings` per region, by availability zone (Availability Zones only: Local and
  Wavelength Zones, listed there for accounts that opted in, are no offers, see offers.catalog.aws_availability_zone);
- `ec2.describe_spot_price_history` per region from now: the current Linux/UNIX spot price per type and zone;
- `pricing.get_products` (service `AmazonEC2`, in us-east-1): on-demand Linux, shared tenancy, no pre-installed
  software, per region.
boto3 is imported here only; `dstack offers` without `--refresh` never loads it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from configuration.errors import MISSING_AWS_CREDENTIALS, ConfigurationError
from configuration.home import dstack_home, private_dir
from offers.catalog import InstanceType, PriceRow, aws_availability_zone, write_catalog
from offers.gpus import NO_IMAGE_VENDORS, normalize_memory

MANUFACTURERS = {"nvidia": "nvidia", "amd": "amd", "habana": "intel", "intel": "intel", "aws": "aws",
                 "qualcomm": "qualcomm", "xilinx": "amd"}
ARCHES = {"x86_64": "x86", "arm64": "arm"}
PRICING_REGION = "us-east-1"


def instance_types(ec2) -> Dict[str, InstanceType]:
    found: Dict[str, InstanceType] = {}
    for page in ec2.get_paginator("describe_instance_types").paginate():
        for info in page["InstanceTypes"]:
            arches = [ARCHES[a] for a in info["ProcessorInfo"]["SupportedArchitectures"] if a in ARCHES]
            if not arches:
                continue  # Mac instances: dedicated hosts only
            vendor, name, count, memory = _accelerator(info)
            if name and count < 1:
                continue  # fractional GPU slices do not fit the `gpu:` grammar
            if vendor in NO_IMAGE_VENDORS:
                continue
            found[info["InstanceType"]] = InstanceType(
                name=info["InstanceType"],
                cpus=info["VCpuInfo"]["DefaultVCpus"],
                memory_gib=info["MemoryInfo"]["SizeInMiB"] / 1024,
                gpu_vendor=vendor,
                gpu_name=name,
                gpu_count=int(count),
                gpu_memory_gib=normalize_memory(name, memory) if name else 0.0,
                arch=arches[0],
                spot_supported="spot" in info.get("SupportedUsageClasses", []),
            )
    return found


def _accelerator(info: dict) -> Tuple[str, str, float, float]:
    gpus = (info.get("GpuInfo") or {}).get("Gpus") or []
    if gpus:
        gpu = gpus[0]
        vendor = MANUFACTURERS.get(gpu.get("Manufacturer", "").lower(), gpu.get("Manufacturer", "").lower())
        return vendor, gpu["Name"], float(gpu["Count"]), gpu["MemoryInfo"]["SizeInMiB"] / 1024
    devices = (info.get("NeuronInfo") or {}).get("NeuronDevices") or []
    if devices:
        device = devices[0]
        return "aws", device["Name"], float(device["Count"]), device["MemoryInfo"]["SizeInMiB"] / 1024
    accelerators = (info.get("InferenceAcceleratorInfo") or {}).get("Accelerators") or []
    if accelerators:  # dl2q (Qualcomm AI100)
        device = accelerators[0]
        vendor = device.get("Manufacturer", "").lower()
        return (MANUFACTURERS.get(vendor, vendor), device["Name"], float(device["Count"]),
                device["MemoryInfo"]["SizeInMiB"] / 1024)
    return "", "", 0.0, 0.0


def zone_offerings(ec2) -> Dict[str, List[str]]:
    zones: Dict[str, List[str]] = {}
    paginator = ec2.get_paginator("describe_instance_type_offerings")
    for page in paginator.paginate(LocationType="availability-zone"):
        for offering in page["InstanceTypeOfferings"]:
            zones.setdefault(offering["InstanceType"], []).append(offering["Location"])
    return zones


def spot_prices(ec2, now: dt.datetime) -> Dict[Tuple[str, str], float]:
    """The newest Linux/UNIX spot price per (type, zone). Both VPC and classic descriptions count as Linux/UNIX."""
    newest: Dict[Tuple[str, str], Tuple[dt.datetime, float]] = {}
    paginator = ec2.get_paginator("describe_spot_price_history")
    for page in paginator.paginate(StartTime=now, ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"]):
        for entry in page["SpotPriceHistory"]:
            if not entry["ProductDescription"].startswith("Linux/UNIX"):
                continue
            key = (entry["InstanceType"], entry["AvailabilityZone"])
            stamp = entry["Timestamp"]
            if key not in newest or stamp > newest[key][0]:
                newest[key] = (stamp, float(entry["SpotPrice"]))
    return {key: price for key, (_, price) in newest.items()}


def on_demand_prices(pricing, region: str) -> Dict[str, float]:
    filters = [
        {"Type": "TERM_MATCH", "Field": field, "Value": value}
        for field, value in (("regionCode", region), ("operatingSystem", "Linux"), ("tenancy", "Shared"),
                             ("preInstalledSw", "NA"), ("capacitystatus", "Used"))
    ]
    prices: Dict[str, float] = {}
    for page in pricing.get_paginator("get_products").paginate(ServiceCode="AmazonEC2", Filters=filters):
        for item in page["PriceList"]:
            product = json.loads(item) if isinstance(item, str) else item
            attributes = product["product"]["attributes"]
            name = attributes.get("instanceType")
            price = _hourly_usd(product["terms"].get("OnDemand", {}))
            if name and price:
                prices[name] = price
    return prices


def _hourly_usd(terms: dict) -> Optional[float]:
    for term in terms.values():
        for dimension in term["priceDimensions"].values():
            if dimension.get("unit") == "Hrs":
                value = float(dimension["pricePerUnit"].get("USD", 0))
                if value > 0:
                    return value
    return None


def collect_rows(
    regions: Sequence[str], ec2_for: Callable[[str], object], pricing, now: dt.datetime, log: Callable[[str], None]
) -> Iterable[PriceRow]:
    types = instance_types(ec2_for(regions[0]))
    log(f"aws: {len(types)} instance types")
    for region in regions:
        ec2 = ec2_for(region)
        zones = zone_offerings(ec2)
        spot = spot_prices(ec2, now)
        prices = on_demand_prices(pricing, region)
        log(f"aws {region}: {len(zones)} types offered, {len(prices)} on-demand prices, {len(spot)} spot prices")
        for name, type_zones in zones.items():
            instance = types.get(name)
            price = prices.get(name)
            if instance is None or price is None:
                continue  # rows without a price are not offers
            for zone in type_zones:
                if not aws_availability_zone(region, zone):
                    continue  # a Local or Wavelength Zone: an opt-in zone without a default subnet
                yield PriceRow(instance, region, zone, price, spot.get((name, zone)) if instance.spot_supported else None)


def refresh_aws_catalog(
    regions: Optional[Sequence[str]] = None,
    log: Callable[[str], None] = print,
    session=None,
    pricing_client=None,
) -> Path:
    import boto3
    import botocore.exceptions

    session = session or boto3.session.Session()
    clients: Dict[str, object] = {}

    def ec2_for(region: str):
        if region not in clients:
            clients[region] = session.client("ec2", region_name=region)
        return clients[region]

    try:
        if not regions:
            described = ec2_for(session.region_name or "us-east-1").describe_regions()["Regions"]
            regions = sorted(r["RegionName"] for r in described)
        pricing = pricing_client or session.client("pricing", region_name=PRICING_REGION)
        now = dt.datetime.now(dt.timezone.utc)
        rows = list(collect_rows(list(regions), ec2_for, pricing, now, log))
    except botocore.exceptions.NoCredentialsError:
        raise ConfigurationError(f"{MISSING_AWS_CREDENTIALS} (the catalogue refresh reads the AWS APIs)") from None
    except botocore.exceptions.ClientError as e:
        raise ConfigurationError(f"AWS refused the catalogue refresh: {e}") from None
    if not rows:
        raise ConfigurationError("the AWS APIs returned no priced offers; the catalogue was left as it was")
    path = private_dir(dstack_home() / "catalog") / "aws.catalog"
    meta = {"snapshot": now.date().isoformat(), "refreshed_at": now.isoformat(timespec="seconds"),
            "sources": ["ec2.describe_instance_types", "ec2.describe_instance_type_offerings",
                        "ec2.describe_spot_price_history", "pricing.get_products AmazonEC2"],
            "regions": list(regions)}
    groups = write_catalog(path, "aws", rows, meta)
    log(f"aws: {groups} price groups written to {path}")
    return path
