"""Secrets stay out of every output and file dstack writes, and what dstack creates is its owner's alone."""

import hashlib
import json
import stat
from pathlib import Path

import pytest

from configuration.secret_names import looks_secret
from tests.helpers import run_cli

TOKEN = "ghp_Literal0Token0In0The0File"
CLIENT_TOKEN = "hf_from_the_client_environment"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files_holding(folder: Path, *needles: str) -> list:
    """Every file under `folder` whose bytes contain one of the needles, but the job's own: the script its commands
    became (`${{ env.API_TOKEN }}` puts the value there, as the user asked) and the copy of the user's files (the
    task file holds the literal token)."""
    def the_jobs(path: Path) -> bool:
        return path.name == "job.sh" or "repo" in path.relative_to(folder).parts

    return [str(p) for p in folder.rglob("*")
            if p.is_file() and not the_jobs(p) and any(n.encode() in p.read_bytes() for n in needles)]


@pytest.mark.parametrize("name", ["API_TOKEN", "GITHUB_TOKEN", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "API_KEY",
                                  "OPENAI_APIKEY", "apiKey", "DB_PASSWORD", "MYSQL_PASSWD", "DB_PASS", "SSH_KEYS",
                                  "GOOGLE_APPLICATION_CREDENTIALS", "HTTP_AUTH", "JWTSecret", "KEY"])
def test_names_that_look_secret(name):
    assert looks_secret(name)


@pytest.mark.parametrize("name", ["KEYBOARD_LAYOUT", "MONKEY", "TOKENIZERS_PARALLELISM", "GIT_AUTHOR_NAME",
                                  "PASSAGE_COUNT", "MODE", "PATH", "SECRETARY"])
def test_names_that_do_not(name):
    assert not looks_secret(name)


def task_file(tmp_path, name: str, backend: str = "local") -> str:
    path = tmp_path / f"{name}.dstack.yml"
    path.write_text(f"type: task\nname: {name}\nbackends: [{backend}]\n"
                    f"env: [API_TOKEN={TOKEN}, HF_TOKEN, MODE=fast]\ncommands:\n"
                    "  - printf %s \"$API_TOKEN\" | sha256sum\n  - printf %s \"$HF_TOKEN\" | sha256sum\n"
                    "  - echo mode=$MODE\n  - 'echo auth header: ${{ env.API_TOKEN }} | wc -c'\n")
    return str(path)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_dry_run_masks_literal_tokens(tmp_path, home_env):
    env = {**home_env, "HF_TOKEN": CLIENT_TOKEN}
    result = run_cli("apply", "-f", task_file(tmp_path, "dry", "aws"), "--dry-run", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr and CLIENT_TOKEN not in result.stdout
    configuration = json.loads(result.stdout)["configuration"]
    assert configuration["env"] == {"API_TOKEN": "[secret]", "HF_TOKEN": "[secret]", "MODE": "fast"}
    assert configuration["commands"][3] == "echo auth header: [secret] | wc -c"
    table = run_cli("apply", "-f", task_file(tmp_path, "dry", "aws"), "--dry-run", "--gpu", "A100", env=env)
    assert table.returncode == 0, table.stderr
    assert "Cloud resources of the run's stack" in table.stdout  # the plan with every input of the stack
    assert TOKEN not in table.stdout + table.stderr and CLIENT_TOKEN not in table.stdout + table.stderr


def test_local_run_gives_the_job_its_secrets_and_keeps_them_out_of_every_file(tmp_path, home_env, dstack_home):
    assert not dstack_home.exists()
    result = run_cli("apply", "-f", task_file(tmp_path, "local-secret"), "-y", env={**home_env,
                                                                                  "HF_TOKEN": CLIENT_TOKEN})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[:2]] == [sha256(TOKEN), sha256(CLIENT_TOKEN)]
    assert lines[2] == "mode=fast"
    assert TOKEN not in result.stderr and CLIENT_TOKEN not in result.stderr
    assert files_holding(dstack_home, TOKEN, CLIENT_TOKEN) == []  # state.db, its journal, logs, the job folder
    assert not (dstack_home / "jobs" / "local-secret" / "env").exists()  # read by the job, then removed
    ps = run_cli("ps", "-a", "--json", env=home_env)
    assert TOKEN not in ps.stdout and json.loads(ps.stdout)["runs"][0]["status"] == "done"

    for folder in ("", "runs", "runs/local-secret", "jobs", "jobs/local-secret"):
        assert mode(dstack_home / folder) == 0o700, folder
    for file in ("state.db", "runs/local-secret/output.log", "jobs/local-secret/output.log",
                 "jobs/local-secret/exit_code", "jobs/local-secret/pid"):
        assert mode(dstack_home / file) == 0o600, file


def test_a_home_the_user_made_keeps_its_mode(tmp_path, home_env, dstack_home):
    dstack_home.mkdir(mode=0o755)
    dstack_home.chmod(0o755)
    conf = tmp_path / "m.dstack.yml"
    conf.write_text("type: task\nname: user-home\ncommands: [echo hi]\n")
    result = run_cli("apply", "-f", str(conf), "-y", env=home_env)
    assert result.returncode == 0, result.stderr
    assert mode(dstack_home) == 0o755
    assert mode(dstack_home / "runs") == 0o700 and mode(dstack_home / "jobs") == 0o700


def test_fleet_run_folders_and_copies_are_private(tmp_path, home_env, dstack_home, make_host, client_key):
    host = make_host()
    host.jobs_dir.rmdir()  # the run makes it
    fleet = tmp_path / "fleet.dstack.yml"
    fleet.write_text(f"type: fleet\nname: lab\nssh_config:\n  identity_file: {client_key[0]}\n"
                     f"  hosts: [{host.address}]\n")
    assert run_cli("apply", "-f", str(fleet), "-y", env=home_env).returncode == 0
    result = run_cli("apply", "-f", task_file(tmp_path, "fleet-secret", "ssh"), "-y",
                     env={**home_env, "HF_TOKEN": CLIENT_TOKEN})
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()[:2]] == [sha256(TOKEN), sha256(CLIENT_TOKEN)]

    run_folder = host.jobs_dir / "fleet-secret"
    assert mode(host.jobs_dir) == 0o700 and mode(run_folder) == 0o700
    assert mode(run_folder / "output.log") == 0o600 and not (run_folder / "env").exists()
    assert mode(dstack_home / "known_hosts") == 0o600
    assert mode(dstack_home / "runs" / "fleet-secret") == 0o700
    assert mode(dstack_home / "runs" / "fleet-secret" / "output.log") == 0o600
    assert files_holding(dstack_home, TOKEN, CLIENT_TOKEN) == []
    assert files_holding(run_folder, TOKEN, CLIENT_TOKEN) == []


def test_a_token_written_into_a_repo_url_is_masked_in_the_plan_and_the_state(tmp_path, dstack_home):
    import json

    from provisioner.runs.plan import mask_url_credentials
    from tests.helpers import run_cli

    assert mask_url_credentials("https://me:ghp_abc@github.com/o/r.git") == "https://me:[secret]@github.com/o/r.git"
    assert mask_url_credentials("https://ghp_abc@github.com/o/r") == "https://[secret]@github.com/o/r"
    assert mask_url_credentials("ssh://git@host:22/r.git") == "ssh://git@host:22/r.git"
    assert mask_url_credentials("git@github.com:o/r.git") == "git@github.com:o/r.git"
    conf = tmp_path / "t.dstack.yml"
    conf.write_text("type: task\ncommands: [x]\nrepos: ['https://me:ghp_tok123@github.com/o/r.git']\n")
    plan = run_cli("apply", "-f", str(conf), "--dry-run", "--json", env={"DSTACK_HOME": str(dstack_home)})
    assert "ghp_tok123" not in plan.stdout + plan.stderr
    assert json.loads(plan.stdout)["configuration"]["repos"][0]["url"] == "https://me:[secret]@github.com/o/r.git"
