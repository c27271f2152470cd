"""Reads a `*.dstack.yml` file into a configuration model, turning every failure into one readable ConfigurationError.

Messages look like `train.dstack.yml:7: resources.gpu: GPU spec count conflict: A100:2:3` or
`typo.dstack.yml:3: unknown field 'comands' (did you mean 'commands'?)`. No traceback reaches the user.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from configuration.errors import ConfigurationError
from configuration.models import (
    CONFIGURATION_TYPES,
    AnyConfiguration,
    DevEnvironmentConfiguration,
    FleetConfiguration,
    TaskConfiguration,
)

MODELS_BY_TYPE = {
    "task": TaskConfiguration,
    "dev-environment": DevEnvironmentConfiguration,
    "fleet": FleetConfiguration,
}
_ADAPTER: Optional[TypeAdapter] = None


def load_configuration(path: Path):
    """Parse and validate one configuration file."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigurationError(f"{path}: cannot read the file: {e.strerror}") from None
    return parse_configuration(text, source=str(path))


def parse_configuration(text: str, source: str):
    data, root = read_yaml(text, source)
    if not isinstance(data, dict):
        raise ConfigurationError(f"{source}: expected a mapping of fields at the top (type, commands, ...)")
    kind = data.get("type")
    if kind is None:
        raise ConfigurationError(f"{source}: missing field 'type' (one of: {', '.join(CONFIGURATION_TYPES)})")
    if kind not in MODELS_BY_TYPE:
        raise ConfigurationError(
            f"{source}: type: {kind!r} is not supported (allowed: {', '.join(CONFIGURATION_TYPES)})"
        )
    global _ADAPTER
    if _ADAPTER is None:
        _ADAPTER = TypeAdapter(AnyConfiguration)
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as e:
        raise ConfigurationError(describe_validation_error(e, source, MODELS_BY_TYPE[kind], root, skip=1)) from None


def read_yaml(text: str, source: str) -> Tuple[Any, Optional[yaml.Node]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigurationError(f"{where}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigurationError(f"{source}: YAML syntax error: {e}") from None
    finally:
        loader.dispose()
    return data, node


def describe_validation_error(
    error: ValidationError, source: str, model: type, root: Optional[yaml.Node] = None, skip: int = 0
) -> str:
    """One line per problem: where (file and line), which field, what is wrong and what is allowed."""
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"][skip:])
        # pydantic adds the name of a function validator as a path element; it is not a field
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        where = source
        line = _line_of(root, loc)
        if line:
            where = f"{source}:{line}"
        field = _path(loc)
        if item["type"] == "extra_forbidden":
            hint = _did_you_mean(model, loc)
            lines.append(f"{where}: unknown field '{field}'" + (f" (did you mean '{hint}'?)" if hint else ""))
            continue
        lines.append(f"{where}: {field or '(top level)'}: {_message(item)}")
    return "\n".join(dict.fromkeys(lines))


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
    if item["type"] == "missing":
        return "required field is missing"
    if item["type"] == "string_type" and isinstance(item.get("input"), dict):
        return ("expected a string, got a mapping: quote the whole line (YAML reads a `: ` inside it as a "
                "key and a value)")
    if item["type"] == "string_type" and isinstance(item.get("input"), (bool, int, float)):
        return f"expected a string, got {item['input']!r}: quote it (YAML reads unquoted true, 1 or 1.5 as values)"
    if item["type"] == "literal_error":
        return f"{item['input']!r} is not allowed; {message[0].lower()}{message[1:]}"
    return message


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
