"""How fast `dstack offers` answers: whole-process start-up against a bare `python -c pass` in the same run, the
solver's median query time over the shipped catalogue, and its growth over 1x, 10x and 100x synthetic catalogues.

Run: python benchmarks/offers_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from configuration.resources import ResourcesSpec  # noqa: E402
from offers.catalog import Catalog, load_catalogs  # noqa: E402
from offers.requirements import Requirements  # noqa: E402
from offers.solver import find_offers  # noqa: E402


def process_median(argv, runs: int) -> float:
    """Median wall time of a whole process, after one warm-up run. Bytecode caching is left on, as on a user's
    machine (this workplace sets PYTHONDONTWRITEBYTECODE, which recompiles every module at every start)."""
    times = []
    env = dict(os.environ, DSTACK_HOME=tempfile.mkdtemp())
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env, cwd=ROOT)
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def query_median(req, catalogs, runs: int, limit=50) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        find_offers(req, catalogs, limit=limit)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def scaled(catalog: Catalog, factor: int) -> Catalog:
    """`factor` copies of every instance type (renamed) with all their price groups."""
    types, slices = [], []
    columns = {name: array(getattr(catalog, name).typecode) for name in ("region", "zoneset", "price", "spot_price")}
    for copy in range(factor):
        for instance, (start, end) in zip(catalog.types, catalog.type_slices):
            offset = len(columns["price"])
            types.append(instance._replace(name=f"{instance.name}-x{copy}"))
            slices.append((offset, offset + end - start))
            for name, column in columns.items():
                column.extend(getattr(catalog, name)[start:end])
    return Catalog(catalog.backend, catalog.meta, types, slices, catalog.regions, catalog.zonesets, path=catalog.path,
                   **columns)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    python = sys.executable
    command = [python, "-m", "cli.main"]  # this checkout's code (an installed `dstack` may be another's)

    print("== whole process (median of %d runs)" % args.runs)
    bare = process_median([python, "-c", "pass"], args.runs)
    help_time = process_median(command + ["--help"], args.runs)
    offers_time = process_median(command + ["offers", "--gpu", "H100:8", "--json"], args.runs)
    print(f"python -c pass                     {bare * 1e3:7.1f} ms")
    print(f"dstack --help                      {help_time * 1e3:7.1f} ms  ({help_time / bare:.1f}x bare python)")
    print(f"dstack offers --gpu H100:8 --json  {offers_time * 1e3:7.1f} ms  ({offers_time / bare:.1f}x bare python)")

    catalogs = load_catalogs()
    groups = sum(len(c) for c in catalogs)
    print(f"\n== solver over the shipped catalogue ({groups} price groups, median of 200 queries)")
    queries = {
        "gpu H100:8": {"gpu": "H100:8"},
        "gpu 24GB..": {"gpu": "24GB.."},
        "gpu A100:2 cpu 16..": {"gpu": "A100:2", "cpu": "16.."},
        "defaults (every CPU offer)": {},
    }
    for label, spec in queries.items():
        req = Requirements(ResourcesSpec.model_validate(spec))
        print(f"{label:28s} {query_median(req, catalogs, 200) * 1e3:7.2f} ms")

    print("\n== growth: gpu H100:8 over synthetic catalogues (median of 20 queries)")
    req = Requirements(ResourcesSpec.model_validate({"gpu": "H100:8"}))
    baseline = None
    for factor in (1, 10, 100):
        big = [scaled(c, factor) for c in catalogs]
        seconds = query_median(req, big, 20)
        baseline = baseline or seconds
        print(f"{factor:4d}x  {sum(len(c) for c in big):9d} groups  {seconds * 1e3:8.2f} ms  "
              f"({seconds / baseline:5.1f}x the 1x time)")


if __name__ == "__main__":
    main()
