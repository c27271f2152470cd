"""Test hosts with addresses of their own: a network namespace joined to this machine by a veth pair, running a
real OpenSSH sshd. Traffic goes only to these namespaces' addresses (10.251.N.2, made here).

Network safety: while any host of the test range exists, the whole range (TEST_RANGE) has an `unreachable` route.
A host's /24 is more specific and wins while its link is up; when a test takes the link down or deletes the
namespace, its /24 route goes and the packets meet the unreachable route instead of the default route off this
machine. The route is shared by every process using the range (a shared flock) and removed by the last one.
Each host's index N is claimed across processes with its own flock, so concurrent test runs never share an address.

Outside CI the tests that need them skip, with the reason, where namespaces cannot be made (not root, no `ip`);
under CI (`CI=true`) they must run, so a missing capability fails instead.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
TEST_RANGE = "10.251.0.0/16"
LOCK_DIR = Path("/run/dstack-test-hosts")
HOST_INDEXES = range(10, 250)

_range_users = 0
_range_lock = None


def guard_test_range() -> None:
    """Puts the unreachable route for TEST_RANGE in place (once per process) until `release_test_range`."""
    global _range_users, _range_lock
    if _range_users == 0:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        lock = open(LOCK_DIR / "range.lock", "a+")
        fcntl.flock(lock, fcntl.LOCK_SH)
        added = subprocess.run(["ip", "route", "add", "unreachable", TEST_RANGE], capture_output=True, text=True)
        if added.returncode != 0 and "File exists" not in added.stderr:
            lock.close()
            raise RuntimeError(f"cannot add the unreachable route for {TEST_RANGE}: {added.stderr.strip()}")
        _range_lock = lock
    _range_users += 1


def release_test_range() -> None:
    """Drops this process's use of the range; the last process using it removes the unreachable route."""
    global _range_users, _range_lock
    _range_users -= 1
    if _range_users > 0:
        return
    lock, _range_lock = _range_lock, None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while another process still uses the range
    except BlockingIOError:
        pass
    else:
        subprocess.run(["ip", "route", "del", "unreachable", TEST_RANGE], capture_output=True)
    finally:
        lock.close()


def claim_index(wanted=None):
    """An index no other process holds, with its lock (kept open for as long as the host lives)."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    for index in ([wanted] if wanted is not None else HOST_INDEXES):
        lock = open(LOCK_DIR / f"host-{index}.lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return index, lock
    raise RuntimeError(f"no free test host index (asked for {wanted})" if wanted is not None
                       else "every test host index is in use")


def namespaces_available() -> str:
    """'' when namespace hosts can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "iproute2 (`ip`) is not installed"
    if not os.path.exists(SSHD):
        return "openssh-server (sshd) is not installed"
    probe = subprocess.run(["ip", "netns", "add", f"dstk-probe-{os.getpid()}"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", f"dstk-probe-{os.getpid()}"], capture_output=True)
    return ""


def require_namespaces() -> None:
    reason = namespaces_available()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"namespace hosts must run under CI: {reason}")
        pytest.skip(reason)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


class NamespaceHost:
    """One test host: namespace `dstk<pid>-<n>`, address 10.251.<n>.2, sshd on port 22 accepting `client_key` (its
    authorized_keys is the host's own file, which sshd names to dstack as DSTACK_AUTHORIZED_KEYS).
    Without an index, the first one that no process holds."""

    def __init__(self, client_public_key: str, index=None, login_user=None):
        """`login_user`: a user of this host's own besides root (no sudo: this machine has none), whose
        home is the host's folder's `home`; sshd sees it in copies of /etc/passwd and /etc/group bound over them in
        a mount namespace of sshd's own, so this machine's files stay as they are."""
        index, self._index_lock = claim_index(index)
        self.login_user = login_user
        self.uid = 60000 + index
        self.index = index
        self.ns = f"dstk{os.getpid() % 10000}-{index}"
        self.veth_host = f"dv{os.getpid() % 10000}h{index}"
        self.veth_ns = f"dv{os.getpid() % 10000}n{index}"
        self.address = f"10.251.{index}.2"
        self.host_side = f"10.251.{index}.1"
        self.dir = Path(tempfile.mkdtemp(prefix=f"dstack-host{index}-"))
        self.jobs_dir = self.dir / "jobs"
        self.client_public_key = client_public_key
        self.process = None

    def start(self) -> "NamespaceHost":
        self.start_network()
        self.new_host_key()
        (self.dir / "authorized_keys").write_text(self.client_public_key + "\n")
        self.jobs_dir.mkdir()
        if self.login_user:
            self._add_login_user()
        (self.dir / "sshd_config").write_text("\n".join([
            "Port 22", f"ListenAddress {self.address}", f"HostKey {self.dir / 'host_key'}",
            f"PidFile {self.dir / 'sshd.pid'}", f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "StrictModes no", "AllowTcpForwarding yes", "LogLevel ERROR", "MaxStartups 100",
            f"SetEnv DSTACK_JOBS_DIR={self.jobs_dir} DSTACK_AUTHORIZED_KEYS={self.dir / 'authorized_keys'}",
        ]) + "\n")
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        self.start_sshd()
        return self

    def start_network(self) -> None:
        """The namespace and its link to this machine (the test range guarded first): what every test host has,
        whatever runs in it (tests.cloudsim.guest runs a simulated cloud VM there)."""
        guard_test_range()
        self._guarded = True
        self._remove_stale_leftovers()
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns)
        sh("ip", "link", "set", self.veth_ns, "netns", self.ns)
        sh("ip", "addr", "add", f"{self.host_side}/24", "dev", self.veth_host)
        sh("ip", "link", "set", self.veth_host, "up")
        sh("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.address}/24", "dev", self.veth_ns)
        sh("ip", "netns", "exec", self.ns, "ip", "link", "set", self.veth_ns, "up")
        sh("ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up")

    def _remove_stale_leftovers(self) -> None:
        """A test process killed outright (SIGKILL: no cleanup) leaves its hosts' namespaces, what ran in them and
        their veths behind; its index locks died with it, so a namespace of this index under any process's name is
        stale now that this process holds the index: what runs there is killed and the namespace removed, and so is a
        veth with this index's address."""
        for namespace in re.findall(rf"^(dstk\d+-{self.index})\b", _namespaces(), re.MULTILINE):
            stale = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
            if stale:
                subprocess.run(["kill", "-KILL", *stale], capture_output=True)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        shown = subprocess.run(["ip", "-o", "addr", "show", "to", self.host_side], capture_output=True, text=True)
        for line in shown.stdout.splitlines():
            device = line.split()[1].split("@")[0]
            subprocess.run(["ip", "link", "del", device], capture_output=True)

    def new_host_key(self) -> None:
        for suffix in ("", ".pub"):
            (self.dir / f"host_key{suffix}").unlink(missing_ok=True)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / "host_key"))

    @property
    def host_public_key(self) -> str:
        return " ".join((self.dir / "host_key.pub").read_text().split()[:2])

    def _add_login_user(self) -> None:
        home = self.dir / "home"
        home.mkdir()
        entry = f"{self.login_user}:x:{self.uid}:{self.uid}::{home}:/bin/sh\n"
        (self.dir / "passwd").write_text(Path("/etc/passwd").read_text() + entry)
        (self.dir / "group").write_text(Path("/etc/group").read_text() + f"{self.login_user}:x:{self.uid}:\n")
        for path in (home, self.jobs_dir):
            os.chown(path, self.uid, self.uid)
        self.dir.chmod(0o755)
        (self.dir / "authorized_keys").chmod(0o644)

    def start_sshd(self) -> None:
        argv = [SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")]
        if self.login_user:
            binds = (f"mount --bind {self.dir / 'passwd'} /etc/passwd && mount --bind {self.dir / 'group'} /etc/group"
                     " && exec \"$@\"")
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", binds, "sshd", *argv]
        self.process = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.address, 22), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"sshd failed: {self.process.stderr.read().decode()}") from None
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening within 10s")

    def stop_sshd(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)
        (self.dir / "sshd.pid").unlink(missing_ok=True)

    def link(self, up: bool) -> None:
        sh("ip", "link", "set", self.veth_host, "up" if up else "down")

    def in_namespace(self, *argv: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], **kwargs)

    def pids(self) -> list:
        return subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True).stdout.split()

    def cleanup(self) -> None:
        """What still runs in the namespace gets SIGTERM (and SIGCONT, where a test froze it) and 2 s before SIGKILL,
        as a stop gives it: a shell killed outright in its login profile can leave a lock behind (`pyenv rehash`
        holds one under root's shared ~/.pyenv), which every later login shell would wait on."""
        self.stop_sshd()
        pids = self.pids()
        if pids:
            subprocess.run(["kill", "-TERM", *pids], capture_output=True)
            subprocess.run(["kill", "-CONT", *pids], capture_output=True)
            deadline = time.monotonic() + 2
            while pids and time.monotonic() < deadline:
                time.sleep(0.05)
                pids = self.pids()
            if pids:
                subprocess.run(["kill", "-KILL", *pids], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth_host], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        if getattr(self, "_guarded", False):
            self._guarded = False
            release_test_range()
        self._index_lock.close()


class Switch:
    """An L2 switch joining cluster test hosts, so that each reaches the others' addresses (10.251.N.2) directly:
    a bridge in a namespace of its own, one veth from each host to it, and in each host a /32 route to every other
    member through that veth. Nothing goes through this machine's namespace (no IP forwarding there, no route
    outside TEST_RANGE); removing the switch's namespace removes its veths and so the hosts' routes to each other.
    Its name carries this process's id and a count, so concurrent test runs never share one."""

    _made = 0

    def __init__(self):
        Switch._made += 1
        self.ns = f"dstksw{os.getpid()}-{Switch._made}"  # a namespace's name is a file name: no 15-byte limit
        self.members: list = []  # (host, its veth to the switch)

    def start(self) -> "Switch":
        for namespace, pid in re.findall(r"^(dstksw(\d+)-\d+)\b", _namespaces(), re.MULTILINE):
            if not os.path.exists(f"/proc/{pid}"):  # a switch of a test process killed outright
                subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        sh("ip", "netns", "add", self.ns)
        sh("ip", "netns", "exec", self.ns, "ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "netns", "exec", self.ns, "ip", "link", "set", "br0", "up")
        return self

    def join(self, host: NamespaceHost) -> None:
        link = f"ds{os.getpid() % 10000}c{host.index}"
        port = f"ds{os.getpid() % 10000}p{host.index}"
        sh("ip", "link", "add", link, "type", "veth", "peer", "name", port)
        sh("ip", "link", "set", link, "netns", host.ns)
        sh("ip", "link", "set", port, "netns", self.ns)
        sh("ip", "netns", "exec", self.ns, "ip", "link", "set", port, "master", "br0", "up")
        sh("ip", "netns", "exec", host.ns, "ip", "link", "set", link, "up")
        for other, other_link in self.members:
            sh("ip", "netns", "exec", host.ns, "ip", "route", "add", f"{other.address}/32", "dev", link,
               "src", host.address)
            sh("ip", "netns", "exec", other.ns, "ip", "route", "add", f"{host.address}/32", "dev", other_link,
               "src", other.address)
        self.members.append((host, link))

    def cleanup(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


def host_without(make_host, *missing: str) -> "NamespaceHost":
    """A host (from the `make_host` fixture) whose login user `tester` finds on PATH every program of this machine's
    bin folders but `missing`: links in the host's folder (which its user may read), named to sshd's sessions by a
    PATH in its SetEnv."""
    host = make_host(login_user="tester")
    tools = host.dir / f"bin-without-{'-'.join(missing)}"
    tools.mkdir()
    for folder in ("/usr/local/bin", "/usr/bin", "/usr/sbin"):
        for entry in os.scandir(folder):
            if entry.name not in missing and not (tools / entry.name).exists():
                (tools / entry.name).symlink_to(entry.path)
    host.stop_sshd()
    config = host.dir / "sshd_config"
    config.write_text(config.read_text().replace("SetEnv ", f"SetEnv PATH={tools} "))
    host.start_sshd()
    return host

