"""`dstack config check`: the AWS answers against a real local moto server (STS, EC2) with Service Quotas stubbed
(moto has none), the Pulumi CLI's presence and version, and the command's lines and exit code."""

import json

import boto3
import pytest
from botocore.stub import Stubber

from stacks.aws.checks import GPU_QUOTAS, check_aws
from stacks.checks import FAIL, OK, WARN, check_pulumi
from tests.helpers import run_cli


def clients_with_quotas(values_by_region):
    """boto3 clients on moto, except Service Quotas, answered from `values_by_region` (None: access denied)."""
    stubbers = []

    def make(service, region):
        client = boto3.session.Session().client(service, region_name=region)
        if service != "service-quotas":
            return client
        stubber = Stubber(client)
        for code in GPU_QUOTAS:
            value = values_by_region.get(region, {}).get(code, 0.0)
            if value is None:
                stubber.add_client_error("get_service_quota", "AccessDeniedException", "not allowed")
            else:
                stubber.add_response("get_service_quota", {"Quota": {"QuotaCode": code, "Value": value}},
                                     {"ServiceCode": "ec2", "QuotaCode": code})
        stubber.activate()
        stubbers.append(stubber)
        return client

    return make, stubbers


def by_subject(checks):
    return {c.subject: c for c in checks}


def test_aws_answers_each_question_in_one_line(aws_on_moto):
    make, stubbers = clients_with_quotas({"us-east-1": {"L-DB2E81BA": 64.0}, "us-west-2": {}})
    checks = by_subject(check_aws(["us-east-1", "us-west-2", "ap-south-2"], clients=make))
    assert checks["credentials"].status == OK and checks["credentials"].detail.startswith("arn:aws:")
    assert checks["regions"].status == WARN
    assert checks["regions"].detail == "2 of 3 enabled; not enabled (opt-in regions, skipped by runs): ap-south-2"
    assert checks["network"].status == OK and checks["network"].detail == "default VPC in every enabled region"
    assert checks["gpu quota"].status == OK
    assert checks["gpu quota"].detail == "us-east-1 on-demand G and VT 64 vCPUs"
    for stubber in stubbers:
        stubber.assert_no_pending_responses()


def test_aws_zero_quotas_a_missing_vpc_and_unreadable_quotas(aws_on_moto):
    make, _ = clients_with_quotas({"us-east-1": {code: None for code in GPU_QUOTAS}})
    checks = by_subject(check_aws(["us-east-1", "us-west-2"], vpc_name="ml-vpc", clients=make))
    assert checks["network"].status == FAIL
    assert "no VPC 'ml-vpc' in us-east-1, us-west-2: create it there" in checks["network"].detail
    quota = checks["gpu quota"]
    assert quota.status == WARN and "every GPU vCPU quota is 0" in quota.detail
    assert "could not read the quotas of us-east-1 (servicequotas:GetServiceQuota)" in quota.detail


def test_aws_without_credentials_says_what_to_set(no_aws_credentials):
    checks = check_aws(["us-east-1"])
    assert [(c.subject, c.status) for c in checks] == [("credentials", FAIL)]
    assert "aws configure" in checks[0].detail


def test_an_opt_in_region_is_skipped_by_failover_not_fatal(aws_on_moto):
    from stacks.aws.checks import require_region_enabled
    from stacks.errors import StackFailure

    require_region_enabled("us-east-1")
    with pytest.raises(StackFailure) as failure:
        require_region_enabled("ap-south-2")
    assert failure.value.retryable and failure.value.scope == "region"
    assert "opt-in region" in failure.value.message


def test_pulumi_cli_missing_old_or_fine(tmp_path, monkeypatch):
    from stacks import automation

    monkeypatch.setattr(automation, "find_pulumi", lambda: None)
    assert check_pulumi().status == FAIL and "dstack setup pulumi" in check_pulumi().detail
    fake = tmp_path / "pulumi"
    monkeypatch.setattr(automation, "find_pulumi", lambda: str(fake))
    for version, status in (("v3.0.1", FAIL), ("v3.999.0", OK), ("nonsense", FAIL)):
        fake.write_text(f"#!/bin/sh\necho {version}\n")
        fake.chmod(0o755)
        assert check_pulumi().status == status, version


def test_the_command_prints_lines_and_fails_when_a_backend_would(tmp_path, dstack_home, moto_endpoint):
    dstack_home.mkdir(parents=True, exist_ok=True)
    env = {"DSTACK_HOME": str(dstack_home), "AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    nothing = run_cli("config", "check", env=env)
    assert nothing.returncode == 0 and "No cloud is configured" in nothing.stdout
    (dstack_home / "config.yml").write_text("backends:\n  - type: aws\n    regions: [us-east-1]\n")
    result = run_cli("config", "check", "--json", env=env)
    assert result.returncode == 1, result.stderr  # no Pulumi CLI here
    document = json.loads(result.stdout)
    assert document["status"] == FAIL
    subjects = [(c["backend"], c["subject"], c["status"]) for c in document["checks"]]
    assert subjects[:3] == [("pulumi", "cli", FAIL), ("aws", "credentials", OK), ("aws", "regions", OK)]


# --- GCP: recorded Compute API v1 responses on a local server -------------------------------------------------

def record_gcp(api, gpus_all_regions=8, network_found=True):
    base = "/compute/v1/projects/ml-proj"
    api.on("GET", base, {"name": "ml-proj", "quotas": [
        {"metric": "GPUS_ALL_REGIONS", "limit": gpus_all_regions, "usage": 0},
        {"metric": "CPUS_ALL_REGIONS", "limit": 64, "usage": 0}]})
    api.on("GET", f"{base}/regions", {"items": [
        {"name": "us-central1", "status": "UP", "quotas": [
            {"metric": "NVIDIA_T4_GPUS", "limit": 4, "usage": 0},
            {"metric": "NVIDIA_A100_GPUS", "limit": 0, "usage": 0},
            {"metric": "CPUS", "limit": 24, "usage": 0}]},
        {"name": "europe-west4", "status": "UP", "quotas": [
            {"metric": "PREEMPTIBLE_NVIDIA_H100_GPUS", "limit": 8, "usage": 0}]},
        {"name": "asia-east2", "status": "DOWN", "quotas": []}]})
    if network_found:
        api.on("GET", f"{base}/global/networks/default", {"name": "default"})
    api.on("POST", "/v1/projects/ml-proj:testIamPermissions", recorded_gcp("crm_test_iam_permissions_all.json"))
    api.on("GET", "/v1/projects/ml-proj/serviceAccounts", {"accounts": []})
    return api


def recorded_gcp(name):
    from tests.helpers import DATA

    return json.loads((DATA / "gcp" / name).read_text())


def gcp_checks(api, regions, **kwargs):
    from google.auth.credentials import AnonymousCredentials

    from stacks.gcp.checks import check_gcp

    return by_subject(check_gcp(regions, project_id="ml-proj", credentials=AnonymousCredentials(),
                                endpoint=api.url, **kwargs))


def test_gcp_answers_each_question_in_one_line(recorded_api):
    checks = gcp_checks(record_gcp(recorded_api), ["us-central1", "europe-west4", "asia-east2", "mars-north1"])
    assert checks["project"].status == OK
    assert checks["regions"].status == WARN
    assert checks["regions"].detail == "2 of 4 usable; unknown to this project: mars-north1; not UP: asia-east2"
    assert checks["network"].status == OK
    assert checks["gpu quota"].status == OK
    assert checks["gpu quota"].detail == ("GPUS_ALL_REGIONS 8; us-central1 NVIDIA_T4_GPUS 4; "
                                          "europe-west4 PREEMPTIBLE_NVIDIA_H100_GPUS 8")
    assert checks["self-delete"].status == OK
    assert {r.path for r in recorded_api.requests} == {"/compute/v1/projects/ml-proj",
                                                       "/compute/v1/projects/ml-proj/regions",
                                                       "/compute/v1/projects/ml-proj/global/networks/default",
                                                       "/v1/projects/ml-proj:testIamPermissions",
                                                       "/v1/projects/ml-proj/serviceAccounts"}


def test_gcp_self_delete_names_what_the_credentials_lack_and_the_fallback(recorded_api):
    """Issue 19 item 2: an Editor lacks compute.instances.setIamPolicy; a project may not have the IAM API on.
    Either is named before a run, whose VMs then fall back to `self_delete: false`."""
    api = record_gcp(recorded_api)
    api.on("POST", "/v1/projects/ml-proj:testIamPermissions", recorded_gcp("crm_test_iam_permissions_editor.json"))
    check = gcp_checks(api, ["us-central1"])["self-delete"]
    assert check.status == WARN
    assert check.detail.startswith("missing compute.instances.setIamPolicy: runs fall back to `self_delete: false`")
    asked = [r for r in api.requests if r.path.endswith(":testIamPermissions")]
    assert len(asked) == 1 and asked[0].method == "POST"

    api.on("GET", "/v1/projects/ml-proj/serviceAccounts", recorded_gcp("error_403_iam_disabled.json"), status=403)
    check = gcp_checks(api, ["us-central1"])["self-delete"]
    assert check.detail.startswith("missing the IAM API (iam.googleapis.com), compute.instances.setIamPolicy:")

    api.on("POST", "/v1/projects/ml-proj:testIamPermissions", recorded_gcp("error_403_crm_disabled.json"),
           status=403)
    check = gcp_checks(api, ["us-central1"])["self-delete"]
    assert check.status == WARN and "could not tell" in check.detail and "Cloud Resource Manager API" in check.detail
    off = gcp_checks(record_gcp(recorded_api), ["us-central1"], self_delete=False)["self-delete"]
    assert off.status == OK and off.detail.startswith("off (`self_delete: false`)")


def test_gcp_no_default_network_and_a_zero_global_gpu_quota(recorded_api):
    checks = gcp_checks(record_gcp(recorded_api, gpus_all_regions=0, network_found=False), ["us-central1"])
    assert checks["network"].status == FAIL and "set `vpc_name`" in checks["network"].detail
    assert checks["gpu quota"].status == WARN and "GPUS_ALL_REGIONS is 0" in checks["gpu quota"].detail
    named = gcp_checks(record_gcp(recorded_api), ["us-central1"], vpc_name="ml-net")
    assert named["network"].status == FAIL and named["network"].detail.endswith("create it")
    assert any(r.path.endswith("/global/networks/ml-net") for r in recorded_api.requests)


def test_gcp_unknown_project_and_missing_credentials(recorded_api, monkeypatch, tmp_path):
    from stacks.gcp.checks import check_gcp

    checks = gcp_checks(recorded_api, ["us-central1"])
    assert checks["project"].status == FAIL and "ml-proj" in checks["project"].detail
    from stacks.gcp.credentials import GCP_PROVIDER_CREDENTIAL_VARIABLES

    for variable in GCP_PROVIDER_CREDENTIAL_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    missing = check_gcp(["us-central1"], project_id="ml-proj")
    assert [(c.subject, c.status) for c in missing] == [("credentials", FAIL)]
    assert "does not exist" in missing[0].detail
