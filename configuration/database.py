"""Where the state store lives: a team's PostgreSQL database (`DSTACK_DATABASE_URL`, dstack's own variable, or
`database:` in `$DSTACK_HOME/config.yml`), or, without either, SQLite under `$DSTACK_HOME`."""

from __future__ import annotations

import os
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from configuration.errors import ConfigurationError

DATABASE_URL_VARIABLE = "DSTACK_DATABASE_URL"
TEAM_KEY_VARIABLE = "DSTACK_TEAM_KEY"
_SCHEMES = ("postgresql", "postgres")


def database_url() -> Optional[str]:
    """The team database's URL, checked to be PostgreSQL's; None: this home's SQLite store."""
    url = os.environ.get(DATABASE_URL_VARIABLE, "").strip()
    where = DATABASE_URL_VARIABLE
    if not url:
        from configuration.home import dstack_home

        if not (dstack_home() / "config.yml").exists():
            return None
        from configuration.backends import load_config  # pydantic: only for a config.yml

        url, where = (load_config().database or "").strip(), f"{dstack_home() / 'config.yml'}: database"
        if not url:
            return None
    return checked_url(url, where, "unset it to keep the state in this home's SQLite store")


def checked_url(url: str, where: str, remedy: str) -> str:
    if urlsplit(url).scheme not in _SCHEMES:
        raise ConfigurationError(f"{where}: {redacted(url)} is not a PostgreSQL URL (postgresql://user@host/dbname); "
                                 f"{remedy}")
    return url


def redacted(url: str) -> str:
    """The URL as it may be shown: its password (in the netloc or a `password=` parameter) left out."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the database URL"
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}@{host}"
    query = "&".join(f"{k}={'***' if k == 'password' else v[0]}" for k, v in parse_qs(parts.query).items())
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def describe(url: str) -> str:
    """The database as a message names it: its name and where it is, never a password."""
    parts = urlsplit(url)
    host = parts.hostname or parse_qs(parts.query).get("host", ["the local socket"])[0]
    name = parts.path.lstrip("/") or "the default database"
    return f"the team database {name} on {host}"


def team_key() -> Optional[str]:
    """The team key that seals a run's login key in the team database: `DSTACK_TEAM_KEY`, else the Pulumi passphrase
    in `$DSTACK_HOME/pulumi/passphrase` (which every teammate shares for the stacks: docs/teams.md); None: neither."""
    from configuration.home import dstack_home

    key = os.environ.get(TEAM_KEY_VARIABLE, "")
    if key:
        return key
    try:
        return (dstack_home() / "pulumi" / "passphrase").read_text().strip() or None
    except OSError:
        return None
