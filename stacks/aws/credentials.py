"""Checks that AWS credentials are there before `up`, and says which are missing; boto3's errors as one line.
Credentials come from the usual chain and are never written into dstack's files."""

from __future__ import annotations

from contextlib import contextmanager

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
