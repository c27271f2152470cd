"""The `dstack` command loads no pydantic plugin: dstack needs none, and pydantic looks for them by reading the entry
points of every installed distribution when its first model is built (4-7 ms of CPU on the development machine with
143 distributions installed, about 35 us each: more in a large environment; issue 23).

pydantic's documented switch is the environment variable PYDANTIC_DISABLE_PLUGINS, but a variable set here would
reach every process dstack starts (a `local` run's job included). Instead, when pydantic's plugin loader is first
imported, its cache of plugins is set empty, as if it had looked and found none; nothing is imported before that,
and a command that never imports pydantic (`dstack ps`, `dstack offers`) pays one name comparison per import. A user
who sets PYDANTIC_DISABLE_PLUGINS (to anything, even empty: `PYDANTIC_DISABLE_PLUGINS= dstack ...` loads them all)
gets pydantic's own behaviour."""

from __future__ import annotations

import os
import sys

LOADER = "pydantic.plugin._loader"
SWITCH = "PYDANTIC_DISABLE_PLUGINS"


class _PluginsOff:
    """A finder on sys.meta_path that finds nothing itself: for pydantic's plugin loader it takes the spec the other
    finders give and has the loader, once it has run the module, set the module's plugin cache empty."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != LOADER:
            return None
        sys.meta_path.remove(_PluginsOff)  # once: the module is imported once
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                run_module = spec.loader.exec_module

                def exec_module(module):
                    run_module(module)
                    module._plugins = {}  # get_plugins(): already looked, none found

                spec.loader.exec_module = exec_module
                return spec
            if spec is not None:
                return spec
        return None


def load_none() -> None:
    """pydantic, once imported, loads no plugin (unless the user set PYDANTIC_DISABLE_PLUGINS)."""
    if SWITCH in os.environ or LOADER in sys.modules or _PluginsOff in sys.meta_path:
        return
    sys.meta_path.insert(0, _PluginsOff)
