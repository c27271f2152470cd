"""Test traffic never leaves this machine: the test range has an unreachable route while hosts exist, so a downed
link or a deleted namespace gives "no route to host" at once instead of packets on the default route."""

import errno
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import netns_hosts
from tests.netns_hosts import TEST_RANGE, claim_index, require_namespaces

ROOT = Path(__file__).resolve().parent.parent


def unreachable_routes() -> str:
    return subprocess.run(["ip", "route", "show", "type", "unreachable"], capture_output=True, text=True).stdout


def connect_error(address: str) -> int:
    started = time.monotonic()
    with pytest.raises(OSError) as failure:
        socket.create_connection((address, 22), timeout=5).close()
    assert time.monotonic() - started < 1, "the connection hung: the packet went somewhere"
    return failure.value.errno


def test_the_range_is_unreachable_while_a_host_exists(make_host):
    host = make_host()
    assert TEST_RANGE in unreachable_routes()
    socket.create_connection((host.address, 22), timeout=5).close()  # the host's own /24 still wins


def test_a_downed_link_gives_no_route_rather_than_the_default_route(make_host):
    host = make_host()
    host.link(False)
    route = subprocess.run(["ip", "route", "get", host.address], capture_output=True, text=True)
    assert route.returncode != 0, f"{host.address} is routed: {route.stdout}"
    assert connect_error(host.address) == errno.EHOSTUNREACH
    host.link(True)


def test_a_deleted_namespace_gives_no_route(make_host):
    keeper, gone = make_host(), make_host()
    address = gone.address
    gone.cleanup()  # the namespace and its veth are gone; `keeper` still holds the range
    assert TEST_RANGE in unreachable_routes()
    assert connect_error(address) == errno.EHOSTUNREACH
    assert keeper.address != address


def test_host_indexes_are_never_shared():
    require_namespaces()
    first, first_lock = claim_index()
    second, second_lock = claim_index()
    try:
        assert first != second
        with pytest.raises(RuntimeError):
            claim_index(first)
    finally:
        first_lock.close()
        second_lock.close()
    again, lock = claim_index(first)
    lock.close()
    assert again == first


def test_the_last_process_using_the_range_removes_the_route(tmp_path, monkeypatch):
    """Two processes share a range of its own (10.252.0.0/16 here, so runs beside this one are not disturbed)."""
    require_namespaces()
    own_range = "10.252.0.0/16"
    monkeypatch.setattr(netns_hosts, "TEST_RANGE", own_range)
    monkeypatch.setattr(netns_hosts, "LOCK_DIR", tmp_path)
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from tests import netns_hosts as n; "
         f"n.TEST_RANGE = {own_range!r}; n.LOCK_DIR = Path({str(tmp_path)!r}); n.guard_test_range(); "
         "print('held', flush=True); sys.stdin.readline(); n.release_test_range()"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        netns_hosts.guard_test_range()
        netns_hosts.release_test_range()
        assert own_range in unreachable_routes(), "removed while another process still used it"
    finally:
        other.stdin.write("\n")
        other.stdin.close()
        other.wait(10)
    assert own_range not in unreachable_routes()


def test_what_a_killed_test_process_left_is_removed_by_the_next_user_of_its_index():
    """A test process killed outright (no cleanup) leaves its namespaces, what runs in them and their veths; the
    next process that claims the index removes them, and the next switch removes a dead process's switch."""
    require_namespaces()
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1])\n"
        "from tests.netns_hosts import NamespaceHost, Switch\n"
        "host = NamespaceHost('unused'); host.start_network(); switch = Switch().start(); switch.join(host)\n"
        "held = host.in_namespace('sleep', '600')\n"
        "print(host.index, host.ns, switch.ns, held.pid, flush=True); time.sleep(600)\n"), str(ROOT)],
        stdout=subprocess.PIPE, text=True)
    index, host_namespace, switch_namespace, held = child.stdout.readline().split()
    child.kill()
    child.wait()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert host_namespace in listed and switch_namespace in listed  # left behind
    assert Path(f"/proc/{held}").exists()
    host = netns_hosts.NamespaceHost("unused", index=int(index))
    switch = netns_hosts.Switch()
    try:
        host.start_network()
        switch.start()
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert re.search(rf"^{host_namespace}\b", listed, re.MULTILINE) is None or host_namespace == host.ns
        assert switch_namespace not in listed
        deadline = time.monotonic() + 5
        while Path(f"/proc/{held}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{held}").exists()  # what ran in the stale namespace was killed
    finally:
        switch.cleanup()
        host.cleanup()
