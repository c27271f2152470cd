"""`dstack offers --refresh` against a real local moto server (EC2) and recorded Pricing API pages (moto has no
Pricing API), through botocore's Stubber."""

import json

import boto3
import pytest
from botocore.stub import Stubber

from configuration.errors import ConfigurationError
from offers.aws_refresh import refresh_aws_catalog
from offers.catalog import catalog_path, read_catalog
from tests.helpers import DATA

RECORDED = json.loads((DATA / "aws" / "pricing-get-products-us-east-1.json").read_text())


def stubbed_pricing():
    client = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(client)
    expected = {
        "ServiceCode": "AmazonEC2",
        "Filters": [{"Type": "TERM_MATCH", "Field": f, "Value": v} for f, v in (
            ("regionCode", "us-east-1"), ("operatingSystem", "Linux"), ("tenancy", "Shared"),
            ("preInstalledSw", "NA"), ("capacitystatus", "Used"))],
    }
    stubber.add_response("get_products", RECORDED[0], expected)
    stubber.add_response("get_products", RECORDED[1], dict(expected, NextToken="page-2"))
    stubber.activate()
    return client, stubber


def test_refresh_builds_the_catalogue_from_the_apis(aws_on_moto, dstack_home):
    pricing, stubber = stubbed_pricing()
    log = []
    path = refresh_aws_catalog(regions=["us-east-1"], log=log.append, pricing_client=pricing)
    stubber.assert_no_pending_responses()
    assert path == dstack_home / "catalog" / "aws.catalog" == catalog_path("aws")
    catalog = read_catalog(path)
    by_name = {t.name: (t, catalog.type_slices[i]) for i, t in enumerate(catalog.types)}
    assert set(by_name) == {"g5.xlarge", "p5.48xlarge", "m7g.large", "inf2.xlarge"}  # only priced types
    g5, (start, end) = by_name["g5.xlarge"]
    assert (g5.cpus, g5.memory_gib, g5.gpu_name, g5.gpu_count, g5.gpu_memory_gib) == (4, 16, "A10G", 1, 24.0)
    assert catalog.price[start] == 1.006 and end - start == 1
    assert catalog.spot_price[start] == 0.00001  # moto's spot history, one entry per zone
    assert "us-east-1a" in catalog.zones(start)
    assert by_name["m7g.large"][0].arch == "arm"
    inf2 = by_name["inf2.xlarge"][0]
    assert (inf2.gpu_vendor, inf2.gpu_name, inf2.gpu_memory_gib) == ("aws", "Inferentia2", 32.0)
    assert catalog.meta["sources"][0] == "ec2.describe_instance_types"
    assert any("on-demand prices" in line for line in log)


def test_refreshed_catalogue_feeds_dstack_offers(aws_on_moto, dstack_home):
    from tests.helpers import run_cli

    pricing, _ = stubbed_pricing()
    refresh_aws_catalog(regions=["us-east-1"], log=lambda _: None, pricing_client=pricing)
    result = run_cli("offers", "--gpu", "A10G", "-b", "aws", "--spot", "--json", env={"DSTACK_HOME": str(dstack_home)})
    offers = json.loads(result.stdout)["offers"]
    assert offers and all(o["price"] == 0.00001 and o["instance"]["resources"]["spot"] for o in offers)


def test_missing_credentials_are_named(no_aws_credentials):
    with pytest.raises(ConfigurationError, match="AWS credentials are missing: run `aws configure`"):
        refresh_aws_catalog(regions=["us-east-1"], log=lambda _: None)


def test_nothing_priced_leaves_the_catalogue_alone(aws_on_moto, dstack_home):
    client = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stubber:
        stubber.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": []})
        with pytest.raises(ConfigurationError, match="no priced offers"):
            refresh_aws_catalog(regions=["us-east-1"], log=lambda _: None, pricing_client=client)
    assert not (dstack_home / "catalog" / "aws.catalog").exists()


def test_accelerators_without_an_image_are_no_offers(aws_on_moto):
    from offers.aws_refresh import instance_types

    found = instance_types(boto3.client("ec2"))  # moto's describe_instance_types: every type it knows
    assert {"g5.xlarge", "p3dn.24xlarge", "inf2.xlarge"} <= set(found)
    assert not {"g4ad.xlarge", "dl1.24xlarge", "dl2q.24xlarge"} & set(found)  # AMD, Gaudi, Qualcomm


def test_local_and_wavelength_zones_the_apis_list_are_left_out(aws_on_moto, dstack_home):
    """An account that opted in to Local Zones sees them in the zone offerings and the spot price history (moto has
    none, so they are added to its real answers): they are no offers, opt-in zones without a default subnet."""
    import datetime as dt

    session = boto3.session.Session()
    added = {"us-east-1-atl-2a": 0.5, "us-east-1-wl1-bos-wlz-1": 0.6}

    def more_offerings(parsed, **_):
        parsed["InstanceTypeOfferings"] += [{"InstanceType": "g5.xlarge", "LocationType": "availability-zone",
                                             "Location": zone} for zone in added]

    def more_spot_prices(parsed, **_):
        parsed["SpotPriceHistory"] += [
            {"AvailabilityZone": zone, "InstanceType": "g5.xlarge", "ProductDescription": "Linux/UNIX",
             "SpotPrice": str(price), "Timestamp": dt.datetime.now(dt.timezone.utc)} for zone, price in added.items()]

    session.events.register("after-call.ec2.DescribeInstanceTypeOfferings", more_offerings)
    session.events.register("after-call.ec2.DescribeSpotPriceHistory", more_spot_prices)
    pricing, _ = stubbed_pricing()
    path = refresh_aws_catalog(regions=["us-east-1"], log=lambda _: None, session=session, pricing_client=pricing)
    catalog = read_catalog(path)
    zones = {zone for group in range(len(catalog)) for zone in catalog.zones(group)}
    assert "us-east-1a" in zones and not zones & set(added)
    assert min(catalog.spot_price[g] for g in range(len(catalog)) if catalog.spot_price[g] > 0) == 0.00001
