"""SSH between the nodes of a multi-node run, as the job's user (what `mpirun` needs): a key pair made for the run.

Before any job starts, each node's `authorized_keys` gets the run's public key (as soon as that node is connected
to: provisioner.jobs.run_jobs.RunJobs.connect; the pair is begun as the run is submitted: ClusterKeys), limited to
connections from the cluster's addresses (`from="..."`) and marked with the run (`dstack-cluster-RUN`); the line is
removed from every node when the run ends, also when it fails before its jobs start (provisioner.runs.teardown.
finish_run), and from a node that cannot be reached then at dstack's next connection to it (the store keeps the
node meanwhile: revoke_left). Each job folder gets the private key (0600), a known_hosts file with every node's
host key and an ssh config using both; `ssh` on the job's PATH is
the host's, with that config, so `ssh $OTHER_NODE_IP` works from the commands. The private key never leaves the job
folders (it travels in the job's archive, like the env file), is never written on the client, and is removed when
the node's job ends (provisioner.jobs.launch.SECRET_HOLDERS) and with the line.

`authorized_keys` is `$DSTACK_AUTHORIZED_KEYS` where the host's sshd sets it (`SetEnv`, as for DSTACK_JOBS_DIR), else
`~/.ssh/authorized_keys`.
"""

from __future__ import annotations

import shlex
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from provisioner.host.access import HostAccess
from provisioner.host.keys import new_key_pair
from provisioner.host.liveness import liveness
from provisioner.host.known_hosts import recorded_key_lines
from provisioner.host.transport import Transport
from provisioner.jobs.layout import job_folder
from provisioner.jobs.nodes import node_address, on_every_node
from provisioner.store.store import StateStore

AUTHORIZED_KEYS = '"${DSTACK_AUTHORIZED_KEYS:-$HOME/.ssh/authorized_keys}"'  # a shell word, expanded on the host


def key_comment(run_name: str) -> str:
    return f"dstack-cluster-{run_name}"


@dataclass(frozen=True)
class ClusterSSH:
    """What every node's job folder gets: `cluster_key`, `known_hosts`, `ssh_config` (job.sh puts `ssh` with it
    on PATH)."""
    private_key: bytes
    known_hosts: str
    config: str


def host_keys(host: HostAccess) -> List[str]:
    """The host's public keys as `type base64`: the one the run made for a VM, else those recorded for a fleet
    host when the fleet was applied."""
    return hosts_keys([host])[0]


def hosts_keys(hosts: Sequence[HostAccess]) -> List[List[str]]:
    """host_keys of each of `hosts`, known_hosts read once for all of them."""
    fleet_hosts = [host for host in hosts if not host.host_key and host.kind == "ssh"]
    recorded = dict(zip(map(id, fleet_hosts), recorded_key_lines([host.ssh_target() for host in fleet_hosts])))
    return [[" ".join(host.host_key.split()[:2])] if host.host_key else recorded.get(id(host), []) for host in hosts]


def cluster_ssh(run_name: str, hosts: Sequence[HostAccess], pair: Optional[Tuple[bytes, str]] = None
                ) -> Tuple[ClusterSSH, str]:
    """What each job folder gets, and the authorized_keys line for every node, with the run's key `pair` (new_key_pair
    with the run's key_comment; made now where not given)."""
    private, public = pair or new_key_pair(key_comment(run_name))
    addresses = [node_address(host) for host in hosts]
    known = "".join(f"{address} {key}\n" for address, keys in zip(addresses, hosts_keys(hosts)) for key in keys)
    config = "".join(f"Host {address}\n  User {host.user or 'root'}\n  Port {host.port}\n"
                     for address, host in zip(addresses, hosts))
    config += ("Host *\n  IdentityFile JOB_DIR/cluster_key\n  IdentitiesOnly yes\n"
               "  UserKnownHostsFile JOB_DIR/known_hosts\n  StrictHostKeyChecking yes\n")
    line = f'from="{",".join(dict.fromkeys(addresses))}" {public}'
    return ClusterSSH(private, known, config), line


class ClusterKeys:
    """A run's cluster key pairs, the first begun in a thread of its own as the run is submitted: making one imports
    `cryptography` (~14 ms of the client's single thread), which then passes while the run is recorded and
    provisioned (store writes that wait on the disk) instead of after its nodes are connected to. Not while they
    are connected to: beside 16 nodes' threads the interpreter's lock, handed to and fro, stretched it to 90-200 ms
    and held up the connections. Each attempt of the run gets a pair of its own: the first attempt the one begun, a
    later one a pair made when asked."""

    def __init__(self, run_name: str, begin: bool):
        """`begin`: make the first pair now (a run of several nodes without `image:`)."""
        self.run_name = run_name
        self._pair: Optional[Tuple[bytes, str]] = None
        self._error: Optional[BaseException] = None
        self._made: Optional[threading.Event] = None
        if begin:
            self._made = threading.Event()
            threading.Thread(target=self._make, args=(self._made,), daemon=True, name="cluster-key").start()

    def _make(self, made: threading.Event) -> None:
        try:
            self._pair = new_key_pair(key_comment(self.run_name))
        except BaseException as e:  # noqa: B036 - raised where the pair is asked for
            self._error = e
        finally:
            made.set()

    def for_hosts(self, hosts: Sequence[HostAccess]) -> Tuple[ClusterSSH, str]:
        """cluster_ssh of the run on `hosts`, with a pair no attempt had before."""
        made, self._made = self._made, None
        if made is None:
            return cluster_ssh(self.run_name, hosts)
        made.wait()
        if self._error is not None:
            raise self._error
        return cluster_ssh(self.run_name, hosts, self._pair)


def authorize_command(line: str) -> str:
    """Adds the run's line to authorized_keys (made 0600 in a 0700 folder where missing), once: where no line ends
    with the run's comment (another run's, whose name only starts alike, is not it); on a line of its own where the
    file's last line has no newline. The shell reads the file itself (a few lines: no `grep` started per node)."""
    comment = line.rsplit(" ", 1)[-1]
    return (f"F={AUTHORIZED_KEYS}; umask 077; {{ [ -f \"$F\" ] || {{ mkdir -p \"$(dirname \"$F\")\" && touch \"$F\"; }}; }} && "
            f"{{ found= open=; while IFS= read -r l || {{ [ -n \"$l\" ] && open=1; }}; do case $l in "
            f"*{shlex.quote(' ' + comment)}) found=1; break ;; esac; done < \"$F\"; "
            f"[ -n \"$found\" ] || printf \"${{open:+\\n}}%s\\n\" {shlex.quote(line)} >> \"$F\"; }}")


def revoke_command(run_name: str) -> str:
    """Removes the run's private key from its job folder and its line (the one ending with its comment) from
    authorized_keys, keeping the file itself (its mode and owner). Where the copy cannot be written (a folder the
    user may not write), the file is left as it is: never emptied."""

    line_end = shlex.quote(f" {key_comment(run_name)}$")  # a run name is letters, digits and `-`: literal in a regex
    return (f"F={AUTHORIZED_KEYS}; rm -f {job_folder(run_name)}/cluster_key \"$F.dstack\"; "
            f"[ -f \"$F\" ] || exit 0; grep -q -- {line_end} \"$F\" || exit 0; umask 077; "
            f"{{ grep -v -- {line_end} \"$F\" > \"$F.dstack\"; [ $? -le 1 ] && [ -f \"$F.dstack\" ]; }} && "
            f"cat \"$F.dstack\" > \"$F\" && rm -f \"$F.dstack\"")


def _revoke(transport: Transport, run_name: str) -> None:
    result = transport.run(revoke_command(run_name), timeout=30)
    if result.code != 0:
        raise RuntimeError(result.stderr.decode(errors="replace").strip() or f"exit code {result.code}")


def revoke_everywhere(store: StateStore, run_name: str, hosts: Sequence[HostAccess],
                      report: Callable[[str], None]) -> None:
    """The run's line removed from every node's authorized_keys. A node that cannot be reached is named and recorded
    in the store, for the next connection to it to finish (revoke_left)."""

    def revoke(host: HostAccess) -> None:
        try:
            transport = host.connect(total_wait=liveness().stop_wait)
            try:
                _revoke(transport, run_name)
            finally:
                transport.close()
        except Exception as e:  # one host must not keep the others' lines; the user is told what is left
            store.add_key_left(run_name, host.to_json())
            report(f"could not remove {run_name}'s cluster key from {host.description}'s authorized_keys "
                   f"(the line ending `{key_comment(run_name)}`): {e}; dstack removes it at its next connection to "
                   f"{host.description}")

    on_every_node(revoke, list(hosts))


def revoke_left(store: StateStore, host: HostAccess, transport: Transport, report: Callable[[str], None],
                starting: Optional[str] = None, left: Optional[list] = None) -> None:
    """At a connection to `host`: the cluster keys that runs left there, unreachable when they ended, removed and
    named (`left`: store.keys_left for the host, where the caller read it already). A run of that name that is active
    now holds the line itself, and is left alone unless it is `starting` (the run connecting to start its jobs,
    before it adds its own line: an old line would stand in its way)."""
    for run_name, node in store.keys_left(host.to_json()) if left is None else left:
        current = store.get_run(run_name)
        if current is not None and current.active and run_name != starting:
            continue
        try:
            _revoke(transport, run_name)
        except Exception as e:  # kept for the next connection; the run goes on
            report(f"could not remove run {run_name}'s cluster key from {host.description} yet: {e}")
            continue
        store.remove_key_left(run_name, node)
        report(f"removed run {run_name}'s cluster key from {host.description}, which could not be reached when "
               f"{run_name} ended")


SSH_WRAPPER = "bin/ssh"  # the `ssh` first on a node's PATH
_NO_SSH = b"#!/bin/sh\necho 'ssh: not found: this host has no ssh' >&2\nexit 127\n"


def job_files(ssh: ClusterSSH) -> Dict[str, Tuple[bytes, int]]:
    """The files a node's job archive gets (name: (content, mode)). `bin/ssh` comes executable, as a stand-in that
    job.sh overwrites (keeping its mode: no `chmod` started) where the host has an ssh (ssh_setup)."""
    return {"cluster_key": (ssh.private_key, 0o600), "known_hosts": (ssh.known_hosts.encode(), 0o600),
            SSH_WRAPPER: (_NO_SSH, 0o700)}


def ssh_setup(ssh: ClusterSSH) -> str:
    """job.sh's lines, with a cluster: the ssh config with the job folder's path in it, and an `ssh` using it first on
    PATH; written by the shell's own printf, so no process is started for them."""
    config = '"$JOB_DIR"'.join(shlex.quote(part) for part in ssh.config.split("JOB_DIR"))
    return f"""__dstack_ssh= __dstack_path="$PATH:"
while [ -n "$__dstack_path" ]; do
  __dstack_dir=${{__dstack_path%%:*}}; __dstack_dir=${{__dstack_dir:-.}}; __dstack_path=${{__dstack_path#*:}}
  if [ -f "$__dstack_dir/ssh" ] && [ -x "$__dstack_dir/ssh" ]; then __dstack_ssh=$__dstack_dir/ssh; break; fi
done
if [ -n "$__dstack_ssh" ]; then
  printf '%s' {config} > ssh_config
  printf '#!/bin/sh\\nexec %s -F "%s/ssh_config" "$@"\\n' "$__dstack_ssh" "$JOB_DIR" > "$JOB_DIR/{SSH_WRAPPER}"
  PATH="$JOB_DIR/bin:$PATH"; export PATH
fi
unset __dstack_ssh __dstack_path __dstack_dir
"""
