"""`python -m tests.cloudsim.cli ARGS...`: the `dstack` command (cli.main) against the simulated cloud, for the
scenarios' child processes. Only the engine and the credentials are swapped; the rest is the real code.

- The Pulumi engine: `stacks.automation.open_stack` hands out tests.cloudsim.engine.SimStack (the real program under
  Pulumi's mocks, each registration sent to the simulator at $CLOUDSIM_URL), `require_pulumi` finds it present,
  `list_stacks` reads the simulated state.
- AWS: boto3 reaches moto through AWS_ENDPOINT_URL (the simulator's environment); nothing is patched.
- GCP: the credentials are an `authorized_user` in GOOGLE_CREDENTIALS whose token comes from the simulator; the
  REST clients dstack builds (`gcp_api`) get the simulator's address instead of googleapis.com.
- $CLOUDSIM_PATCHES (JSON, {"module:attribute": value}): constants a scenario shortens (a wait of minutes).
- botocore's models are parsed once per process (they are parsed per session otherwise): CPU, not behaviour.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re


def _redirect(api, url: str):
    """A GcpApi whose Google addresses are the simulator's (same paths)."""
    changes = {}
    for field in dataclasses.fields(api):
        value = getattr(api, field.name)
        if field.name == "compute_endpoint":
            changes[field.name] = url
        elif isinstance(value, str) and re.match(r"https://[a-z0-9.-]*googleapis\.com", value):
            changes[field.name] = re.sub(r"^https://[a-z0-9.-]*googleapis\.com", url, value)
    return dataclasses.replace(api, **changes)


def parse_botocore_models_once() -> None:
    """botocore parses its JSON models again for every session (EC2's is 3.8 MB), and dstack makes a session per
    call: in this process each file is parsed once. The models are read-only data; nothing dstack does changes."""
    from botocore import loaders

    if getattr(loaders.JSONFileLoader.load_file, "cloudsim", False):
        return
    parse, parsed = loaders.JSONFileLoader.load_file, {}

    def load_file(self, file_path):
        if file_path not in parsed:
            parsed[file_path] = parse(self, file_path)
        return parsed[file_path]

    load_file.cloudsim = True
    loaders.JSONFileLoader.load_file = load_file


def install(url: str) -> None:
    import stacks.automation as automation
    from tests.cloudsim.engine import SimClient, SimStack, list_stacks

    parse_botocore_models_once()
    client = SimClient(url)
    automation.require_pulumi = lambda: None
    automation.open_stack = lambda name, program, settings: SimStack(name, program, settings, client)
    automation.list_stacks = list_stacks
    for name in ("stacks.gcp.api", "stacks.gcp.leftovers"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        real = getattr(module, "gcp_api", None)
        if real is not None and not getattr(real, "cloudsim", False):
            def redirected(*args, _real=real, **kwargs):
                return _redirect(_real(*args, **kwargs), url)

            redirected.cloudsim = True
            module.gcp_api = redirected
    for target, value in json.loads(os.environ.get("CLOUDSIM_PATCHES") or "{}").items():
        module_name, attribute = target.split(":")
        setattr(importlib.import_module(module_name), attribute, value)


def main() -> None:
    install(os.environ["CLOUDSIM_URL"])
    from cli.main import main as dstack_main

    dstack_main()


if __name__ == "__main__":
    main()
