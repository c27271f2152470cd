"""The tests' own PostgreSQL cluster (tests/postgres_cluster.py) ends with the test process, however that ends."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import ROOT
from tests.postgres_cluster import require_postgres

START_AND_WAIT = """
import sys, time
from tests.postgres_cluster import Cluster
cluster = Cluster().start()
print(cluster.folder, open(cluster.data / "postmaster.pid").readline().strip(), flush=True)
time.sleep(300)
"""


def test_a_killed_test_process_leaves_no_cluster_running():
    bin_folder = require_postgres()
    process = subprocess.Popen([sys.executable, "-c", START_AND_WAIT], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    folder, pid = process.stdout.readline().split()
    try:
        os.kill(int(pid), 0)  # the server runs, detached from the process that started it
        process.kill()
        process.wait()
        deadline = time.monotonic() + 30
        while (Path(folder).exists() or Path(f"/proc/{pid}").exists()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists() and not Path(folder).exists()
    finally:
        if process.poll() is None:
            process.kill()
        if Path(folder, "data").exists():  # the watchdog failed: the server is stopped here instead
            subprocess.run(["runuser", "-u", "nobody", "--", str(bin_folder / "pg_ctl"), "-D", f"{folder}/data",
                            "-m", "immediate", "stop"], capture_output=True, timeout=60)
            shutil.rmtree(folder, ignore_errors=True)
