"""Forwards `localhost:LOCAL` to a port on the host: through the SSH connection (paramiko `direct-tcpip` channels)
for remote hosts, or to another local port for the local backend. One listener thread per port, one pump thread per
accepted connection."""

from __future__ import annotations

import select
import socket
import threading
from typing import Callable, List, Optional, Tuple

from configuration.errors import ConfigurationError


class PortTaken(ConfigurationError):
    pass


LOOPBACK = "127.0.0.1"


def bind_local(port: Optional[int], address: str = LOOPBACK) -> socket.socket:
    """A listening socket on `address` (this machine's loopback unless told: `dstack attach --host`); port None
    picks a free one."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((address, port or 0))
    except socket.gaierror as e:
        listener.close()
        raise ConfigurationError(f"cannot listen on {address}: {e.strerror or e}") from None
    except OSError:
        listener.close()
        raise PortTaken(f"local port {port} is already in use by another program; map the task's port to another "
                        f"local port (ports: [\"{port + 1}:{port}\"]) or to any free one (\"*:{port}\")") from None
    listener.listen(64)
    return listener


def _pump(a, b) -> None:
    """Copy both ways between a socket and a channel until either side closes."""
    try:
        while True:
            readable, _, _ = select.select([a, b], [], [], 1.0)
            if a in readable:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
            if b in readable:
                data = b.recv(65536)
                if not data:
                    break
                a.sendall(data)
    except (OSError, EOFError):
        pass
    finally:
        for end in (a, b):
            try:
                end.close()
            except OSError:
                pass


def ssh_opener(ssh_transport: Callable[[], object], remote_host: str = "127.0.0.1"):
    """Streams through the SSH connection; `ssh_transport` is called per connection, so a reconnected transport is
    picked up."""
    return lambda port, address: ssh_transport().open_channel("direct-tcpip", (remote_host, port), address, timeout=10)


def local_opener(port: int, address) -> socket.socket:
    stream = socket.create_connection(("127.0.0.1", port), timeout=10)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream.settimeout(None)
    return stream


class PortForwarder:
    def __init__(self, open_stream: Callable[[int, Tuple[str, int]], object], address: str = LOOPBACK):
        self._open_stream = open_stream
        self.address = address
        self._listeners: List[socket.socket] = []
        self._stopping = threading.Event()
        self.bound: List[Tuple[int, int]] = []  # (local port, remote port)

    def forward(self, local_port: Optional[int], remote_port: int) -> int:
        listener = bind_local(local_port, self.address)
        self._listeners.append(listener)
        port = listener.getsockname()[1]
        self.bound.append((port, remote_port))
        threading.Thread(target=self._accept, args=(listener, remote_port), daemon=True,
                         name=f"forward-{port}").start()
        return port

    def _accept(self, listener: socket.socket, remote_port: int) -> None:
        while not self._stopping.is_set():
            try:
                client, address = listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                stream = self._open_stream(remote_port, address)
            except Exception:  # the host refused or the connection is down: drop this client, keep listening
                client.close()
                continue
            threading.Thread(target=_pump, args=(client, stream), daemon=True).start()

    def close(self) -> None:
        self._stopping.set()
        for listener in self._listeners:
            listener.close()
