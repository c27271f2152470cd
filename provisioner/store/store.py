"""Runs and fleets, in a small SQLite store at `$DSTACK_HOME/state.db`.

Every step of a run is written before it is taken (WAL journal, one short transaction per update, a busy timeout),
so two `dstack` processes can share the store and a crash at any point leaves enough to finish the teardown: the
stack's identity is recorded before `up`, the host's address before the job starts. Secrets are never stored: the
configuration is kept as the plan prints it, with `[secret]` in their place.

The store is checked when opened (SQLite's quick_check, its tables, the schema version in `PRAGMA user_version`) and
each row when read. A store that fails a check is damaged: it is moved aside and the user is told what may still be
running (provisioner.store.damage); dstack never silently starts afresh. `state.db.marker`, written once the store
exists, tells a store that was truncated, emptied or deleted apart from a home where none was made yet. Setting a
damaged store aside and making a new one happen under `state.db.lock`, so that commands meeting the damage at once
set aside one copy, the file found damaged, and never the new store one of them has just made.
"""

from __future__ import annotations

import json
from typing import List, Sequence

from configuration.errors import ConfigurationError
from provisioner.store.connection import load_json
from provisioner.store.fleet_tables import FleetTables
from provisioner.store.run_tables import RunTables


class StateStore(RunTables, FleetTables):
    """Every table of the store, over one file (provisioner.store.connection.StoreFile)."""

    def remove_fleet_hosts(self, name: str, numbers: Sequence[int]) -> List[dict]:
        """Takes the hosts numbered `numbers` (their places in the fleet, from 0: `fleet get`'s `#N`) out of SSH
        fleet `name` and returns them; refused, with nothing removed, for a number the fleet does not have or a host
        an active run holds (checked in the same transaction as the removal, so no run claims it in between)."""
        with self._connect() as db:
            row = db.execute("SELECT hosts FROM fleets WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise ConfigurationError(f"no SSH fleet named {name} (see `dstack fleet list`)")
            hosts = load_json(row[0], list, f"fleet {name}'s hosts")
            unknown = sorted(n for n in set(numbers) if not 0 <= n < len(hosts))
            if unknown:
                raise ConfigurationError(f"fleet {name} has no instance {unknown[0]}: its instances are 0.."
                                         f"{len(hosts) - 1} (see `dstack fleet get {name}`)")
            held = self._held_addresses(db, "")
            for number in sorted(set(numbers)):
                access = hosts[number]["access"]
                holder = held.get((access.get("hostname"), access.get("port")))
                if holder is not None:
                    raise ConfigurationError(f"instance {number} of fleet {name} ({access.get('hostname')}) is in "
                                             f"use by {holder}; stop it first")
            removed = [hosts[n] for n in sorted(set(numbers))]
            kept = [host for n, host in enumerate(hosts) if n not in set(numbers)]
            if kept:
                db.execute("UPDATE fleets SET hosts = ? WHERE name = ?", (json.dumps(kept), name))
            else:
                db.execute("DELETE FROM fleets WHERE name = ?", (name,))
            return removed
