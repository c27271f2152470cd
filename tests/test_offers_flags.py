"""`dstack offers` from flags alone (cli.offers_flags, no typer or pydantic) against the typer app (cli.app) on the
same arguments: the same output byte for byte, the same errors and help, the same exit status; and the common
command lines really take the plain path."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, run_cli, write

# GPU offers only or clouds only: this machine's own offer (its free disk) would differ between two runs.
SAME_ANSWER = [
    ["--gpu", "H100:8", "--json"], ["--gpu=H100:8", "--json"], ["--gpu", "H100:8"], ["--gpu", "A100:2", "--spot"],
    ["--gpu", "24GB..:1..2", "--on-demand", "--json", "--max-offers", "7"], ["--gpu", "L4", "--spot-auto"],
    ["--gpu", "nvidia:80GB:8", "--spot-policy", "spot", "--json"], ["--gpu", "A100,H100:1..4", "-b", "aws"],
    ["--gpu", "L4", "-baws", "-b", "gcp", "--json"], ["--gpu", "T4", "-r", "us-east-1", "-r", "europe-west4"],
    ["--gpu", "T4", "--region=us-west-2", "--json"], ["--instance-type", "p5.48xlarge", "--json"],
    ["-b", "aws", "--cpu", "arm:16..", "--memory", "64GB..", "--disk", "500GB", "--json"],
    ["-b", "gcp", "--cpu", "8", "--memory", "32GB", "--max-price", "0.5", "--json"],
    ["--gpu", "A100", "--max-price", "3", "--format", "json"], ["--gpu", "A100", "--format", "plain"],
    ["--gpu", "24GB..", "--group-by", "gpu"], ["--gpu", "24GB..", "--group-by", "gpu,backend", "--json"],
    ["--gpu", "A100", "--group-by", "gpu", "--group-by", "region,count"], ["--gpu", "tpu", "--json"],
    ["--gpu", "v5litepod-16", "--dont-destroy", "--no-profile"], ["--gpu", "H200:8", "--max-offers", "1"],
    ["--gpu", "H100:8", "-b", "ssh", "--json"], ["--gpu", "H100:8", "-b", "local"],
    # errors and help: left to the typer app, which says the same as before
    ["--gpu", "A100::2"], ["--gpu", ""], ["--gpu", "1...3"], ["--gpu", "-1"], ["--cpu", "riscv"], ["--disk", "x"],
    ["--memory", "8GB..4GB"], ["-b", "azure"], ["-b=aws", "--gpu", "L4"], ["--max-price", "nan"],
    ["--max-price", "-1"], ["--max-offers", "0"], ["--max-offers", "x"], ["--spot", "--on-demand"],
    ["--spot-policy", "sometimes"], ["--spot", "--spot-policy", "spot"], ["--format", "xml"],
    ["--group-by", "backend"], ["--json=1"], ["--gpu"], ["--unknown"], ["A100"], ["--", "--gpu", "A100"],
    ["--gpu", "A100", "--gpu", "H100", "--json"], ["--profile", "p"], ["--max-duration", "3x"], ["-h"], ["--help"],
    ["--gpu", "H100:8", "--json", "-h"], ["--gpu", "08", "--json"], ["--gpu", "8.0", "--json"],
]


@pytest.mark.parametrize("args", SAME_ANSWER, ids=" ".join)
def test_plain_path_answers_as_the_typer_app(args, home_env):
    plain = run_cli("offers", *args, env=home_env)
    typer_app = run_cli("offers", *args, env=home_env, entry="cli.app")
    assert (plain.returncode, plain.stdout, plain.stderr) == (typer_app.returncode, typer_app.stdout,
                                                              typer_app.stderr)


def test_the_alias_and_an_ssh_fleet_answer_alike(home_env, make_host, client_key, tmp_path):
    """A store with an SSH fleet: its host among the offers on both paths (`offer` and `offers`)."""
    fleet = write(tmp_path, "fleet.dstack.yml", f"type: fleet\nname: mine\nssh_config:\n  user: root\n"
                  f"  identity_file: {client_key[0]}\n  hosts: [{make_host().address}]\n")
    applied = run_cli("apply", "-f", fleet, "-y", env=home_env)
    assert applied.returncode == 0, applied.stderr
    for command in ("offer", "offers"):
        plain = run_cli(command, "-b", "ssh", "--json", env=home_env)
        typer_app = run_cli(command, "-b", "ssh", "--json", env=home_env, entry="cli.app")
        assert plain.stdout == typer_app.stdout and plain.returncode == 0, plain.stderr
        assert [o["region"] for o in json.loads(plain.stdout)["offers"]] == ["mine"]


def imported_by(args, env=None) -> list:
    """Which of typer, click, pydantic and rich `dstack ARGS` imports, in a process of its own."""
    code = (f"import sys; sys.argv = ['dstack', *{args!r}]\nimport cli.main\ntry:\n    cli.main.main()\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('typer', 'click', 'pydantic', 'rich', 'yaml') if m in sys.modules), "
            "file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    return json.loads(out.stderr.strip().splitlines()[-1].replace("'", '"'))


def test_common_offers_command_lines_import_no_typer_nor_pydantic(home_env):
    env = {**__import__("os").environ, **home_env}
    assert imported_by(["offers", "--gpu", "H100:8", "--json"], env) == []
    assert imported_by(["offer", "-b", "aws", "--cpu", "16..", "--spot", "--json", "--max-offers", "3"], env) == []
    assert imported_by(["offers", "--gpu", "A100"], env) == ["rich"]  # the table
    assert "pydantic" in imported_by(["offers", "--gpu", "A100::", "--json"], env)  # the models' error


def test_the_plain_flags_are_the_typer_commands():
    """cli.offers_flags.FLAGS: each name is the typer command's, for the same parameter, value and repetition."""
    from cli.app import COMMANDS, load_command
    from cli.offers_flags import FLAGS

    command = load_command("offers", COMMANDS["offers"])
    by_name = {name: param for param in command.params for name in param.opts + param.secondary_opts}
    for name, (parameter, takes_value, repeats) in FLAGS.items():
        param = by_name[name]
        assert (param.name, not param.is_flag, param.multiple) == (parameter, takes_value, repeats), name
