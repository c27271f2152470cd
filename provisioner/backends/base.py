"""The narrow interface the run orchestration sees per backend: `provision` an offer into reachable hosts (one per
node, rank order), and `teardown` what a run left."""

from __future__ import annotations

from typing import Callable, List, Protocol

from offers.offer import Offer
from provisioner.host.access import HostAccess
from provisioner.store.records import RunRecord


class Backend(Protocol):
    name: str

    def provision(self, run_name: str, offer: Offer, configuration, report: Callable) -> List[HostAccess]:
        ...

    def teardown(self, record: RunRecord, report: Callable) -> None:
        ...
