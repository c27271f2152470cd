"""Which configuration a command reads: `-f FILE`, `-f -` (standard input), or `.dstack.yml` in the current folder
when `-f` is not given, as dstack does."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

DEFAULT_FILE = ".dstack.yml"
STDIN = "-"
STDIN_SOURCE = "<stdin>"


def chosen_file(file: Optional[str]) -> str:
    """The `-f` value, or the default file, which must then exist."""
    if file is not None:
        return file
    if not Path(DEFAULT_FILE).is_file():
        from configuration.errors import ConfigurationError

        raise ConfigurationError(f"no {DEFAULT_FILE} in {Path.cwd()}: give the configuration with -f FILE "
                                 "(or -f - to read it from standard input)")
    return DEFAULT_FILE


def source_name(file: str) -> str:
    """How errors and the plan name the configuration."""
    return STDIN_SOURCE if file == STDIN else file


def config_path(file: str) -> Path:
    """The configuration file, whose folder the run's repo and `files` are found from; for standard input, a
    `<stdin>` in the current folder."""
    return (Path.cwd() / STDIN_SOURCE) if file == STDIN else Path(file).resolve()


def load_file(file: str):
    """The configuration model of `file` (`-` reads standard input, within the same bounds as a file)."""
    from configuration.loader import load_configuration, parse_configuration

    if file != STDIN:
        return load_configuration(file)
    from configuration.yaml_input import MAX_FILE_BYTES, decode

    data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        from configuration.errors import ConfigurationError

        raise ConfigurationError(f"{STDIN_SOURCE}: more than {MAX_FILE_BYTES // 1024 // 1024} MiB of input; is it "
                                 "the configuration you meant?")
    return parse_configuration(decode(data, STDIN_SOURCE), STDIN_SOURCE)
