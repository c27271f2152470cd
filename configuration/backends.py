"""`$DSTACK_HOME/config.yml`: which clouds to use and how. Credentials are never stored here.

    backends:
      - type: aws
        regions: [us-east-1, us-west-2]
        ingress_cidrs: [203.0.113.0/24]
        public_ports: false      # true: also open the task's ports to ingress_cidrs (default: SSH tunnel only)
        vpc_name: my-vpc         # default: the region's default VPC; subnet: subnet-... to pick one
      - type: gcp
        project_id: my-project
        regions: [us-central1]
        vpc_name: my-network     # default: `default`; subnetwork: NAME to pick one
    pulumi:
      backend_url: s3://my-team-bucket/dstack   # default: file://$DSTACK_HOME/pulumi/state
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, List, Literal, Optional, Union

from pydantic import Field, TypeAdapter, ValidationError, field_validator

from configuration.errors import ConfigurationError
from configuration.home import dstack_home
from configuration.resources import StrictModel

CLOUD_BACKENDS = ("aws", "gcp")  # the clouds dstack provisions in through Pulumi stacks


class CloudBackend(StrictModel):
    regions: Optional[List[str]] = None
    ingress_cidrs: Annotated[
        List[str], Field(description="Who may reach the VMs' SSH port (and task ports with public_ports); "
                                     "default everyone")
    ] = ["0.0.0.0/0"]
    public_ports: Annotated[
        bool, Field(description="Open the task's ports to ingress_cidrs too; by default they are reached only "
                                "through the SSH tunnel (localhost on the client)")
    ] = False

    @field_validator("ingress_cidrs")
    @classmethod
    def _cidrs(cls, v: List[str]) -> List[str]:
        for cidr in v:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR block (e.g. 203.0.113.0/24)") from None
        return v


class AWSBackend(CloudBackend):
    type: Literal["aws"]
    vpc_name: Annotated[
        Optional[str], Field(description="The VPC to use (by its Name tag) instead of the region's default VPC")
    ] = None
    subnet: Annotated[
        Optional[str], Field(description="The subnet id (subnet-...) to use; default: the VPC's subnet in the "
                                         "offer's zone")
    ] = None


class GCPBackend(CloudBackend):
    type: Literal["gcp"]
    project_id: Optional[str] = None
    vpc_name: Annotated[Optional[str], Field(description="The VPC network to use instead of `default`")] = None
    self_delete: Annotated[
        bool, Field(description="Give each VM a service account that may delete that VM only, so a VM that ends "
                                "itself is deleted; false: it is stopped, and its disk billed until the next `dstack` "
                                "command tears the run down (for credentials without IAM rights)")
    ] = True
    subnetwork: Annotated[
        Optional[str], Field(description="The subnetwork to use (name or self link); default: the network's "
                                         "subnetwork in the offer's region")
    ] = None


class LocalBackend(StrictModel):
    type: Literal["local"]


class PulumiSettings(StrictModel):
    backend_url: Optional[str] = None


class DstackConfig(StrictModel):
    backends: List[Annotated[Union[AWSBackend, GCPBackend, LocalBackend], Field(discriminator="type")]] = []
    pulumi: PulumiSettings = PulumiSettings()
    database: Annotated[
        Optional[str], Field(description="The team's state store, `postgresql://user@host/dbname` (docs/teams.md); "
                                         "`DSTACK_DATABASE_URL` wins over it. Default: SQLite under $DSTACK_HOME")
    ] = None

    def backend(self, name: str):
        for backend in self.backends:
            if backend.type == name:
                return backend
        return None

    @property
    def cloud_backends(self) -> List[str]:
        return [b.type for b in self.backends if b.type in CLOUD_BACKENDS]


def load_config() -> DstackConfig:
    path = dstack_home() / "config.yml"
    if not path.exists():
        return DstackConfig()
    from configuration.loader import describe_validation_error
    from configuration.yaml_input import load_yaml_file

    data, root = load_yaml_file(path)
    try:
        return TypeAdapter(DstackConfig).validate_python(data or {})
    except ValidationError as e:
        raise ConfigurationError(describe_validation_error(e, str(path), DstackConfig, root)) from None
