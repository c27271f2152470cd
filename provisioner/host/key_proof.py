"""Whether a kept connection's host still serves the key the connection was opened with (served_key_differs): how a
keeper (provisioner.host.keeper) learns it before each command's use. The host proves it by a key exchange of its
own, nothing trusted and no login: curve25519-sha256 (RFC 8731) made here, in the calling thread, up to the host's
signature over it (host_proves_key), or paramiko's own exchange for a host that does not speak it (served_host_key).

paramiko's Transport made every check before: a thread of its own, every algorithm it knows negotiated, the session
keys derived and switched on for a connection closed at once: ~2.8 ms of CPU per check (half of what a keeper spent
on a node's start) against ~0.7 ms here. The proof is the one paramiko checks: the host signs the exchange hash,
which covers this exchange's own fresh X25519 value, with the private half of the key compared; the signature is
verified with that key (the one the connection was opened with, never one the host sends).
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import time
from typing import Optional, Tuple

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from provisioner.host.ssh import SSHTarget, SSHTransport, _why

KEX_ALGORITHMS = (b"curve25519-sha256", b"curve25519-sha256@libssh.org")
OUR_VERSION = b"SSH-2.0-dstack_keycheck"
MAX_PACKET = 256 * 1024  # as OpenSSH's own limit
MAX_BANNER_LINES = 100  # lines a server may send before its version (RFC 4253 4.2), as paramiko reads them
_KEXINIT, _KEX_ECDH_INIT, _KEX_ECDH_REPLY = 20, 30, 31
_DISCONNECT, _IGNORE, _UNIMPLEMENTED, _DEBUG = 1, 2, 3, 4


class ProofFailed(Exception):
    """The host broke off the exchange, spoke nonsense, or signed it with a key it does not hold."""


def host_key_algorithms(key_name: str) -> Tuple[bytes, ...]:
    """The host key algorithms asked for a key of `key_name` (as paramiko's get_name() says it): an RSA key is asked
    to sign with SHA-2, as paramiko's own connect asks it."""
    if key_name == "ssh-rsa":
        return (b"rsa-sha2-512", b"rsa-sha2-256")
    return (key_name.encode(),)


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _mpint(value: bytes) -> bytes:
    """An unsigned big-endian number as SSH's mpint (no leading zeros, a zero byte before a set top bit)."""
    value = value.lstrip(b"\0")
    return _string(b"\0" + value if value and value[0] & 0x80 else value)


class _Reader:
    """The fields of one message, in order; a message too short for what is read is the host's nonsense."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise ProofFailed("a truncated message")
        part = self.data[self.at:self.at + size]
        self.at += size
        return part

    def string(self) -> bytes:
        return self.take(struct.unpack(">I", self.take(4))[0])

    def names(self) -> list:
        return self.string().split(b",")


class _Wire:
    """The unencrypted start of an SSH connection (RFC 4253 4.2, 6): the version line, then packets."""

    def __init__(self, sock, deadline: float):
        self.sock, self.deadline, self.buffer = sock, deadline, bytearray()

    def _more(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the host closed the connection")
        self.buffer += chunk

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._more()
        part = bytes(self.buffer[:size])
        del self.buffer[:size]
        return part

    def version(self) -> bytes:
        """The host's version line (what the exchange hash covers: no CR LF), after the lines a server may send
        before it."""
        for _ in range(MAX_BANNER_LINES):
            while b"\n" not in self.buffer:
                if len(self.buffer) > 8192:
                    raise ProofFailed("no SSH version line")
                self._more()
            line = self._take(self.buffer.index(b"\n") + 1).rstrip(b"\r\n")
            if line.startswith(b"SSH-"):
                if not line.startswith((b"SSH-2.0-", b"SSH-1.99-")):
                    raise ProofFailed(f"an SSH version this does not speak ({line[:40]!r})")
                return line
        raise ProofFailed("no SSH version line")

    def send(self, payload: bytes) -> None:
        padding = 8 - (5 + len(payload)) % 8
        padding += 8 if padding < 4 else 0
        self.sock.sendall(struct.pack(">IB", 1 + len(payload) + padding, padding) + payload + os.urandom(padding))

    def packet(self) -> bytes:
        """The next message's payload that is not one to be passed over (ignore, debug, unimplemented)."""
        while True:
            size, padding = struct.unpack(">IB", self._take(5))
            if size > MAX_PACKET or padding >= size:
                raise ProofFailed("a malformed packet")
            payload = self._take(size - 1)[:size - 1 - padding]
            if not payload:
                raise ProofFailed("an empty packet")
            if payload[0] == _DISCONNECT:
                reader = _Reader(payload[1:])
                reader.take(4)
                raise ProofFailed(f"the host disconnected: {reader.string().decode(errors='replace')}")
            if payload[0] not in (_IGNORE, _DEBUG, _UNIMPLEMENTED):
                return payload


def _kexinit(kex: Tuple[bytes, ...], host_key: Tuple[bytes, ...], theirs: list) -> bytes:
    """Our KEXINIT: our key exchange and host key algorithms, and for the session's ciphers, MACs and compression
    the host's own lists (never used: the exchange ends at the host's signature, but it must find them agreeable)."""
    fields = [b",".join(kex), b",".join(host_key), *(b",".join(names) for names in theirs[2:8]), b"", b""]
    return bytes([_KEXINIT]) + os.urandom(16) + b"".join(_string(field) for field in fields) + b"\0" + bytes(4)


def _first_common(ours: Tuple[bytes, ...], theirs: list) -> Optional[bytes]:
    """The algorithm RFC 4253 7.1 negotiates: the client's first that the server also has."""
    return next((name for name in ours if name in theirs), None)


def host_proves_key(sock, key, timeout: float) -> Optional[bool]:
    """Whether the host at the other end of `sock` (connected, nothing read yet) holds `key` (a paramiko PKey's public
    half, as a connection's get_remote_server_key() gives it): True where it signed this exchange with it, False
    where it serves another key of that type; None where it does not speak curve25519-sha256 or offers no key of that
    type (ask paramiko then). Raises ProofFailed for a signature that does not verify or a host that breaks off,
    OSError/EOFError for the connection's own failures. `sock` is left open for the caller to close.

    Not the post-quantum exchange paramiko would pick with a recent OpenSSH (mlkem768x25519-sha256): that one keeps a
    session's traffic secret; this exchange carries none, and what it proves rests on the host key's signature alone."""
    wire = _Wire(sock, time.monotonic() + timeout)
    sock.sendall(OUR_VERSION + b"\r\n")
    their_version = wire.version()
    their_init = wire.packet()
    if their_init[0] != _KEXINIT:
        raise ProofFailed(f"message {their_init[0]} before the key exchange")
    fields = _Reader(their_init[17:])
    theirs = [fields.names() for _ in range(10)]
    if fields.take(1) != b"\0":
        return None  # a guessed first exchange packet follows: paramiko knows how to pass over it
    kex = _first_common(KEX_ALGORITHMS, theirs[0])
    host_key_type = _first_common(host_key_algorithms(key.get_name()), theirs[1])
    if kex is None or host_key_type is None:
        return None
    our_init = _kexinit(KEX_ALGORITHMS, host_key_algorithms(key.get_name()), theirs)
    ephemeral = X25519PrivateKey.generate()
    our_value = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    wire.send(our_init)
    wire.send(bytes([_KEX_ECDH_INIT]) + _string(our_value))
    reply = wire.packet()
    if reply[0] != _KEX_ECDH_REPLY:
        raise ProofFailed(f"message {reply[0]} instead of the key exchange's reply")
    fields = _Reader(reply[1:])
    served, their_value, signature = fields.string(), fields.string(), fields.string()
    if served != key.asbytes():
        return False
    try:
        secret = ephemeral.exchange(X25519PublicKey.from_public_bytes(their_value))
    except ValueError as e:  # not 32 bytes, or a point of small order (the secret would be all zeros)
        raise ProofFailed(f"the host's exchange value is unusable ({e})") from None
    if not secret.strip(b"\0"):  # RFC 7748 6.1: whoever gets an all-zero secret aborts
        raise ProofFailed("the host's exchange value is unusable (an all-zero secret)")
    exchange_hash = hashlib.sha256(b"".join(_string(part) for part in (
        OUR_VERSION, their_version, our_init, their_init, served, our_value, their_value)) + _mpint(secret)).digest()
    from paramiko.message import Message

    if _Reader(signature).string() != host_key_type or not key.verify_ssh_sig(exchange_hash, Message(signature)):
        raise ProofFailed(f"the host's signature ({host_key_type.decode(errors='replace')}) does not verify")
    return True


def served_host_key(target: SSHTarget, jump: Optional[SSHTransport] = None, timeout: float = 10.0,
                    key_type: Optional[str] = None):
    """The key the host serves now, from a key exchange of its own (nothing trusted, no login): how a kept connection
    (provisioner.host.keeper) learns, before each use, that the host still has the key it was opened with, where the
    host does not speak the exchange host_proves_key makes.
    `key_type` (as a key's get_name() says it) is asked for first, as a connection that knows the host's key asks
    for that key's type: a host serving several keys answers with the one compared, not with paramiko's favourite."""
    import paramiko

    exchange = paramiko.Transport(_exchange_socket(target, jump, timeout))
    if key_type is not None:
        options = exchange.get_security_options()
        if key_type == "ssh-rsa":  # signed with SHA-2 (rsa-sha2-512 first), as paramiko's own connect asks for it
            key_type = next((name for name in options.key_types if name.startswith("rsa-sha2-")), key_type)
        options.key_types = [key_type] + [name for name in options.key_types if name != key_type]
    try:
        exchange.start_client(timeout=timeout)
        return exchange.get_remote_server_key()
    finally:
        exchange.close()


def _exchange_socket(target: SSHTarget, jump: Optional[SSHTransport], timeout: float):
    """A new connection to the host's sshd, for a key exchange alone (through the proxy's connection where there is
    one)."""
    if jump is not None:
        return jump.transport.open_channel("direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0),
                                           timeout=timeout)
    sock = socket.create_connection((target.hostname, target.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def served_key_differs(connection: SSHTransport, timeout: float = 10.0) -> Optional[str]:
    """Why `connection` may no longer be used, as the host tells (None: it may): the host serves another key now than
    the one the connection was opened with (reinstalled), or did not answer a key exchange (the checks a new
    connection would make, without its login)."""
    import paramiko

    transport = connection.transport
    if transport is None or not transport.is_active():
        return "the connection is gone"
    opened_with = transport.get_remote_server_key()
    deadline = time.monotonic() + timeout
    try:
        sock = _exchange_socket(connection.target, connection.jump, timeout)
        try:
            holds = host_proves_key(sock, opened_with, deadline - time.monotonic())
        finally:
            sock.close()
        if holds is None:  # a host without curve25519-sha256 (or the key's type): paramiko's exchange, all of it
            holds = served_host_key(connection.target, connection.jump, max(1.0, deadline - time.monotonic()),
                                    opened_with.get_name()) == opened_with
    except (OSError, paramiko.SSHException, EOFError, ProofFailed) as e:
        return f"the host did not answer a key exchange: {_why(e)}"
    return None if holds else "the host serves another key now"
