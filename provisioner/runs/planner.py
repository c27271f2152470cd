"""What `dstack apply` of a task decides before anything is created, in one call: the run's name, its requirements
narrowed to where its volumes are, and its offers in the order a run tries them (idle fleet instances first, then
what may be created, each checked against the fields the backend acts upon); and for a dry run, the plan document
with the resources its stack would create, rendered offline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from configuration.backends import DstackConfig
from configuration.errors import ConfigurationError
from configuration.interpolation import ResolvedRun
from offers.offer import Offer
from offers.requirements import Requirements
from offers.solver import OfferSearch
from provisioner.backends.hosts import fleet_candidates
from provisioner.backends.offer_failover import HOST_BACKENDS, MAX_OFFERS_TRIED
from provisioner.host.access import HostAccess
from provisioner.jobs.nodes import node_count
from provisioner.jobs.uploads import LEGACY_REPO_DIR, check_size, plan_uploads
from provisioner.planning.field_support import check_fields
from provisioner.planning.node_groups import search_group_offers
from provisioner.planning.reuse import InstanceOffer, plan_offers, stack_configuration
from provisioner.planning.search import search_run_offers
from provisioner.planning.stack_plan import dry_run_resources
from provisioner.planning.task_volumes import narrow_requirements, place_offers
from provisioner.runs.names import generate_run_name
from provisioner.runs.plan import mask_url_credentials, plan_json
from provisioner.store.store import StateStore
from stacks.extras import MissingExtra


@dataclass
class RunPlan:
    run: ResolvedRun
    name: str
    requirements: Requirements  # as narrowed to the places of the task's volumes
    search: OfferSearch  # its offers are the run's, in the order they are tried
    hosts: Dict[Tuple[str, str], HostAccess]  # (fleet, host name) of each SSH fleet host offered -> how to reach it
    config: DstackConfig

    @property
    def offers(self) -> List[Offer]:
        return self.search.offers

    def first_hosts(self) -> List[HostAccess]:
        """The SSH fleet hosts the first offer takes where all are idle (FleetBackend.provision's candidates, one
        per node); none for a cloud offer or node groups."""
        first = self.offers[0] if self.offers else None
        if first is None or (first.region, first.instance.name) not in self.hosts or \
                getattr(self.run.configuration, "groups", None):
            return []
        return fleet_candidates(self.hosts, first)[:node_count(self.run.configuration)]


def plan_run(run: ResolvedRun, file: str, requirements: Requirements, store: StateStore, config: DstackConfig,
             max_offers: int, dry_run: bool = False) -> RunPlan:
    """The run's plan; a run (not a dry run) that no offer fits is an error naming the requirements. A dry run
    considers the offers the run would: `-b aws` (or `backends:`) shows a cloud that config.yml does not name."""
    configuration = run.configuration
    requirements = narrow_requirements(store, configuration, requirements, file)  # where its volumes are
    limit = max(max_offers, MAX_OFFERS_TRIED)
    if getattr(configuration, "groups", None):
        found = search_group_offers(configuration, requirements, config, store, limit, False, file)
    else:
        found = search_run_offers(requirements, config, store, limit=limit, every_host=True)
    search = found.search
    # idle fleet instances first (`fleets`, `creation_policy`), then fields no backend would act upon
    search.offers = check_fields(configuration, plan_offers(configuration, search.offers, store, requirements, file),
                                 file)
    search.offers = place_offers(store, configuration, search.offers, file)
    if not search.offers and not dry_run:
        raise ConfigurationError(no_offers_message(requirements, config, search.notes))
    return RunPlan(run, configuration.name or generate_run_name(), requirements, search, found.hosts, config)


def no_offers_message(requirements: Requirements, config: DstackConfig, search_notes: Sequence[str] = ()) -> str:
    """Why a run has no offer: its requirements, where it looked, and what the search left out and why."""
    hint = "" if config.cloud_backends or requirements.backends else \
        "; no cloud is configured, so only this machine and SSH fleets count (`-b aws` or `-b gcp` picks one)"
    return (f"no offers match: {requirements.describe()}{hint} (see `dstack offers`)"
            + "".join(f"; {note}" for note in search_notes))


def setup_problems(plan: RunPlan) -> List[str]:
    """What the run would fail on before creating anything: for each cloud whose offers come before the first host
    that exists (this machine, an SSH fleet's, an idle fleet instance), its extra, the Pulumi CLI and credentials
    that are not there. A host first is tried first: a cloud behind it may never be needed."""
    from stacks.clouds import setup_problems as cloud_problems

    clouds: List[str] = []
    for offer in plan.offers:
        if offer.backend in HOST_BACKENDS or isinstance(offer, InstanceOffer):
            break
        if offer.backend not in clouds:
            clouds.append(offer.backend)
    problems: List[str] = []
    for backend in clouds:
        purpose = f"a run on {'AWS' if backend == 'aws' else 'GCP'}"
        problems += [problem for problem in cloud_problems(backend, purpose) if problem not in problems]
    return problems


def dry_run_document(plan: RunPlan) -> Tuple[dict, Optional[MissingExtra]]:
    """The plan document of `apply --dry-run`: the first offer and the resources its stack would create (none for an
    idle fleet instance). Without the cloud's extra installed, the document still shows the offer, says the stack was
    not rendered, and the missing extra is returned for the CLI to warn about."""
    offer = plan.offers[0] if plan.offers else None
    try:
        resources = [] if isinstance(offer, InstanceOffer) else dry_run_resources(
            plan.name, stack_configuration(plan.run.configuration), offer, plan.config)
        missing = None
    except MissingExtra as e:
        resources, missing = [], e
    document = plan_json(plan.run, offer, resources, plan.config, plan.search.notes)
    if missing is not None:
        document["stack"] = {"rendered": False, "reason": str(missing)}
    return document, missing


def check_uploads(configuration, path: Path, include_repos: bool) -> None:
    """What `apply` would upload, listed and size-checked as the run does before provisioning: a bad `repos` or
    `files` entry, or an upload over the limit, fails the dry run too."""
    check_size(plan_uploads(configuration, path.parent, str(path), include_repos=include_repos))


def upload_summary(configuration, path: Path, include_repos: bool) -> str:
    """What a run uploads, in a few words for its plan: "repo X, N files, M MB" (and `files`), a repo cloned on the
    host, or why nothing is ("not a git repository", `--no-repo`). A listing that fails says so (the run fails on
    it before provisioning)."""
    try:
        uploads = plan_uploads(configuration, path.parent, str(path), include_repos=include_repos)
    except ConfigurationError as e:
        return f"cannot be listed: {str(e).splitlines()[0]}"
    parts = []
    if uploads.clone is not None:
        at = f" at {uploads.clone.branch}" if uploads.clone.branch else ""
        at += f" ({uploads.clone.hash})" if uploads.clone.hash else ""
        parts.append(f"repo {mask_url_credentials(uploads.clone.url)}{at}, cloned on the host")
    for upload in uploads.uploads:
        size = sum(size for _, size in upload.files)
        label = f"repo {upload.source}" if upload.dest == LEGACY_REPO_DIR or "repos[" in upload.what \
            else f"{upload.source}"
        parts.append(f"{label}, {len(upload.files)} file{'' if len(upload.files) == 1 else 's'}, "
                     f"{size / 1024 / 1024:.1f} MB")
    if parts:
        return "; ".join(parts)
    return "nothing: --no-repo" if not include_repos else "nothing: not a git repository"
