"""The keeper process of one host's kept SSH connection (provisioner.host.keeper_client says what it is for):
`python -m provisioner.host.keeper`, its spec as JSON on stdin. It connects as provisioner.host.ssh.connect does
(saying each retry, then `ready` or the error, one JSON line each on stdout), detaches, and serves its Unix socket:
each client gets a shell of its own on the host (kept for the next client when it is done), and each client's
first message is checked against the host's key (provisioner.host.ssh.untrusted_now,
provisioner.host.key_proof.served_key_differs) before anything runs. A command that announced its use
(provisioner.host.keeper_wire.announce) has the key exchange of its first client begun at its word, while it still
plans (EarlyCheck).

It ends, removing its socket, after DSTACK_SSH_PERSIST seconds without a client, when its connection breaks, when a
check fails, or when its socket is removed or replaced.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

from provisioner.host.keeper_client import KEY_CHECK_S, target_from_json
from provisioner.host.keeper_wire import peer_is_me, recv_json, recv_stream, send_frames, send_json, socket_address
from provisioner.host.key_proof import served_key_differs
from provisioner.host.ssh import SSHTransport, connect, untrusted_now
from provisioner.host.transport import TransportError

IDLE_SHELLS = 2  # shells kept open for the next clients
CHECK_EVERY_S = 1.0


class EarlyCheck:
    """The key exchange with the host (served_key_differs) begun when a command announced itself, for that command's
    first client: begun after the command did, its answer is as fresh for the command as one begun at its use."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._done = threading.Event()
        self._why: Optional[str] = None

    def run(self, connection: SSHTransport) -> None:
        try:
            self._why = served_key_differs(connection, timeout=KEY_CHECK_S)
        except Exception as e:  # noqa: BLE001 - whatever broke the exchange refuses the client, as at its use
            self._why = f"the host did not answer a key exchange: {e or type(e).__name__}"
        finally:
            self._done.set()

    def running(self) -> bool:
        return not self._done.is_set()

    def outcome(self, wait: float) -> Optional[str]:
        """Why the connection may no longer be used (None: it may), waiting at most `wait` seconds for the answer."""
        if not self._done.wait(wait):
            return f"the host did not answer a key exchange within {wait:g}s"
        return self._why


class _Workers:
    """The threads that serve the keeper's clients, each kept for the next client once done with one: a thread
    started per client cost ~0.1-0.3 ms of CPU, and a command's start on a node has two clients (its announcement's
    word and its use). A new thread where every kept one is busy; the keeper's life bounds how many it keeps."""

    def __init__(self, serve_client):
        self._serve_client = serve_client
        self._clients: "queue.SimpleQueue[socket.socket]" = queue.SimpleQueue()
        self._idle = 0  # threads waiting for a client: as many as there are, each get() below is answered
        self._lock = threading.Lock()

    def serve(self, client: socket.socket) -> None:
        with self._lock:
            waiting = self._idle > 0
            self._idle -= waiting
        if waiting:
            self._clients.put(client)
        else:
            threading.Thread(target=self._work, args=(client,), daemon=True).start()

    def _work(self, client: socket.socket) -> None:
        while True:
            self._serve_client(client)
            with self._lock:
                self._idle += 1
            client = self._clients.get()


class Keeper:
    def __init__(self, connection: SSHTransport, path: Path, persist: float):
        self.connection = connection
        self.path = path
        self.persist = persist
        self._idle: List[SSHTransport] = []
        self._lock = threading.Lock()
        self._clients = 0
        self._last_used = time.monotonic()
        self._attached_before = False
        self._ending = False
        self._inode: Optional[int] = None
        self._early: Optional[EarlyCheck] = None
        self._workers = _Workers(self._serve_client)

    def bind(self) -> socket.socket:
        """Listens at a new name, 0600 from the start (umask), then renames it over `path` (a dead keeper's socket
        is replaced, never reused)."""
        folder_fd = os.open(self.path.parent, os.O_RDONLY)
        temporary = self.path.with_name(f"{self.path.stem}.{os.getpid()}.new")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            server.bind(socket_address(temporary, folder_fd))
        finally:
            os.umask(old_umask)
        os.chmod(socket_address(temporary, folder_fd), 0o600)
        os.rename(socket_address(temporary, folder_fd), socket_address(self.path, folder_fd))
        self._folder_fd = folder_fd
        self._inode = os.stat(socket_address(self.path, folder_fd)).st_ino
        server.listen(64)
        server.settimeout(CHECK_EVERY_S)
        return server

    def serve(self, server: socket.socket) -> None:
        while not self._should_end():
            try:
                client, _ = server.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            if not peer_is_me(client):
                client.close()
                continue
            with self._lock:
                self._clients += 1
            self._workers.serve(client)

    def _should_end(self) -> bool:
        transport = self.connection.transport
        if self._ending or transport is None or not transport.is_active():
            return True
        try:
            if os.stat(socket_address(self.path, self._folder_fd)).st_ino != self._inode:
                return True
        except OSError:
            return True
        with self._lock:
            return self._clients == 0 and time.monotonic() - self._last_used > self.persist

    def _take(self) -> SSHTransport:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self.connection.session()

    def _give_back(self, session: SSHTransport) -> None:
        with self._lock:
            if session.shell_open and len(self._idle) < IDLE_SHELLS and not self._ending:
                self._idle.append(session)
                return
        session.close()

    def _begin_early_check(self, since, waited_for: bool) -> EarlyCheck:
        """A command announced its use (first at `since`): the key exchange for its first client begins now, unless
        one begun since its first word is there already (one at a time: a command that announced while one was under
        way, begun before its word, has its client checked at its use); that check. One `waited_for` (the announcer
        waits for its answer) runs in the calling thread rather than in a thread of its own."""
        with self._lock:
            early = self._early
            if early is not None and (early.running() or (isinstance(since, (int, float)) and early.started >= since)):
                return early
            early = self._early = EarlyCheck()
        if waited_for:
            early.run(self.connection)
        else:
            threading.Thread(target=early.run, args=(self.connection,), daemon=True).start()
        return early

    def _early_check_for(self, since) -> Optional[EarlyCheck]:
        """The early check begun at or after `since` (the client's command's announcement), taken: it serves one
        client; None where there is none."""
        with self._lock:
            early = self._early
            if early is None or not isinstance(since, (int, float)) or early.started < since:
                return None
            self._early = None
            return early

    def _hello(self, client: socket.socket, message: dict) -> Optional[SSHTransport]:
        """Checks the connection for this client (a key exchange with the host, begun at the hello or at its
        command's announcement: skipped only for the first client of a keeper that has just connected, whose key was
        checked then) and opens its shell; None: refused."""
        with self._lock:
            fresh = message.get("just_opened") and not self._attached_before
            self._attached_before = True
        wait = message.get("wait")
        wait = min(KEY_CHECK_S, max(1.0, float(wait))) if isinstance(wait, (int, float)) else KEY_CHECK_S
        early = self._early_check_for(message.get("since"))
        why = None
        if not fresh:
            why = untrusted_now(self.connection) or (early.outcome(wait) if early is not None
                                                     else served_key_differs(self.connection, timeout=wait))
        session = None
        if why is None:
            session = self._take()
            try:
                if not session.shell_open:  # its login shell's rc files run now, not in the client's first command
                    session.run("true", timeout=30)
            except TransportError as e:
                session, why = None, str(e)
        if why is not None:
            self._ending = True
        send_json(client, {"ok": why is None, "why": why})
        return session

    def _serve_client(self, client: socket.socket) -> None:
        session = None
        used = False
        try:
            message = recv_json(client)
            if message.get("op") == "expect":  # no use of this keeper's: its idle time goes on
                early = self._begin_early_check(message.get("since"), waited_for=bool(message.get("answer")))
                if message.get("answer"):  # the announcer tells the next keeper once this one's check is done
                    early.outcome(KEY_CHECK_S)
                    send_json(client, {"checked": True})
                return
            if message.get("op") != "hello":
                return
            used = True
            session = self._hello(client, message)
            while session is not None:
                message = recv_json(client)
                stdin = recv_stream(client) if message.get("stdin") else None
                try:
                    result = session.run(message["command"], stdin=stdin, timeout=message.get("timeout"))
                except TransportError as e:
                    for _ in stdin or ():  # what the client still sends
                        pass
                    send_json(client, {"error": str(e)})
                    if not self.connection.transport.is_active():
                        self._ending = True
                    continue
                send_frames(client, json.dumps({"code": result.code}).encode(), result.stdout, result.stderr)
        except (OSError, EOFError, ValueError, KeyError):
            pass  # the client went
        finally:
            client.close()
            if session is not None:
                self._give_back(session)
            with self._lock:
                self._clients -= 1
                if used:
                    self._last_used = time.monotonic()

    def close(self) -> None:
        self._ending = True
        try:
            if os.stat(socket_address(self.path, self._folder_fd)).st_ino == self._inode:
                os.unlink(socket_address(self.path, self._folder_fd))
        except OSError:
            pass
        for session in self._idle:
            session.close()
        self.connection.close()


def _say(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # a spawner's thread may block some (lifecycle._read_node)
    spec = json.loads(sys.stdin.buffer.read())
    if os.fork():  # the spawner reaps its child at once; the keeper goes on as a grandchild, reparented to init
        os._exit(0)
    target = target_from_json(spec["target"])
    try:
        connection = connect(target, total_wait=spec["total_wait"], log=lambda line: _say({"log": line}),
                             connect_timeout=spec["connect_timeout"], booting=spec["booting"])
    except BaseException as e:  # noqa: B036 - the spawner raises it
        _say({"error": type(e).__name__, "message": str(e) or type(e).__name__})
        return
    keeper = Keeper(connection, Path(spec["socket"]), spec["persist"])
    try:
        server = keeper.bind()
    except OSError as e:
        connection.close()
        _say({"error": "TransportError", "message": f"cannot keep the connection to {target.address}: {e}"})
        return
    try:
        _say({"ready": True})
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        keeper.serve(server)
    finally:
        keeper.close()
        server.close()


if __name__ == "__main__":
    main()
    os._exit(0)  # paramiko's threads need no joining
