"""The working tree sent to the host: what git would commit (.gitignore respected), within the size limit."""

import io
import subprocess
import tarfile

import pytest

from configuration.errors import ConfigurationError
from provisioner.repo_archive import pack, repo_root


def names(archive: bytes):
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: m.mode for m in tar.getmembers()}


def test_git_repo_respects_gitignore(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("data/\n*.ckpt\n")
    (tmp_path / "train.py").write_text("print(1)")
    (tmp_path / "model.ckpt").write_bytes(b"x" * 10)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.bin").write_bytes(b"x")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "lib.py").write_text("")
    assert repo_root(tmp_path / "src") == tmp_path
    archive = names(pack(tmp_path, {"job.sh": (b"#!/bin/sh\n", 0o700), "env": (b"A=1\n", 0o600)}))
    assert set(archive) == {"job.sh", "env", "repo/.gitignore", "repo/train.py", "repo/src/lib.py"}
    assert archive["env"] == 0o600 and archive["job.sh"] == 0o700


def test_plain_folder_skips_caches_and_enforces_the_limit(tmp_path):
    (tmp_path / "a.py").write_text("x")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.pyc").write_bytes(b"x")
    assert set(names(pack(tmp_path, {}))) == {"repo/a.py"}
    (tmp_path / "big.bin").write_bytes(b"x" * (2 * 1024 * 1024))
    with pytest.raises(ConfigurationError, match="is over 1 MB"):
        pack(tmp_path, {}, limit_mb=1)
