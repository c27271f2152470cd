"""The keepers' Unix sockets (provisioner.host.keeper_client says what keepers are for): their folder, the messages
on them, and the word a command sends the keepers of the hosts it is about to use (announce), so that each starts its
host key check while the command goes on.

Messages: a 4-byte length, then the bytes; a header is JSON. A stdin stream is frames ended by an empty one.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional, Tuple

from configuration.errors import ConfigurationError
from configuration.home import dstack_home, private_dir

PERSIST_VARIABLE = "DSTACK_SSH_PERSIST"
DEFAULT_PERSIST_S = 300.0
ANNOUNCE_TIMEOUT_S = 0.2  # a keeper that does not take the word at once (stopped, its backlog full) is left out
ANSWER_WAIT_S = 12.0  # the longest a keeper's check (its key exchange, at most keeper_client.KEY_CHECK_S) is waited for

_announced_at: Optional[float] = None
_words_lock = threading.Lock()
_to_tell: "queue.SimpleQueue[Tuple[Path, str]]" = queue.SimpleQueue()
_told: set = set()  # the keepers named to _tell_keepers by this process
_used: set = set()  # the keepers this process uses (keeper_client): told nothing more
_teller: Optional[threading.Thread] = None


def persist_seconds() -> float:
    text = os.environ.get(PERSIST_VARIABLE, "").strip()
    if not text:
        return DEFAULT_PERSIST_S
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigurationError(f"{PERSIST_VARIABLE}={text!r}: expected a number of seconds (0: no kept "
                                 "connections)") from None
    return max(0.0, seconds)


def keeper_folder() -> Path:
    return dstack_home() / "keepers"


def send_frames(sock: socket.socket, *messages: bytes) -> None:
    """`messages` in one write: the other end wakes once for them all, where a write for each length and each message
    woke a keeper's thread, or a command's, up to six times for a command's answer (each wake ~0.05 ms of CPU on a
    busy machine)."""
    sock.sendall(b"".join(struct.pack(">I", len(data)) + data for data in messages))


def send_json(sock: socket.socket, message: dict) -> None:
    send_frames(sock, json.dumps(message).encode())


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise EOFError("the keeper closed the connection")
        data += chunk
    return bytes(data)


def recv_frame(sock: socket.socket) -> bytes:
    (size,) = struct.unpack(">I", _recv_exactly(sock, 4))
    return _recv_exactly(sock, size) if size else b""


def recv_json(sock: socket.socket) -> dict:
    return json.loads(recv_frame(sock))


def recv_stream(sock: socket.socket) -> Iterator[bytes]:
    while True:
        chunk = recv_frame(sock)
        if not chunk:
            return
        yield chunk


def peer_is_me(sock: socket.socket) -> bool:
    """Whether the other end of a Unix socket runs as this user (SO_PEERCRED: pid, uid, gid)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return True  # the 0700 folder alone, where the system has no peer credentials
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid == os.getuid()


def private_folder(folder: Path) -> bool:
    """The keepers' folder, 0700 and this user's; False where it is someone else's (no keeper is used then)."""
    private_dir(folder)
    info = folder.stat()
    if info.st_uid != os.getuid():
        return False
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)
    return True


def socket_address(path: Path, folder_fd: int) -> str:
    """A path connect() and bind() take: a Unix socket's path has at most 107 bytes, so a long one is reached
    through the folder's open descriptor (Linux's /proc/self/fd)."""
    text = str(path)
    if len(text.encode()) < 100 or not os.path.isdir("/proc/self/fd"):
        return text
    return f"/proc/self/fd/{folder_fd}/{path.name}"


def announce(socket_names: Iterable[str]) -> None:
    """Tells the keepers of this home named (their sockets' names) that this command will use them soon: each begins
    its check that the host still serves its key (provisioner.host.keeper), and the command's first use of that
    keeper takes that check (begun after the command did, it is as fresh for the command as one begun at its use;
    announced_at() says since when). The keepers are told one at a time, each once its check is done, by a thread of
    this process's (_tell_keepers) while the command goes on: one key exchange at a time takes the core the command's
    start leaves idle, where sixteen at once would take both cores' turns from the command itself. A keeper this
    process has begun to use (keeper_client) is told nothing more: its use checks for itself. Best effort: a keeper
    that is not there, or does not take the word, checks at the use."""
    global _announced_at, _teller
    with _words_lock:
        if _announced_at is None:  # the first word: every check begun since serves this command
            _announced_at = time.monotonic()
        folder = keeper_folder()
        for name in socket_names:
            if name not in _told:
                _told.add(name)
                _to_tell.put((folder, name))
        if _teller is None:
            _teller = threading.Thread(target=_tell_keepers, daemon=True, name="keeper-word")
            _teller.start()


def using(socket_name: str) -> None:
    """This process uses that keeper from now on: it is told no word (its first client checks for itself)."""
    with _words_lock:
        _used.add(socket_name)


def _tell_keepers() -> None:
    while True:
        folder, name = _to_tell.get()
        with _words_lock:
            if name in _used:
                continue
        _tell(folder, name)


def _tell(folder: Path, name: str) -> None:
    """The word to the keeper at `folder`/`name`, and its answer once its check is done."""
    try:
        info = folder.stat()
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            return  # not a folder this user's keepers were started in (private_folder makes it so)
        folder_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # no keepers yet
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(ANNOUNCE_TIMEOUT_S)
        sock.connect(socket_address(folder / name, folder_fd))
        if peer_is_me(sock):
            send_json(sock, {"op": "expect", "since": _announced_at, "answer": True})
            sock.settimeout(ANSWER_WAIT_S)
            recv_json(sock)  # its check is done (whatever it found: the use is refused where it failed)
    except (OSError, EOFError, ValueError):  # no keeper for that host, a dead one's socket, an old keeper
        pass
    finally:
        sock.close()
        os.close(folder_fd)


def announced_at() -> Optional[float]:
    """When this process first announced its use to keepers (time.monotonic(), the same clock in every process); None
    where it did not."""
    return _announced_at


def _uses_file(key: str) -> Path:
    return keeper_folder() / f"uses-{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def remember_uses(key: str, socket_names: Iterable[str]) -> None:
    """Keeps which keepers a command for `key` (a configuration file's path) announced, for the next command for the
    same key to announce them as it begins (announce_remembered). Best effort."""
    path = _uses_file(key)
    text = "".join(f"{name}\n" for name in [repr(persist_seconds()), *socket_names])
    temporary = path.with_name(f"{path.name}.{os.getpid()}")
    try:
        if path.read_text() == text:  # the same hosts as last time: nothing to write (nor a file to replace)
            return
    except OSError:
        pass
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except OSError:  # no keepers folder (keepers off), a full disk: the next command announces once planned
        pass


def forget_uses(key: str) -> None:
    """What remember_uses kept for `key`, removed (a command for it that announced no keeper)."""
    try:
        _uses_file(key).unlink()
    except OSError:
        pass


def announce_remembered(key: str) -> None:
    """announce() to the keepers the last command for `key` announced, where they were several: a command re-applied
    from the same file most often takes the same hosts, and their key exchanges, one at a time, then run while it
    starts and plans, on a core its start leaves idle (a single host's, begun once planned, is done before the
    connect: told at the start too, it only took turns from the command's imports, ~10-20 ms on one node here). A
    host it does not take after all had a key exchange for nothing; one it takes that was not remembered is announced
    once planned."""
    try:
        persist, *names = _uses_file(key).read_text().split()
        now = persist_seconds()
        if not now or persist != repr(now):
            return  # keepers off, or kept for another time: the sockets named are not this command's keepers
    except (OSError, ValueError, ConfigurationError):
        return
    names = [name for name in names if name.endswith(".sock") and "/" not in name]
    if len(names) > 1:  # one host's check, begun once planned, is done before the connect: no word at the start
        announce(names)
