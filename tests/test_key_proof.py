"""A kept connection's check that its host still holds the key the connection was opened with
(provisioner.host.key_proof): a key exchange of its own, made without paramiko's Transport, that accepts the host's
signature by that key over this exchange and nothing less; a host that does not speak it is asked by paramiko."""

import io
import socket
import threading

import paramiko
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from provisioner.host.key_proof import ProofFailed, host_proves_key, served_key_differs
from provisioner.host.ssh import SSHTarget, connect


def ed25519_key() -> paramiko.Ed25519Key:
    text = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()
    return paramiko.Ed25519Key.from_private_key(io.StringIO(text))


def public(key):
    """The key's public half, as a connection's get_remote_server_key() gives it (what the proof is checked with)."""
    return paramiko.PKey.from_type_string(key.get_name(), key.asbytes())


KEYS = {"ed25519": ed25519_key, "ecdsa": lambda: paramiko.ECDSAKey.generate(),
        "rsa": lambda: paramiko.RSAKey.generate(2048)}


class Impostor:
    """A server key that shows one key's public half and signs with another's private half: a host that replays the
    key a client expects without holding it."""

    def __init__(self, holds, shows):
        self.holds, self.shows = holds, shows

    def get_name(self) -> str:
        return self.shows.get_name()

    def asbytes(self) -> bytes:
        return self.shows.asbytes()

    def sign_ssh_data(self, data, algorithm=None):
        return self.holds.sign_ssh_data(data, algorithm)

    def can_sign(self) -> bool:
        return True


@pytest.fixture
def paramiko_server():
    """An SSH server (paramiko's, on one end of a socket pair) serving the key given: the other end, for the proof."""
    servers = []

    def serve(key, kex=None) -> socket.socket:
        ours, theirs = socket.socketpair()
        server = paramiko.Transport(theirs)
        server.add_server_key(key)
        if kex is not None:
            server.get_security_options().kex = kex
        server.start_server(event=threading.Event(), server=paramiko.ServerInterface())
        servers.append((server, ours))
        return ours

    yield serve
    for server, ours in servers:
        ours.close()
        server.close()


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_a_host_proves_the_key_it_holds_and_no_other(paramiko_server, kind):
    key, other = KEYS[kind](), KEYS[kind]()
    assert host_proves_key(paramiko_server(key), public(key), timeout=10) is True
    assert host_proves_key(paramiko_server(key), public(other), timeout=10) is False  # another key of that type


def test_a_host_that_shows_a_key_it_does_not_hold_is_refused(paramiko_server):
    expected = ed25519_key()
    with pytest.raises(ProofFailed, match="signature .*does not verify"):
        host_proves_key(paramiko_server(Impostor(holds=ed25519_key(), shows=expected)), public(expected), timeout=10)


def test_a_host_without_curve25519_or_the_keys_type_is_left_to_paramiko(paramiko_server):
    key = ed25519_key()
    assert host_proves_key(paramiko_server(key, kex=["diffie-hellman-group14-sha256"]), public(key), timeout=10) is None
    assert host_proves_key(paramiko_server(paramiko.ECDSAKey.generate()), public(key), timeout=10) is None


def test_a_host_that_says_nothing_times_out():
    ours, theirs = socket.socketpair()
    with ours, theirs, pytest.raises(socket.timeout):
        host_proves_key(ours, ed25519_key(), timeout=0.2)


def test_the_check_of_a_kept_connection_makes_no_paramiko_transport(make_host, client_key, monkeypatch):
    """The check runs in the caller's thread (no Transport, no thread of paramiko's): a host that still serves the
    key passes it, and once it serves another it fails."""
    host = make_host()
    connection = connect(SSHTarget(host.address, identity_file=client_key[0], host_key=host.host_public_key), 10)
    try:
        def no_transport(*_args, **_kwargs):
            raise OSError("paramiko.Transport made")

        monkeypatch.setattr(paramiko, "Transport", no_transport)
        assert served_key_differs(connection) is None
        host.stop_sshd()  # the connection outlives its listener, as on a host reinstalled behind it
        host.new_host_key()
        host.start_sshd()
        assert served_key_differs(connection) == "the host serves another key now"
    finally:
        connection.close()


def test_a_host_without_curve25519_is_checked_by_paramikos_exchange(make_host, client_key):
    host = make_host()
    config = host.dir / "sshd_config"
    host.stop_sshd()
    config.write_text(config.read_text() + "KexAlgorithms diffie-hellman-group14-sha256\n")
    host.start_sshd()
    connection = connect(SSHTarget(host.address, identity_file=client_key[0], host_key=host.host_public_key), 10)
    try:
        assert served_key_differs(connection) is None
        host.stop_sshd()
        host.new_host_key()
        host.start_sshd()
        assert served_key_differs(connection) == "the host serves another key now"
    finally:
        connection.close()


def test_the_shared_secret_is_hashed_as_paramiko_hashes_it():
    """The exchange hash covers the X25519 secret as an mpint (RFC 8731): no leading zero bytes, one zero byte before
    a set top bit, as paramiko's Message.add_mpint writes the number."""
    from provisioner.host.key_proof import _mpint

    for secret in (bytes(31) + b"\x01", b"\x80" + bytes(31), b"\x00\x80" + bytes(30), b"\x7f" + b"\xff" * 31):
        expected = paramiko.Message()
        expected.add_mpint(int.from_bytes(secret, "big"))
        assert _mpint(secret) == expected.asbytes(), secret.hex()
