"""The catalogue file and the solver's matching semantics, on a small synthetic catalogue and on the shipped one."""

import dataclasses
import json
import math

import pytest

from configuration.resources import ResourcesSpec
from offers.build_shipped import read_rows
from offers.catalog import InstanceType, PriceRow, catalog_path, load_catalogs, read_catalog, write_catalog
from offers.gpus import normalize_memory
from offers.requirements import Requirements
from offers.solver import find_offers


def it(name, cpus=4, mem=16.0, vendor="", gpu="", count=0, gpu_mem=0.0, arch="x86", spot=True):
    return InstanceType(name, cpus, mem, vendor, gpu, count, gpu_mem, arch, spot)


TYPES = {
    "c.large": it("c.large", 2, 4.0),
    "m.xlarge": it("m.xlarge", 4, 16.0),
    "m.arm": it("m.arm", 4, 16.0, arch="arm"),
    "g.a10g": it("g.a10g", 8, 32.0, "nvidia", "A10G", 1, 24.0),
    "p.a100x4": it("p.a100x4", 48, 680.0, "nvidia", "A100", 4, 40.0),
    "p.a100x8": it("p.a100x8", 96, 1360.0, "nvidia", "A100", 8, 80.0),
    "p.h100x8": it("p.h100x8", 192, 2048.0, "nvidia", "H100", 8, 80.0),
    "g.amd": it("g.amd", 8, 32.0, "amd", "Radeon Pro V520", 1, 8.0),
    "inf.2": it("inf.2", 8, 32.0, "aws", "Inferentia2", 1, 32.0, spot=False),
    "t.v100": it("t.v100", 8, 61.0, "nvidia", "V100", 1, 16.0),
}
PRICES = [
    ("c.large", "r1", "r1a", 0.10, 0.03), ("c.large", "r1", "r1b", 0.10, 0.03), ("c.large", "r2", "r2a", 0.12, None),
    ("m.xlarge", "r1", "r1a", 0.20, 0.06), ("m.arm", "r1", "r1a", 0.15, 0.05),
    ("g.a10g", "r1", "r1a", 1.00, 0.40), ("g.a10g", "r2", "r2a", 1.20, None),
    ("p.a100x4", "r1", "r1a", 15.0, 6.0), ("p.a100x8", "r2", "r2a", 32.0, 12.0), ("p.h100x8", "r1", "r1b", 55.0, 20.0),
    ("g.amd", "r1", "r1a", 0.80, 0.30), ("inf.2", "r1", "r1a", 0.76, None), ("t.v100", "r2", "r2a", 3.0, 0.9),
]


@pytest.fixture
def catalog(tmp_path):
    rows = [PriceRow(TYPES[name], region, zone, price, spot) for name, region, zone, price, spot in PRICES]
    path = tmp_path / "aws.catalog"
    write_catalog(path, "aws", rows, {"snapshot": "2026-01-01"})
    return read_catalog(path)


def search(catalog, spot=False, limit=None, **resources):
    req_fields = {k: resources.pop(k) for k in ("max_price", "regions", "backends", "instance_types") if k in resources}
    req = Requirements(ResourcesSpec.model_validate(resources), spot=spot, **req_fields)
    return find_offers(req, [catalog], limit=limit)


def names(result):
    return [(o.instance.name, o.region, o.spot) for o in result.offers]


def test_catalogue_round_trip(catalog):
    assert catalog.backend == "aws" and catalog.meta == {"snapshot": "2026-01-01"}
    assert len(catalog) == 12  # c.large r1 merges two zones
    index = catalog.types.index(TYPES["c.large"])
    start, end = catalog.type_slices[index]
    groups = {catalog.regions[catalog.region[g]]: catalog.zones(g) for g in range(start, end)}
    assert groups == {"r1": ["r1a", "r1b"], "r2": ["r2a"]}
    assert math.isnan(catalog.spot_price[start + 1])


def test_catalogue_needs_no_parsing_and_a_format_1_file_still_reads(catalog, tmp_path):
    """Format 2 (written now, shipped): marshal header, raw columns, no zlib. A catalogue refreshed by an earlier
    version (format 1: a JSON header, all in one zlib stream) reads as the same catalogue."""
    import marshal
    import struct
    import zlib

    from offers.catalog import MAGIC, MAGIC_ZLIB_JSON, SHIPPED_DIR

    raw = catalog.path.read_bytes()
    assert raw.startswith(MAGIC) and b"DSTACK-CATALOG 2\n" == MAGIC
    for shipped in SHIPPED_DIR.glob("*.catalog"):
        assert shipped.read_bytes().startswith(MAGIC), shipped
    (length,) = struct.unpack_from("<I", raw, len(MAGIC))
    header = marshal.loads(raw[len(MAGIC) + 4:len(MAGIC) + 4 + length])
    text = json.dumps(header).encode()
    old = tmp_path / "old.catalog"
    old.write_bytes(MAGIC_ZLIB_JSON + zlib.compress(struct.pack("<I", len(text)) + text +
                                                    raw[len(MAGIC) + 4 + length:]))

    def content(read):  # the columns as bytes: NaN (no spot price) equals nothing, itself included
        return {f.name: getattr(getattr(read, f.name), "tobytes", lambda v=getattr(read, f.name): v)()
                for f in dataclasses.fields(read) if f.name != "path"}

    assert content(read_catalog(old)) == content(catalog)
    old.write_text("{}")
    with pytest.raises(ValueError, match="not a catalogue file"):
        read_catalog(old)


def test_defaults_take_cpu_and_gpu_machines_cheapest_first(catalog):
    result = search(catalog, gpu="0..")
    prices = [o.price for o in result.offers]
    assert prices == sorted(prices)
    assert names(result)[0] == ("m.xlarge", "r1", False)  # c.large has 4GB, below the default 8GB..; m.arm is ARM
    assert result.total == len(result.offers) == 8  # not c.large (4GB), not Inferentia (only when named), not ARM


def test_gpu_names_are_case_insensitive_and_any_of(catalog):
    assert {n for n, _, _ in names(search(catalog, gpu="a100"))} == {"p.a100x4", "p.a100x8"}  # count 1..
    assert {n for n, _, _ in names(search(catalog, gpu="a100:1"))} == set()
    assert {n for n, _, _ in names(search(catalog, gpu="A100:1..4"))} == {"p.a100x4"}
    assert {n for n, _, _ in names(search(catalog, gpu="a10g,V100"))} == {"g.a10g", "t.v100"}


def test_gpu_memory_count_total_and_capability(catalog):
    assert {n for n, _, _ in names(search(catalog, gpu="40GB..80GB:4"))} == {"p.a100x4"}
    assert {n for n, _, _ in names(search(catalog, gpu="80GB:8"))} == {"p.a100x8", "p.h100x8"}
    assert {n for n, _, _ in names(search(catalog, gpu={"total_memory": "600GB..", "count": "1.."}))} == {
        "p.a100x8", "p.h100x8"}
    assert {n for n, _, _ in names(search(catalog, gpu={"compute_capability": "8.6", "count": "1.."}))} == {
        "g.a10g", "p.h100x8"}
    assert {n for n, _, _ in names(search(catalog, gpu="amd:1"))} == {"g.amd"}
    assert {n for n, _, _ in names(search(catalog, gpu="1"))} == {"g.a10g", "g.amd", "t.v100"}
    assert {n for n, _, _ in names(search(catalog, gpu="Inferentia2"))} == {"inf.2"}


def test_cpu_memory_and_arch(catalog):
    assert {n for n, _, _ in names(search(catalog, cpu="arm:4", gpu="0"))} == {"m.arm"}
    assert {n for n, _, _ in names(search(catalog, cpu="x86:4", gpu="0"))} == {"m.xlarge"}
    assert {n for n, _, _ in names(search(catalog, cpu="100..", memory="1TB.."))} == {"p.h100x8"}
    assert {n for n, _, _ in names(search(catalog, cpu="..2", memory="..4GB", gpu="0"))} == {"c.large"}


def test_spot_policy(catalog):
    spot = search(catalog, spot=True, gpu="A10G")
    assert names(spot) == [("g.a10g", "r1", True)] and spot.offers[0].price == 0.40  # r2 has no spot price
    auto = search(catalog, spot=None, gpu="A10G")
    assert names(auto) == [("g.a10g", "r1", True), ("g.a10g", "r1", False), ("g.a10g", "r2", False)]
    assert [o.spot for o in search(catalog, spot=False, gpu="A10G").offers] == [False, False]
    assert names(search(catalog, spot=True, gpu="Inferentia2")) == []  # spot not supported


def test_policy_filters(catalog):
    assert {r for _, r, _ in names(search(catalog, regions=("R2",), gpu="0.."))} == {"r2"}
    assert [o.price for o in search(catalog, max_price=0.2, gpu="0..").offers] == [0.2]
    assert [o.price for o in search(catalog, max_price=0.2, gpu="0..", cpu="arm:1..").offers] == [0.15]
    assert names(search(catalog, instance_types=("G.A10G",), gpu="0..")) == [("g.a10g", "r1", False),
                                                                            ("g.a10g", "r2", False)]
    assert search(catalog, backends=("gcp",), gpu="0..").total == 0


def test_limit_keeps_the_cheapest_and_counts_all(catalog):
    limited = search(catalog, spot=None, limit=3, gpu="0..")
    full = search(catalog, spot=None, gpu="0..")
    assert limited.total == full.total and names(limited) == names(full)[:3]


@pytest.mark.parametrize("disk, size", [(None, 100), ("500GB", 500), ("..500GB", 100), ("..50GB", 50), ("2TB", 2048),
                                        ("200GB..", 200)])
def test_disk_is_the_requested_minimum(catalog, disk, size):
    resources = {"gpu": "A10G"} if disk is None else {"gpu": "A10G", "disk": disk}
    offer = search(catalog, **resources).offers[0]
    assert offer.disk_gb == size
    assert offer.disk_price == pytest.approx(size * 0.08 / 730)
    assert offer.total_price == pytest.approx(offer.price + offer.disk_price)
    assert offer.to_json()["instance"]["resources"]["disk"] == {"size_mib": size * 1024}


def test_disk_outside_cloud_limits_gives_no_offer(catalog):
    assert search(catalog, gpu="A10G", disk="..5GB").total == 0  # EBS boot volumes start at 8GB
    assert search(catalog, gpu="A10G", disk="17TB").total == 0


def test_memory_normalization_table():
    assert normalize_memory("A10G", 22.35) == 24 and normalize_memory("L4", 22.35) == 24
    assert normalize_memory("L40S", 44.7) == 48 and normalize_memory("A100", 40) == 40
    assert normalize_memory("A100", 80) == 80 and normalize_memory("L4", 11.18) == 11.18
    assert normalize_memory("Unknown", 13.3) == 13.3


def test_csv_rows_without_price_fractions_and_driverless_accelerators_are_not_offers(tmp_path):
    csv_path = tmp_path / "aws.csv"
    header = ("provider,instance_type,region,zone,cpu,memory_gib,gpu_vendor,gpu_name,gpu_count,gpu_memory_gib,"
              "price_ondemand,price_spot,arch,local_disk_gb,spot_supported,price_source\n")
    csv_path.write_text(header + "\n".join([
        "aws,g5.xlarge,us-east-1,us-east-1a,4,16,nvidia,A10G,1,22.35,1.006,,x86_64,250,1,vt",
        "aws,g5.2xlarge,us-east-1,us-east-1a,8,32,nvidia,A10G,1,22.35,,,x86_64,450,1,",
        "aws,g6f.large,us-east-1,us-east-1a,2,8,nvidia,L4,0.125,2.79,0.2,,x86_64,,1,vt",
        "aws,mac2.metal,us-east-1,us-east-1a,12,16,,,,,0.65,,arm64_mac,,0,lc",
        "aws,m7g.large,us-east-1,us-east-1b,2,8,,,,,0.0816,,arm64,,1,lc",
        "aws,g4ad.xlarge,us-east-1,us-east-1a,4,16,amd,Radeon Pro V520,1,8,0.379,,x86_64,150,1,lc",
        "aws,dl1.24xlarge,us-east-1,us-east-1a,96,768,intel,Gaudi HL-205,8,32,13.1,,x86_64,4000,1,lc",
    ]) + "\n")
    rows = list(read_rows(csv_path))
    assert [(r.instance.name, r.instance.gpu_memory_gib, r.instance.arch) for r in rows] == [
        ("g5.xlarge", 24.0, "x86"), ("m7g.large", 0.0, "arm")]

    spot = {("g5.xlarge", "us-east-1", "us-east-1a"): 0.5, ("g5.xlarge", "us-east-1", "us-east-1c"): 0.6,
            ("g5.xlarge", "eu-west-3", "eu-west-3a"): 0.4, ("g6f.large", "us-east-1", "us-east-1a"): 0.1}
    joined = [(r.instance.name, r.zone, r.price, r.spot_price) for r in read_rows(csv_path, spot)]
    assert joined == [("g5.xlarge", "us-east-1a", 1.006, 0.5), ("m7g.large", "us-east-1b", 0.0816, None),
                      ("g5.xlarge", "us-east-1c", 1.006, 0.6)]  # a spot zone of a listed type and region joins;
    # a region with no on-demand row (eu-west-3) and a type that is no offer (g6f) do not


def test_csv_tpu_rows_become_offers_under_dstacks_names_with_one_hosts_figures(tmp_path):
    csv_path = tmp_path / "gcp.csv"
    header = ("provider,instance_type,region,zone,cpu,memory_gib,gpu_vendor,gpu_name,gpu_count,gpu_memory_gib,"
              "price_ondemand,price_spot,arch,local_disk_gb,spot_supported,price_source\n")
    csv_path.write_text(header + "\n".join([
        "gcp,tpu-v5litepod-8,us-west4,us-west4-a,,,google,tpu-v5litepod-8,1,,9.6,4.0,,,1,ac",
        "gcp,tpu-v5litepod-16,us-west4,us-west4-a,,,google,tpu-v5litepod-16,1,,19.2,8.0,,,1,ac",
        "gcp,tpu-v3-8,us-east1,us-east1-d,,,google,tpu-v3-8,1,,8,,,,,ac",
        "gcp,tpu-v6e-8,asia-east1,asia-east1-c,,,google,tpu-v6e-8,1,,700,700,,,1,ac",  # upstream's stand-in
        "gcp,tpu-v6e-8,southamerica-west1,southamerica-west1-c,,,google,tpu-v6e-8,1,,21.6,700,,,1,ac",
        "gcp,tpu-v9-8,us-west4,us-west4-a,,,google,tpu-v9-8,1,,1,1,,,1,ac",  # a shape offers.tpus does not know
    ]) + "\n")
    rows = [(r.instance, r.region, r.price, r.spot_price) for r in read_rows(csv_path)]
    assert [(i.name, i.gpu_name, i.gpu_vendor, i.gpu_count, i.gpu_memory_gib, i.cpus, i.memory_gib, i.arch, region,
             price, spot) for i, region, price, spot in rows] == [
        ("v5litepod-8", "v5litepod-8", "google", 1, 128, 224, 384, "x86", "us-west4", 9.6, 4.0),
        ("v5litepod-16", "v5litepod-16", "google", 1, 256, 112, 192, "x86", "us-west4", 19.2, 8.0),
        ("v3-8", "v3-8", "google", 1, 128, 96, 334, "x86", "us-east1", 8.0, None),
        ("v6e-8", "v6e-8", "google", 1, 256, 180, 1440, "x86", "southamerica-west1", 21.6, None)]
    assert [i.spot_supported for i, *_ in rows] == [True, True, False, True]


def test_shipped_catalogue_answers_the_issue_examples():
    catalogs = load_catalogs()
    assert {c.backend for c in catalogs} == {"aws", "gcp"}
    assert all(c.meta["snapshot"] and c.meta["sources"] for c in catalogs)
    found = find_offers(Requirements(ResourcesSpec.model_validate({"gpu": "24GB.."}), spot=False), catalogs)
    gpus = {o.instance.gpu_name for o in found.offers}
    assert {"A10G", "L4"} <= gpus
    p5 = find_offers(Requirements(ResourcesSpec.model_validate({"gpu": "H100:8"}), spot=False, backends=("aws",),
                                  regions=("us-east-1",), instance_types=("p5.48xlarge",)), catalogs)
    assert p5.offers[0].price == 55.04
    n1 = find_offers(Requirements(ResourcesSpec.model_validate({"gpu": "T4:1"}), spot=False, backends=("gcp",),
                                  regions=("us-central1",), instance_types=("n1-standard-4",)), catalogs)
    assert n1.offers[0].price == pytest.approx(0.54, abs=0.01)  # host 0.19 + one T4 0.35 (catalog README)


def test_refreshed_catalogue_wins_over_the_shipped_one(dstack_home):
    assert catalog_path("aws").parent.name == "data"
    write_catalog(dstack_home / "catalog" / "aws.catalog", "aws",
                  [PriceRow(TYPES["g.a10g"], "us-east-1", "us-east-1a", 0.5, 0.2)], {"snapshot": "refreshed"})
    assert catalog_path("aws") == dstack_home / "catalog" / "aws.catalog"
    assert load_catalogs(["aws"])[0].meta == {"snapshot": "refreshed"}


def test_cloud_offers_are_x86_unless_the_task_asks_for_arm(catalog, tmp_path):
    assert "m.arm" not in {n for n, _, _ in names(search(catalog, cpu="4", gpu="0"))}
    arm_gpu = it("g.t4g", 4, 8.0, "nvidia", "T4g", 1, 16.0, arch="arm")
    path = tmp_path / "arm.catalog"
    write_catalog(path, "aws", [PriceRow(arm_gpu, "r1", "r1a", 0.4, None),
                                PriceRow(TYPES["g.a10g"], "r1", "r1a", 1.0, None)], {})
    arm = read_catalog(path)
    assert {n for n, _, _ in names(search(arm, gpu="1"))} == {"g.a10g"}
    assert {n for n, _, _ in names(search(arm, gpu="t4g"))} == {"g.t4g"}  # naming an ARM GPU asks for ARM
    assert {n for n, _, _ in names(search(arm, cpu="arm:2..", gpu="1"))} == {"g.t4g"}


def test_the_readme_task_plans_on_x86():
    req = Requirements(ResourcesSpec.model_validate({}), spot=False)
    best = find_offers(req, load_catalogs(["aws"]), limit=1).offers[0]
    assert best.instance.arch == "x86", best.instance.name


def test_shipped_aws_catalogue_has_spot_prices_per_zone():
    aws = load_catalogs(["aws"])[0]
    assert aws.meta["spot_snapshot"] == "2026-04-02"
    req = Requirements(ResourcesSpec.model_validate({"gpu": "A10G:1"}), spot=True, regions=("us-east-2",),
                       instance_types=("g5.xlarge",))
    prices = sorted(o.price for o in find_offers(req, [aws]).offers)
    assert prices and all(0.35 < p < 0.38 for p in prices), prices  # 0.3573-0.3787 in the snapshot's us-east-2


def test_a_spot_search_without_spot_prices_says_so():
    from offers.spot_gaps import missing_spot_prices

    aws = load_catalogs(["aws"])
    req = Requirements(ResourcesSpec.model_validate({}), spot=True, instance_types=("m5.large",))
    assert find_offers(req, aws).total == 0
    message = missing_spot_prices(req, aws)
    assert "m5.large" in message and "no spot price" in message and "--refresh" in message
    with_spot = Requirements(ResourcesSpec.model_validate({"gpu": "A10G"}), spot=True)
    assert missing_spot_prices(dataclasses.replace(with_spot, instance_types=("nothing.such",)), aws) is None


def test_on_demand_offers_of_a_region_are_one_offer_with_every_zone():
    """Spot prices differ per zone (one price group each); on-demand prices do not, so one offer per region."""
    aws = load_catalogs(["aws"])
    req = Requirements(ResourcesSpec.model_validate({"gpu": "L4:1"}), spot=False, regions=("us-east-1",),
                       instance_types=("g6.xlarge",))
    found = find_offers(req, aws).offers
    assert len(found) == 1 and len(found[0].zones) > 1, [(o.price, o.zones) for o in found]
    spot = find_offers(dataclasses.replace(req, spot=True), aws).offers
    assert len(spot) > 1 and all(len(o.zones) >= 1 for o in spot)


def test_local_and_wavelength_zones_are_no_offers(tmp_path):
    """AWS Local Zones (`us-east-1-atl-2a`) and Wavelength Zones (`us-east-1-wl1-bos-wlz-1`) need an opt-in and have
    no default subnet: the catalogue builder leaves their rows out, the on-demand CSV's and the spot CSV's alike."""
    csv_path = tmp_path / "aws.csv"
    header = ("provider,instance_type,region,zone,cpu,memory_gib,gpu_vendor,gpu_name,gpu_count,gpu_memory_gib,"
              "price_ondemand,price_spot,arch,local_disk_gb,spot_supported,price_source\n")
    csv_path.write_text(header + "\n".join([
        "aws,g4dn.xlarge,us-west-2,us-west-2a,4,16,nvidia,T4,1,16,0.526,,x86_64,125,1,lc",
        "aws,g4dn.xlarge,us-west-2,us-west-2-lax-1a,4,16,nvidia,T4,1,16,0.526,,x86_64,125,1,lc",
        "aws,t3.large,us-east-1,us-east-1-wl1-bos-wlz-1,2,8,,,,,0.0832,,x86_64,,1,lc",
    ]) + "\n")
    spot = {("g4dn.xlarge", "us-west-2", "us-west-2-lax-1b"): 0.1053, ("g4dn.xlarge", "us-west-2", "us-west-2b"): 0.2}
    rows = [(r.instance.name, r.zone, r.spot_price) for r in read_rows(csv_path, spot)]
    assert rows == [("g4dn.xlarge", "us-west-2a", None), ("g4dn.xlarge", "us-west-2b", 0.2)]


def test_the_shipped_aws_catalogue_has_availability_zones_only():
    from offers.catalog import aws_availability_zone

    [aws] = load_catalogs(["aws"])
    zones = {(aws.regions[aws.region[i]], zone) for i in range(len(aws)) for zone in aws.zones(i)}
    assert zones and all(aws_availability_zone(region, zone) for region, zone in zones), \
        sorted(z for z in zones if not aws_availability_zone(*z))[:5]
    assert aws_availability_zone("us-east-1", "us-east-1a") and aws_availability_zone("ap-northeast-1", "ap-northeast-1d")
    for region, zone in (("us-east-1", "us-east-1-atl-2a"), ("us-west-2", "us-west-2-lax-1b"),
                         ("us-east-1", "us-east-1-wl1-bos-wlz-1"), ("us-east-1", "us-east-2a")):
        assert not aws_availability_zone(region, zone)


def test_offers_never_name_a_local_zone(tmp_path):
    """Through the CLI: the cheapest T4 spot and the 8 x H100 offers of us-east-1 are in Availability Zones."""
    from tests.helpers import run_cli

    env = {"DSTACK_HOME": str(tmp_path / "home")}
    for args in (("--gpu", "T4", "--spot"), ("--gpu", "H100:8", "-r", "us-east-1"), ("--gpu", "H200:8", "-r", "us-east-1")):
        result = run_cli("offer", *args, "-b", "aws", "--json", env=env)
        assert result.returncode == 0, result.stderr
        zones = [z for o in json.loads(result.stdout)["offers"] for z in o["availability_zones"]]
        assert zones and not [z for z in zones if "-atl-" in z or "-lax-" in z or "wlz" in z], args
