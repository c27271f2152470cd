"""`dstack setup pulumi`: installs the Pulumi CLI that the automation API drives (pip cannot install it)."""

from __future__ import annotations

import typer


def setup(
    tool: str = typer.Argument(..., help="What to set up: pulumi"),
) -> None:
    """Install what dstack needs besides its Python packages: `dstack setup pulumi`."""
    if tool != "pulumi":
        raise typer.BadParameter(f"{tool!r} (allowed: pulumi)", param_hint="'TOOL'")
    from stacks.extras import require_extra

    require_extra("pulumi", "`dstack setup pulumi`")
    from stacks.automation import find_pulumi, install_pulumi

    found = find_pulumi()
    if found:
        print(f"pulumi is already installed: {found}")
        return
    print("Downloading the Pulumi CLI matching the SDK into ~/.pulumi/versions ...")
    try:
        path = install_pulumi()
    except Exception as e:  # the installer shells out to curl/sh; any failure is reported as it is
        from configuration.errors import ConfigurationError

        raise ConfigurationError(f"installing the Pulumi CLI failed: {e}") from None
    print(f"Installed: {path}")
