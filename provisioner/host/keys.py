"""SSH key pairs that dstack makes: a run's or a fleet's login key, a cluster's key between its nodes (ed25519, made
as a VM's host key is: stacks.spec.generate_host_key); and a key sealed with the team key for a team database
(docs/teams.md): AES-256-GCM under a key derived from the team key with scrypt, a salt and nonce of its own each."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from typing import Optional, Tuple

from configuration.home import private_file
from stacks.spec import HostKey, generate_host_key


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


def kept_key(path: Path, comment: str) -> str:
    """generate_key's public key, of the key already at `path` when there is one (a cloud fleet's login key: its
    stack's next `up` must see the same key, else its key pair and every instance would be replaced)."""
    if path.exists() and path.stat().st_size:
        return f"{kept_host_key(path).public_openssh} {comment}"
    return generate_key(path, comment)


def kept_host_key(path: Path) -> HostKey:
    """The ed25519 key at `path` (0600), made there first when absent: a cloud fleet's instance keeps its host key
    across its stack's `up`s, whose user data holds it."""
    from cryptography.hazmat.primitives import serialization

    if not (path.exists() and path.stat().st_size):
        key = generate_host_key()
        private_file(path).write_text(key.private_openssh)
        return key
    private = path.read_text()
    loaded = serialization.load_ssh_private_key(private.encode(), None)
    public = loaded.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                              serialization.PublicFormat.OpenSSH).decode()
    return HostKey(private, public)


_SEALED = "dstack-sealed-v1:"
HOME_KEYS = (("runs", "id_ed25519"), ("runs", "ssh_key"), ("fleets", "id_ed25519"))  # (folder, file) of each key
# dstack makes under $DSTACK_HOME: a cloud run's login key, a dev environment's key, a cloud fleet's login key; and
# a cloud fleet's instances' host keys, `fleets/NAME/host-N`


def home_key_name(path) -> Optional[str]:
    """A key dstack made under some `$DSTACK_HOME` by its place there (`runs/NAME/id_ed25519`), from the path's last
    three parts (another laptop's home has another root); None for any other file, such as a user's own key."""
    parts = Path(path).parts[-3:]
    if len(parts) < 3 or parts[1] in ("", ".", ".."):
        return None
    folder, _, file = parts
    if (folder, file) in HOME_KEYS or (folder == "fleets" and re.fullmatch(r"host-[0-9]+", file)):
        return "/".join(parts)
    return None


def _team_cipher(team_key: str, salt: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return AESGCM(Scrypt(salt=salt, length=32, n=2 ** 14, r=8, p=1).derive(team_key.encode()))


def seal(secret: bytes, team_key: str) -> str:
    """`secret` encrypted with the team key, as text the store keeps."""
    salt, nonce = os.urandom(16), os.urandom(12)
    sealed = _team_cipher(team_key, salt).encrypt(nonce, secret, _SEALED.encode())
    return _SEALED + base64.b64encode(salt + nonce + sealed).decode()


def unseal(text: str, team_key: str) -> bytes:
    """The secret `seal` sealed; ValueError when `team_key` is not the one it was sealed with (or the text is not
    sealed text)."""
    from cryptography.exceptions import InvalidTag

    if not text.startswith(_SEALED):
        raise ValueError("not sealed by dstack")
    try:
        raw = base64.b64decode(text[len(_SEALED):], validate=True)
        return _team_cipher(team_key, raw[:16]).decrypt(raw[16:28], raw[28:], _SEALED.encode())
    except (InvalidTag, ValueError):
        raise ValueError("sealed with another team key") from None
