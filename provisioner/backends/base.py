"""The narrow interface the run orchestration sees per backend: `provision` an offer into reachable hosts (one per
node, rank order), and `teardown` what a run left."""

from __future__ import annotations

from typing import Callable, List, Protocol

from configuration.errors import DstackError
from offers.offer import Offer
from provisioner.host.access import HostAccess
from provisioner.store.records import RunRecord


class Backend(Protocol):
    name: str

    def provision(self, run_name: str, offer: Offer, configuration, report: Callable) -> List[HostAccess]:
        ...

    def teardown(self, record: RunRecord, report: Callable) -> None:
        ...


class LeftoversRemain(DstackError):
    """A teardown that removed the stack, but whose sweep for what an interrupted `up` left could not finish (the
    cloud refused to list, say): the run is over and ends with this warning; `dstack gc` removes the rest."""
