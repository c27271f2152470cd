"""What cloud-init (and, on GCP, the guest agent) does with a VM's user data, applied to a simulated VM
(tests.cloudsim.guest) in cloud-init's order, so that a wrong line fails a test the way it fails a real boot.

Sources: cloud-init's module reference (https://cloudinit.readthedocs.io/en/latest/reference/modules.html) and
Ubuntu's default cloud.cfg, whose stages run `bootcmd`, `write_files`, `users_groups` and `ssh` (init stage, before
sshd starts), then `write_files_deferred` and `scripts_user` (runcmd) in the final stage; a bootcmd or runcmd item
that is a list is run as that argv, a string with `sh -c`. GCP's guest agent
(https://github.com/GoogleCloudPlatform/guest-agent, instance_configs.cfg: `[InstanceSetup] set_host_keys`) makes
new host keys on a new instance's first boot unless that setting is false, and adds each `ssh-keys` metadata entry
(`user:key`) to that user's authorized_keys (https://cloud.google.com/compute/docs/connect/add-ssh-keys).

What the VM ran and what failed is kept (`VmBoot.log`, `VmBoot.errors`): a test asserts there are no errors.
"""

from __future__ import annotations

import base64
import configparser
import shlex
from dataclasses import dataclass, field
from typing import List, Optional

import yaml

from tests.cloudsim.guest import GuestVM

DEFAULT_USER = "ubuntu"  # Ubuntu cloud images' default user
KNOWN_KEYS = {"ssh_deletekeys", "ssh_genkeytypes", "ssh_keys", "ssh_authorized_keys", "bootcmd", "write_files",
              "runcmd", "users", "disable_root", "package_update", "packages"}
KEY_TYPES = ("rsa", "ecdsa", "ed25519")


@dataclass
class VmBoot:
    """One boot's record: each step run (`bootcmd: ...`, `runcmd: ...`, `write_files: PATH`) and each failure."""

    log: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)


def parse(user_data: str) -> dict:
    if not user_data.startswith("#cloud-config"):
        raise ValueError("user data is not a cloud-config document (its first line must be `#cloud-config`)")
    config = yaml.safe_load(user_data) or {}
    unknown = sorted(set(config) - KNOWN_KEYS)
    if unknown:
        raise ValueError(f"cloud-config keys this simulator does not know (a typo fails cloud-init's schema check "
                         f"too): {', '.join(unknown)}")
    return config


def boot(vm: GuestVM, user_data: str, first_boot: bool, authorized_keys: List[str], gcp: bool,
         gcp_agent_first: bool = False) -> VmBoot:
    """Boots `vm` with its user data: the init stage, sshd, then the final stage; `bootcmd` at every boot, the other
    modules on the first (cloud-init's module frequencies). `authorized_keys` are what the cloud adds to the default
    user (an EC2 key pair; GCP's `ssh-keys` metadata, through its guest agent)."""
    record = VmBoot()
    try:
        config = parse(user_data)
    except (ValueError, yaml.YAMLError) as e:
        record.errors.append(f"user data: {e}")
        config = {}
    vm.boot()
    if gcp and gcp_agent_first and first_boot:
        _guest_agent_host_keys(vm, record)
    _commands(vm, "bootcmd", config.get("bootcmd") or [], record)  # every boot
    if first_boot:  # the rest runs once per instance
        _write_files(vm, [f for f in config.get("write_files") or [] if not f.get("defer")], record)
        _users(vm, config, authorized_keys if not gcp else [], record)
        _ssh(vm, config, record)
    if gcp:
        if first_boot and not gcp_agent_first:
            _guest_agent_host_keys(vm, record)
        _add_keys(vm, DEFAULT_USER, authorized_keys, record)  # the agent applies the metadata on every boot
    vm.start_sshd()
    if first_boot:
        _write_files(vm, [f for f in config.get("write_files") or [] if f.get("defer")], record)
        _commands(vm, "runcmd", config.get("runcmd") or [], record)
    return record


def _commands(vm: GuestVM, stage: str, commands: list, record: VmBoot) -> None:
    for command in commands:
        argv = [str(a) for a in command] if isinstance(command, list) else ["/bin/sh", "-c", str(command)]
        record.log.append(f"{stage}: {shlex.join(argv)}")
        done = vm.run(argv, timeout=30)
        if done.returncode != 0:
            record.errors.append(f"{stage} {shlex.join(argv)[:200]} exited {done.returncode}: "
                                 f"{done.stderr.decode(errors='replace').strip()[-300:]}")


def _write_files(vm: GuestVM, files: list, record: VmBoot) -> None:
    for entry in files:
        path = entry.get("path")
        if not path:
            record.errors.append(f"write_files: an entry without a path: {sorted(entry)}")
            continue
        content = entry.get("content", "")
        encoding = entry.get("encoding", "text/plain")
        data = base64.b64decode(content) if encoding in ("b64", "base64") else str(content).encode()
        record.log.append(f"write_files: {path}")
        try:
            vm.write_file(path, data, str(entry.get("permissions", "0644")), append=bool(entry.get("append")))
        except RuntimeError as e:
            record.errors.append(f"write_files {path}: {e}")


def _users(vm: GuestVM, config: dict, cloud_keys: List[str], record: VmBoot) -> None:
    users = config.get("users") or ["default"]
    for user in users:
        if user == "default":
            _add_keys(vm, DEFAULT_USER, cloud_keys + list(config.get("ssh_authorized_keys") or []), record)
        elif isinstance(user, dict) and user.get("name"):
            name = user["name"]
            vm.write_file("/etc/passwd", f"{name}:x:0:0::/home/{name}:/bin/bash\n".encode(), append=True)
            _add_keys(vm, name, list(user.get("ssh_authorized_keys") or []), record)
        else:
            record.errors.append(f"users: an entry this simulator cannot read: {user!r}")


def _add_keys(vm: GuestVM, user: str, keys: List[str], record: VmBoot) -> None:
    if not keys:
        return
    path = f"/home/{user}/.ssh/authorized_keys"
    present = (vm.file(path) or "").splitlines()
    new = [key for key in dict.fromkeys(k.strip() for k in keys) if key and key not in present]
    if new:
        record.log.append(f"authorized_keys of {user}: {len(new)} added")
        vm.write_file(path, ("\n".join(new) + "\n").encode(), "0600", append=True)


def _ssh(vm: GuestVM, config: dict, record: VmBoot) -> None:
    """cloud-init's ssh module: delete the image's host keys, write the given ones, generate the types asked for
    that are still missing."""
    if config.get("ssh_deletekeys", True):
        vm.run(["/bin/sh", "-c", "rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub"])
        record.log.append("ssh: host keys deleted")
    keys = config.get("ssh_keys") or {}
    for name, value in keys.items():
        kind, _, part = name.partition("_")
        if kind not in KEY_TYPES or part not in ("private", "public", "certificate"):
            record.errors.append(f"ssh_keys: unknown key {name}")
            continue
        path = f"/etc/ssh/ssh_host_{kind}_key" + {"private": "", "public": ".pub", "certificate": "-cert.pub"}[part]
        vm.write_file(path, (str(value).strip() + "\n").encode(), "0600" if part == "private" else "0644")
        record.log.append(f"ssh: {path}")
    for kind in config.get("ssh_genkeytypes", list(KEY_TYPES)):
        vm.run(["/bin/sh", "-c", f"[ -f /etc/ssh/ssh_host_{kind}_key ] || "
                                 f"ssh-keygen -q -t {kind} -N '' -f /etc/ssh/ssh_host_{kind}_key"])


def _guest_agent_host_keys(vm: GuestVM, record: VmBoot) -> None:
    """GCP's guest agent on a new instance: new host keys (of every type), unless instance_configs.cfg says not."""
    if not _agent_sets_host_keys(vm.file("/etc/default/instance_configs.cfg") or ""):
        record.log.append("guest agent: host keys left alone (set_host_keys = false)")
        return
    record.log.append("guest agent: new host keys")
    for kind in KEY_TYPES:
        vm.run(["/bin/sh", "-c", f"rm -f /etc/ssh/ssh_host_{kind}_key /etc/ssh/ssh_host_{kind}_key.pub; "
                                 f"ssh-keygen -q -t {kind} -N '' -f /etc/ssh/ssh_host_{kind}_key"])


def _agent_sets_host_keys(text: str) -> bool:
    parser = configparser.ConfigParser(strict=False)  # the agent reads the file leniently (go-ini)
    try:
        parser.read_string(text)
    except configparser.Error:
        return True
    value: Optional[str] = parser.get("InstanceSetup", "set_host_keys", fallback="true")
    return value.strip().lower() not in ("false", "0", "no")
