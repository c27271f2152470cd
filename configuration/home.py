"""Where dstack keeps its state: `$DSTACK_HOME`, by default `~/.dstack`."""

import os
from pathlib import Path


def dstack_home() -> Path:
    home = os.environ.get("DSTACK_HOME")
    return Path(home).expanduser() if home else Path.home() / ".dstack"


def private_file(path: Path) -> Path:
    """Create the folder and an empty file readable by its owner only (mode 0600) before anything is written to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    return path
