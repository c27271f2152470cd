"""The secrets store: `$DSTACK_HOME/secrets.yml`, a mapping NAME: value, mode 0600, read by `${{ secrets.NAME }}`
(configuration.interpolation) and changed by `dstack secret`.

A change reads, edits and replaces the store under an exclusive lock (`secrets.lock` beside it), so that changes
made at once never undo each other: each `dstack secret set` or `delete` that reports success is kept. The new store
is a 0600 temporary file, synced, that replaces the old one, so a crash leaves the old store or the new one, never
half of either, and readers (which take no lock) see one or the other."""

from __future__ import annotations

import errno
import fcntl
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator

import yaml

from configuration.errors import ConfigurationError, DstackError
from configuration.home import dstack_home, private_dir
from configuration.yaml_input import load_yaml_file

SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")  # what `${{ secrets.NAME }}` can name
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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


@contextmanager
def editing_secrets() -> Iterator[Dict[str, str]]:
    """The stored secrets, to change in the block; written back when it ends without an error, all under the lock."""
    path = secrets_path()
    with _reported(path):
        private_dir(path.parent)
        lock = os.open(path.with_name("secrets.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        secrets = read_secrets()
        yield secrets
        with _reported(path):
            _replace(path, secrets)
    finally:
        os.close(lock)


@contextmanager
def _reported(path: Path) -> Iterator[None]:
    """An OSError while writing the store becomes one line that says what to do (a full disk above all)."""
    try:
        yield
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise DstackError(f"cannot write {path}: the disk is full; free some space on it and run the command "
                              "again") from None
        raise DstackError(f"cannot write {path}: {e.strerror or e}") from None


def _replace(path: Path, secrets: Dict[str, str]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            yaml.safe_dump(dict(sorted(secrets.items())), out, default_flow_style=False, allow_unicode=True)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
