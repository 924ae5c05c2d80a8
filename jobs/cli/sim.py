"""``tiertwin sim`` and ``tiertwin import-trace``: the simulated network and real traces (``bench sim`` is in jobs/bench/sim.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from tiertwin.jobs.cli.common import console, one_line_errors
from tiertwin.topics import TELEMETRY


# -- commands (added to the `tiertwin` tree in jobs/cli/main.py) ---------------------------------
commands = typer.Typer()


@commands.command("sim")
@one_line_errors
def sim_cmd(
    scenario: str = typer.Option("dense-urban-xr", "--scenario", "-s", help="Preset name or YAML file."),
    ues: Optional[int] = typer.Option(None, help="Number of UEs (overrides the scenario)."),
    seconds: float = typer.Option(10.0, help="Simulated seconds to run (0 = until Ctrl-C / SIGTERM)."),
    realtime: bool = typer.Option(False, "--realtime", help="Pace on the wall clock (live demo) instead of as fast as possible."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default: the scenario's)."),
    telemetry_hz: Optional[float] = typer.Option(None, "--telemetry-hz", help="Telemetry records per UE per second."),
    decision_timeout_ms: Optional[float] = typer.Option(None, "--decision-timeout-ms", help="How long a demand waits for its placement (overrides compute.decision_timeout_ms)."),
    decisions: bool = typer.Option(True, "--decisions/--no-decisions", help="Consume and apply Decisions from the action topics."),
    offline: bool = typer.Option(False, "--offline", help="No Kafka: encode records and count them only."),
    group_id: str = typer.Option("tiertwin-simulator", help="Consumer group on the action topics."),
    local_twin: Optional[str] = typer.Option(
        None, "--local-twin", help="Where the UEs' local twins run: 'device' (in this process: each demand placed "
        "the moment it arises) or 'service' (`tiertwin run local`, over Kafka). Default: device with --realtime, "
        "else service."),
    summary_json: Optional[Path] = typer.Option(None, "--summary-json", help="Also write the run's summary "
                                                "to this file as JSON when it ends (the demo reads it)."),
):
    """Run the simulated 6G network: publish Telemetry, Demands, cell reports and Outcomes; obey Decisions."""
    import gc

    from tiertwin.connectors.simulator import load_scenario, run_simulator
    from tiertwin.errors import ConfigError
    from tiertwin.procs import freeze_heap

    where = local_twin or ("device" if realtime else "service")
    if where not in ("device", "service"):
        raise ConfigError(f"--local-twin must be 'device' or 'service', not {local_twin!r}")

    def announce(loop) -> None:
        world, spec = loop.world, loop.world.scenario
        console.print(f"simulating {spec.name}: {spec.ues} UEs, {world.layout.n_sites} sites / "
                      f"{world.layout.n_cells} cells, seed {world.seed}, "
                      f"{'real time' if realtime else 'as fast as possible'}"
                      f"{'' if offline else ' -> Kafka'}{' (applying decisions)' if loop.source else ''}; "
                      f"local twins: {where}")
        if (realtime and not offline) or where == "device":   # keep full garbage collections off the loaded world
            freeze_heap()
        if where == "device":   # the device twins decide in this thread: bench local's young-generation threshold
            gc.set_threshold(20_000, *gc.get_threshold()[1:])   # (Python's 700: a collection per ~100 placements)

    summary = run_simulator(load_scenario(scenario), seconds if seconds > 0 else None, realtime=realtime,
                            seed=seed, ues=ues, telemetry_hz=telemetry_hz, decision_timeout_ms=decision_timeout_ms,
                            decisions=decisions, offline=offline, group_id=group_id, handle_signals=True,
                            on_start=announce, local_twin=where)
    console.print(summary_table(summary))
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        partial = summary_json.with_suffix(".partial")
        partial.write_text(json.dumps(summary.as_dict(), indent=1))
        partial.replace(summary_json)   # readers never see half a file


@commands.command("import-trace")
@one_line_errors
def import_trace_cmd(
    file: Path = typer.Argument(..., help="CSV or Parquet trace."),
    fmt: str = typer.Option(..., "--format", help="lumos5g | raca5g | berlin-v2x | MAPPING.yaml"),
    to: str = typer.Option(TELEMETRY, "--to", help="Topic to publish Telemetry to."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Map and validate only; publish nothing."),
):
    """Import a measurement trace as Telemetry; unmappable rows go to the dead-letter topic."""
    from tiertwin.connectors.kafka import DeadLetterSink, KafkaSink
    from tiertwin.connectors.traces import import_trace, load_mapping

    mapping = load_mapping(fmt)
    if dry_run:
        report = import_trace(file, mapping)
    else:
        with KafkaSink(profile="throughput", client_id="tiertwin-trace-import") as sink:
            report = import_trace(file, mapping, sink, to, DeadLetterSink(sink, stage="trace-import/map"))
    rejected = ", ".join(f"{k}: {v}" for k, v in sorted(report.rejected.items())) or "none"
    console.print(f"{file.name} ({mapping.name}): {report.rows} rows, {report.published} Telemetry "
                  f"{'mapped' if dry_run else f'published to {to}'}, rejected {sum(report.rejected.values())} "
                  f"({rejected}){'' if dry_run or not report.rejected else ' -> dead letters'}")


def summary_table(summary) -> Table:
    table = Table("metric", "value", title=f"simulation summary ({summary.scenario}, seed {summary.seed}, "
                                           f"local twins: {summary.local_twin})")
    rows = [
        ("UEs / steps", f"{summary.ues} / {summary.steps}"),
        ("simulated / wall seconds", f"{summary.sim_seconds:.2f} / {summary.wall_seconds:.2f}"),
        ("records published", ", ".join(f"{k} {v}" for k, v in sorted(summary.published.items())) or "0"),
        ("records/s", f"{summary.records_per_s:,.0f}"),
        ("decisions applied", ", ".join(f"{k} {v}" for k, v in sorted(summary.decisions_applied.items())) or "0"),
        ("decisions rejected / late / unknown / duplicate",
         f"{summary.decisions_rejected} / {summary.late_decisions} / {summary.unknown_decisions} / "
         f"{summary.duplicate_decisions}"),
        ("demands by placement", ", ".join(f"{k} {v}" for k, v in sorted(summary.demands_by_placement.items())) or "0"),
        ("demands decided / default policy", f"{summary.demands_decided} / {summary.demands_defaulted}"),
        ("deadline-miss rate", f"{summary.deadline_miss_rate:.3f}"),
        ("latency mean / p99 (ms)", f"{summary.latency_mean_ms:.2f} / {summary.latency_p99_ms:.2f}"),
        ("handovers A3 / decided", f"{summary.handovers_a3} / {summary.handovers_decided}"),
        ("migrations (counted)", str(summary.migrations)),
    ]
    if summary.realtime:
        rows.append(("steps behind the wall clock", str(summary.steps_behind)))
    device = summary.device
    if device:
        rows.append(("local twins on the device: place() p50 / p99 (µs)",
                     f"{device.get('place_p50_us', float('nan')):.0f} / {device.get('place_p99_us', float('nan')):.0f} "
                     f"({device['placements']} placements)"))
        rt = device["runtime"]
        rows.append(("device uplink: sent / spilled / resent / queued",
                     f"{rt['sent']} / {rt['spilled']} / {rt['resent']} / {device['queued']}"))
    for row in rows:
        table.add_row(*row)
    return table


