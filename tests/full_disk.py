"""A small tmpfs to fill: what commands say and keep when the disk holding $DSTACK_HOME is full (needs root)."""

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_disk(tmp_path: Path, size: str = "4m"):
    """Mounts a tmpfs of `size` under tmp_path (skips, or fails under CI, where it cannot); yields its folder and a
    function that fills it to the last byte. Unmounted on the way out."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs: {done.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the full-disk test must run under CI: {reason}")
        pytest.skip(reason)

    def fill() -> None:
        with open(mount / "filler", "ab", buffering=0) as filler:
            for chunk in (1 << 16, 1 << 12, 1):
                try:
                    while True:
                        filler.write(b"\0" * chunk)
                except OSError:
                    pass
        assert os.statvfs(mount).f_bavail == 0

    try:
        yield mount, fill
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
