"""Field types shared by the run configurations: ports, env, Python versions, durations, registry auth."""

from __future__ import annotations

import re
from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import Field, SecretStr, field_validator, model_validator

from configuration.resources import StrictModel

SUPPORTED_PYTHON = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")
# `\Z`, not `$`: `$` also matches before a final newline, which a quoted YAML string may hold
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# Run, fleet and volume names: every cloud resource is named after them, and GCP refuses a name ending in `-`.
RUN_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}[a-z0-9]\Z")
NAME_RULE = "2 to 41 lowercase letters, digits and hyphens; starts with a letter, ends with a letter or digit"
# A host name or address (`10.0.0.1`, `gpu-1.example.com`, `fe80::1%eth0`) and a login name: they reach SSH, logs and
# tables, so no spaces, control characters, markup brackets or a leading `-` (an option to a command line).
HOSTNAME = re.compile(r"^[A-Za-z0-9:][A-Za-z0-9_.:%-]{0,252}\Z")
LOGIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@$-]{0,63}\Z")


def check_name(value: Optional[str]) -> Optional[str]:
    """A run's, fleet's or volume's name, as RUN_NAME allows it."""
    if value is not None and not RUN_NAME.match(value):
        raise ValueError(f"Invalid name: {value!r} ({NAME_RULE})")
    return value


def check_pattern(value: Optional[str], pattern: re.Pattern, what: str) -> Optional[str]:
    if value is not None and not pattern.match(value):
        raise ValueError(f"Invalid {what}: {value!r}")
    return value


def parse_python_version(v: Any) -> str:
    """`"3.11"` or an unquoted YAML `3.11`; the float `3.1` can only mean 3.10 (there is no 3.1 to ask for)."""
    if isinstance(v, bool):
        raise ValueError(f"Invalid Python version: {v}")
    if isinstance(v, float):
        text = repr(v)
        if text == "3.1":
            text = "3.10"
    elif isinstance(v, (int, str)):
        text = str(v).strip()
    else:
        raise ValueError(f"Invalid Python version: {v!r}")
    if text not in SUPPORTED_PYTHON:
        raise ValueError(f"Unsupported Python version: {text} (allowed: {', '.join(SUPPORTED_PYTHON)})")
    return text


class PortMapping(StrictModel):
    """`8080` (the same port on both sides), `"8080:80"` (local:remote) or `"*:8080"` (any free local port)."""

    local_port: Optional[int] = Field(default=None, ge=1, le=65535)
    container_port: int = Field(ge=1, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"Invalid port: {v}")
        if isinstance(v, int):
            return {"local_port": v, "container_port": v}
        if isinstance(v, str):
            text = v.strip()
            if "-" in text or ".." in text:
                raise ValueError(f"Invalid port: {v!r} (port ranges are not supported; list each port)")
            local, sep, remote = text.partition(":")
            if not sep:
                local = remote = text
            if not remote.isdigit() or not (local == "*" or local.isdigit()):
                raise ValueError(f"Invalid port: {v!r} (expected PORT, LOCAL:REMOTE or *:REMOTE, each 1..65535)")
            return {"local_port": None if local == "*" else int(local), "container_port": int(remote)}
        return v


class RegistryAuth(StrictModel):
    """Credentials for a private image registry. Write the password as `${{ secrets.NAME }}` to keep it out of the file."""

    username: Annotated[str, Field(description="The username")]
    password: Annotated[SecretStr, Field(description="The password or access token")]


class RetryPolicy(StrictModel):
    on_events: Annotated[
        List[Literal["no-capacity", "interruption", "error"]],
        Field(description="The events that trigger a retry: `no-capacity`, `interruption`, `error`"),
    ] = ["no-capacity", "interruption", "error"]
    duration: Annotated[
        Optional[int], Field(description="How long to keep retrying (e.g. `1h`, `30m`, seconds)")
    ] = None

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)


_DURATION = re.compile(r"^(\d+)\s*([smhdw]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(v: Any) -> int:
    """`"2h"`, `"30m"`, `"1d"`, `"90s"` or a number of seconds, to seconds."""
    if isinstance(v, bool):
        raise ValueError(f"Invalid duration: {v}")
    if isinstance(v, int):
        if v < 0:
            raise ValueError(f"Invalid duration: {v} (must not be negative)")
        return v
    if isinstance(v, str):
        match = _DURATION.match(v.strip().lower())
        if match:
            return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"Invalid duration: {v!r} (expected e.g. 90s, 30m, 2h, 1d, or a number of seconds)")


def parse_off_duration(v: Any) -> Any:
    """A duration that can be switched off: `off` or `false` -> "off"; `true` or nothing -> None (the default)."""
    if v == "off" or v is False:
        return "off"
    if v is True or v is None:
        return None
    return parse_duration(v)


def parse_idle_duration(v: Any) -> Any:
    """As dstack: `off`, `false` and any negative number mean off (-1); `true` means the default (None)."""
    if v == "off" or v is False:
        return -1
    if v is True or v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool) and v < 0:
        return v
    return parse_duration(v)


def parse_env(v: Any) -> Dict[str, Optional[str]]:
    """A list of `NAME=VALUE` or bare `NAME`, or a mapping. A bare name (value None) is taken from the caller's
    environment when the run is submitted."""
    if v is None:
        return {}
    items: List[tuple] = []
    if isinstance(v, dict):
        for name, value in v.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (int, float)):
                value = str(value)
            elif value is not None and not isinstance(value, str):
                raise ValueError(f"Invalid value of env {name!r}: expected a string, got {type(value).__name__}")
            items.append((str(name), value))
    elif isinstance(v, list):
        for entry in v:
            if not isinstance(entry, str):
                raise ValueError(f"Invalid env entry: {entry!r} (expected NAME or NAME=VALUE)")
            name, sep, value = entry.partition("=")
            items.append((name.strip(), value if sep else None))
    else:
        raise ValueError("env must be a list of NAME or NAME=VALUE, or a mapping")
    env: Dict[str, Optional[str]] = {}
    for name, value in items:
        if not ENV_NAME.match(name):
            raise ValueError(f"Invalid env name: {name!r} (letters, digits and _, not starting with a digit)")
        if name in env:
            raise ValueError(f"Duplicate env name: {name}")
        env[name] = value
    return env


SpotPolicy = Literal["spot", "on-demand", "auto"]
BackendName = Literal["aws", "gcp", "ssh", "local"]
MaxDuration = Union[int, Literal["off"]]


# A Docker-style user: `name`, `uid`, `name:group`, `uid:gid`.
UNIX_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?\Z")
# Tags reach every cloud resource: AWS's rules, which GCP labels are made from (stacks.spec).
TAG_KEY = re.compile(r"^[_\-a-zA-Z0-9]{1,60}\Z")
TAG_VALUE = re.compile(r"^[a-zA-Z0-9 .:/=_\-+@]{0,256}\Z")


def parse_user(v: Any) -> Any:
    if v is None:
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str) or not UNIX_USER.match(v):
        raise ValueError(f"Invalid user: {v!r} (expected USER or USER:GROUP, names or numeric ids)")
    return v


def parse_shell(v: Any) -> Any:
    if v is None or v in ("sh", "bash"):
        return v
    if isinstance(v, str) and v.startswith("/") and not any(c.isspace() for c in v):
        return v
    raise ValueError(f"Invalid shell: {v!r} (expected `sh`, `bash` or an absolute path such as /usr/bin/zsh)")


def parse_tags(v: Any) -> Any:
    if v is None:
        return v
    if not isinstance(v, dict):
        raise ValueError("tags must be a mapping of NAME: VALUE")
    tags = {}
    for key, value in v.items():
        if not isinstance(value, str):
            raise ValueError(f"Invalid value of tag {key!r}: expected a string (quote it)")
        key = str(key)
        if not TAG_KEY.match(key):
            raise ValueError(f"Invalid tag name {key!r} (1 to 60 letters, digits, `_` and `-`)")
        if not TAG_VALUE.match(value):
            raise ValueError(f"Invalid value of tag {key!r}: {value!r} (up to 256 letters, digits, spaces and "
                             "`.:/=_-+@`)")
        tags[key] = value
    return tags
