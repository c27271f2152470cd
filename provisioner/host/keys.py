"""SSH key pairs that dstack makes: a run's or a fleet's login key, a cluster's key between its nodes (ed25519, made
as a VM's host key is: stacks.spec.generate_host_key)."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

from configuration.home import private_file
from stacks.spec import generate_host_key


def new_key_pair(comment: str) -> Tuple[bytes, str]:
    """An ed25519 key pair: (the private key in OpenSSH PEM, the public key line with `comment`); made as a VM's
    host key is (stacks.spec.generate_host_key)."""

    key = generate_host_key()
    return key.private_openssh.encode(), f"{key.public_openssh} {comment}"


def generate_key(path: Path, comment: str) -> str:
    """An ed25519 key pair: the private key written to `path` with mode 0600 before it holds anything; returns the
    public key in OpenSSH form."""
    private, public = new_key_pair(comment)
    private_file(path).write_bytes(private)
    return public
