"""Checks that the cloud's credentials are there before `up`, and says which are missing. Credentials come from the
clouds' usual chains and are never written into dstack's files."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from configuration.errors import MISSING_AWS_CREDENTIALS, ConfigurationError


@contextmanager
def aws_errors(action: str):
    """boto3's errors as one line for a person: missing credentials say what to set (boto3 finds that out before
    sending anything), any other failure names the `action` ("listing ...") and AWS's reason."""
    import botocore.exceptions

    try:
        yield
    except botocore.exceptions.NoCredentialsError:
        raise ConfigurationError(MISSING_AWS_CREDENTIALS) from None
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        raise ConfigurationError(f"{action} failed: {e}") from None


def check_aws_credentials(region: str) -> str:
    """The caller's ARN, from `sts.get_caller_identity`."""
    import boto3

    with aws_errors("checking the AWS credentials"):
        return boto3.session.Session().client("sts", region_name=region).get_caller_identity()["Arn"]


# What the Pulumi GCP provider reads before application default credentials: a key file's path or its JSON.
GCP_PROVIDER_CREDENTIAL_VARIABLES = ("GOOGLE_CREDENTIALS", "GOOGLE_CLOUD_KEYFILE_JSON", "GCLOUD_KEYFILE_JSON")


def gcp_credentials_source() -> str:
    """Where application default credentials will come from, as the GCP provider looks for them."""
    for variable in GCP_PROVIDER_CREDENTIAL_VARIABLES:
        if os.environ.get(variable):
            return f"${variable}"
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if path:
        if not Path(path).is_file():
            raise ConfigurationError(f"GOOGLE_APPLICATION_CREDENTIALS points to {path}, which does not exist")
        return path
    config_dir = Path(os.environ.get("CLOUDSDK_CONFIG", Path.home() / ".config" / "gcloud"))
    adc = config_dir / "application_default_credentials.json"
    if adc.is_file():
        return str(adc)
    raise ConfigurationError(
        "GCP credentials are missing: run `gcloud auth application-default login`, or set "
        "GOOGLE_APPLICATION_CREDENTIALS to a service account key file")
