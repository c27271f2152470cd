"""Hosts that are not bought from a catalogue: SSH fleets the user owns, and this machine (the `local` backend).
Both become offers at price 0 that the solver matches like any other."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple

from configuration.home import dstack_home, private_dir
from offers.offer import Offer
from provisioner.host.access import HostAccess
from provisioner.host.probe import HostFacts, parse_probe
from provisioner.store.store import StateStore

LOCAL_REGION = "local"


def fleet_offers(store: StateStore) -> List[Tuple[Offer, HostAccess]]:
    offers = []
    for fleet in store.list_fleets():
        for host in fleet["hosts"]:
            access = HostAccess.from_json(host["access"])
            facts = HostFacts.from_json(host["facts"])
            offers.append((Offer("ssh", facts.instance_type(access.hostname), fleet["name"], (), False, 0.0,
                                 facts.disk_free_gb, 0.0), access))
    return offers


def local_facts() -> HostFacts:
    """This machine, probed in-process (no shell round trip: `dstack offers` stays fast); GPU tools run only when
    installed."""
    import platform
    import shutil
    import subprocess

    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else "MemTotal: 0 kB"
    home = private_dir(dstack_home())
    sections = {
        "nproc": str(os.cpu_count() or 1),
        "arch": platform.machine(),
        "meminfo": meminfo,
        "df": f"- - - {shutil.disk_usage(home).free}",
        "docker": shutil.which("docker") or "",
    }
    for name, argv in (("nvidia", ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]),
                       ("amd", ["amd-smi", "static", "--asic", "--vram", "--json"])):
        sections[name] = ""
        if shutil.which(argv[0]):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            sections[name] = done.stdout if done.returncode == 0 else ""
    return parse_probe("".join(f"---{k}\n{v}\n" for k, v in sections.items()) + "---end\n")


def local_offer() -> Tuple[Offer, HostAccess]:
    facts = local_facts()
    return (Offer("local", facts.instance_type("localhost"), LOCAL_REGION, (), False, 0.0, facts.disk_free_gb, 0.0),
            HostAccess(kind="local"))


def local_gives_root() -> bool:
    """Whether a job on this machine can become root: dstack runs as root, or its user has passwordless sudo."""
    import shutil
    import subprocess

    if os.geteuid() == 0:
        return True
    if shutil.which("sudo") is None:
        return False
    return subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=30).returncode == 0
