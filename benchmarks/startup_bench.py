"""How fast `dstack` starts, against a bare `python -c pass` measured in the same run:

- `dstack --help`, `dstack offers --gpu H100:8 --json`, `dstack ps` (an empty store: its start-up alone) and `dstack
  apply --dry-run` and `apply -y` of the README's hello task (a `local` run): CPU time (user + system) of the whole
  process, best of N runs after a warm-up, with bytecode caching on as on a user's machine (this workplace sets
  PYTHONDONTWRITEBYTECODE, which recompiles every module at every start; it is unset here);
- the README's hello task in a fresh virtual environment (system site packages, whose bytecode pip compiled at
  install, and a fresh copy of this project, whose bytecode does not exist yet, as after `pip install -e .`) and a
  fresh $DSTACK_HOME: wall time of the first run and of the second.

Run: python benchmarks/startup_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cli", "configuration", "offers", "provisioner", "stacks")
HELLO = ["-m", "cli.main", "apply", "-f", "examples/hello.dstack.yml", "-y", "--", "world"]


def user_env(**extra: str) -> dict:
    env = dict(os.environ, **extra)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def best_cpu(argv, runs: int, env: dict, cwd: Path) -> float:
    """The least CPU time (user + system, children) of `runs` runs, after one warm-up run."""
    best = float("inf")
    for i in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env, cwd=cwd)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if i:
            best = min(best, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return best


def wall(argv, env: dict, cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env, cwd=cwd)
    return time.perf_counter() - start


def fresh_environment(folder: Path) -> tuple:
    """A virtual environment seeing the system's site packages, with a fresh copy of the project on its path."""
    source = folder / "src"
    for package in PACKAGES + ("examples",):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "dstack_pulumi_bench.pth").write_text(f"{source}\n")  # what an editable install adds
    return python, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        env = user_env(DSTACK_HOME=str(Path(scratch) / "home"))
        bare = best_cpu([sys.executable, "-c", "pass"], args.runs, env, ROOT)
        print(f"CPU time, best of {args.runs} (bytecode cached):")
        print(f"  python -c pass                      {bare * 1000:7.1f} ms")
        for label, argv in (("dstack --help", ["--help"]),
                            ("dstack offers --gpu H100:8 --json", ["offers", "--gpu", "H100:8", "--json"]),
                            ("dstack ps (an empty store)", ["ps"]),
                            ("dstack apply --dry-run (hello)", [*HELLO[2:5], "--dry-run"]),
                            ("dstack apply -y (hello, local)", HELLO[2:])):
            spent = best_cpu([sys.executable, "-m", "cli.main", *argv], args.runs, env, ROOT)
            print(f"  {label:<35} {spent * 1000:7.1f} ms  {spent / bare:4.1f}x python -c pass")

        python, source = fresh_environment(Path(scratch))
        fresh = user_env(DSTACK_HOME=str(Path(scratch) / "fresh-home"))
        bare_wall = min(wall([str(python), "-c", "pass"], fresh, source) for _ in range(3))
        first = wall([str(python), *HELLO], fresh, source)
        second = wall([str(python), *HELLO], fresh, source)
        print("README hello task in a fresh virtual environment, wall time:")
        print(f"  python -c pass                      {bare_wall:7.2f} s")
        print(f"  first run                           {first:7.2f} s")
        print(f"  second run                          {second:7.2f} s")


if __name__ == "__main__":
    main()
