"""A job's volumes on its host: the shell steps that format (on first use only) and mount network volumes and make
instance folders, and, for `image:` jobs, the `docker run -v` arguments that bind them into the container.

A job on the host itself (no `image:`) reaches each volume at its `path` through a symlink to where it lives on the
host (a network volume's mount point, an instance volume's `instance_path`). A `path` that already exists and is
not such a link is left alone and the job fails naming it: dstack never replaces a folder of the host.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import List, Tuple

VOLUMES_ROOT = "/mnt/dstack-volumes"  # a network volume NAME is mounted at VOLUMES_ROOT/NAME on the host
DEVICE_WAIT_S = 120  # how long an attached disk may take to appear


@dataclass(frozen=True)
class NetworkMount:
    name: str
    devices: Tuple[str, ...]  # where the attached disk may appear on the host, the likeliest first
    path: str

    @property
    def host_path(self) -> str:
        return f"{VOLUMES_ROOT}/{self.name}"


@dataclass(frozen=True)
class InstanceMount:
    instance_path: str
    path: str
    optional: bool = False  # a host where the folder cannot be made runs the job without it


@dataclass(frozen=True)
class Mounts:
    network: Tuple[NetworkMount, ...] = ()
    instance: Tuple[InstanceMount, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.network or self.instance)


# dstack_as_root CMD...: as root, through passwordless sudo where the job's user is not root.
# dstack_mount_volume NAME DIR DEVICE...: waits for one of the devices, formats it (ext4) only if blkid finds no
# filesystem and no partition table on it (blkid's exit code 2; any other failure refuses to format), mounts it.
# dstack_link TARGET PATH OPTIONAL: PATH becomes a symlink to TARGET, unless PATH exists and is not one.
# dstack_folder DIR OPTIONAL: makes an instance folder; 1 when it could not be made and the volume is optional.
MOUNT_FUNCTIONS = f"""PATH="$PATH:/usr/sbin:/sbin"
dstack_as_root() {{
  if [ "$(id -u)" = 0 ]; then "$@"; elif sudo -n true 2>/dev/null; then sudo -n "$@"
  else echo "dstack: $(id -un) cannot become root (no passwordless sudo) to $*" >&2; exit 1; fi
}}
dstack_mount_volume() {{
  name=$1 dir=$2; shift 2
  dev="" i=0
  while [ -z "$dev" ] && [ $i -lt {DEVICE_WAIT_S} ]; do
    for d in "$@"; do if [ -e "$d" ]; then dev=$d; break; fi; done
    [ -n "$dev" ] || {{ sleep 1; i=$((i+1)); }}
  done
  [ -n "$dev" ] || {{ echo "dstack: volume $name: its disk did not appear on this host (looked for $*)" >&2; exit 1; }}
  if mountpoint -q "$dir" 2>/dev/null; then return 0; fi
  rc=0; dstack_as_root blkid -p "$dev" >/dev/null 2>&1 || rc=$?
  if [ "$rc" = 2 ]; then
    echo "dstack: volume $name: formatting $dev (ext4), which holds no filesystem yet"
    dstack_as_root mkfs.ext4 -q -L "$(echo "$name" | cut -c1-16)" "$dev"
    fresh=1
  elif [ "$rc" != 0 ]; then
    echo "dstack: volume $name: blkid could not read $dev (exit code $rc); not formatting it" >&2; exit 1
  else fresh=""
  fi
  dstack_as_root mkdir -p "$dir"
  dstack_as_root mount "$dev" "$dir"
  [ -z "$fresh" ] || dstack_as_root chown "$(id -u):$(id -g)" "$dir"
}}
dstack_link() {{
  if [ "$1" = "$2" ]; then return 0; fi
  if [ -L "$2" ] && [ "$(readlink "$2")" = "$1" ]; then return 0; fi
  if [ -e "$2" ] || [ -L "$2" ]; then
    if [ -n "$3" ]; then echo "dstack: volumes: $2 exists on this host; $1 is not linked there (optional)" >&2
      return 0; fi
    echo "dstack: volumes: $2 exists on this host and is not a link to $1: remove it, or mount at another path" >&2
    exit 1
  fi
  parent=$(dirname "$2")
  if mkdir -p "$parent" 2>/dev/null && [ -w "$parent" ]; then ln -s "$1" "$2"
  else dstack_as_root mkdir -p "$parent" && dstack_as_root ln -s "$1" "$2"; fi
}}
dstack_folder() {{
  if mkdir -p "$1" 2>/dev/null; then return 0; fi
  if [ "$(id -u)" != 0 ] && sudo -n true 2>/dev/null && sudo -n mkdir -p "$1"; then
    sudo -n chown "$(id -u):$(id -g)" "$1"; return 0; fi
  if [ -n "$2" ]; then echo "dstack: volumes: cannot make $1 on this host; running without it (optional)" >&2
    return 1; fi
  echo "dstack: volumes: cannot make $1 on this host (no permission)" >&2; exit 1
}}
"""


def mount_steps(mounts: Mounts, in_container: bool) -> str:
    """The job script's steps for its volumes: every network volume mounted and every instance folder made; for a
    job on the host, each `path` linked to where its volume lives."""
    if not mounts:
        return ""
    lines = [MOUNT_FUNCTIONS]
    for mount in mounts.network:
        devices = " ".join(shlex.quote(d) for d in mount.devices)
        lines.append(f"dstack_mount_volume {shlex.quote(mount.name)} {shlex.quote(mount.host_path)} {devices}\n")
        if not in_container:
            lines.append(f"dstack_link {shlex.quote(mount.host_path)} {shlex.quote(mount.path)} ''\n")
    for mount in mounts.instance:
        optional = "1" if mount.optional else "''"
        link = "" if in_container else \
            f" && dstack_link {shlex.quote(mount.instance_path)} {shlex.quote(mount.path)} {optional}"
        lines.append(f"if dstack_folder {shlex.quote(mount.instance_path)} {optional}; then :{link}; fi\n")
    return "".join(lines)


def docker_volume_args(mounts: Mounts) -> List[str]:
    """`-v HOST:PATH` for each volume of an `image:` job."""
    args: List[str] = []
    for mount in mounts.network:
        args += ["-v", f"{mount.host_path}:{mount.path}"]
    for mount in mounts.instance:
        args += ["-v", f"{mount.instance_path}:{mount.path}"]
    return args
