"""Jobs still running on a host that no run record knows (the store was lost or damaged, or a record deleted):
found by their job folders, so that the user hears of each one, by name, with the way to stop it. Each `dstack ps`
searches this machine: the module imports no more than reaching a host needs."""

from __future__ import annotations

import concurrent.futures
from typing import List, Sequence, Tuple

from provisioner.host.access import HostAccess
from provisioner.host.transport import Transport
from provisioner.jobs.layout import JOBS_ROOT
from provisioner.store.errors import StoreDamaged

SEARCH_WAIT_S = 10.0  # per host: an unreachable host is reported, not waited for


def running_jobs(transport: Transport) -> List[Tuple[str, int]]:
    """(run name, process group) of every job on the host that is still running, whichever store knows it."""
    result = transport.run(f"cd {JOBS_ROOT} 2>/dev/null || exit 0; for d in */; do n=${{d%/}}; "
                           '[ -f "$n/exit_code" ] && continue; p=$(cat "$n/pid" 2>/dev/null); '
                           '[ -n "$p" ] && kill -0 -"$p" 2>/dev/null && echo "$p $n"; done; exit 0', timeout=30)
    jobs = []
    for line in result.text.splitlines():
        pgid, _, name = line.partition(" ")
        if pgid.isdigit() and name:
            jobs.append((name, int(pgid)))
    return sorted(jobs)


def _where(access: HostAccess) -> str:
    return "this machine" if access.kind == "local" else access.description


def describe(access: HostAccess, name: str, pgid: int) -> str:
    there = "" if access.kind == "local" else " on that host"
    return f"job {name} is still running on {_where(access)} (`kill -TERM -{pgid}`{there} stops it)"


def _running_on(access: HostAccess) -> List[Tuple[str, int]]:
    transport = access.connect(total_wait=SEARCH_WAIT_S)
    try:
        return running_jobs(transport)
    finally:
        transport.close()


def search(hosts: Sequence[HostAccess]) -> Tuple[List[Tuple[HostAccess, str, int]], List[str]]:
    """(host, run name, process group) of every running job on `hosts`, and a line per host that could not be
    searched."""
    jobs: List[Tuple[HostAccess, str, int]] = []
    failures: List[str] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(16, len(hosts)))) as pool:
        futures = [(access, pool.submit(_running_on, access)) for access in hosts]
        for access, future in futures:
            try:
                jobs += [(access, name, pgid) for name, pgid in future.result()]
            except Exception as e:  # one unreachable host must not hide what the others run
                why = (str(e) or type(e).__name__).splitlines()[0]
                failures.append(f"could not look for jobs on {_where(access)}: {why}")
    return jobs, failures


def salvaged_accesses(hosts: Sequence[dict]) -> List[HostAccess]:
    """This machine and every salvaged host, once each; a value too damaged to say where it pointed is skipped."""
    found = {"local": HostAccess(kind="local")}
    for data in hosts:
        try:
            access = HostAccess.from_json(data)
        except TypeError:
            continue
        found.setdefault(access.description, access)
    return list(found.values())


def damage_report(error: StoreDamaged) -> str:
    """The damaged store's message with the jobs still running on the hosts it recorded (and this machine) named, or
    the hosts that could not be searched."""
    jobs, failures = search(salvaged_accesses(error.hosts))
    found = [describe(*job) for job in jobs] + failures
    if not found:
        found = ["No job is running on this machine" + (" or on the hosts it recorded." if error.hosts else ".")]
    return "\n".join(error.head + found + error.tail)
