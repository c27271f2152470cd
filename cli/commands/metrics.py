"""`dstack metrics NAME [-w]`: a running job's CPU, memory and GPUs, read on its host (provisioner.jobs.metrics)."""

from __future__ import annotations

import time

import typer
from typing_extensions import Annotated

from cli.helpers import find_run, run_session
from cli.output import print_json, stdout_console

WATCH_INTERVAL_S = 2.0


def metrics(
    name: Annotated[str, typer.Argument(help="The run name")],
    watch: Annotated[bool, typer.Option("-w", "--watch", help="Refresh until Ctrl-C or the job's end")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
) -> None:
    """Show a running job's CPU, memory and GPU use, read on its host."""
    from configuration.errors import ConfigurationError
    from provisioner.host.access import HostAccess
    from provisioner.jobs.metrics import read_metrics

    record = find_run(run_session(), name)
    if not record.active or not record.host:
        raise ConfigurationError(f"{name} is {record.status}: metrics are read from a running job")
    access = HostAccess.from_json(record.host)
    transport = access.connect(total_wait=30)
    console = stdout_console()
    try:
        while True:
            found = read_metrics(transport, name)
            if as_json:
                print_json({"run": name, "host": access.description, "metrics": found.to_json()})
            else:
                if watch and console.is_terminal:
                    console.clear()
                _print_metrics(console, name, access.description, found)
            if not watch:
                return
            time.sleep(WATCH_INTERVAL_S)
    except KeyboardInterrupt:
        pass
    finally:
        transport.close()


def _print_metrics(console, name: str, host: str, found) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="bold", title=f"{name} on {host}", title_justify="left")
    for column in ("RESOURCE", "USE", "OF"):
        table.add_column(column)
    table.add_row("CPU", f"{found.cpu_percent:.0f}%", f"{found.cpu_count} CPUs ({found.cpu_count * 100}%)")
    table.add_row("Memory", _size(found.memory_bytes), _size(found.memory_total_bytes))
    for gpu in found.gpus:
        util = "-" if gpu.utilization_percent is None else f"{gpu.utilization_percent:.0f}%"
        table.add_row(f"GPU {gpu.index} {gpu.name}", util, "100%")
        used = "-" if gpu.memory_used_mib is None else _size(gpu.memory_used_mib * 2**20)
        total = "-" if gpu.memory_total_mib is None else _size(gpu.memory_total_mib * 2**20)
        table.add_row(f"GPU {gpu.index} memory", used, total)
    console.print(table)


def _size(value: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value / 1024:.0f}KiB"
