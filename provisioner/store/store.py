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

from provisioner.store.fleet_tables import FleetTables
from provisioner.store.run_tables import RunTables


class StateStore(RunTables, FleetTables):
    """Every table of the store, over one file (provisioner.store.connection.StoreFile)."""
