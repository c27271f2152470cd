"""What a keeper (provisioner.host.keeper) and its clients spend per command beyond the host's own work: a message
and a command's answer go in one write (the other end wakes once), an announced key check that its announcer waits
for runs in the thread serving it (no thread of its own), and a client is served by a thread the keeper has."""

import os
import socket
import struct
import threading
import time

from provisioner.host import keeper_wire
from provisioner.host.keeper import Keeper
from provisioner.host.keeper_client import KeptTransport
from provisioner.host.keeper_wire import recv_frame, recv_json, send_json
from provisioner.host.ssh import SSHTarget, connect


class CountedSocket:
    """One end of a socket pair that counts its writes."""

    def __init__(self, sock: socket.socket):
        self.sock, self.writes = sock, 0

    def sendall(self, data) -> None:
        self.writes += 1
        self.sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_a_message_and_a_commands_answer_go_in_one_write():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        counted = CountedSocket(ours)
        send_json(counted, {"op": "hello"})
        keeper_wire.send_frames(counted, b'{"code": 0}', b"out", b"")
        assert counted.writes == 2
        assert recv_json(theirs) == {"op": "hello"}
        assert (recv_json(theirs), recv_frame(theirs), recv_frame(theirs)) == ({"code": 0}, b"out", b"")


def test_a_command_and_its_archive_go_to_the_keeper_in_one_write(tmp_path):
    ours, theirs = socket.socketpair()
    with theirs:
        counted = CountedSocket(ours)
        kept = KeptTransport(counted, SSHTarget("10.251.0.2"), tmp_path / "keeper.sock")
        theirs.sendall(b"".join(struct.pack(">I", len(data)) + data for data in (b'{"code": 3}', b"o", b"e")))
        result = kept.run("cat", stdin=b"archive", timeout=5)
        assert (result.code, result.stdout, result.stderr, counted.writes) == (3, b"o", b"e", 1)
        assert recv_json(theirs)["stdin"] and list(keeper_wire.recv_stream(theirs)) == [b"archive"]
        kept.close()


def test_an_announced_check_waited_for_runs_in_the_serving_thread(make_host, client_key, tmp_path, monkeypatch):
    host = make_host()
    connection = connect(SSHTarget(host.address, identity_file=client_key[0], host_key=host.host_public_key), 10)
    keeper = Keeper(connection, tmp_path / "keeper.sock", persist=60)
    started, start = [], threading.Thread.start

    def counted_start(thread):
        started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counted_start)
    announcer, served = socket.socketpair()
    try:
        with announcer:
            send_json(announcer, {"op": "expect", "since": time.monotonic() - 1, "answer": True})
            keeper._clients = 1  # as serve() counts the client it hands to _serve_client
            keeper._serve_client(served)
            assert recv_json(announcer) == {"checked": True}
        assert started == []
        assert keeper._early_check_for(time.monotonic() - 1).outcome(0) is None  # the host still holds its key
    finally:
        connection.close()


def test_a_keepers_next_clients_are_served_by_the_threads_it_has(make_host, client_key):
    """A thread started per client cost ~0.1-0.3 ms of the keeper's CPU: once the first client is served, the next
    ones (one after another) start no thread in the keeper."""
    from provisioner.host.access import HostAccess
    from provisioner.host.keeper_wire import keeper_folder
    from tests.test_keeper import keeper_pid

    host = make_host()
    access = HostAccess(kind="ssh", hostname=host.address, user="root", identity_file=client_key[0],
                        host_key=host.host_public_key)
    threads_seen, pid = [], None
    for _ in range(4):
        kept = access.connect(total_wait=10)
        try:
            assert type(kept).__name__ == "KeptTransport" and kept.run("echo used").text == "used\n"
            if pid is not None:  # the threads while the keeper serves this client
                threads_seen.append(set(os.listdir(f"/proc/{pid}/task")))
        finally:
            kept.close()
        if pid is None:  # asking its socket's peer is a client of the keeper's too
            [path] = keeper_folder().glob("*.sock")
            pid = keeper_pid(path)
        time.sleep(0.5)  # the keeper's thread is done with the client
    assert threads_seen[0] == threads_seen[1] == threads_seen[2], threads_seen
