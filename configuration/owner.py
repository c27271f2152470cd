"""Whose cloud resources these are: a stable id per `$DSTACK_HOME`, made once.

Many users share one cloud account and often one Pulumi state backend; two `name: train` runs must not meet on a
key pair, a security group, a firewall or a stack, and one user's `dstack gc` must not remove another's live
resources. The id goes into every resource name, the stack name and an owner tag (`dstack:owner` on AWS,
`dstack-owner` on GCP). Eight lowercase hex digits: valid in every cloud name and label.
"""

from __future__ import annotations

import getpass
import os
import re
import secrets
from pathlib import Path
from typing import Optional

from configuration.errors import ConfigurationError
from configuration.home import dstack_home, private_dir

OWNER_ID = re.compile(r"^[0-9a-f]{8}$")


def owner_id() -> str:
    path = dstack_home() / "owner"
    if not path.exists():
        import tempfile  # once per home

        private_dir(path.parent)
        # written whole under a name of its own (0600), then linked in place: a process starting at the same time
        # never reads the file made but not yet written (an O_EXCL create and then a write let it read it empty)
        fd, draft_name = tempfile.mkstemp(prefix=".owner.", dir=path.parent)
        draft = Path(draft_name)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(4) + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:  # another dstack process made it first
            pass
        finally:
            draft.unlink()
    value = path.read_text().strip()
    if not OWNER_ID.match(value):
        raise ConfigurationError(f"{path} holds {value[:20]!r}, not an owner id (8 hex digits); it names this "
                                 "$DSTACK_HOME's cloud resources, so restore it rather than delete it")
    return value


def user_name() -> str:
    """Who this home's user is to the team (`dstack ps`'s USER): `$DSTACK_USER`, else the login name."""
    name = os.environ.get("DSTACK_USER", "").strip()
    if name:
        return name[:64]
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name for this uid (a container)
        return f"uid-{os.getuid()}"


def another_homes(record_owner: Optional[str]) -> bool:
    """Whether a record was made by another `$DSTACK_HOME` (a teammate's, in a team database): its owner's process
    and its `local` jobs live on another machine, which this one cannot ask."""
    return record_owner is not None and record_owner != owner_id()
