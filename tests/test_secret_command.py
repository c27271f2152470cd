"""`dstack secret`: the store `${{ secrets.NAME }}` reads, 0600, values never from argv, never in our own output;
changes made at once all kept, and a full disk said in one line."""

import hashlib
import json
import stat

from tests.helpers import run_cli

VALUE = "hf_stored0secret0value0123"


def test_set_list_get_delete(dstack_home):
    result = run_cli("secret", "set", "HF_TOKEN", input=VALUE + "\n")
    assert result.returncode == 0, result.stderr
    assert VALUE not in result.stdout + result.stderr
    store = dstack_home / "secrets.yml"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600 and stat.S_IMODE(dstack_home.stat().st_mode) == 0o700
    assert run_cli("secret", "set", "OTHER", input="x2").returncode == 0
    listed = run_cli("secret", "list")
    assert listed.stdout.split() == ["HF_TOKEN", "OTHER"] and VALUE not in listed.stdout
    assert json.loads(run_cli("secret", "list", "--json").stdout) == {"secrets": ["HF_TOKEN", "OTHER"]}
    assert run_cli("secret", "get", "HF_TOKEN").stdout == VALUE + "\n"  # the newline stdin ended with is not kept
    assert run_cli("secret", "delete", "OTHER").returncode == 0
    assert run_cli("secret", "list").stdout.split() == ["HF_TOKEN"]
    missing = run_cli("secret", "get", "OTHER")
    assert missing.returncode == 1 and missing.stderr == "error: no secret named OTHER (see `dstack secret list`)\n"


def test_a_value_on_the_command_line_is_stored_as_dstack_does_with_a_warning(dstack_home):
    """dstack 0.22.5 takes `secret set NAME VALUE`; we take it too, and say what the shell keeps."""
    result = run_cli("secret", "set", "HF_TOKEN", VALUE)
    assert result.returncode == 0, result.stderr
    assert "warning: a value given on the command line stays in your shell's history" in result.stderr
    assert VALUE not in result.stderr + result.stdout
    assert run_cli("secret", "get", "HF_TOKEN").stdout == VALUE + "\n"
    assert oct((dstack_home / "secrets.yml").stat().st_mode & 0o777) == "0o600"
    empty = run_cli("secret", "set", "EMPTY", "")
    assert empty.returncode == 1 and "no value given for EMPTY" in empty.stderr


def test_bad_names_and_empty_values_are_refused(dstack_home):
    assert "invalid secret name '1x'" in run_cli("secret", "set", "1x", input="v").stderr
    empty = run_cli("secret", "set", "EMPTY", input="")
    assert empty.returncode == 1 and "no value given for EMPTY" in empty.stderr


def test_a_stored_secret_reaches_the_job_and_none_of_our_output(tmp_path, dstack_home):
    assert run_cli("secret", "set", "HF_TOKEN", input=VALUE).returncode == 0
    task = tmp_path / "s.dstack.yml"
    task.write_text("type: task\nname: stored-secret\nbackends: [local]\nenv:\n  - TOKEN=${{ secrets.HF_TOKEN }}\n"
                    "commands: ['printf %s \"$TOKEN\" | sha256sum']\n")
    result = run_cli("apply", "-f", str(task), "-y")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == hashlib.sha256(VALUE.encode()).hexdigest()
    assert VALUE not in result.stderr
    for args in (("ps", "-a", "--json"), ("logs", "stored-secret")):
        assert VALUE not in run_cli(*args).stdout
    plan = run_cli("apply", "-f", str(task), "--dry-run", "--json")
    assert VALUE not in plan.stdout and "[secret]" in plan.stdout
    leaked = [p for p in dstack_home.rglob("*") if p.is_file() and p.name not in ("secrets.yml", "job.sh")
              and VALUE.encode() in p.read_bytes()]
    assert leaked == []


def run_all_at_once(calls):
    """Runs every (args, input) as its own `dstack` process, all at once; their results in the same order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: run_cli(*call[0], input=call[1]), calls))


def test_twenty_sets_at_once_keep_every_value(dstack_home):
    from configuration.secret_store import read_secrets

    values = {f"S{i}": f"value-{i}-{'x' * i}" for i in range(20)}
    results = run_all_at_once([(("secret", "set", name), value) for name, value in values.items()])
    assert [r.returncode for r in results] == [0] * 20, [r.stderr for r in results]
    assert all("stored in" in r.stderr for r in results)
    assert read_secrets() == values


def test_sets_and_deletes_at_once_keep_what_they_reported(dstack_home):
    from configuration.secret_store import editing_secrets, read_secrets

    with editing_secrets() as stored:
        stored.update({f"OLD{i}": f"old-{i}" for i in range(10)}, KEPT="kept")
    calls = [(("secret", "delete", f"OLD{i}"), None) for i in range(10)]
    calls += [(("secret", "set", f"NEW{i}"), f"new-{i}") for i in range(10)]
    results = run_all_at_once(calls)
    assert [r.returncode for r in results] == [0] * 20, [r.stderr for r in results]
    assert all("deleted" in r.stderr for r in results[:10]) and all("stored in" in r.stderr for r in results[10:])
    assert read_secrets() == {f"NEW{i}": f"new-{i}" for i in range(10)} | {"KEPT": "kept"}


def test_on_a_full_disk_set_and_delete_say_so_in_one_line_and_keep_the_store(tmp_path, monkeypatch):
    from tests.full_disk import small_disk

    with small_disk(tmp_path) as (mount, fill):
        home = mount / "home"
        monkeypatch.setenv("DSTACK_HOME", str(home))
        assert run_cli("secret", "set", "BEFORE", input=VALUE).returncode == 0
        fill()
        for args, value in ((("secret", "set", "AFTER"), "x" * 5000), (("secret", "delete", "BEFORE"), None)):
            refused = run_cli(*args, input=value)
            assert refused.returncode == 1 and refused.stdout == "", refused.stderr
            assert refused.stderr == (f"error: cannot write {home / 'secrets.yml'}: the disk is full; free some space "
                                      "on it and run the command again\n")
        assert run_cli("secret", "get", "BEFORE").stdout == VALUE + "\n"
        assert run_cli("secret", "list").stdout.split() == ["BEFORE"]
        assert [p.name for p in home.iterdir() if p.name.endswith(".tmp")] == []


def test_delete_takes_dstacks_yes_flag(dstack_home):
    assert run_cli("secret", "set", "GONE", input="v").returncode == 0
    deleted = run_cli("secret", "delete", "GONE", "-y")
    assert deleted.returncode == 0 and deleted.stderr == "Secret GONE deleted\n", deleted.stderr
    assert run_cli("secret", "list").stdout == ""
