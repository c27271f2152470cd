"""SSH fleets, network volumes, and cloud fleets with their instances, in the state store."""

from __future__ import annotations

import json
import time
from dataclasses import fields
from typing import Callable, List, Optional, Sequence

from configuration.errors import ConfigurationError
from provisioner.store.connection import StoreFile, json_or_none, load_json, owner, read_again, stored_status
from provisioner.store.errors import Conflict
from provisioner.store.records import InstanceRecord, VolumeRecord
from provisioner.store.statuses import InstanceStatus, VolumeStatus


class FleetTables(StoreFile):
    """The fleets, volumes, cloud_fleets and instances tables."""

    # --- fleets ---

    def save_fleet(self, name: str, source: str, hosts: list) -> None:
        """Records an SSH fleet, or replaces the one of that name (applied again), as this home's; a teammate's
        fleet of that name is refused (names are unique per team; its hosts' keys are paths on their laptop)."""
        with self._connect() as db:
            saved = db.execute("INSERT INTO fleets (name, source, hosts, created_at, owner_id, user_name) "
                               "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET source = excluded.source, "
                               "hosts = excluded.hosts, created_at = excluded.created_at, owner_id = excluded.owner_id, "
                               "user_name = excluded.user_name WHERE fleets.owner_id IS NULL OR "
                               "fleets.owner_id = excluded.owner_id",
                               (name, source, json.dumps(hosts), time.time(), *owner())).rowcount
            if not saved:
                holder = db.execute("SELECT user_name FROM fleets WHERE name = ?", (name,)).fetchone()
                raise _teammates_fleet(source, name, (holder or [None])[0])

    def refuse_teammates_fleet(self, name: str, source: str) -> None:
        """Before an SSH fleet is applied (its hosts asked): a teammate's fleet of that name refuses it now."""
        with self._connect(read=True) as db:
            holder = db.execute("SELECT user_name FROM fleets WHERE name = ? AND owner_id IS NOT NULL AND "
                                "owner_id != ?", (name, owner()[0])).fetchone()
        if holder is not None:
            raise _teammates_fleet(source, name, holder[0])

    @read_again
    def list_fleets(self) -> List[dict]:
        with self._connect(read=True) as db:
            rows = db.execute("SELECT name, source, hosts, created_at, user_name FROM fleets ORDER BY name").fetchall()
            return [{"name": r[0], "source": r[1], "hosts": load_json(r[2], list, f"fleet {r[0]}'s hosts"),
                     "created_at": r[3], "user": r[4]} for r in rows]

    def delete_fleet(self, name: str) -> bool:
        with self._connect() as db:
            return db.execute("DELETE FROM fleets WHERE name = ?", (name,)).rowcount == 1

    # --- volumes ---

    def create_volume(self, record: VolumeRecord) -> None:
        values = {f.name: getattr(record, f.name) for f in fields(VolumeRecord)}
        if values["owner_id"] is None:
            values["owner_id"], values["user_name"] = owner()
        values.update(external=int(record.external), stack=json_or_none(record.stack),
                      configuration=json_or_none(record.configuration))
        try:
            with self._connect() as db:
                db.execute(f"INSERT INTO volumes ({', '.join(values)}) VALUES ({', '.join('?' for _ in values)})",
                           list(values.values()))
        except Conflict:
            raise ConfigurationError(f"a volume named {record.name} already exists (see `dstack volume list`)") \
                from None

    def update_volume(self, name: str, **changes) -> None:
        values = {k: json_or_none(v) if k in ("stack", "configuration") else v for k, v in changes.items()}
        with self._connect() as db:
            db.execute(f"UPDATE volumes SET {', '.join(f'{k} = ?' for k in values)} WHERE name = ?",
                       [*values.values(), name])

    @read_again
    def get_volume(self, name: str) -> Optional[VolumeRecord]:
        found = self._volumes("WHERE name = ?", (name,))
        return found[0] if found else None

    @read_again
    def list_volumes(self) -> List[VolumeRecord]:
        return self._volumes("ORDER BY name", ())

    def delete_volume(self, name: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM volumes WHERE name = ?", (name,))

    def _volumes(self, where: str, values: tuple) -> List[VolumeRecord]:
        with self._connect(read=True) as db:
            return [self._volume(row) for row in db.rows(f"SELECT * FROM volumes {where}", values)]

    @staticmethod
    def _volume(data: dict) -> VolumeRecord:
        for name in ("stack", "configuration"):
            if data[name] is not None:
                data[name] = load_json(data[name], dict, f"volume {data['name']}'s {name}")
        data["external"] = bool(data["external"])
        data["status"] = stored_status(VolumeStatus, data["status"], f"volume {data['name']}")
        return VolumeRecord(**data)

    # --- cloud fleets and their instances (provisioner.backends.cloud_fleets, provisioner.planning.reuse) ---

    def create_cloud_fleet(self, name: str, source: str, backend: str, configuration: dict,
                           stack: Optional[dict] = None, instances: Sequence["InstanceRecord"] = ()) -> bool:
        """Records a cloud fleet (and any instances it already has) unless one of that name exists: False then."""
        with self._connect() as db:
            db.begin()
            if db.execute("SELECT 1 FROM cloud_fleets WHERE name = ?", (name,)).fetchone():
                return False  # the transaction ends, unchanged, with the connection
            db.execute("INSERT INTO cloud_fleets (name, source, backend, stack, configuration, created_at, owner_id, "
                       "user_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (name, source, backend, json_or_none(stack), json.dumps(configuration), time.time(), *owner()))
            for instance in instances:
                self._insert_instance(db, instance)
            db.commit()
        return True

    def set_fleet_stack(self, name: str, stack: dict) -> None:
        """The fleet's stack as recorded; the lock on it (lock_fleet_stack) is kept."""
        with self._connect() as db:
            db.begin()
            row = db.execute("SELECT stack FROM cloud_fleets WHERE name = ?", (name,)).fetchone()
            lock = (load_json(row[0], dict, f"fleet {name}'s stack").get("lock") if row and row[0] else None)
            db.execute("UPDATE cloud_fleets SET stack = ? WHERE name = ?",
                       (json.dumps({**stack, "lock": lock} if lock else stack), name))
            db.commit()

    def lock_fleet_stack(self, name: str, holder: str, now: float, stale_after: float,
                         process: Optional[dict] = None,
                         holder_gone: Callable[[dict], bool] = lambda lock: False) -> Optional[str]:
        """Takes the lock on a cloud fleet's stack for `holder` (a run growing it, a command shrinking it): one `up`
        of a fleet's stack at a time, each seeing the instances the one before added. Returns None once taken, else
        who holds it. The lock records `process` (the holder's pid, start time and home), so that a lock whose
        holder is known dead (`holder_gone`, asked of the lock as recorded) is taken over at once; any other lock
        older than `stale_after` seconds (its holder on another machine died) is taken over too."""
        with self._connect() as db:
            db.begin()
            row = db.execute("SELECT stack FROM cloud_fleets WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise ConfigurationError(f"no fleet named {name} (see `dstack fleet list`)")
            stack = load_json(row[0], dict, f"fleet {name}'s stack") if row[0] else {}
            lock = stack.get("lock")
            if lock and lock.get("holder") != holder and now - lock.get("since", 0) < stale_after and \
                    not holder_gone(lock):
                return lock.get("holder") or "another command"  # the transaction ends, unchanged
            stack["lock"] = {"holder": holder, "since": now, **(process or {})}
            db.execute("UPDATE cloud_fleets SET stack = ? WHERE name = ?", (json.dumps(stack), name))
            db.commit()
        return None

    def unlock_fleet_stack(self, name: str, holder: str) -> None:
        with self._connect() as db:
            db.begin()
            row = db.execute("SELECT stack FROM cloud_fleets WHERE name = ?", (name,)).fetchone()
            stack = load_json(row[0], dict, f"fleet {name}'s stack") if row and row[0] else None
            if stack is not None and (stack.get("lock") or {}).get("holder") == holder:
                del stack["lock"]
                db.execute("UPDATE cloud_fleets SET stack = ? WHERE name = ?", (json.dumps(stack), name))
            db.commit()

    @read_again
    def list_cloud_fleets(self) -> List[dict]:
        with self._connect(read=True) as db:
            rows = db.execute("SELECT name, source, backend, stack, configuration, created_at, user_name "
                              "FROM cloud_fleets ORDER BY name").fetchall()
            return [{"name": r[0], "source": r[1], "backend": r[2], "stack": _stack(r[0], r[3]),
                     "configuration": load_json(r[4], dict, f"fleet {r[0]}'s configuration"), "created_at": r[5],
                     "user": r[6]} for r in rows]

    def get_cloud_fleet(self, name: str) -> Optional[dict]:
        return next((f for f in self.list_cloud_fleets() if f["name"] == name), None)

    def delete_cloud_fleet(self, name: str) -> None:
        with self._connect() as db:
            db.begin()
            db.execute("DELETE FROM instances WHERE fleet = ?", (name,))
            db.execute("DELETE FROM cloud_fleets WHERE name = ?", (name,))
            db.execute("DELETE FROM sealed_files WHERE fleet = ?", (name,))
            db.commit()

    def add_instances(self, instances: Sequence["InstanceRecord"]) -> None:
        with self._connect() as db:
            db.begin()
            for instance in instances:
                self._insert_instance(db, instance)
            db.commit()

    @staticmethod
    def _insert_instance(db, instance: "InstanceRecord") -> None:
        db.execute("INSERT INTO instances (fleet, num, backend, offer, host, status, run, idle_since, idle_duration) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (instance.fleet, instance.num, instance.backend, json.dumps(instance.offer),
                    json.dumps(instance.host), instance.status, instance.run, instance.idle_since,
                    instance.idle_duration))

    @read_again
    def list_instances(self, fleet: Optional[str] = None) -> List["InstanceRecord"]:
        query, values = "SELECT fleet, num, backend, offer, host, status, run, idle_since, idle_duration " \
                        "FROM instances", []
        if fleet is not None:
            query, values = query + " WHERE fleet = ?", [fleet]
        with self._connect(read=True) as db:
            rows = db.execute(query + " ORDER BY fleet, num", values).fetchall()
            return [InstanceRecord(fleet=r[0], num=r[1], backend=r[2],
                                   offer=load_json(r[3], dict, f"instance {r[0]}/{r[1]}'s offer"),
                                   host=load_json(r[4], dict, f"instance {r[0]}/{r[1]}'s host"),
                                   status=stored_status(InstanceStatus, r[5], f"instance {r[0]}/{r[1]}"), run=r[6],
                                   idle_since=r[7], idle_duration=r[8]) for r in rows]

    def set_instance(self, fleet: str, num: int, status: InstanceStatus, host: Optional[dict] = None,
                     idle_since: Optional[float] = None) -> None:
        """A fleet's instance added (`provisioning`) once its stack is up: `busy` (a run added it) or `idle` from
        `idle_since` (added to keep the fleet at its minimum), reachable at `host`."""
        with self._connect() as db:
            db.execute("UPDATE instances SET status = ?, host = COALESCE(?, host), "
                       "idle_since = COALESCE(?, idle_since) WHERE fleet = ? AND num = ?",
                       (status, json_or_none(host), idle_since, fleet, num))

    def claim_instances_removal(self, fleet: str, nums: Sequence[int]) -> List[int]:
        """Marks those of `nums` that are idle (or `terminating` from a removal that failed) `terminating`, in one
        transaction, so no run claims one meanwhile; returns them."""
        claimable = (InstanceStatus.IDLE, InstanceStatus.TERMINATING)
        with self._connect() as db:
            db.begin()
            rows = db.execute("SELECT num, status FROM instances WHERE fleet = ?", (fleet,)).fetchall()
            taken = sorted(row[0] for row in rows if row[0] in set(nums) and row[1] in claimable)
            for num in taken:
                db.execute("UPDATE instances SET status = ? WHERE fleet = ? AND num = ?",
                           (InstanceStatus.TERMINATING, fleet, num))
            db.commit()
        return taken

    def remove_instances(self, fleet: str, nums: Sequence[int]) -> None:
        with self._connect() as db:
            db.begin()
            for num in nums:
                db.execute("DELETE FROM instances WHERE fleet = ? AND num = ?", (fleet, num))
            db.commit()

    def claim_instance(self, fleet: str, num: int, run: str) -> bool:
        """Makes an idle instance run `run`'s; one run wins when two claim it at once."""
        with self._connect() as db:
            return db.execute("UPDATE instances SET status = ?, run = ?, idle_since = NULL "
                              "WHERE fleet = ? AND num = ? AND status = ?",
                              (InstanceStatus.BUSY, run, fleet, num, InstanceStatus.IDLE)).rowcount == 1

    def release_instance(self, run: str, idle_since: Optional[float] = None) -> bool:
        """The instances `run` holds (one per node) become idle from `idle_since` (when its job ended on the host;
        default now); False when it holds none."""
        with self._connect() as db:
            return db.execute("UPDATE instances SET status = ?, run = NULL, idle_since = ? "
                              "WHERE run = ? AND status = ?",
                              (InstanceStatus.IDLE, time.time() if idle_since is None else idle_since, run,
                               InstanceStatus.BUSY)).rowcount > 0

    def retire_instance(self, fleet: str, num: int) -> bool:
        """An idle instance whose VM is gone (it ended itself): never offered again; its fleet's stack goes with the
        fleet (`terminating` counts as expired: provisioner.backends.cloud_fleets.expire_idle_fleets)."""
        with self._connect() as db:
            return db.execute("UPDATE instances SET status = ? WHERE fleet = ? AND num = ? AND status = ?",
                              (InstanceStatus.TERMINATING, fleet, num, InstanceStatus.IDLE)).rowcount > 0

    def claim_fleet_teardown(self, fleet: str, expired_at: Optional[float] = None) -> bool:
        """Marks `fleet`'s instances `terminating` when no run holds any (with `expired_at`: when each has been
        idle past its idle_duration at that time; a fleet with no instances yet is never expired). Instances left
        `terminating` by a teardown that failed count as claimable, so the next command tries again. Without
        `expired_at` (`fleet delete`, which holds the fleet's stack lock), an instance left `provisioning` counts
        too: under the lock, no live command is adding it (its grow was killed). The fleet's stack is marked
        `teardown`: a fleet whose instances are all `terminating` because one was retired is not going whole."""
        with self._connect() as db:
            db.begin()
            rows = db.execute("SELECT status, idle_since, idle_duration FROM instances WHERE fleet = ?",
                              (fleet,)).fetchall()
            if expired_at is not None:
                ready = bool(rows) and all(row[0] == InstanceStatus.TERMINATING or _expired(*row, expired_at)
                                           for row in rows)
            else:
                ready = all(row[0] in (InstanceStatus.IDLE, InstanceStatus.TERMINATING,
                                       InstanceStatus.PROVISIONING) for row in rows)
            if not ready:
                return False  # the transaction ends, unchanged, with the connection
            db.execute("UPDATE instances SET status = ? WHERE fleet = ?", (InstanceStatus.TERMINATING, fleet))
            row = db.execute("SELECT stack FROM cloud_fleets WHERE name = ?", (fleet,)).fetchone()
            stack = load_json(row[0], dict, f"fleet {fleet}'s stack") if row and row[0] else {}
            if set(stack) - {"lock"}:  # a stack, going whole: its upkeep leaves it alone (fleet_upkeep)
                db.execute("UPDATE cloud_fleets SET stack = ? WHERE name = ?",
                           (json.dumps({**stack, "teardown": True}), fleet))
            db.commit()
        return True


def _teammates_fleet(source: str, name: str, user: Optional[str]) -> ConfigurationError:
    return ConfigurationError(f"{source}: fleet {name} is {user or 'a teammate'}'s: pick another name, or "
                              f"`dstack fleet delete {name}` first")


def _stack(name: str, text: Optional[str]) -> Optional[dict]:
    """A cloud fleet's stack as recorded, without the lock on it (lock_fleet_stack): None while none is recorded."""
    stack = load_json(text, dict, f"fleet {name}'s stack") if text is not None else {}
    stack.pop("lock", None)
    return stack or None


def _expired(status: InstanceStatus, idle_since: Optional[float], idle_duration: Optional[int], now: float) -> bool:
    return status == InstanceStatus.IDLE and idle_duration is not None and idle_since is not None and \
        now >= idle_since + idle_duration
