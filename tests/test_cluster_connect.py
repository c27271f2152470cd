"""A cluster's nodes connected to and given the run's cluster key line (provisioner.jobs.run_jobs.RunJobs.connect):
each node gets the line as soon as it is connected to, not once every node is; a node that cannot be connected to
fails the start before one that refused the line; an interrupted start adds no line after it has returned (its
teardown's removal would come before it). And the run's key pair (provisioner.jobs.cluster_ssh.ClusterKeys): begun in
a thread of its own as the run is submitted, a new one for each attempt."""

import shlex
import signal
import threading
import time
from dataclasses import dataclass

import pytest

from configuration.errors import DstackError
from provisioner.host.access import HostAccess
from provisioner.host.transport import CommandResult
from provisioner.jobs import cluster_ssh
from provisioner.jobs.cluster_ssh import ClusterKeys
from provisioner.jobs.run_jobs import NodeFailed, RunJobs
from provisioner.store.records import RunRecord
from provisioner.store.store import StateStore


class Recording:
    """A node's connection that records the commands it was given (those adding a cluster key take `slow` s)."""

    def __init__(self, refuse: bool = False, slow: float = 0.0):
        self.commands, self.finished = [], []
        self.refuse, self.slow = refuse, slow
        self.authorized = threading.Event()

    def run(self, command, stdin=None, timeout=None):
        self.commands.append(command)
        if "dstack-cluster-" in command:
            time.sleep(self.slow)
            self.authorized.set()
        self.finished.append(command)
        return CommandResult(1 if self.refuse else 0, b"", b"Permission denied" if self.refuse else b"")

    def close(self):
        pass


@dataclass(frozen=True)
class Node(HostAccess):
    """A fleet host whose connection is made by CONNECTIONS[hostname]."""

    def connect(self, total_wait=60.0, log=lambda _: None, booting=False):
        return CONNECTIONS[self.hostname]()


CONNECTIONS: dict = {}


def nodes(count: int = 2) -> list:
    return [Node("ssh", f"10.251.9.{rank + 1}", 22, "root", host_key="ssh-ed25519 AAAAnode") for rank in range(count)]


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """(RunJobs, the cluster key line) of run `c` on two nodes, whose connections the test sets in CONNECTIONS."""
    monkeypatch.setenv("DSTACK_HOME", str(tmp_path / "home"))
    store = StateStore()
    store.create_run(RunRecord(name="c", status="provisioning", submitted_at=1.0))
    hosts = nodes()
    yield RunJobs(store, "c", hosts), ClusterKeys("c", begin=True).for_hosts(hosts)[1]
    CONNECTIONS.clear()


def test_each_node_gets_the_line_as_soon_as_it_is_connected_to(cluster):
    """Node 1 answers only once node 0 has the line: with every connection awaited first, it never would."""
    jobs, line = cluster
    first, second = Recording(), Recording()

    def after_the_first() -> Recording:
        if not first.authorized.wait(10):
            raise DstackError("node 1 was connected to only once node 0 had the line: too late")
        return second

    CONNECTIONS.update({"10.251.9.1": lambda: first, "10.251.9.2": after_the_first})
    jobs.connect(lambda _: None, cluster_line=line)
    assert line.startswith('from="10.251.9.1,10.251.9.2" ssh-ed25519 ') and line.endswith(" dstack-cluster-c")
    for node in (first, second):  # the line, once each
        assert len(node.commands) == 1 and shlex.quote(line) in node.commands[0]
    assert jobs.transports == {0: first, 1: second}


def test_a_node_not_connected_to_fails_the_start_before_one_that_refused_the_line(cluster):
    jobs, line = cluster

    def unreachable():
        raise DstackError("root@10.251.9.2:22: no answer")

    CONNECTIONS.update({"10.251.9.1": lambda: Recording(refuse=True), "10.251.9.2": unreachable})
    with pytest.raises(DstackError, match="no answer"):
        jobs.connect(lambda _: None, cluster_line=line)
    CONNECTIONS["10.251.9.2"] = Recording
    with pytest.raises(NodeFailed) as refused:
        jobs.connect(lambda _: None, cluster_line=line)
    assert str(refused.value) == ("node 0 (root@10.251.9.1:22): cannot add the run's key to authorized_keys: "
                                  "Permission denied")


def test_an_interrupted_start_adds_no_line_after_it_has_returned(cluster):
    """Ctrl-C while node 0's line is being added and node 1 is still being connected to: node 0's addition is
    waited for, node 1 gets none once it answers."""
    jobs, line = cluster
    first, second = Recording(slow=0.5), Recording()
    answered = threading.Event()

    def interrupted_meanwhile() -> Recording:
        deadline = time.monotonic() + 10
        while not first.commands:
            if time.monotonic() > deadline:
                raise DstackError("node 0 got no line while node 1 was being connected to")
            time.sleep(0.01)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        time.sleep(0.5)
        answered.set()
        return second

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    CONNECTIONS.update({"10.251.9.1": lambda: first, "10.251.9.2": interrupted_meanwhile})
    try:
        with pytest.raises(KeyboardInterrupt):
            jobs.connect(lambda _: None, cluster_line=line)
        assert first.finished == first.commands != []  # not left under way
        assert answered.wait(10)
        time.sleep(0.3)  # node 1's thread, connected to, would add its line now
    finally:
        signal.signal(signal.SIGINT, previous)
    assert second.commands == []


def test_the_keys_runs_left_on_the_nodes_are_read_once_for_all_of_them(cluster, monkeypatch):
    """Each node's connection removes the cluster keys earlier runs left on it (revoke_left), from one read of the
    store for every node: a read per node took ~0.4 ms of the command's CPU each."""
    from provisioner.store.connection import SqliteDb

    jobs, line = cluster
    for rank, host in enumerate(jobs.hosts):
        jobs.store.add_key_left(f"old{rank}", host.to_json())
    statements, execute = [], SqliteDb.execute
    monkeypatch.setattr(SqliteDb, "execute", lambda db, sql, *rest: statements.append(sql) or execute(db, sql, *rest))
    first, second = Recording(), Recording()
    CONNECTIONS.update({"10.251.9.1": lambda: first, "10.251.9.2": lambda: second})
    jobs.connect(lambda _: None, cluster_line=line)
    assert len([sql for sql in statements if sql.startswith("SELECT") and "cluster_keys_left" in sql]) == 1
    for rank, node in enumerate((first, second)):  # each node's own old key removed, and its line added
        assert "dstack-cluster-old" + str(rank) in node.commands[0] and shlex.quote(line) in node.commands[1]
        assert not any(f"old{1 - rank}" in command for command in node.commands)
    assert all(jobs.store.keys_left(host.to_json()) == [] for host in jobs.hosts)


def test_the_first_pair_is_made_in_a_thread_of_its_own_and_each_attempt_gets_a_new_one(monkeypatch):
    made = []
    new_key_pair = cluster_ssh.new_key_pair

    def recorded(comment):
        made.append(threading.current_thread().name)
        return new_key_pair(comment)

    monkeypatch.setattr(cluster_ssh, "new_key_pair", recorded)
    keys = ClusterKeys("c", begin=True)
    lines = [keys.for_hosts(nodes())[1] for _ in range(2)]
    assert made == ["cluster-key", threading.current_thread().name]
    assert lines[0] != lines[1] and all(line.endswith(" dstack-cluster-c") for line in lines)
    ClusterKeys("single", begin=False)
    assert len(made) == 2  # a run of one node makes none
