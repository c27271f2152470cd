"""Where GCP credentials come from, as the Pulumi GCP provider looks for them, and what to do when there are none."""

from __future__ import annotations

import os
from pathlib import Path

from configuration.errors import ConfigurationError

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
