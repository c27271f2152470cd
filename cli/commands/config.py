"""`dstack config check`: before the first cloud run, is everything there (the Pulumi CLI, credentials, enabled
regions, the network, GPU quotas)? One line per answer; exit 1 when a configured backend would fail."""

from __future__ import annotations

import typer

from cli import run_options as opt
from cli.output import TYPER_SETTINGS, print_json, stdout_console

config_app = typer.Typer(help="Check the cloud configuration in $DSTACK_HOME/config.yml", no_args_is_help=True, **TYPER_SETTINGS)

_MARKS = {"ok": "[green]ok[/]  ", "warn": "[yellow]warn[/]", "fail": "[red]fail[/]"}


@config_app.command("check")
def check(as_json: opt.JsonOption = False) -> None:
    """Answer, for each configured cloud, what its first run depends on."""
    from configuration.backends import load_config
    from stacks.checks import check_pulumi, worst

    config = load_config()
    checks = _database_checks(config)
    missing = _missing_extras(config.cloud_backends)
    if config.cloud_backends and not missing:
        checks.append(check_pulumi())
    for name in config.cloud_backends:
        checks += missing.get(name) or _cloud_checks(name, config.backend(name))
    if as_json:
        print_json({"checks": [c.to_json() for c in checks], "status": worst(checks)})
    else:
        console = stdout_console()
        if not config.cloud_backends:
            console.print("No cloud is configured in $DSTACK_HOME/config.yml: runs use this machine and SSH fleets "
                          "(docs/clouds.md says how to add AWS or GCP).")
        for c in checks:
            console.print(f"{_MARKS[c.status]} {c.backend:<6} {c.subject:<12} {c.detail}", highlight=False)
    if worst(checks) == "fail":
        raise typer.Exit(1)


def _database_checks(config) -> list:
    """The team database's line (reachable, schema version, latency) when one is configured (docs/teams.md), and
    a warning when the clouds' Pulumi stacks stay on this laptop, where no teammate's `dstack stop` finds them."""
    from configuration.database import database_url
    from configuration.errors import DstackError
    from stacks.checks import FAIL, WARN, Check

    try:
        url = database_url()
        if url is None:
            return []
        from provisioner.store.postgres import check_team_database

        status, detail = check_team_database(url)
    except DstackError as e:
        status, detail = FAIL, str(e)
    checks = [Check("state", "database", status, detail)]
    backend_url = config.pulumi.backend_url or ""
    if config.cloud_backends and not backend_url.startswith(("s3://", "gs://")):
        checks.append(Check("state", "stacks", WARN, "the runs' Pulumi stacks are kept on this laptop "
                            f"({backend_url or '$DSTACK_HOME/pulumi/state'}): a teammate cannot stop its cloud runs; "
                            "set pulumi.backend_url to the team's s3:// or gs:// bucket (docs/teams.md)"))
    return checks


def _missing_extras(backends) -> dict:
    """A failed check for each configured cloud whose SDKs are not installed, by backend."""
    from stacks.checks import FAIL, Check
    from stacks.extras import MissingExtra, require_extra

    missing = {}
    for name in backends:
        try:
            require_extra(name, f"a run on {name}")
        except MissingExtra as e:
            missing[name] = [Check(name, "sdk", FAIL, str(e))]
    return missing


def _cloud_checks(name: str, backend) -> list:
    from offers.catalog import load_catalogs

    regions = backend.regions or sorted(set(load_catalogs([name])[0].regions))
    if name == "aws":
        from stacks.aws.checks import check_aws

        return check_aws(regions, vpc_name=backend.vpc_name)
    from stacks.gcp.checks import check_gcp

    return check_gcp(regions, project_id=backend.project_id, vpc_name=backend.vpc_name,
                     self_delete=backend.self_delete)
