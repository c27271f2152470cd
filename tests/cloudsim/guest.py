"""A simulated cloud VM: a namespace host (tests.netns_hosts: its own address, the test range's unreachable route
kept) whose processes run in a sandbox of their own, so that what the VM's user data and jobs do never changes this
machine.

The sandbox: a mount, PID and UTS namespace whose root is an overlay of this machine's root with the VM's own layer
(under /dev/shm, a filesystem apart from the root's, as overlayfs wants) on top: every file the VM writes (`/etc`,
`/usr/local/sbin`, the user's home, `/tmp`) lands in that layer; `/dev` is a small tmpfs with the harmless devices
alone; a `reboot(2)` in a PID namespace ends that namespace, not the machine. The commands that would change a real
machine are the VM's SHIM (written over them in its layer): `shutdown`, `poweroff`, `halt`, `reboot`, `systemctl`,
`systemd-run`, `apt-get`, `apt` record an event in /var/log/cloudsim/events, which the simulator acts on (a power-off
stops the VM, a timer is kept for the test to fire); `sudo` runs its command (the image's `ubuntu` has passwordless
sudo; here it is uid 0 in the VM's own /etc/passwd, which makes sudo a no-op); `blkid`, `mkfs.ext4` and `mount` know
the simulator's network disks (a folder the simulator keeps, bound into the VM where the cloud attaches it).

Every command the simulator runs in the VM goes through `nsenter` into the VM's namespaces and root, and first
checks that it is there (/.cloudsim-vm); nothing is run on this machine as root outside the sandbox.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import List, Optional, Sequence

from tests.netns_hosts import SSHD, NamespaceHost

LAYERS = Path("/dev/shm")
MARKER = "/.cloudsim-vm"
EVENTS = "/var/log/cloudsim/events"
BOOTED = "/var/log/cloudsim/booted"  # written by the VM's init once it runs in the VM's root
DISKS = "/var/lib/cloudsim/disks"  # a network disk's folder, as the VM sees it
REAL_MOUNT = "/usr/lib/cloudsim/mount.real"
VM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHIMMED = ("/usr/bin/systemctl", "/usr/bin/systemd-run", "/usr/sbin/shutdown", "/usr/sbin/poweroff",
           "/usr/sbin/halt", "/usr/sbin/reboot", "/usr/bin/apt-get", "/usr/bin/apt", "/usr/bin/sudo",
           "/usr/sbin/blkid", "/usr/sbin/mkfs.ext4", "/usr/bin/mount")

SHIM = r"""#!/bin/sh
# cloudsim (tests/cloudsim/guest.py): this VM's stand-in for a command that would change a real machine.
me=${0##*/}
event() {
  line="$(date +%s.%N)	$me"
  for a in "$@"; do line="$line	$(printf %s "$a" | tr '\t\n' '  ')"; done
  printf '%s\n' "$line" >> EVENTS
}
disk_of() { case $(readlink -f "$1" 2>/dev/null) in DISKS/*) readlink -f "$1" ;; *) return 1 ;; esac; }
case $me in
  sudo)
    while [ $# -gt 0 ]; do
      case $1 in -u|-g) shift 2 ;; --) shift; break ;; -*) shift ;; *) break ;; esac
    done
    [ $# -eq 0 ] && exit 0
    exec "$@" ;;
  blkid)
    for last in "$@"; do :; done
    disk=$(disk_of "$last") || { event "$@"; exit 2; }
    [ -f "$disk/.cloudsim-filesystem" ] || exit 2
    echo "$last: TYPE=\"ext4\""; exit 0 ;;
  mkfs.ext4)
    for last in "$@"; do :; done
    disk=$(disk_of "$last") || { event "$@"; echo "mkfs.ext4: $last is no disk of this VM" >&2; exit 1; }
    event "$@"; touch "$disk/.cloudsim-filesystem"; exit 0 ;;
  mount)
    if [ $# -eq 2 ] && disk=$(disk_of "$1"); then
      [ -f "$disk/.cloudsim-filesystem" ] || { echo "mount: $1: wrong fs type, bad superblock" >&2; exit 32; }
      event "$@"; exec REAL_MOUNT --bind "$disk" "$2"
    fi
    [ $# -eq 0 ] && exec REAL_MOUNT
    event "$@"; echo "mount: only the VM's network disks can be mounted here" >&2; exit 32 ;;
  *) event "$@"; exit 0 ;;
esac
""".replace("EVENTS", EVENTS).replace("DISKS", DISKS).replace("REAL_MOUNT", REAL_MOUNT)

# The VM's boot: the sandbox's mounts, each checked (`set -e`), then its init (PID 1 of the VM, reaping orphans).
BOOT = r"""set -eu
M=MERGED
mount -t overlay cloudsim-root -o lowerdir=/,upperdir=UPPER,workdir=WORK "$M"
[ -e "$M/.cloudsim-vm" ]
for shimmed in SHIMMED; do grep -q '^# cloudsim' "$M$shimmed"; done
mount -t proc proc "$M/proc"
mount -t tmpfs -o mode=755,size=8m cloudsim-dev "$M/dev"
for device in null zero full random urandom tty ptmx; do
  touch "$M/dev/$device"; mount --bind "/dev/$device" "$M/dev/$device"
done
mkdir -p "$M/dev/pts" "$M/dev/shm" "$M/dev/disk/by-id"
mount --bind /dev/pts "$M/dev/pts"
ln -s /proc/self/fd "$M/dev/fd"
mount -t tmpfs -o mode=755 cloudsim-run "$M/run"
mkdir -p "$M/run/sshd"
mount --bind /usr/bin/mount "$M/REAL_MOUNT"
hostname HOSTNAME
exec chroot "$M" /bin/sh -c 'echo booted > BOOTED; while :; do sleep 5; done'
"""


class GuestVM(NamespaceHost):
    """One VM: `boot` starts its sandbox (its layer kept across a stop and a start, as a disk is), `run` runs a
    command in it, `start_sshd` serves SSH on its address, `halt` ends every process (a power-off), `cleanup` removes
    it all. `hosts_lines` go into its /etc/hosts (where the cloud's metadata server is)."""

    def __init__(self, name: str, hosts_lines: Sequence[str] = (), ca_bundle: Optional[str] = None):
        super().__init__(client_public_key="")
        self.name = name
        self.layer = LAYERS / f"cloudsim-{os.getpid()}-{self.index}"
        self.hosts_lines = list(hosts_lines)
        self.ca_bundle = ca_bundle
        self.boot_process: Optional[subprocess.Popen] = None
        self.init_pid: Optional[int] = None
        self.sshd: Optional[subprocess.Popen] = None
        self.events_read = 0
        self.boots = 0  # a reboot gets a copy of the layer: the last boot's overlay may not be quite gone yet

    # --- the sandbox -------------------------------------------------------------------------------------------

    def create(self) -> "GuestVM":
        """The VM's network and its first layer: the image (an Ubuntu cloud image's default user `ubuntu`, its sshd
        configuration, the shims); nothing runs yet."""
        self.start_network()
        shutil.rmtree(self.layer, ignore_errors=True)
        for folder in ("upper-0", "work-0", "merged"):
            (self.layer / folder).mkdir(parents=True)
        upper = self.upper
        self._write(upper / MARKER.lstrip("/"), f"{self.name}\n")
        for path in SHIMMED:
            self._write(upper / path.lstrip("/"), SHIM, 0o755)
        self._write(upper / REAL_MOUNT.lstrip("/"), "")
        passwd = Path("/etc/passwd").read_text()
        self._write(upper / "etc/passwd", passwd + "ubuntu:x:0:0:Ubuntu:/home/ubuntu:/bin/bash\n")
        (upper / "home/ubuntu/.ssh").mkdir(parents=True)
        (upper / "var/log/cloudsim").mkdir(parents=True)
        (upper / DISKS.lstrip("/")).mkdir(parents=True)
        self._write(upper / EVENTS.lstrip("/"), "")
        hosts = [line.format(host_side=self.host_side) for line in self.hosts_lines]
        self._write(upper / "etc/hosts",
                    "\n".join(["127.0.0.1 localhost", f"{self.address} {self.name}", *hosts]) + "\n")
        if self.ca_bundle:
            self._write(upper / "etc/ssl/certs/ca-certificates.crt", self.ca_bundle)
        self._write(upper / "etc/ssh/sshd_config", "\n".join([
            "Port 22", "AuthorizedKeysFile .ssh/authorized_keys", "PidFile /run/sshd.pid",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "StrictModes no", "AllowTcpForwarding yes", "MaxStartups 100", "LogLevel ERROR",
            "Subsystem sftp internal-sftp"]) + "\n")
        return self

    @staticmethod
    def _write(path: Path, text: str, mode: int = 0o644) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)

    @property
    def upper(self) -> Path:
        """The VM's own files: its overlay's upper layer, as of its last boot."""
        return self.layer / f"upper-{max(self.boots - 1, 0)}"

    def boot(self) -> None:
        """Starts the sandbox (a stopped VM's layer is as it left it); raises when a mount or check fails."""
        if self.boots:
            previous = self.upper
            subprocess.run(["cp", "-a", str(previous), str(self.layer / f"upper-{self.boots}")], check=True)
            (self.layer / f"work-{self.boots}").mkdir()
            shutil.rmtree(previous, ignore_errors=True)
        self.boots += 1
        booted = self.upper / BOOTED.lstrip("/")
        booted.unlink(missing_ok=True)
        script = (BOOT.replace("MERGED", str(self.layer / "merged")).replace("BOOTED", BOOTED)
                  .replace("UPPER", str(self.upper)).replace("WORK", str(self.layer / f"work-{self.boots - 1}"))
                  .replace("SHIMMED", " ".join(SHIMMED)).replace("REAL_MOUNT", REAL_MOUNT.lstrip("/"))
                  .replace("HOSTNAME", shlex.quote(self.name)))
        (self.dir / "boot.sh").write_text(script)
        log = open(self.dir / "boot.log", "wb")
        self.boot_process = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "unshare", "--mount", "--pid", "--uts", "--fork", "--propagation",
             "private", "sh", str(self.dir / "boot.sh")], stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 10
        while not booted.exists():
            if self.boot_process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"VM {self.name} did not boot: {(self.dir / 'boot.log').read_text()[-500:]}")
            time.sleep(0.01)
        pid = self.boot_process.pid
        while not self.init_pid:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            self.init_pid = int(children[0]) if children else None
            if not self.init_pid:
                time.sleep(0.01)

    @property
    def running(self) -> bool:
        return self.init_pid is not None and self.boot_process is not None and self.boot_process.poll() is None

    def run(self, argv: Sequence[str], input: Optional[bytes] = None, timeout: float = 60,
            env: Optional[dict] = None) -> subprocess.CompletedProcess:
        """`argv` as root in the VM (its root, its namespaces), with a clean environment."""
        if not self.running:
            raise RuntimeError(f"VM {self.name} is not running")
        environment = {"PATH": VM_PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
        guarded = ["/bin/sh", "-c", f'[ -e {MARKER} ] || exit 97; exec "$@"', "sh", *argv]
        return subprocess.run(["nsenter", "-t", str(self.init_pid), "-m", "-n", "-p", "-u", "-r", "-w", "--",
                               "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in environment.items()), *guarded],
                              input=input, capture_output=True, timeout=timeout)

    def spawn(self, argv: Sequence[str]) -> subprocess.Popen:
        """`argv` in the VM in the background (a timer's command): it ends with the VM at the latest."""
        guarded = ["/bin/sh", "-c", f'[ -e {MARKER} ] || exit 97; exec "$@"', "sh", *argv]
        return subprocess.Popen(["nsenter", "-t", str(self.init_pid), "-m", "-n", "-p", "-u", "-r", "-w", "--",
                                 "/usr/bin/env", "-i", f"PATH={VM_PATH}", "HOME=/root", *guarded],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def write_file(self, path: str, content: bytes, mode: str = "0644", append: bool = False) -> None:
        """A file in the VM, written from inside it (so through its layer)."""
        operator = ">>" if append else ">"
        script = f'mkdir -p "$(dirname "$1")" && cat {operator} "$1" && chmod "$2" "$1"'
        done = self.run(["/bin/sh", "-c", script, "sh", path, mode], input=content)
        if done.returncode != 0:
            raise RuntimeError(f"VM {self.name}: writing {path} failed: {done.stderr.decode()[-300:]}")

    def file(self, path: str) -> Optional[str]:
        """A file as the VM sees it: its own layer's copy, else the image's (this machine's, read only)."""
        done = self.run(["/bin/cat", path]) if self.running else None
        if done is not None:
            return done.stdout.decode() if done.returncode == 0 else None
        upper = self.upper / path.lstrip("/")
        return upper.read_text() if upper.is_file() else None

    def attach_disk(self, device_name: str, folder: Path) -> None:
        """A network disk (the simulator's folder for it) appears at /dev/disk/by-id/`device_name`."""
        inside = f"{DISKS}/{folder.name}"
        self.run(["/bin/mkdir", "-p", inside])
        merged = self.layer / "merged"
        subprocess.run(["nsenter", "-t", str(self.init_pid), "-m", "--", "mount", "--bind", str(folder),
                        str(merged) + inside], check=True, capture_output=True)
        self.run(["/bin/ln", "-sfn", inside, f"/dev/disk/by-id/{device_name}"])

    def written(self, under: str = "/") -> List[str]:
        """The files the VM has written (its layer's), under a folder: what it would have changed on a machine."""
        upper = self.upper
        root = upper / under.lstrip("/")
        seeded = {MARKER, EVENTS, BOOTED, REAL_MOUNT, "/etc/passwd", "/etc/hosts", "/etc/ssh/sshd_config",
                  "/etc/ssl/certs/ca-certificates.crt", *SHIMMED}
        found = ["/" + str(path.relative_to(upper)) for path in root.rglob("*") if path.is_file()] \
            if root.is_dir() else []
        return sorted(path for path in found if path not in seeded)

    # --- sshd ----------------------------------------------------------------------------------------------------

    def start_sshd(self) -> None:
        """sshd with the host keys the VM has now (those in /etc/ssh)."""
        log = open(self.dir / "sshd.log", "ab")
        command = 'for key in /etc/ssh/ssh_host_*_key; do [ -f "$key" ] && set -- "$@" -h "$key"; done; ' \
                  f'exec {SSHD} -D -e -f /etc/ssh/sshd_config "$@"'
        guarded = ["/bin/sh", "-c", f'[ -e {MARKER} ] || exit 97; {command}', "sh"]
        self.sshd = subprocess.Popen(["nsenter", "-t", str(self.init_pid), "-m", "-n", "-p", "-u", "-r", "-w", "--",
                                      "/usr/bin/env", "-i", f"PATH={VM_PATH}", *guarded],
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.address, 22), timeout=0.2).close()
                return
            except OSError:
                if self.sshd.poll() is not None:
                    log_text = (self.dir / "sshd.log").read_text()[-300:]
                    raise RuntimeError(f"VM {self.name}: sshd failed: {log_text}") from None
                time.sleep(0.02)
        raise RuntimeError(f"VM {self.name}: sshd did not listen within 10s")

    def stop_sshd(self) -> None:
        if self.sshd is not None and self.sshd.poll() is None:
            self.run(["/bin/sh", "-c", "kill $(cat /run/sshd.pid) 2>/dev/null; true"])
            try:
                self.sshd.wait(5)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
        self.sshd = None

    def restart_sshd(self) -> None:
        self.stop_sshd()
        self.start_sshd()

    # --- events, power ---------------------------------------------------------------------------------------------

    def new_events(self) -> List[List[str]]:
        """What the shims recorded since the last call: [time, command, arg...] each."""
        path = self.upper / EVENTS.lstrip("/")
        try:
            with open(path, "rb") as events:
                events.seek(self.events_read)
                data = events.read()
        except FileNotFoundError:
            return []
        complete = data[:data.rfind(b"\n") + 1]
        self.events_read += len(complete)
        return [line.split("\t") for line in complete.decode(errors="replace").splitlines() if line]

    def halt(self) -> None:
        """Every process of the VM ends at once (its PID namespace goes with its init): a power-off."""
        if self.init_pid is not None:
            try:
                os.kill(self.init_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in (self.boot_process, self.sshd):
            if process is not None:
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
        self.init_pid, self.boot_process, self.sshd = None, None, None

    def remove(self) -> None:
        """The VM is deleted: its processes, namespace, link and layer go; its address stays claimed (and behind the
        test range's unreachable route) until `cleanup`, so no other test host takes it while a client may still try
        it, as a cloud does not hand a released address straight to another VM."""
        self.halt()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth_host], capture_output=True)
        shutil.rmtree(self.layer, ignore_errors=True)

    def cleanup(self) -> None:
        self.remove()
        super().cleanup()
