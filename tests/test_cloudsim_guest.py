"""The simulated cloud's VMs (tests.cloudsim.guest, tests.cloudsim.cloud_init) on their own: user data is applied
in cloud-init's order inside the VM's sandbox, and what would change a machine (a power-off, systemd, apt, a write to
/etc) becomes an event or a file of the VM's own layer; this machine is left as it was."""

import hashlib
from pathlib import Path

import pytest

from tests.cloudsim import cloud_init
from tests.cloudsim.guest import GuestVM

pytestmark = pytest.mark.cloudsim

USER_DATA = """#cloud-config
ssh_deletekeys: true
ssh_genkeytypes: [ed25519]
bootcmd:
  - [sh, -c, 'mkdir -p /etc/default && echo booted >> /etc/default/cloudsim-probe']
write_files:
  - path: /usr/local/sbin/probe
    permissions: '0755'
    content: |
      #!/bin/sh
      echo probe
runcmd:
  - [systemd-run, --on-active=5min, --unit=probe-timer, /usr/local/sbin/probe]
  - [sh, -c, 'apt-get install -y nothing; systemctl restart ssh; echo written > /etc/cloudsim-probe; poweroff']
  - [sh, -c, 'exit 3']
"""


@pytest.fixture
def vm():
    from tests.netns_hosts import require_namespaces

    require_namespaces()
    machine = GuestVM("cloudsim-probe")
    try:
        yield machine.create()
    finally:
        machine.cleanup()


def fingerprint(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).exists() else None


def test_user_data_is_applied_inside_the_vm_and_changes_nothing_here(vm, client_key):
    before = {path: fingerprint(path) for path in ("/etc/passwd", "/etc/hosts", "/etc/cloudsim-probe",
                                                    "/etc/default/cloudsim-probe", "/usr/local/sbin/probe")}
    record = cloud_init.boot(vm, USER_DATA, True, [client_key[1]], gcp=False)
    assert record.errors == ["runcmd sh -c 'exit 3' exited 3: "]  # a failing line is reported, the rest goes on
    assert [line.split(":")[0] for line in record.log] == [
        "bootcmd", "write_files", "authorized_keys of ubuntu", "ssh", "runcmd", "runcmd", "runcmd"]
    assert vm.file("/etc/cloudsim-probe") == "written\n" and vm.file("/usr/local/sbin/probe").endswith("probe\n")
    assert vm.run(["/usr/local/sbin/probe"]).stdout == b"probe\n"
    assert {"/etc/cloudsim-probe", "/etc/default/cloudsim-probe", "/usr/local/sbin/probe"} <= set(vm.written())
    commands = [event[1:] for event in vm.new_events()]
    assert ["systemd-run", "--on-active=5min", "--unit=probe-timer", "/usr/local/sbin/probe"] in commands
    assert ["apt-get", "install", "-y", "nothing"] in commands and ["poweroff"] in commands
    assert ["systemctl", "restart", "ssh"] in commands
    assert vm.file("/home/ubuntu/.ssh/authorized_keys") == client_key[1] + "\n"
    host_key = vm.file("/etc/ssh/ssh_host_ed25519_key.pub")
    assert host_key and vm.file("/etc/ssh/ssh_host_rsa_key") is None  # deleted, not generated
    after = {path: fingerprint(path) for path in before}
    assert after == before  # this machine's files are as they were
    vm.halt()
    again = cloud_init.boot(vm, USER_DATA, False, [], gcp=False)  # a reboot: bootcmd alone runs again
    assert [line.split(":")[0] for line in again.log] == ["bootcmd"]
    assert vm.file("/etc/default/cloudsim-probe") == "booted\nbooted\n"
    assert vm.file("/etc/ssh/ssh_host_ed25519_key.pub") == host_key
