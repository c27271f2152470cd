"""`dstack init`. In dstack it registers the repo with a server's project; here there is no server: the repo is
uploaded with each run. So `init` prepares `$DSTACK_HOME` (its state store) and says which backends a run can use
now and what each of the others lacks."""

from __future__ import annotations

import typer
from typing_extensions import Annotated

from cli.output import print_json, stdout_console


def init(as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False) -> None:
    """Set up $DSTACK_HOME and say which backends can run."""
    from configuration.backends import load_config
    from configuration.home import dstack_home
    from provisioner.store.store import StateStore
    from stacks.extras import MissingExtra, require_extra

    store = StateStore()  # makes $DSTACK_HOME (0700) and the store, or brings an old store up to date
    config = load_config()
    fleets = store.list_fleets()
    backends = [{"backend": "local", "ready": True, "detail": "this machine"}]
    hosts = sum(len(f["hosts"]) for f in fleets)
    backends.append({"backend": "ssh", "ready": bool(fleets),
                     "detail": f"{len(fleets)} fleet(s), {hosts} host(s)" if fleets else
                     "no fleets: `dstack apply -f fleet.dstack.yml` registers your hosts"})
    for cloud in ("aws", "gcp"):
        configured = cloud in config.cloud_backends
        try:
            require_extra(cloud, f"a run on {cloud}")
            detail = ("configured; `dstack config check` checks credentials, regions and quotas" if configured else
                      f"not configured in {dstack_home() / 'config.yml'} (docs/clouds.md)")
        except MissingExtra as e:
            configured, detail = False, str(e)
        backends.append({"backend": cloud, "ready": configured, "detail": detail})
    if as_json:
        print_json({"home": str(dstack_home()), "backends": backends})
        return
    console = stdout_console()
    console.print(f"dstack home: {dstack_home()} (state store ready). There is no server or project: each run "
                  "uploads its repo itself.", markup=False)
    for item in backends:
        console.print(f"{'ok  ' if item['ready'] else '--  '} {item['backend']:<6} {item['detail']}", markup=False)
