"""Failure classification on the texts clouds and the Pulumi engine really print."""

import pytest

from stacks.errors import classify

AWS_CAPACITY = """error: 1 error occurred:
    * creating EC2 Instance: operation error EC2: RunInstances, https response error StatusCode: 500, RequestID: 5f0e8a3c-9a5d-4f0e-8d2b-1c2f3e4d5a6b, api error InsufficientInstanceCapacity: We currently do not have sufficient p4d.24xlarge capacity in the Availability Zone you requested (us-east-1a). Our system will be working on provisioning additional capacity. You can currently get p4d.24xlarge capacity by not specifying an Availability Zone in your request or choosing us-east-1b, us-east-1c."""
AWS_VCPU = """    error: 1 error occurred:
    	* creating EC2 Instance: operation error EC2: RunInstances, https response error StatusCode: 400, RequestID: 0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0, api error VcpuLimitExceeded: You have requested more vCPU capacity than your current vCPU limit of 0 allows for the instance bucket that the specified instance type belongs to. Please visit http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit."""
AWS_SPOT_COUNT = ("creating EC2 Instance: operation error EC2: RunInstances, https response error StatusCode: 400, "
                  "api error MaxSpotInstanceCountExceeded: Max spot instance count exceeded")
AWS_UNSUPPORTED = ("creating EC2 Instance: api error Unsupported: Your requested instance type (p5.48xlarge) is not "
                   "supported in your requested Availability Zone (us-east-1f). Please retry your request by not "
                   "specifying an Availability Zone or choosing us-east-1a, us-east-1b.")
AWS_AUTH = ("error: configuring Terraform AWS Provider: validating provider credentials: retrieving caller identity "
            "from STS: operation error STS: GetCallerIdentity, https response error StatusCode: 403, RequestID: x, "
            "api error InvalidClientTokenId: The security token included in the request is invalid.")
AWS_AMI = ("creating EC2 Instance: operation error EC2: RunInstances, https response error StatusCode: 400, "
           "api error InvalidAMIID.NotFound: The image id '[ami-0abc]' does not exist")
GCP_CAPACITY = """error: 1 error occurred:
    * Error waiting for instance to create: The zone 'projects/my-project/zones/us-central1-a' does not have enough resources available to fulfill the request.  Try a different zone, or try again later."""
GCP_POOL = ("Error creating instance: googleapi: Error 503: The zone 'projects/p/zones/us-central1-c' does not have "
            "enough resources available to fulfill the request. '(resource type:compute)'., "
            "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS")
GCP_GPU_QUOTA = ("Error creating instance: googleapi: Error 403: Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 0.0 in "
                 "region us-central1., quotaExceeded")
GCP_ALL_REGIONS = ("Error creating instance: googleapi: Error 403: Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 "
                   "globally., quotaExceeded")
GCP_CPU_QUOTA = ("Error creating instance: googleapi: Error 403: Quota 'CPUS' exceeded.  Limit: 24.0 in region "
                 "europe-west4., quotaExceeded")
GCP_PERMISSION = ("Error creating instance: googleapi: Error 403: Required 'compute.instances.create' permission for "
                  "'projects/p/zones/us-central1-a/instances/dstack-x', forbidden")
GCP_ADC = ("error: rpc error: code = Unknown desc = failed to load application credentials: google: could not find "
           "default credentials. See https://cloud.google.com/docs/authentication/external/set-up-adc")
GCP_MACHINE = ("Error creating instance: googleapi: Error 400: Invalid value for field 'resource.machineType': "
               "'zones/us-central1-a/machineTypes/a3-megagpu-9g'. Machine type with name 'a3-megagpu-9g' does not "
               "exist in zone 'us-central1-a'., invalid")


@pytest.mark.parametrize("text, kind, scope, code", [
    (AWS_CAPACITY, "capacity", "zone", "InsufficientInstanceCapacity"),
    (AWS_VCPU, "quota", "region", "VcpuLimitExceeded"),
    (AWS_SPOT_COUNT, "quota", "region", "MaxSpotInstanceCountExceeded"),
    (AWS_UNSUPPORTED, "capacity", "zone", None),
    (AWS_AUTH, "credentials", "cloud", "InvalidClientTokenId"),
    (AWS_AMI, "configuration", "cloud", None),
    (GCP_CAPACITY, "capacity", "zone", None),
    (GCP_POOL, "capacity", "zone", None),
    (GCP_GPU_QUOTA, "quota", "region", None),
    (GCP_ALL_REGIONS, "quota", "cloud", "GPUS_ALL_REGIONS"),
    (GCP_CPU_QUOTA, "quota", "region", None),
    (GCP_PERMISSION, "credentials", "cloud", None),
    (GCP_ADC, "credentials", "cloud", None),
    (GCP_MACHINE, "configuration", "cloud", None),
])
def test_classification(text, kind, scope, code):
    failure = classify(text)
    assert (failure.kind, failure.scope) == (kind, scope)
    if code:
        assert failure.code == code
    assert failure.retryable == (kind in ("capacity", "quota"))


def test_summary_keeps_the_clouds_sentence_without_request_ids():
    failure = classify(AWS_CAPACITY)
    assert "We currently do not have sufficient p4d.24xlarge capacity" in failure.message
    assert "RequestID" not in failure.message and "StatusCode" not in failure.message
    assert str(classify(GCP_GPU_QUOTA)).startswith("Error creating instance: googleapi: Error 403: Quota 'NVIDIA_T4_GPUS'")


AWS_UNSUPPORTED_CONFIGURATION = (
    "creating EC2 Instance: operation error EC2: RunInstances, https response error StatusCode: 400, RequestID: 9c1d, "
    "api error Unsupported: The requested configuration is currently not supported. Please check the documentation "
    "for supported configurations.")
AWS_NO_DEFAULT_SUBNET = ("creating EC2 Instance: operation error EC2: RunInstances, https response error StatusCode: "
                         "400, RequestID: 1a2b, api error InvalidInput: No default subnet for availability zone: "
                         "'us-east-1-atl-2a'.")
AWS_VPC_WITHOUT_SUBNET = ("error: Program failed with an unhandled exception:\n  File \"stacks/aws/program.py\"\n"
                          "    ValueError: VPC ml-vpc has no subnet in us-east-1b that maps public IPs on launch: add "
                          "one, or set `subnet` for the aws backend in $DSTACK_HOME/config.yml")


@pytest.mark.parametrize("text", [AWS_UNSUPPORTED_CONFIGURATION, AWS_NO_DEFAULT_SUBNET, AWS_VPC_WITHOUT_SUBNET])
def test_zone_misses_move_to_the_next_zone(text):
    """What one zone cannot do (a configuration EC2 does not run there, a zone with no default subnet or none of the
    VPC's) rules out that zone only: the run goes on in the next one."""
    failure = classify(text)
    assert failure.scope == "zone" and failure.retryable, (failure.kind, failure.scope)


def test_moto_says_what_aws_says_of_a_zone_without_a_default_subnet_or_not_enabled(aws_on_moto):
    """RunInstances in a zone whose default subnet is gone, and in a zone the account has not enabled (a Local Zone
    without its opt-in), as moto's EC2 words them: both are zone misses."""
    import boto3
    import botocore.exceptions

    ec2 = boto3.client("ec2", region_name="sa-east-1")  # the moto server is shared: a region no other test uses
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    for subnet in ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]},
                                                {"Name": "availability-zone", "Values": ["sa-east-1b"]}])["Subnets"]:
        ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    texts = []
    for zone in ("sa-east-1b", "sa-east-1-gru-1a"):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.run_instances(ImageId=image, InstanceType="t3.large", MinCount=1, MaxCount=1,
                              Placement={"AvailabilityZone": zone})
        texts.append(f"creating EC2 Instance: operation error EC2: RunInstances, {e.value}")
    no_subnet, not_enabled = (classify(text) for text in texts)
    assert "No default subnet for availability zone: 'sa-east-1b'" in no_subnet.message
    assert "Invalid Availability Zone (sa-east-1-gru-1a)" in not_enabled.message
    assert {(f.scope, f.retryable) for f in (no_subnet, not_enabled)} == {("zone", True)}
