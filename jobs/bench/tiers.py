"""``tiertwin bench tiers``: where the local twin runs (device, edge, cloud) against fixed policies, under emulated
network distance (the evaluation in jobs/experiments/evaluation.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from tiertwin.jobs.cli.common import console, one_line_errors


# The modes `bench tiers` runs by default (jobs.evaluation.ALL_MODES, not imported here: the CLI starts fast).
ALL_MODES_DEFAULT = ("no-control", "always-edge", "always-local", "device", "edge", "cloud")


bench_commands = typer.Typer()


@bench_commands.command("tiers")
@one_line_errors
def bench_tiers(
    scenario: str = typer.Option("dense-urban-xr", "--scenario", "-s", help="Preset name or YAML file."),
    seconds: float = typer.Option(20.0, help="Seconds per mode and round (live modes: on the wall clock)."),
    rounds: int = typer.Option(3, min=1, help="Rounds; every mode of a round runs on the same seed, the order of the live modes alternates."),
    ues: int = typer.Option(10, help="UEs in the simulated network (keep it small: the simulator must keep up with the wall clock)."),
    seed: int = typer.Option(7, help="Seed of the first round (round r runs on SEED + r unless --fixed-seed)."),
    fixed_seed: bool = typer.Option(False, "--fixed-seed", help="Run every round on SEED (the spread is then the machine's alone)."),
    warmup: float = typer.Option(5.0, "--warmup", help="Seconds at the start of each run not counted (start-up transients)."),
    local_edge: str = typer.Option("", "--local-edge", help="Link ONE_WAY_MS[:JITTER_MS[:LOSS]] (default 2:0.5:0)."),
    edge_cloud: str = typer.Option("", "--edge-cloud", help="Link ONE_WAY_MS[:JITTER_MS[:LOSS]] (default 20:3:0.0001)."),
    decision_timeout_ms: float = typer.Option(1000.0, help="How long a demand waits for its placement."),
    modes: List[str] = typer.Option(list(ALL_MODES_DEFAULT), "--mode",
                                    help="Modes to run (repeatable): device, edge, cloud (where the local twin runs), "
                                         "no-control, always-edge, always-local (fixed policies, offline)."),
    out: Path = typer.Option(Path("bench-results/tiers"), help="Folder for report.md and the plots."),
):
    """Where the local twin runs (device, edge, cloud) against fixed policies, under emulated network distance."""
    from tiertwin.connectors.linkemu import Link
    from tiertwin.errors import ConfigError
    from tiertwin.jobs.bench import write_results
    from tiertwin.jobs.experiments.evaluation import ALL_MODES, EDGE_CLOUD, LOCAL_EDGE, EvalConfig, run_evaluation

    unknown = [m for m in modes if m not in ALL_MODES]
    if unknown:
        raise ConfigError(f"--mode {unknown[0]!r}: choose from {', '.join(ALL_MODES)}")
    config = EvalConfig(scenario=scenario, seconds=seconds, ues=ues, seed=seed, fixed_seed=fixed_seed,
                        warmup_s=warmup, rounds=rounds, decision_timeout_ms=decision_timeout_ms,
                        local_edge=Link.parse(local_edge) if local_edge else LOCAL_EDGE,
                        edge_cloud=Link.parse(edge_cloud) if edge_cloud else EDGE_CLOUD,
                        modes=tuple(m for m in ALL_MODES if m in modes))
    results = run_evaluation(config, out, on_progress=console.print)
    path = write_results("tiers", results)
    for mode, s in results["modes"].items():
        d, sp = s["demand_latency_ms"], s["spread"]
        console.print(f"{mode:>12}: {s['demands']} demands, end-to-end mean {d['mean']:.1f} ms "
                      f"({sp['mean_ms']['min']:.1f}-{sp['mean_ms']['max']:.1f}), p99 {d['p99']:.1f} ms, "
                      f"deadline misses {s['deadline_miss_rate']:.1%}")
    for t in results["targets"].values():
        console.print(f"target: {t['target']}: {'met' if t['met'] else 'NOT met'} (value {t['value']:.2f}; "
                      f"met in {t['rounds_met']}/{t['rounds']} rounds)")
    console.print(f"report: {out / 'report.md'}; results: {path}")
