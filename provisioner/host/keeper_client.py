"""A host's SSH connection kept open between dstack commands (as OpenSSH's ControlPersist): the first command that
reaches a host leaves a keeper process (provisioner.host.keeper) holding the authenticated connection, and the next
`apply`, `logs`, `attach`, `ps` on that host send their commands through it, over a Unix socket, instead of making
a connection of their own (no paramiko import, no handshake, no login shell to start).

- Where: `$DSTACK_HOME/keepers/` (0700), one socket (0600) per host, user, key and host key; the socket's peer must
  be this user (SO_PEERCRED), both ways.
- How long: `DSTACK_SSH_PERSIST` seconds without a client (default 300; 0: no keepers, every command connects);
  a keeper also ends when its connection breaks or its socket is removed.
- Host keys stay as strict: before each command's use the keeper checks that its connection's key is still the
  run's or the recorded one (known_hosts may have changed) and that the host still serves it (a key exchange of its
  own, no login; begun at the command's word where it announced the hosts it is about to use: announce_kept); if
  not, the keeper ends and the command connects directly, which refuses as before. A keeper that is dead (a stale
  socket) or does not answer is bypassed.
- Port forwards (`-p`, a task's ports) need paramiko's own transport: `KeptTransport.transport` opens a direct
  connection for them.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence

from configuration.errors import ConfigurationError
from provisioner.host.liveness import HOST_TIMEOUT_VARIABLE, liveness
from provisioner.host.ssh import (AuthenticationRefused, HostKeyChanged, HostKeyUnknown, SSHTarget, SSHTransport,
                                  connect)
from provisioner.host.keeper_wire import (announce, announced_at, keeper_folder, peer_is_me, private_folder, recv_frame,
                                          persist_seconds, recv_json, remember_uses, send_frames, send_json,
                                          socket_address, using)
from provisioner.host.transport import CommandResult, Stdin, TransportError

KEY_CHECK_S = 10.0  # the longest a keeper's key exchange with the host (before a client's use) may take
HELLO_TIMEOUT_S = 20.0  # a key exchange with the host (at most KEY_CHECK_S), and a shell where none is open yet
_ERRORS = {cls.__name__: cls for cls in (HostKeyChanged, HostKeyUnknown, AuthenticationRefused, ConfigurationError,
                                         TransportError)}
_CODE_ROOT = str(Path(__file__).resolve().parents[2])


def target_json(target: SSHTarget) -> dict:
    return dataclasses.asdict(target)


def target_from_json(data: dict) -> SSHTarget:
    proxy = data.get("proxy")
    return SSHTarget(**{**data, "proxy": target_from_json(proxy) if proxy else None})


def keeper_name(target: SSHTarget, persist: float) -> str:
    """One keeper per host, login, key, host key and liveness setting (a private key's text only as its hash)."""
    def identity(t: Optional[SSHTarget]) -> Optional[dict]:
        if t is None:
            return None
        key = t.private_key and hashlib.sha256(t.private_key.encode()).hexdigest()
        return {**target_json(t), "private_key": key, "proxy": identity(t.proxy)}

    text = json.dumps([identity(target), liveness().unreachable_after, persist], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class KeptTransport:
    """Commands through a keeper's connection: one client session (a shell of its own on the host) per transport. A
    request cut short (Ctrl-C while it waited) leaves the socket mid-answer: the next command opens a new session
    (or, where the keeper is gone, a connection of its own) rather than read that answer as its own."""

    def __init__(self, sock: socket.socket, target: SSHTarget, path: Path):
        self._sock: Optional[socket.socket] = sock
        self.target = target
        self.description = target.address
        self._path = path
        self._lock = threading.Lock()
        self._direct: Optional[SSHTransport] = None

    @property
    def transport(self):
        """paramiko's transport, for port forwards: a connection of this process's own, made at the first use."""
        return self._own_connection().transport

    def _own_connection(self) -> SSHTransport:
        if self._direct is None:
            self._direct = connect(self.target, total_wait=30)
        return self._direct

    def _another_session(self) -> Optional["KeptTransport"]:
        """A session of its own through the same keeper (a shell of its own on the host); None where the keeper is
        gone or refuses."""
        folder_fd = os.open(self._path.parent, os.O_RDONLY)
        try:
            return _attach(self._path, folder_fd, self.target) or None
        finally:
            os.close(folder_fd)

    def _session(self) -> Optional[socket.socket]:
        if self._sock is None:
            again = self._another_session()
            if again is not None:
                self._sock, again._sock = again._sock, None
        return self._sock

    def run(self, command: str, stdin: Optional[Stdin] = None, timeout: Optional[float] = None) -> CommandResult:
        if self._lock.locked():  # another thread's command is under way (a log read waiting on the host for output):
            alone = self._another_session()  # this one is not held up by it
            if alone is not None:
                try:
                    return alone.run(command, stdin, timeout)
                finally:
                    alone.close()
        with self._lock:
            sock = self._session()
            if sock is None:  # the keeper is gone: this command's own connection
                return self._own_connection().run(command, stdin, timeout)
            self._sock = None  # until the answer is read whole
            try:
                sock.settimeout(None if timeout is None else timeout + 10)
                streamed = stdin is not None and stdin != b""
                header = json.dumps({"op": "run", "command": command, "timeout": timeout, "stdin": streamed}).encode()
                if not streamed or isinstance(stdin, bytes):  # the request whole, in one write
                    send_frames(sock, header, *((stdin, b"") if streamed else ()))
                else:  # chunks as they are made
                    send_frames(sock, header)
                    for chunk in stdin:
                        if chunk:
                            send_frames(sock, bytes(chunk))
                    send_frames(sock, b"")
                reply = recv_json(sock)
                if "error" in reply:
                    self._sock = sock
                    raise TransportError(reply["error"])
                result = CommandResult(reply["code"], recv_frame(sock), recv_frame(sock))
                self._sock = sock
                return result
            except (OSError, EOFError, ValueError) as e:
                raise TransportError(f"{self.description}: connection lost: the connection keeper went "
                                     f"({e or type(e).__name__})") from None
            finally:
                if self._sock is None:
                    sock.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._direct is not None:
            self._direct.close()
            self._direct = None


def _attach(path: Path, folder_fd: int, target: SSHTarget, just_opened: bool = False,
            wait: float = KEY_CHECK_S):
    """A KeptTransport through the keeper at `path`; None where there is none (no socket, or a dead keeper's);
    False where the keeper refused (it then ends), or does not answer: the caller connects directly. `wait`: how
    long the keeper's key exchange with the host may take (at most KEY_CHECK_S): a command's own wait for the host
    bounds it, so a hung host costs that command no more than its wait."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(HELLO_TIMEOUT_S)
        sock.connect(socket_address(path, folder_fd))
        if not peer_is_me(sock):
            sock.close()
            return False
        send_json(sock, {"op": "hello", "just_opened": just_opened, "wait": min(wait, KEY_CHECK_S),
                         "since": announced_at()})
        reply = recv_json(sock)
    except socket.timeout:  # a keeper that hangs (stopped): bypassed, and left to end by itself
        sock.close()
        return False
    except (OSError, EOFError, ValueError):
        sock.close()
        return None
    if not reply.get("ok"):
        sock.close()
        return False
    return KeptTransport(sock, target, path)


def connect_kept(target: SSHTarget, total_wait: float, log: Callable[[str], None], connect_timeout: float = 10.0,
                 booting: bool = False) -> Optional[KeptTransport]:
    """The host's keeper (started now where there is none, connecting as provisioner.host.ssh.connect does, and
    raising what it raises); None where keepers are off or the keeper cannot serve: connect directly then."""
    persist = persist_seconds()
    folder = keeper_folder()
    if not persist or not hasattr(socket, "AF_UNIX"):
        return None
    name = keeper_name(target, persist)
    path = folder / f"{name}.sock"
    try:
        if not private_folder(folder):
            return None
        folder_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a home that cannot hold the socket (read-only, full): the command connects itself
        return None
    using(path.name)  # no word to it from this process any more: this use checks for itself
    try:
        kept = _attach(path, folder_fd, target, wait=total_wait)
        if kept is not None:
            return kept or None
        try:
            lock = open(os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600), "r+b")
        except OSError:
            return None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one keeper per host: a second command waits for the first's
            kept = _attach(path, folder_fd, target, wait=total_wait)
            if kept is not None:
                return kept or None
            if not _spawn(path, target, persist, total_wait, log, connect_timeout, booting):
                return None
            return _attach(path, folder_fd, target, just_opened=True) or None
    finally:
        os.close(folder_fd)


def announce_kept(targets: Sequence[SSHTarget], remember_as: Optional[str] = None) -> None:
    """The kept connections of `targets` begin their host key checks now, for this command's first use of each
    (provisioner.host.keeper_wire.announce), and are remembered for the next command for `remember_as`
    (keeper_wire.announce_remembered); nothing where keepers are off."""
    persist = persist_seconds()
    if persist and hasattr(socket, "AF_UNIX"):
        names = [f"{keeper_name(target, persist)}.sock" for target in targets]
        announce(names)
        if remember_as is not None:
            remember_uses(remember_as, names)


# What a keeper and its SSH connections read of the environment (its interpreter, the home folders, the SSH agent
# for a host without a key, the host timeout); nothing else goes with it: a secret exported for `apply -e NAME` must
# not live on in a process that outlives the command.
_KEEPER_ENVIRONMENT = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
                                 "SSH_AUTH_SOCK", "DSTACK_HOME", HOST_TIMEOUT_VARIABLE})


def _spawn(path: Path, target: SSHTarget, persist: float, total_wait: float, log: Callable[[str], None],
           connect_timeout: float, booting: bool) -> bool:
    """Starts a keeper for `target` and waits until it is connected and listening (True), or raises the connection's
    error; False where the keeper itself could not run. The spec (a private key's text included) goes on its stdin,
    never in its arguments or environment."""
    env = {name: value for name, value in os.environ.items() if name in _KEEPER_ENVIRONMENT}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_CODE_ROOT, os.environ.get("PYTHONPATH")]))
    spec = {"target": target_json(target), "socket": str(path), "persist": persist, "total_wait": total_wait,
            "connect_timeout": connect_timeout, "booting": booting}
    try:
        process = subprocess.Popen([sys.executable, "-m", "provisioner.host.keeper"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/", env=env,
                                   start_new_session=True)
    except OSError:
        return False
    try:
        process.stdin.write(json.dumps(spec).encode())
        process.stdin.close()
        for line in process.stdout:
            try:
                message = json.loads(line)
            except ValueError:  # not the keeper speaking (a broken install's traceback goes to /dev/null)
                return False
            if "log" in message:
                log(message["log"])
            elif message.get("ready"):
                return True
            elif "error" in message:
                raise _ERRORS.get(message["error"], TransportError)(message["message"]) from None
        return False
    except BaseException:  # Ctrl-C, or its error: no keeper left half-started
        try:
            os.killpg(process.pid, 15)
        except OSError:
            pass
        raise
    finally:
        process.stdout.close()
        process.wait()
