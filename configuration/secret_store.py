"""The secrets store: `$DSTACK_HOME/secrets.yml`, a mapping NAME: value, mode 0600, read by `${{ secrets.NAME }}`
(configuration.interpolation) and written by `dstack secret`. A write goes to a 0600 temporary file that replaces the
store, so a crash leaves the old store or the new one, never half of either."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict

import yaml

from configuration.errors import ConfigurationError
from configuration.home import dstack_home, private_dir
from configuration.yaml_input import load_yaml_file

SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")  # what `${{ secrets.NAME }}` can name


def secrets_path() -> Path:
    return dstack_home() / "secrets.yml"


def read_secrets() -> Dict[str, str]:
    path = secrets_path()
    if not path.exists():
        return {}
    data = load_yaml_file(path)[0] or {}
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path}: expected a mapping NAME: value")
    return {str(k): str(v) for k, v in data.items() if v is not None}


def check_name(name: str) -> str:
    if not SECRET_NAME.match(name):
        raise ConfigurationError(f"invalid secret name {name!r}: letters, digits and underscores, not starting with "
                                 "a digit (as `${{ secrets.NAME }}` writes it)")
    return name


def write_secrets(secrets: Dict[str, str]) -> None:
    path = secrets_path()
    private_dir(path.parent)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            yaml.safe_dump(dict(sorted(secrets.items())), out, default_flow_style=False, allow_unicode=True)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
