"""SSH to a host with paramiko: retries until sshd answers, strict host keys, one connection reused for every step.

- Host keys: a key known in advance (a cloud VM whose host key the run generated) is the only one accepted; a fleet
  host's key is recorded in `$DSTACK_HOME/known_hosts` (0600) when the user confirms its fingerprint at fleet
  registration (`scan_host_key`, `record_host_keys`), and a connection to a host whose key is not recorded, or
  differs, is refused: nothing is trusted on first use.
- Latency: paramiko leaves Nagle's algorithm on, so each request/response waits ~40 ms on delayed ACKs; the socket
  is opened here with TCP_NODELAY, which brings a command on an open connection to ~2 ms.
- Each connection's shells and exec channels start through the user's login shell on the host (bash reads .bashrc
  when sshd starts it: 0.1-0.5 s where it runs `pyenv init`); a job's archive (small stdin) therefore goes through the
  long-lived shell as base64 (SHELL_STDIN_MAX), and only a large one opens a channel of its own.
- A dead peer: SSH keep-alives and TCP keep-alives every few seconds, and TCP_USER_TIMEOUT, so a connection to a
  host that vanished breaks within provisioner.host.liveness's bounds instead of TCP's ~15 minutes; every attempt of a
  connect gets at most the time left. paramiko's own log (a traceback per failed attempt) never reaches the
  terminal: the failure reaches the caller as a TransportError.
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import re
import secrets
import select
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from configuration.errors import ConfigurationError
from provisioner.host.known_hosts import describe_key, host_key_name, known_hosts_path, recorded_host_keys
from provisioner.host.liveness import Liveness, liveness
from provisioner.host.transport import CommandResult, Stdin, TransportError

# paramiko logs each failure of its transport thread at ERROR with a traceback ("Exception (client): ..."), which
# Python's last-resort handler prints on stderr; the same failure reaches the caller as an exception anyway.
_paramiko_log = logging.getLogger("paramiko")
_paramiko_log.addHandler(logging.NullHandler())
_paramiko_log.propagate = False

_EMPTY_ERRORS = {EOFError: "the connection closed", TimeoutError: "timed out"}


def _why(error: BaseException) -> str:
    """An exception's message for a person: its text, never a bare class name."""
    return str(error) or _EMPTY_ERRORS.get(type(error), "the connection failed")


@dataclass(frozen=True)
class SSHTarget:
    hostname: str
    port: int = 22
    user: str = "root"
    identity_file: Optional[str] = None
    private_key: Optional[str] = None  # an OpenSSH private key's text, instead of a file
    host_key: Optional[str] = None  # "ssh-ed25519 AAAA...": accept this key and no other
    proxy: Optional["SSHTarget"] = None  # a host to jump through (`ssh -J`), its own key recorded as a fleet host's

    @property
    def address(self) -> str:
        via = f" (via {self.proxy.address})" if self.proxy is not None else ""
        return f"{self.user}@{self.hostname}:{self.port}{via}"


class HostKeyChanged(ConfigurationError):
    pass


class HostKeyUnknown(ConfigurationError):
    """A fleet host whose key was never confirmed, or whose record is gone: connecting would trust any key."""


class AuthenticationRefused(ConfigurationError):
    pass


def key_changed(target: SSHTarget, offered, expected) -> HostKeyChanged:
    remedy = ("the address no longer leads to the VM the run created" if target.host_key else
              f"if the host was reinstalled, remove its line from {known_hosts_path()} and register its fleet "
              "again (`dstack apply -f FLEET.dstack.yml`) to check the new key")
    return HostKeyChanged(f"the host key of {target.hostname}:{target.port} is not the one expected (got "
                          f"{describe_key(offered)}, expected {describe_key(expected)}); refusing to connect: {remedy}")


def _load_key(target: SSHTarget):
    import paramiko

    if target.private_key is None and target.identity_file is None:
        return None
    text = target.private_key
    source = "the run's key"
    if text is None:
        path = Path(target.identity_file).expanduser()
        source = str(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigurationError(f"cannot read the SSH identity file {path}: {e.strerror}") from None
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(io.StringIO(text))
        except paramiko.SSHException:
            continue
    raise ConfigurationError(f"{source} is not an unencrypted OpenSSH private key (ed25519, ecdsa or rsa)")


SHELL_STDIN_MAX = 1 << 20  # stdin up to this size goes through the long-lived shell (base64), larger on a channel
# bash (`sh` on RHEL, Fedora, Amazon Linux) reads a pipe one byte per read(2), dash 8 KB (here an 8 KB command: 5 against
# 1.5 ms; a 1 MB archive: 0.46 against 0.01 s). To bash with GNU's `head` (no byte read past its count), as the
# shell's first command finds, FRAMED_MIN bytes or more go as `eval "$(head -c N)"` and the text, read in blocks.
FRAMED_MIN = 2048
_FRAMED_PROBE = ('if [ -n "${BASH_VERSION:-}" ] && head --version 2>/dev/null | grep -q GNU; then echo framed; '
                 'else echo; fi; ')


class _EndLine:
    """The line a command's trailer prints last on stdout, `MARKER STATUS` (SSHTransport._in_shell), as `search` finds
    it at the end of what was read, from `start` on. One pattern for every marker: a pattern of the marker's own was
    compiled for each command (~45 us, 10 per node of a cluster's start)."""

    PATTERN = re.compile(rb"\n(?P<marker>__dstack_[0-9a-f]{16}) (?P<status>-?\d+)\n$")

    def __init__(self, marker: str):
        self.marker = marker.encode()

    def search(self, text, start: int = 0):
        match = self.PATTERN.search(text, start)
        return match if match is not None and match.group("marker") == self.marker else None


class SSHTransport:
    """Commands without stdin go to one long-lived `sh` on the host, framed by a random marker: the user's login
    shell (and its .bashrc, ~100 ms on some hosts) starts once per connection instead of once per command. Commands
    with a small stdin (a job's archive) go there too, as a base64 here-document; a large stdin gets a channel of its
    own. `session()` gives another shell on the same connection (provisioner.host.keeper: one per client)."""

    def __init__(self, client, target: SSHTarget, jump: Optional["SSHTransport"] = None, owns_client: bool = True):
        self._client = client
        self._jump = jump  # the proxy's connection the target's runs through; closed with it
        self._owns_client = owns_client
        self.target = target
        self.description = target.address
        self._shell = None
        self._has_base64 = True  # False once the host said it has no `base64` (the shell then takes no stdin)
        self._framed = False  # True once the shell said it reads a byte at a time (FRAMED_MIN)
        self._lock = threading.Lock()

    @property
    def transport(self):
        return self._client.get_transport()

    @property
    def shell_open(self) -> bool:
        return self._shell is not None and not self._shell.closed and not self._shell.exit_status_ready()

    @property
    def jump(self) -> Optional["SSHTransport"]:
        return self._jump

    def session(self) -> "SSHTransport":
        """A shell of its own on this connection (opened at its first command); its close() leaves the connection."""
        return SSHTransport(self._client, self.target, self._jump, owns_client=False)

    def run(self, command: str, stdin: Optional[Stdin] = None, timeout: Optional[float] = None) -> CommandResult:
        import paramiko

        if self._lock.locked():  # another thread's command is under way in the shell (a log read waiting on the host
            alone = self.session()  # for output): this one gets a shell of its own, not held up by it
            try:
                return alone.run(command, stdin, timeout)
            finally:
                alone.close()
        try:
            if stdin is not None and stdin != b"":
                chunks = iter([stdin] if isinstance(stdin, bytes) else stdin)
                head = _take(chunks, SHELL_STDIN_MAX + 1)
                if len(head) <= SHELL_STDIN_MAX and self._has_base64:
                    with self._lock:
                        result = self._in_shell(command, timeout, head)
                    if result is not None:
                        return result
                return self._exec(command, itertools.chain([head], chunks), timeout)
            with self._lock:
                return self._in_shell(command, timeout)
        except (paramiko.SSHException, OSError, EOFError, AttributeError) as e:
            if self._shell is not None:
                self._shell.close()
            self._shell = None
            raise TransportError(f"{self.description}: connection lost: {_why(e)}") from None

    def _exec(self, command: str, stdin: Stdin, timeout: Optional[float]) -> CommandResult:
        """Sends `stdin` (bytes, or chunks as they are made) on a channel of its own. Each chunk goes as a
        memoryview: paramiko's sendall slices what is left after every 32 KB packet, which copies a bytes object
        every time (quadratic: 100 MB took minutes) and a memoryview never."""
        channel = self.transport.open_session(timeout=10)
        try:
            channel.settimeout(timeout)
            channel.exec_command(command)
            try:
                for chunk in ([stdin] if isinstance(stdin, bytes) else stdin):
                    channel.sendall(memoryview(chunk))
            except OSError:  # "Socket is closed": the command ended before it read all of its stdin (a job's start
                if not channel.closed:  # refused before it unpacks); its exit status and stderr say why
                    raise
            if not channel.closed:  # an EOF for a channel the host has closed would be a protocol error
                channel.shutdown_write()
            stdout, stderr = _drain(channel, lambda out, err: channel.exit_status_ready() and not channel.recv_ready()
                                    and not channel.recv_stderr_ready(), timeout)
            return CommandResult(channel.recv_exit_status(), stdout, stderr)
        finally:
            channel.close()

    def _in_shell(self, command: str, timeout: Optional[float],
                  stdin: Optional[bytes] = None) -> Optional[CommandResult]:
        """`command` in the long-lived shell, in a subshell of its own. `stdin` reaches it decoded from a
        here-document: the command's text, quoted on one line (so that the here-document follows that line), is
        `eval`ed in the subshell at the pipe's end (as `sh -c` would run it, without starting a shell). Where the
        host has no `base64` (looked for by the shell itself, in the same round trip), the command does not run and
        None comes back: the caller sends the stdin on a channel of its own."""
        probe = ""
        if self._shell is None or self._shell.closed or self._shell.exit_status_ready():
            self._shell = self.transport.open_session(timeout=10)
            self._shell.exec_command("exec sh")
            self._framed, probe = False, _FRAMED_PROBE
        marker = "__dstack_" + secrets.token_hex(8)
        end_out = _EndLine(marker)
        end_err = ("\n" + marker + "\n").encode()
        no_base64 = f"{marker} no base64\n".encode()
        trailer = f"; printf '\\n{marker} %d\\n' $?; printf '\\n{marker}\\n' >&2\n"
        if stdin is None:
            text = f"{probe}( {command}\n) < /dev/null{trailer}".encode()
        else:
            quoted = "'" + command.replace("'", "'\\''") + "'"
            text = (f"{probe}if command -v base64 >/dev/null 2>&1; then base64 -d <<'{marker}' | ( eval {quoted} ); "
                    f"else printf '{marker} no base64\\n' >&2; fi{trailer}".encode()
                    + base64.encodebytes(stdin) + f"{marker}\n".encode())
        if self._framed and len(text) >= FRAMED_MIN:
            text = f'eval "$(head -c {len(text)})"\n'.encode() + text
        self._shell.sendall(text)
        try:
            # the end marker is looked for in the last bytes only: a long answer (a log) is never scanned whole
            stdout, stderr = _drain(self._shell, lambda out, err: err.endswith(end_err) and
                                    end_out.search(out, max(0, len(out) - 64)), timeout)
        except BaseException:  # no answer in time, or a Ctrl-C while it waited: the next command gets a new shell
            self._shell.close()  # rather than one still running this one (a log read that waits on the host)
            self._shell = None
            raise
        if probe:  # the probe's line comes first
            said, _, stdout = bytes(stdout).partition(b"\n")
            self._framed = said == b"framed"
        match = end_out.search(stdout)
        if match is None or not stderr.endswith(end_err):  # the shell went (killed, its session closed) mid-command
            self._shell = None
            raise EOFError("the remote shell ended before the command finished")
        if stdin is not None and stderr == no_base64 + end_err and match.start() == 0:
            self._has_base64 = False
            return None
        return CommandResult(int(match.group("status")), bytes(stdout[:match.start()]), bytes(stderr[:-len(end_err)]))

    def close(self) -> None:
        if not self._owns_client:
            if self._shell is not None:
                self._shell.close()
                self._shell = None
            return
        self._client.close()
        if self._jump is not None:
            self._jump.close()


def _take(chunks, limit: int) -> bytes:
    """The first chunks of `chunks`, joined, until they pass `limit` bytes (or run out)."""
    taken = bytearray()
    for chunk in chunks:
        taken += chunk
        if len(taken) > limit:
            break
    return bytes(taken)


def _drain(channel, done, timeout: Optional[float]):
    """Reads stdout and stderr until `done(stdout, stderr)`; select() wakes on data, so there is no polling delay."""
    stdout, stderr = bytearray(), bytearray()
    deadline = None if timeout is None else time.monotonic() + timeout
    while not done(stdout, stderr):
        if channel.recv_ready():
            stdout += channel.recv(65536)
            continue
        if channel.recv_stderr_ready():
            stderr += channel.recv_stderr(65536)
            continue
        if channel.closed or (channel.eof_received and channel.exit_status_ready()):
            if not (channel.recv_ready() or channel.recv_stderr_ready()):
                if done(stdout, stderr) or channel.exit_status_ready():
                    break
                raise EOFError("the remote shell ended")
        wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
        if wait <= 0:
            raise TimeoutError(f"no answer within {timeout}s")
        select.select([channel], [], [], wait)
    return stdout, stderr


def connect(
    target: SSHTarget,
    total_wait: float = 300.0,
    log: Callable[[str], None] = lambda _: None,
    connect_timeout: float = 10.0,
    *,
    unknown_key_policy=None,
    booting: bool = False,
) -> SSHTransport:
    """Connect, retrying with backoff while the host does not answer yet, up to `total_wait` seconds (an attempt
    gets at most the time left). A refused key or a host key that is not the one known fails at once: waiting cannot
    fix those. `unknown_key_policy` (for `scan_host_key`) replaces the refusal of a key that is not recorded.

    `booting`: a VM the run just made, with the host key the run made for it. While it boots, its guest agent may
    still serve a key of its own (GCP makes new ones at first boot, until cloud-init puts the run's back) and may not
    have installed the login key yet: both are retried until the deadline. The run's host key is never replaced:
    only it is ever accepted.

    A target with a `proxy` is reached through a connection to the proxy (a direct-tcpip channel, as `ssh -J`);
    the proxy's own host key must be recorded, as a fleet host's is."""
    key = _load_key(target)
    live = liveness()
    deadline = time.monotonic() + total_wait
    jump = connect(target.proxy, total_wait, log, connect_timeout) if target.proxy is not None else None
    try:
        return _connect_to(target, key, live, deadline, total_wait, log, connect_timeout, unknown_key_policy,
                           booting, jump)
    except BaseException:
        if jump is not None:
            jump.close()
        raise


def _connect_to(target: SSHTarget, key, live: Liveness, deadline: float, total_wait: float, log: Callable,
                connect_timeout: float, unknown_key_policy, booting: bool, jump: Optional[SSHTransport]
                ) -> SSHTransport:
    import paramiko

    delay, attempt = 0.5, 0
    while True:
        attempt += 1
        timeout = min(connect_timeout, max(1.0, deadline - time.monotonic()))
        client = paramiko.SSHClient()
        name = host_key_name(target)
        if unknown_key_policy is not None:
            client.set_missing_host_key_policy(unknown_key_policy)
        elif target.host_key:
            key_type, key_data = target.host_key.split()[:2]
            client.get_host_keys().add(name, key_type, paramiko.PKey.from_type_string(key_type, _b64(key_data)))
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            known = known_hosts_path()
            if known.exists():
                client.load_host_keys(str(known))
            client.set_missing_host_key_policy(_RefuseUnknownKey(target))
        try:
            if jump is not None:  # the proxy's socket has TCP_NODELAY and the dead-peer options already
                sock = jump.transport.open_channel("direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0),
                                                   timeout=timeout)
            else:
                sock = socket.create_connection((target.hostname, target.port), timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                _detect_dead_peer(sock, live)
            # the handshake's own timeout a little longer than the banner's: paramiko then reports "Error reading
            # SSH protocol banner" for a host that never speaks, rather than a puzzling "No existing session"
            client.connect(target.hostname, port=target.port, username=target.user, pkey=key, sock=sock,
                           timeout=timeout + 1, banner_timeout=timeout, auth_timeout=timeout,
                           allow_agent=key is None, look_for_keys=key is None)
            client.get_transport().set_keepalive(live.keepalive)
            return SSHTransport(client, target, jump)
        except paramiko.BadHostKeyException as e:
            client.close()
            failure = key_changed(target, e.key, e.expected_key)
            if not booting or time.monotonic() + delay > deadline:
                raise failure from None
            log(f"{target.address} does not serve the run's host key yet (still booting); retrying in {delay:.1f}s")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        except paramiko.AuthenticationException:
            client.close()
            with_key = f" with {target.identity_file}" if target.identity_file else ""
            refused = AuthenticationRefused(f"{target.address} refused the SSH key{with_key}: check the user and that "
                                            "the public key is in the host's authorized_keys")
            if not booting or time.monotonic() + delay > deadline:
                raise refused from None
            log(f"{target.address} does not accept the run's login key yet (still booting); retrying in {delay:.1f}s")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        except (OSError, paramiko.SSHException, EOFError) as e:
            client.close()
            if time.monotonic() + delay > deadline:
                raise TransportError(f"{target.address} did not answer SSH within {total_wait:.0f}s "
                                     f"({attempt} attempts; last error: {_why(e)})") from None
            log(f"waiting for sshd on {target.address} ({_why(e)}); retrying in {delay:.1f}s")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        except BaseException:  # a refused host key (the policies raise), Ctrl-C: no transport thread left behind
            client.close()
            raise


def _detect_dead_peer(sock: socket.socket, live: Liveness) -> None:
    """TCP keep-alives probe an idle connection; TCP_USER_TIMEOUT breaks one whose data (SSH keep-alives included)
    stays unacknowledged, so a vanished host shows as a broken connection, not as a read that waits forever."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", live.keepalive), ("TCP_KEEPINTVL", live.keepalive), ("TCP_KEEPCNT", 3),
                          ("TCP_USER_TIMEOUT", int(live.silent_after * 1000))):
        if hasattr(socket, option):  # Linux has them all; macOS lacks some
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _b64(data: str) -> bytes:
    import base64

    return base64.b64decode(data)


class _RefuseUnknownKey:
    """A fleet host's key must have been confirmed at registration; a missing record is never filled silently."""

    def __init__(self, target: SSHTarget):
        self.target = target

    def missing_host_key(self, client, hostname, key) -> None:
        raise HostKeyUnknown(
            f"the host key of {self.target.address} is not recorded in {known_hosts_path()} (it offers "
            f"{describe_key(key)}); refusing to connect. Register the fleet that lists the host again "
            "(`dstack apply -f FLEET.dstack.yml`) to check its fingerprint and record it")


class _KeyOffered(Exception):
    def __init__(self, key):
        super().__init__("host key offered")
        self.key = key


class _CaptureKey:
    """Ends the connection at the key exchange, before any authentication, with the key the host offered."""

    def missing_host_key(self, client, hostname, key) -> None:
        raise _KeyOffered(key)


def scan_host_key(target: SSHTarget, total_wait: Optional[float] = None):
    """The key the host offers (as `ssh-keyscan` reads it), without trusting it or logging in: no key is known to
    the connection, so the capture policy ends every attempt that reaches the key exchange. Without `total_wait`,
    it waits for the host as a stop does (30 s, or DSTACK_HOST_TIMEOUT where that is shorter)."""
    wait = liveness().stop_wait if total_wait is None else total_wait
    try:
        connect(target, total_wait=wait, unknown_key_policy=_CaptureKey()).close()
    except _KeyOffered as offered:
        return offered.key
    raise AssertionError("the capture policy let a connection through")


def untrusted_now(connection: SSHTransport) -> Optional[str]:
    """Why `connection` may no longer be used, as this machine can tell (None: it may): it is gone, or the key it was
    opened with is no longer the run's or the recorded one (known_hosts changed since). served_key_differs asks the
    host."""
    import paramiko

    transport = connection.transport
    if transport is None or not transport.is_active():
        return "the connection is gone"
    opened_with = transport.get_remote_server_key()
    target = connection.target
    if target.host_key:
        key_type, key_data = target.host_key.split()[:2]
        if paramiko.PKey.from_type_string(key_type, _b64(key_data)) != opened_with:
            return "not the run's host key"
    elif recorded_host_keys(target).get(opened_with.get_name()) != opened_with:
        return "its host key is no longer the recorded one"
    return None
