"""`dstack ARGS` as dstack here made a cloud fleet before its instances were numbered (commit 637dc8b numbered them):
one stack of the `nodes` it was made with, its instances named as a run's nodes (`dstack-OWNER-pool` for one), host
keys made for that `up` and not kept, the stack recorded without numbers or offer. A scenario's entry
(tests.cloudsim.zygote, `entry`), so that a test has a fleet recorded the old way to upgrade; the rest is
tests.cloudsim.cli."""

from __future__ import annotations

import os


def main() -> None:
    from tests.cloudsim.cli import install

    install(os.environ["CLOUDSIM_URL"])
    from cli.main import main as dstack_main
    from provisioner.backends import cloud_fleets
    from provisioner.backends.fleet_stacks import FleetShape

    cloud_fleets.fleet_shape = lambda c: FleetShape(nodes=c.nodes.target, placement=c.placement, tags=c.tags)
    cloud_fleets.fleet_host_keys = lambda store, name, nums: None
    cloud_fleets.recorder = lambda store, name, offer: (lambda stack: store.set_fleet_stack(name, stack))
    dstack_main()
