"""typer coerces every parameter's value through a pydantic TypeAdapter that it builds the first time, even for a
value that is absent or a string that stays a string: building two dozen adapters (and importing pydantic for them)
was a good part of a short command's CPU time (`dstack offers`, `dstack ps`). Here those values pass as they are,
and a whole number in range becomes an int; every other value goes to typer's own coercion, built when first
needed, so its answers and its errors are typer's."""

from __future__ import annotations

import re
from typing import Any, List, Optional, Union, get_args, get_origin

from typer import core
from typer._coercion import build_runtime_param

_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,18}")


def _plain(annotation: Any) -> Optional[Any]:
    """str, int, or List[str] when the annotation is one of them (Optional or not); else None."""
    if get_origin(annotation) is Union:
        kinds = [kind for kind in get_args(annotation) if kind is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else None
    if annotation in (str, int):
        return annotation
    if get_origin(annotation) in (list, List) and get_args(annotation) == (str,):
        return list
    return None


class LazyRuntimeParam:
    """What typer's parameter asks to coerce a value (typer's RuntimeParam interface: `coerce`)."""

    def __init__(self, descriptor):
        self._descriptor = descriptor
        info = descriptor.parameter_info
        plain = _plain(descriptor.annotation) if descriptor.file_annotation is None else None
        self._kind = plain if getattr(info, "parser", None) is None and not descriptor.is_choice else None
        self._min, self._max = getattr(info, "min", None), getattr(info, "max", None)
        self._built = None

    def coerce(self, value: Any, param, ctx) -> Any:
        many = param.multiple or param.nargs == -1
        if value is None:
            return () if many else None
        if not many and self._kind is str and isinstance(value, str):
            return value
        if many and self._kind is list and isinstance(value, (list, tuple)) and all(
                isinstance(item, str) for item in value):
            return list(value)
        if not many and self._kind is int:
            number = value if type(value) is int else (
                int(value) if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value) else None)
            if number is not None and (self._min is None or number >= self._min) and (
                    self._max is None or number <= self._max):
                return number
        if self._built is None:
            self._built = build_runtime_param(self._descriptor)
        return self._built.coerce(value, param=param, ctx=ctx)


def install() -> None:
    """Every typer parameter coerces through LazyRuntimeParam."""
    def get_runtime_param(parameter):
        if parameter._runtime_param is None:
            parameter._runtime_param = LazyRuntimeParam(parameter.type_descriptor)
        return parameter._runtime_param

    core._TyperParameter.get_runtime_param = get_runtime_param
