"""The user's working tree, packed for the host: files git would commit (tracked, and untracked but not ignored), or
every file outside a git repository, within a size limit."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Dict, List, Optional

from configuration.errors import ConfigurationError

DEFAULT_LIMIT_MB = 100
SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", "node_modules", ".mypy_cache", ".pytest_cache"}


def _git(*args: str) -> Optional[bytes]:
    """git's output, or None outside a repository or where git is not installed."""
    try:
        done = subprocess.run(["git", *args], capture_output=True)
    except FileNotFoundError:
        return None
    return done.stdout if done.returncode == 0 else None


def repo_root(start: Path) -> Path:
    top = _git("-C", str(start), "rev-parse", "--show-toplevel")
    return Path(top.decode().strip()) if top else start


def _listed_files(root: Path) -> List[str]:
    listed = _git("-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    if listed is not None:
        return [f for f in listed.decode().split("\0") if f and (root / f).is_file()]
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(names):
            files.append(os.path.relpath(os.path.join(folder, name), root))
    return files


def add_bytes(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    archive.addfile(info, io.BytesIO(data))


def pack(root: Optional[Path], extra: Dict[str, tuple], limit_mb: int = DEFAULT_LIMIT_MB) -> bytes:
    """A tar.gz of `extra` ({name: (bytes, mode)}) and, under `repo/`, the working tree at `root`."""
    buffer = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        for name, (data, mode) in extra.items():
            add_bytes(archive, name, data, mode)
        if root is not None:
            for relative in _listed_files(root):
                path = root / relative
                total += path.stat().st_size
                if total > limit_mb * 1024 * 1024:
                    raise ConfigurationError(
                        f"the working tree at {root} is over {limit_mb} MB (files git would commit, .gitignore "
                        "respected); ignore large files in .gitignore, or keep data outside the repository")
                archive.add(str(path), arcname=f"repo/{relative}", recursive=False)
    return buffer.getvalue()
