"""The keys dstack makes under `$DSTACK_HOME` (provisioner.host.keys.HOME_KEYS: a cloud run's and a cloud fleet's
login key, a dev environment's key, a cloud fleet's instances' host keys) as a team shares them (docs/teams.md): sealed with the team key into the team
database when made, and unsealed into a teammate's own home (0600) when their command reaches the host. Without a
team database nothing is sealed: the key stays in its home only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from configuration.database import TEAM_KEY_VARIABLE, team_key
from configuration.errors import ConfigurationError
from configuration.home import dstack_home, private_file
from provisioner.host.keys import home_key_name, seal, unseal
from provisioner.store.store import StateStore

NO_TEAM_KEY = (f"the team key, which this laptop does not have ({TEAM_KEY_VARIABLE}, or the team's Pulumi "
               "passphrase: docs/teams.md)")


def require_team_key(store: StateStore, what: str) -> None:
    """Refused when a team database would hold the SSH key of `what` (`run x`, `fleet y`) and this home has no team
    key to seal it with; callers ask before they make anything."""
    if store.team is not None and team_key() is None:
        raise ConfigurationError(f"{what} is recorded in {store.where}, whose teammates reach its hosts with its SSH "
                                 f"key sealed with the team key: set {TEAM_KEY_VARIABLE} or share the Pulumi "
                                 "passphrase (docs/teams.md)")


def seal_home_key(store: StateStore, path: Path) -> None:
    """With a team database, the key at `path` (one of this home's HOME_KEYS) goes there too, sealed with the team
    key: never in plain text. Refused, before anything is made, when this home has no team key."""
    if store.team is None:
        return
    name = home_key_name(path)
    folder, owner, _ = name.split("/")
    require_team_key(store, f"{folder[:-1]} {owner}")
    key = team_key()
    store.save_sealed_file(name, seal(path.read_bytes(), key), run=owner if folder == "runs" else None,
                           fleet=owner if folder == "fleets" else None)


def reachable_key(store: StateStore, identity_file: Optional[str], whose: str, theirs: bool) -> Optional[str]:
    """The key file this laptop reaches a host with, for the `identity_file` some laptop of the team recorded: a
    user's own key, or one this home made (not `theirs`, a teammate's record) and still has, as it is; a key dstack
    made under another home (two laptops' homes may have one path), its sealed copy unsealed into this home.
    `whose`: what the key belongs to, as a refusal names it (`run x is alice's`)."""
    name = home_key_name(identity_file) if identity_file else None
    if store.team is None or name is None or (not theirs and _under_this_home(identity_file)
                                              and Path(identity_file).exists()):
        return identity_file
    return str(unsealed_home_key(store, name, whose))


def unsealed_home_key(store: StateStore, name: str, whose: str) -> Path:
    """The key `name` (`runs/NAME/ssh_key`) in this home, unsealed from the team database (written again when it
    differs: a teammate's fleet of that name made anew). One clear line when it cannot be."""
    local = dstack_home() / name
    sealed = store.sealed_file(name)
    if sealed is None:
        if local.exists():
            return local
        raise ConfigurationError(f"{whose} and its SSH key ({name}) is not in {store.where}: only they can reach "
                                 "its hosts")
    try:
        key = unseal(sealed, team_key() or "")
    except ValueError:
        raise ConfigurationError(f"{whose}: its SSH key is sealed with {NO_TEAM_KEY}; its hosts cannot be reached "
                                 "from here") from None
    if not local.exists() or local.read_bytes() != key:
        private_file(local).write_bytes(key)
    return local


def fleet_keys_as_the_team_has_them(store: StateStore, fleet: str) -> None:
    """Before cloud fleet `fleet`'s stack is brought up again (grown, shrunk: perhaps from a teammate's laptop),
    its login key and instances' host keys as the team database holds them are unsealed into this home: new ones
    would replace its key pair and every instance."""
    if store.team is None:
        return
    for name in store.sealed_paths(fleet):
        unsealed_home_key(store, name, f"fleet {fleet} is a teammate's")


def seal_fleet_keys(store: StateStore, fleet: str) -> None:
    """The keys of cloud fleet `fleet` in this home that the team database does not hold yet, sealed there."""
    if store.team is None:
        return
    folder, sealed = dstack_home() / "fleets" / fleet, set(store.sealed_paths(fleet))
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if home_key_name(path) and home_key_name(path) not in sealed:
            seal_home_key(store, path)


def _under_this_home(path: str) -> bool:
    try:
        return Path(path).resolve().is_relative_to(dstack_home().resolve())
    except OSError:
        return False
