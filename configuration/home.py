"""Where dstack keeps its state: `$DSTACK_HOME`, by default `~/.dstack`.

What dstack creates there is its owner's alone (folders 0700, files 0600): it holds run keys, the state store, host
keys and copies of job output. The modes are given at creation, so nothing is ever readable by others in between; a
folder the user made (an existing `$DSTACK_HOME`, say) keeps the mode it has.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO


def dstack_home() -> Path:
    home = os.environ.get("DSTACK_HOME")
    return Path(home).expanduser() if home else Path.home() / ".dstack"


def private_dir(path: Path) -> Path:
    """Create the folder, and each missing folder above it, with mode 0700; existing folders are left as they are."""
    missing = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:  # another dstack process made it first
            pass
    return path


def private_file(path: Path) -> Path:
    """Create the folder and an empty file readable by its owner only (mode 0600) before anything is written to it."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    return path


def append_private(path: Path) -> BinaryIO:
    """Open a file for appending, creating it (and its folders) readable by its owner only."""
    private_dir(path.parent)
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
