"""JSON Schema and the Markdown reference page, both generated from the models so the docs cannot drift.

`docs/reference/task.md` is the output of `dstack schema --markdown`; a test compares the two.
"""

from __future__ import annotations

import json
import typing
from typing import Any, List

from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from configuration import yaml_input
from configuration.fields import RegistryAuth, RetryPolicy
from configuration.fleets import FleetConfiguration
from configuration.models import (
    AnyConfiguration,
    DevEnvironmentConfiguration,
    TaskConfiguration,
)
from configuration.policies import (
    InstanceMountPoint,
    NodeGroup,
    Schedule,
    UtilizationPolicy,
    VolumeMountPoint,
)
from configuration.resources import CPUSpec, DiskSpec, GPUSpec, ResourcesSpec
from configuration.volumes import VolumeConfiguration

SECTIONS = (
    ("task", TaskConfiguration, "The root of a `type: task` file."),
    ("resources", ResourcesSpec, "What the run needs. Every field takes the short string form shown."),
    ("resources.cpu", CPUSpec, "`cpu: 16..`, `cpu: x86:8`, `cpu: 2..:arm`, or this mapping."),
    ("resources.gpu", GPUSpec, "`gpu: A100:2`, `gpu: 40GB..80GB:4`, `gpu: nvidia:24GB..:1..2`, `gpu: A10,A10G`, "
                               "or this mapping. Tokens are separated by `:` and may come in any order: a vendor, "
                               "names (comma-separated), a memory with its unit, a count. A bare number is a count. "
                               "GCP TPUs by slice: `gpu: v5litepod-8`, `tpu-v3-2048` (the `tpu-` prefix is dropped), "
                               "`google:v3-64`, `tpu:v5p-1024`, `v5litepod-64:TPU`, or `vendor: tpu` (offered only "
                               "when a TPU or its vendor is named; one accelerator, the whole slice); a slice of N "
                               "hosts runs one job per host: `nodes: N` (docs/offers.md)."),
    ("resources.disk", DiskSpec, "`disk: 500GB`, `disk: 200GB..`, or this mapping."),
    ("registry_auth", RegistryAuth, "Credentials for a private registry."),
    ("retry", RetryPolicy, "`retry: true` retries on every event for the default duration."),
    ("utilization_policy", UtilizationPolicy, "Stops a run whose GPUs idle (see docs/runs.md)."),
    ("schedule", Schedule, "`cron: \"0 8 * * mon-fri\"` or a list: minute hour day month weekday, in UTC. Parsed; "
                           "refused at plan time until scheduled runs land."),
    ("volumes[] (volume)", VolumeMountPoint, "`volumes: [NAME:/path]` or this mapping: a network volume (see "
                                             "docs/runs.md, Volumes)."),
    ("volumes[] (host folder)", InstanceMountPoint, "`volumes: [/host/path:/path]` or this mapping: a folder of the "
                                                    "host (an instance volume)."),
    ("groups[]", NodeGroup, "One group of a heterogeneous multi-node task: its nodes take their own offer (on one SSH "
                            "fleet, or one cloud stack in one zone) and run its commands. Top-level `resources` is "
                            "not inherited (see docs/runs.md, Node groups)."),
    ("dev-environment", DevEnvironmentConfiguration, "The root of a `type: dev-environment` file."),
    ("fleet", FleetConfiguration, "The root of a `type: fleet` file (hosts you own, reached over SSH)."),
    ("volume", VolumeConfiguration, "The root of a `type: volume` file: a network volume (an EBS volume, a GCP "
                                    "persistent disk)."),
)


def json_schema() -> dict:
    return TypeAdapter(AnyConfiguration).json_schema()


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " or ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (list, List):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if origin is typing.Annotated:
        return _type_name(args[0])
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "range" if annotation.__name__.startswith("Range") else "mapping"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "Memory": "size",
                "SecretStr": "string (secret)", "ComputeCapability": "version"}.get(annotation.__name__,
                                                                                     annotation.__name__)
    return str(annotation)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if value is None or value == [] or value == {}:
        return ""
    if isinstance(value, BaseModel):
        return f"`{value}`" if type(value).__str__ is not BaseModel.__str__ else "see below"
    return f"`{json.dumps(value) if not isinstance(value, str) else value}`"


def markdown_reference() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the models by `dstack schema --markdown`; do not edit by hand.",
        "Sizes are in GB (GiB, as dstack means it) and accept `MB`, `GB`, `TB`; ranges are `MIN..MAX`, `MIN..`, `..MAX`",
        "or a single value. Unknown fields are errors.",
        "",
    ]
    for title, model, intro in SECTIONS:
        lines += [f"## {title}", "", intro, "", "| field | type | default | description |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            description = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {description} |")
        lines.append("")
    return "\n".join(lines + _limits())


def _limits() -> List[str]:
    """The bounds of configuration.yaml_input, which apply to `config.yml` and `secrets.yml` too."""
    return [
        "## Limits",
        "",
        "A configuration file (and `$DSTACK_HOME/config.yml`, `$DSTACK_HOME/secrets.yml`) must be UTF-8 text, a UTF-8",
        "byte-order mark allowed; other encodings (UTF-16, Latin-1) and control characters are refused. Bounds far",
        "above any real configuration keep a damaged or hostile file from costing more than a second:",
        "",
        "| what | at most |",
        "| --- | --- |",
        f"| file size | {yaml_input.MAX_FILE_BYTES // 1024 // 1024} MiB (no more is read: `-f /dev/zero` is refused) |",
        f"| values, with YAML aliases (`*name`) expanded | {yaml_input.MAX_VALUES:,} |",
        f"| nesting depth of lists and mappings | {yaml_input.MAX_DEPTH} |",
        f"| digits of an integer | {yaml_input.MAX_NUMBER_LENGTH} (quote longer ones as text) |",
        "",
        "Mapping keys must be strings, and an alias may not refer to a value that contains it. `max_price` and",
        "`--max-price` take positive, finite numbers only (`nan`, `inf` and `1e400` are refused). A fleet's host names",
        "take letters, digits and `.-_:%`, its user names letters, digits and `._@$-`; neither may start with `-`.",
        "",
    ]
