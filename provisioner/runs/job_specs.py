"""From a task and its offer to each node's JobSpec (provisioner.jobs.script): commands, dstack's system variables,
the stop grace, the VM's power-off after the job, the spot interruption notice watched on a cloud spot VM."""

from __future__ import annotations

import hashlib
from typing import Dict, Optional

from configuration.node_groups import fill_node_refs, group_of_rank, node_groups
from offers.offer import Offer
from provisioner.jobs.dev_env import DevSession, job_commands
from provisioner.jobs.nodes import Cluster, cluster_env, node_address, rank_offers
from provisioner.jobs.script import JobSpec
from provisioner.planning.reuse import power_off_minutes
from provisioner.store.records import RunRecord

STOP_GRACE_S = 10


def repo_id(repo: Optional[str]) -> str:
    """DSTACK_REPO_ID: the repo's name and a digest of its folder or URL, stable across runs of one repo."""
    if not repo:
        return ""
    name = repo.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    name = name[:-4] if name.endswith(".git") else name
    return f"{name}-{hashlib.sha256(repo.encode()).hexdigest()[:8]}"


def system_env(run_name: str, offer: Offer, repo: Optional[str], cluster: Optional[Cluster] = None
               ) -> Dict[str, str]:
    """dstack's system variables of one node's job (provisioner.jobs.nodes.cluster_env)."""
    gpus = [o.instance.gpu_count for o in rank_offers(offer, cluster.size if cluster is not None else 1)]
    return {"DSTACK_RUN_NAME": run_name, "DSTACK_REPO_ID": repo_id(repo), **cluster_env(cluster, gpus)}


def stop_grace(stop_duration) -> Optional[int]:
    """Seconds between SIGTERM and SIGKILL: `stop_duration`, STOP_GRACE_S without it, None with `off`."""
    if stop_duration == "off":
        return None
    return STOP_GRACE_S if stop_duration is None else stop_duration


def recorded_stop_grace(record: RunRecord) -> Optional[int]:
    return stop_grace((record.configuration or {}).get("stop_duration"))


def _commands(run_name: str, configuration, cluster: Optional[Cluster]) -> list:
    """A task's `setup` and the commands of the node's group, `${{ groups[i].nodes[j].IP_ADDRESS }}` filled in with
    the nodes' addresses (configuration.node_groups); a dev environment's `setup`, IDE server, `init`, then its
    wait."""
    if configuration.type == "dev-environment":
        return job_commands(run_name, configuration.setup, configuration.init, configuration.ide,
                            configuration.version)
    groups = node_groups(configuration)
    if cluster is None:  # one node: its own address, which its host knows (provisioner.jobs.script)
        addresses = [["${DSTACK_MASTER_NODE_IP}"]]
        group = groups[0]
    else:
        flat = [node_address(host) for host in cluster.hosts]
        starts = [sum(g.nodes for g in groups[:i]) for i in range(len(groups))]
        addresses = [flat[start:start + g.nodes] for start, g in zip(starts, groups)]
        group = groups[group_of_rank(groups, cluster.rank)[0]]
    return [*configuration.setup, *(fill_node_refs(command, addresses) for command in group.commands)]


def job_spec(run_name: str, configuration, offer: Offer, repo: Optional[str] = None,
             cluster: Optional[Cluster] = None, dev_key: Optional[str] = None) -> JobSpec:
    """`dev_key`: a dev environment's public key line (provisioner.runs.dev_environments)."""
    auth = configuration.registry_auth
    rank, node_offer = (cluster.rank, rank_offers(offer, cluster.size)[cluster.rank]) if cluster else (0, offer)
    resources = configuration.resources
    if configuration.type == "task":
        groups = node_groups(configuration)
        resources = groups[group_of_rank(groups, rank)[0]].resources
    policy = configuration.utilization_policy
    return JobSpec(
        run_name=run_name,
        commands=_commands(run_name, configuration, cluster),
        env={**system_env(run_name, offer, repo, cluster), **configuration.env},
        image=configuration.image,
        python=configuration.python,
        entrypoint=configuration.entrypoint,
        working_dir=configuration.working_dir,
        shm_size_gb=resources.shm_size,
        nvidia_gpus=node_offer.instance.gpu_vendor == "nvidia" and node_offer.instance.gpu_count > 0,
        registry_username=auth.username if auth else None,
        registry_password=auth.password.get_secret_value() if auth else None,
        max_duration_s=configuration.max_duration if isinstance(configuration.max_duration, int) else None,
        power_off_after_exit_min=power_off_minutes(configuration, node_offer),
        shell=configuration.shell,
        user=configuration.user,
        privileged=configuration.privileged,
        home_dir=configuration.home_dir,
        docker=bool(configuration.docker),
        nvcc=bool(configuration.nvcc),
        may_install=offer.backend != "local",
        gpus=node_offer.instance.gpu_count,
        utilization=(policy.min_gpu_utilization, policy.time_window) if policy else None,
        dev=DevSession(dev_key, getattr(configuration, "inactivity_duration", None)) if dev_key else None,
        spot_notice=node_offer.backend if node_offer.spot and node_offer.backend in ("aws", "gcp") else None,
    )
