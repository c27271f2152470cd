"""`repos` and `files`: dstack's grammar, and their effect on the local backend and an SSH host. Remote repos are
local bare repositories reached by file:// URLs: nothing leaves the machine."""

import subprocess
from pathlib import Path

import pytest

from configuration.loader import parse_configuration
from provisioner.jobs.script import JobSpec, upload_target
from tests.helpers import run_cli

GIT = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]


@pytest.mark.parametrize("text, expected", [
    (".", {"local_path": "."}),
    ("../other", {"local_path": "../other"}),
    ("code:/repo", {"local_path": "code", "path": "/repo"}),
    ("https://github.com/org/repo.git", {"url": "https://github.com/org/repo.git"}),
    ("git@github.com:org/repo.git", {"url": "git@github.com:org/repo.git"}),
    ("git@github.com:org/repo.git:sub", {"url": "git@github.com:org/repo.git", "path": "sub"}),
    ("https://git.corp:8443/org/repo.git:/work", {"url": "https://git.corp:8443/org/repo.git", "path": "/work"}),
    ("https://me:tok@github.com/org/r.git", {"url": "https://me:tok@github.com/org/r.git"}),
    ("C:\\code", {"local_path": "C:\\code"}),
])
def test_repo_short_forms(text, expected):
    configuration = parse_configuration(f"type: task\ncommands: [x]\nrepos: ['{text}']\n", "t.dstack.yml")
    assert configuration.repos[0].model_dump(exclude_defaults=True, mode="json") == expected


def test_repo_long_form_and_file_mappings():
    configuration = parse_configuration(
        "type: task\ncommands: [x]\nsingle_branch: false\nrepos:\n  - url: https://x/r.git\n    branch: dev\n"
        "    hash: abc123\n    path: /src\n    if_exists: skip\nfiles:\n  - data\n  - ~/.cache/x:~/x\n"
        "  - local_path: a\n    path: /b\n", "t.dstack.yml")
    repo = configuration.repos[0]
    assert (repo.url, repo.branch, repo.hash, repo.path, repo.if_exists.value) == ("https://x/r.git", "dev",
                                                                                  "abc123", "/src", "skip")
    assert [(f.local_path, f.path) for f in configuration.files] == [("data", "data"), ("~/.cache/x", "~/x"),
                                                                    ("a", "/b")]
    assert configuration.single_branch is False


@pytest.mark.parametrize("body, message", [
    ("repos: [., ../b]", "t.dstack.yml:4: repos: at most one repo"),
    ("repos: ['a:b:c']", "repos[0]: Invalid repo"),
    ("repos: [{url: 'https://x', local_path: .}]", "mutually exclusive"),
    ("repos: [{path: x}]", "either `local_path` or `url`"),
    ("repos: ['.:~bob/x']", "`~username` paths are not supported"),
    ("repos: [{url: x, if_exists: overwrite}]", "if_exists"),
    ("files: ['a:b:c']", "files[0]: Invalid file mapping"),
    ("files: [{local_path: a, path: 'C:/x'}]", "must be a Unix path"),
    ("repo: [.]", "unknown field 'repo' (did you mean 'repos'?)"),
])
def test_invalid_repos_and_files_name_the_file_line_and_field(tmp_path, body, message):
    task = tmp_path / "t.dstack.yml"
    task.write_text(f"type: task\ncommands: [x]\n\n{body}\n")
    result = run_cli("apply", "-f", str(task), "--dry-run")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert message in result.stderr and f"{task}:4" in result.stderr, result.stderr


def commit_all(repo: Path, message: str) -> str:
    subprocess.run(GIT + ["-C", str(repo), "add", "-A"], check=True)
    subprocess.run(GIT + ["-C", str(repo), "commit", "-qm", message], check=True)
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def remote(tmp_path) -> dict:
    """A bare repository with `main` (two commits) and `dev`, at a file:// URL."""
    work = tmp_path / "upstream"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "version.txt").write_text("one\n")
    first = commit_all(work, "one")
    (work / "version.txt").write_text("two\n")
    commit_all(work, "two")
    subprocess.run(["git", "-C", str(work), "checkout", "-q", "-b", "dev"], check=True)
    (work / "version.txt").write_text("dev\n")
    commit_all(work, "dev")
    subprocess.run(["git", "-C", str(work), "checkout", "-q", "main"], check=True)  # the default branch
    bare = tmp_path / "upstream.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return {"url": f"file://{bare}", "first": first}


def run_task(tmp_path: Path, name: str, body: str, backend: str = "local"):
    task = tmp_path / "tasks" / f"{name}.dstack.yml"
    task.parent.mkdir(exist_ok=True)
    task.write_text(f"type: task\nname: {name}\nbackends: [{backend}]\n{body}")
    return run_cli("apply", "-f", str(task), "-y")


def test_a_url_repo_is_cloned_at_its_branch_and_hash(tmp_path, dstack_home, remote):
    result = run_task(tmp_path, "clone-dev", f"repos: [{{url: '{remote['url']}', branch: dev}}]\n"
                                             "commands: [cat version.txt, git branch -r]\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "dev" and "origin/dev" in result.stdout
    assert "origin/main" not in result.stdout  # single_branch (a task's default): only dev was fetched
    result = run_task(tmp_path, "clone-hash", f"single_branch: false\nrepos:\n  - url: '{remote['url']}'\n"
                                              f"    hash: {remote['first']}\n    path: code\n"
                                              "commands: [cat code/version.txt]\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "one\n"


def test_if_exists_error_fails_and_skip_keeps_the_folder(tmp_path, dstack_home, remote):
    target = tmp_path / "existing"
    target.mkdir()
    (target / "mine.txt").write_text("mine\n")
    result = run_task(tmp_path, "exists-error", f"repos: ['{remote['url']}:{target}']\ncommands: [echo never]\n")
    assert result.returncode == 1 and "never" not in result.stdout
    assert f"repos[0]: {target} exists and is not empty (if_exists: error)" in \
        (dstack_home / "runs" / "exists-error" / "output.log").read_text()
    result = run_task(tmp_path, "exists-skip", f"repos: [{{url: '{remote['url']}', path: '{target}', "
                                               f"if_exists: skip}}]\ncommands: [ls {target}]\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"dstack: repos[0]: {target} exists; left as it is (if_exists: skip)",
                                          "mine.txt"]


def test_local_repo_and_files_land_where_dstack_puts_them(tmp_path, dstack_home, monkeypatch):
    other = tmp_path / "other"
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    (other / "lib.py").write_text("x = 1\n")
    (other / ".gitignore").write_text("*.tmp\n")
    (other / "cache.tmp").write_text("ignored\n")
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    (home / ".config" / "tool.ini").write_text("[tool]\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "params.yml").write_text("lr: 1\n")
    monkeypatch.setenv("HOME", str(home))
    result = run_task(tmp_path, "local-repo", "repos: ['../other:src']\n"
                                              "files: [params.yml, '~/.config/tool.ini:~/uploaded/tool.ini']\n"
                                              "commands: [find . -type f | sort, cat ~/uploaded/tool.ini]\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["./params.yml", "./src/.gitignore", "./src/lib.py", "[tool]"]


def test_a_local_repo_must_be_a_repository_and_takes_no_branch(tmp_path, dstack_home):
    (tmp_path / "plain").mkdir()
    result = run_task(tmp_path, "not-repo", "repos: ['../plain']\ncommands: [echo never]\n")
    assert result.returncode == 1 and "repos[0]" in result.stderr and "is not a git repository" in result.stderr
    subprocess.run(["git", "init", "-q", str(tmp_path / "plain")], check=True)
    result = run_task(tmp_path, "branch-local", "repos: [{local_path: ../plain, branch: dev}]\ncommands: [x]\n")
    assert result.returncode == 1 and "`branch` and `hash` apply to a repo given by `url`" in result.stderr


def test_container_paths_are_mounted_and_relative_ones_follow_the_working_dir():
    python = JobSpec(run_name="r", commands=[], working_dir="sub")
    assert upload_target(python, "data") == ('"$JOB_DIR"/repo/sub/data', None)
    assert upload_target(python, "~/x") == ('"$HOME"/x', None)
    image = JobSpec(run_name="r", commands=[], image="busybox", working_dir="/app")
    assert upload_target(image, ".") == ("", "/app")
    assert upload_target(image, "~/x") == ("", "/root/x")
    assert upload_target(JobSpec(run_name="r", commands=[], image="busybox"), "data") == ('"$JOB_DIR"/repo/data',
                                                                                          None)


def test_repo_and_files_on_an_ssh_host(tmp_path, dstack_home, make_host, client_key, remote):
    host = make_host()
    fleet = tmp_path / "fleet.dstack.yml"
    fleet.write_text(f"type: fleet\nname: lab\nssh_config:\n  identity_file: {client_key[0]}\n"
                     f"  hosts: [{host.address}]\n")
    assert run_cli("apply", "-f", str(fleet), "-y").returncode == 0
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "cfg.txt").write_text("cfg\n")
    result = run_task(tmp_path, "ssh-repo", f"repos: ['{remote['url']}']\nfiles: ['cfg.txt:conf/cfg.txt']\n"
                                            "commands: [cat version.txt conf/cfg.txt]\n", backend="ssh")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "two\ncfg\n"


def test_credentials_from_the_users_git_go_to_the_env_file_only(tmp_path, monkeypatch):
    from provisioner.jobs.control import job_folder_files
    from provisioner.jobs.uploads import RemoteRepo, UploadPlan

    config = tmp_path / "gitconfig"
    config.write_text("[credential]\n\thelper = \"!f() { echo username=me; echo password=pw_from_helper_42; }; f\"\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    job = JobSpec(run_name="r", commands=["true"], uploads=UploadPlan(clone=RemoteRepo("https://git.example/r.git", ".")))
    extras = job_folder_files(job)
    assert b"pw_from_helper_42" in extras["env"][0] and extras["env"][1] == 0o600
    assert b"pw_from_helper_42" not in extras["job.sh"][0] and "askpass" in extras
