"""``tiertwin deploy | jobs | stop``: run streaming jobs from specs and watch them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from tiertwin.jobs.cli.common import console, one_line_errors


# -- commands (added to the `tiertwin` tree in jobs/cli/main.py) ---------------------------------
commands = typer.Typer()


@commands.command("deploy")
@one_line_errors
def deploy_cmd(specs: list[Path] = typer.Argument(..., help="Job spec files, e.g. jobs/ops/specs/local.yaml.")):
    """Validate job specs and start their instances as detached processes; returns at once."""
    from tiertwin.jobs.ops.launcher import deploy, load_spec

    loaded = [(path, load_spec(path)) for path in specs]  # validate all before starting any
    for path, spec in loaded:
        state = deploy(spec, spec_path=path)
        pids = ", ".join(str(i["pid"]) for i in state["instances"])
        console.print(f"deployed {spec.name} ({spec.tier}, {spec.instances} instance(s), pid {pids})")


@commands.command("jobs")
@one_line_errors
def jobs_cmd(sample: float = typer.Option(1.0, help="Seconds between the two lag samples for records/s.")):
    """List deployed jobs: status, uptime, consumer lag and records/s."""
    from tiertwin.jobs.ops.launcher import job_rows

    table = Table("name", "tier", "instances", "status", "uptime", "lag", "records/s")
    for row in job_rows(sample_s=sample):
        table.add_row(row["name"], row["tier"], row["instances"], row["status"], f"{row['uptime_s']:.0f}s",
                      "-" if row["lag"] is None else str(row["lag"]),
                      "-" if row["records_per_s"] is None else f"{row['records_per_s']:.0f}")
    console.print(table)


@commands.command("stop")
@one_line_errors
def stop_cmd(name: str = typer.Argument(..., help="Job name (see `tiertwin jobs`)."),
             timeout: float = typer.Option(30.0, help="Seconds to wait before SIGKILL.")):
    """Stop a job cleanly: SIGTERM so it commits offsets and flushes state, SIGKILL after the timeout."""
    from tiertwin.jobs.ops.launcher import stop

    console.print(f"stopped {name} ({stop(name, timeout_s=timeout)} instance(s))")
