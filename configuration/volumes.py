"""The `type: volume` configuration: a network disk (an AWS EBS volume or a GCP persistent disk) that outlives the
runs that mount it. Fields as dstack's AWS and GCP volume configurations define them."""

from __future__ import annotations

from typing import Any, Dict, Literal, Optional

from pydantic import BeforeValidator, Field, field_validator, model_validator
from typing_extensions import Annotated

from configuration.fields import NAME_RULE, check_name, parse_idle_duration, parse_tags
from configuration.resources import Memory, StrictModel

VOLUME_BACKENDS = ("aws", "gcp")


class VolumeConfiguration(StrictModel):
    type: Literal["volume"] = "volume"
    name: Annotated[
        Optional[str], Field(description=f"The volume name: {NAME_RULE}; generated if absent")
    ] = None
    backend: Annotated[Literal["aws", "gcp"], Field(description="The volume backend: `aws` or `gcp`")]
    region: Annotated[str, Field(min_length=1, description="The volume region (e.g. `us-east-1`)")]
    availability_zone: Annotated[
        Optional[str], Field(description="The volume availability zone; the region's first zone if absent")
    ] = None
    size: Annotated[
        Optional[Memory], Field(description="The volume size (e.g. `100GB`). Must be specified when creating new "
                                            "volumes")
    ] = None
    volume_id: Annotated[
        Optional[str], Field(description="The ID of an existing disk to register instead of creating one (an EBS "
                                         "volume ID, a GCP disk name); `dstack volume delete` then only forgets it")
    ] = None
    auto_cleanup_duration: Annotated[
        Optional[int],
        BeforeValidator(parse_idle_duration),
        Field(description="Delete the volume after it is unused this long. Not supported yet: `off` only (delete "
                          "with `dstack volume delete`)"),
    ] = None
    tags: Annotated[
        Optional[Dict[str, str]],
        Field(description="Tags for the volume's cloud resources (GCP labels: lowercased, other characters `-`)"),
    ] = None

    _tags = field_validator("tags", mode="before")(classmethod(lambda cls, v: parse_tags(v)))

    @field_validator("name")
    @classmethod
    def _name(cls, v: Optional[str]) -> Optional[str]:
        return check_name(v)

    @field_validator("size")
    @classmethod
    def _size(cls, v: Optional[Memory]) -> Optional[Memory]:
        if v is not None and (v < 1 or not float(v).is_integer()):
            raise ValueError(f"Invalid size: {v} (a whole number of GB, at least 1GB)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _backend_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("backend"), str):
            return {**data, "backend": data["backend"].lower()}
        return data

    @model_validator(mode="after")
    def _size_or_volume_id(self) -> "VolumeConfiguration":
        if self.volume_id is None and self.size is None:
            raise ValueError("`size` must be set to create a volume (or `volume_id` to register an existing one)")
        if self.availability_zone is not None and not self.availability_zone.startswith(self.region):
            raise ValueError(f"availability_zone {self.availability_zone!r} is not in region {self.region!r}")
        return self

    @property
    def is_external(self) -> bool:
        return self.volume_id is not None
