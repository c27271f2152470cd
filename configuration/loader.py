"""Reads a `*.dstack.yml` file into a configuration model, turning every failure into one readable ConfigurationError.

Messages look like `train.dstack.yml:7: resources.gpu: GPU spec count conflict: A100:2:3` or
`typo.dstack.yml:3: unknown field 'comands' (did you mean 'commands'?)`. No traceback reaches the user. Reading the
file itself, within bounds, is configuration.yaml_input's job.
"""

from __future__ import annotations

import datetime
import difflib
import typing
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from configuration.errors import ConfigurationError
from configuration.fleets import FleetConfiguration
from configuration.models import CONFIGURATION_TYPES, AnyConfiguration, DevEnvironmentConfiguration, TaskConfiguration
from configuration.volumes import VolumeConfiguration
from configuration.yaml_input import parse_yaml, read_text, shorten

MODELS_BY_TYPE = {
    "task": TaskConfiguration,
    "dev-environment": DevEnvironmentConfiguration,
    "fleet": FleetConfiguration,
    "volume": VolumeConfiguration,
}
# dstack's fields of one type written in a file of another: refused as dstack refuses them, saying where they belong
MISPLACED_FIELDS = {
    (DevEnvironmentConfiguration, ("commands",)): (
        "Extra inputs are not permitted: a dev-environment runs `init` (its setup), then waits for you over SSH; "
        "put these commands in `init`, or run them as a job with `type: task`"),
}
MAX_PROBLEMS = 10  # listed in one error; the rest are counted
_ADAPTER: Optional[TypeAdapter] = None


def load_configuration(path: Path):
    """Parse and validate one configuration file."""
    return parse_configuration(read_text(path), source=str(path))


def parse_configuration(text: str, source: str):
    data, root = parse_yaml(text, source)
    if not isinstance(data, dict):
        raise ConfigurationError(f"{source}: expected a mapping of fields at the top (type, commands, ...), "
                                 f"got {_kind(data)}")
    kind = data.get("type")
    if kind is None:
        raise ConfigurationError(f"{source}: missing field 'type' (one of: {', '.join(CONFIGURATION_TYPES)})")
    if not isinstance(kind, str) or kind not in MODELS_BY_TYPE:
        raise ConfigurationError(
            f"{_located(source, root, ('type',))}: type: {_kind(kind)} is not supported "
            f"(allowed: {', '.join(CONFIGURATION_TYPES)})"
        )
    global _ADAPTER
    if _ADAPTER is None:
        _ADAPTER = TypeAdapter(AnyConfiguration)
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as e:
        raise ConfigurationError(describe_validation_error(e, source, MODELS_BY_TYPE[kind], root, skip=1)) from None


def describe_validation_error(
    error: ValidationError, source: str, model: type, root: Optional[yaml.Node] = None, skip: int = 0
) -> str:
    """One line per problem: where (file and line), which field, what is wrong and what is allowed. At most
    MAX_PROBLEMS lines, each cut short: a file may hold thousands of wrong values, some of them huge."""
    lines = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"][skip:])
        # pydantic adds the name of a function validator as a path element; it is not a field
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        field = _path(loc)
        if item["type"] == "extra_forbidden" and (model, loc) in MISPLACED_FIELDS:
            problem = f"{model.model_fields['type'].default}.{field}: {MISPLACED_FIELDS[(model, loc)]}"
        elif item["type"] == "extra_forbidden":
            hint = _did_you_mean(model, loc)
            problem = f"unknown field '{field}'" + (f" (did you mean '{hint}'?)" if hint else "")
        else:
            problem = f"{field or '(top level)'}: {_message(item)}"
        lines.append(f"{_located(source, root, loc)}: {shorten(problem)}")
    lines = list(dict.fromkeys(lines))
    if len(lines) > MAX_PROBLEMS:
        lines[MAX_PROBLEMS:] = [f"... and {len(lines) - MAX_PROBLEMS} more problems"]
    return "\n".join(lines)


def _located(source: str, root: Optional[yaml.Node], loc: Tuple) -> str:
    """`file:line` of the field at `loc`, or the file alone when the line is unknown."""
    line = _line_of(root, loc)
    return f"{source}:{line}" if line else source


def _path(loc: Tuple) -> str:
    """`resources.gpu`, `ports[0]`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _message(item: Dict[str, Any]) -> str:
    message = item["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    value = item.get("input")
    if item["type"] == "missing":
        return "required field is missing"
    if item["type"] == "string_type" and isinstance(value, dict):
        return ("expected a string, got a mapping: quote the whole line (YAML reads a `: ` inside it as a "
                "key and a value)")
    if item["type"] == "string_type" and isinstance(value, (bool, int, float, datetime.date)):
        return (f"expected a string, got {_kind(value)}: quote it (YAML reads unquoted true, 1, 1.5 or "
                "2024-01-31 as values)")
    if item["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of fields, got {_kind(value)}"
    if item["type"] == "list_type":
        return f"expected a list, got {_kind(value)}"
    if item["type"] == "literal_error":
        return f"{_kind(value)} is not allowed; {message[0].lower()}{message[1:]}"
    return message


def _kind(value: Any) -> str:
    """A value quoted in a message: `5`, `'text'` (cut short), or `a list`, `a mapping`."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple, set, frozenset)):
        return "a list"
    if isinstance(value, datetime.date):
        return value.isoformat()
    return "nothing" if value is None else shorten(repr(value), 40)


def _line_of(root: Optional[yaml.Node], loc: Tuple) -> Optional[int]:
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = None
            for key, value in node.value:
                if key.value == part:
                    found = (key, value)
                    break
            if found is None:
                break
            line = found[0].start_mark.line + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _did_you_mean(model: type, loc: Tuple) -> Optional[str]:
    parent = _model_at(model, loc[:-1])
    if parent is None or not loc:
        return None
    candidates = list(parent.model_fields)
    matches = difflib.get_close_matches(str(loc[-1]), candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _model_at(model: type, path: Tuple) -> Optional[type]:
    current: Optional[type] = model
    for part in path:
        if isinstance(part, int):
            continue
        if current is None or part not in current.model_fields:
            return None
        current = _first_model(current.model_fields[part].annotation)
    return current


def _first_model(annotation: Any) -> Optional[type]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _first_model(arg)
        if found is not None:
            return found
    return None
