"""A Docker daemon of the tests' own (its own data root, exec root and socket; no iptables, no bridge), and a tiny
image made locally from busybox-static, since nothing can be pulled here."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

IMAGE = "dstack-test/busybox:1"
APPLETS = ("sh", "echo", "cat", "sleep", "env", "df", "pwd", "httpd", "ls", "mkdir", "true", "printf", "trap", "wc")


def docker_unavailable() -> str:
    if os.geteuid() != 0:
        return "dockerd needs root"
    for tool in ("dockerd", "docker", "busybox"):
        if not shutil.which(tool):
            return f"{tool} is not installed (Debian: docker.io, busybox-static)"
    return ""


class DockerDaemon:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="dstack-dockerd-"))
        self.socket = self.dir / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.process = None

    def start(self) -> "DockerDaemon":
        self.process = subprocess.Popen(
            ["dockerd", "--data-root", str(self.dir / "data"), "--exec-root", str(self.dir / "exec"),
             "-H", self.host, "--pidfile", str(self.dir / "docker.pid"), "--iptables=false", "--ip6tables=false",
             "--bridge=none"], stdout=subprocess.DEVNULL, stderr=open(self.dir / "dockerd.log", "wb"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.docker("version", check=False).returncode == 0:
                self.build_image()
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError("dockerd did not start: " + (self.dir / "dockerd.log").read_text()[-2000:])

    def docker(self, *args, check=True, **kwargs):
        return subprocess.run(["docker", "-H", self.host, *args], capture_output=True, text=True, check=check, **kwargs)

    def build_image(self) -> None:
        archive = self.dir / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            for folder in ("bin", "tmp", "workflow", "etc"):
                info = tarfile.TarInfo(folder)
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
                tar.addfile(info)
            tar.add(shutil.which("busybox"), arcname="bin/busybox")
            for applet in APPLETS:
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
        with open(archive, "rb") as f:
            subprocess.run(["docker", "-H", self.host, "import", "-", IMAGE], stdin=f, check=True, capture_output=True)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            for container in self.docker("ps", "-aq", check=False).stdout.split():
                self.docker("rm", "-f", container, check=False)
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        for mount in mounts_under(self.dir):  # dockerd's own netns file among them: `umount -R exec` misses it
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def mounts_under(folder: Path) -> list:
    """The mount points inside `folder`, deepest first (from /proc/self/mounts, octal escapes decoded)."""
    prefix = str(folder).rstrip("/") + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


@pytest.fixture(scope="session")
def docker_daemon():
    reason = docker_unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Docker tests must run under CI: {reason}")
        pytest.skip(reason)
    daemon = DockerDaemon().start()
    yield daemon
    daemon.stop()
