"""``tiertwin bench fidelity``: every learned forecaster beside its naive baselines, on fresh simulator seeds.

The body is :mod:`tiertwin.jobs.experiments.fidelity`; this wires the options and prints the table.
"""

from __future__ import annotations

from typing import List

import typer

from tiertwin.jobs.cli.common import console, one_line_errors

bench_commands = typer.Typer()


@bench_commands.command("fidelity")
@one_line_errors
def bench_fidelity(
    scenarios: List[str] = typer.Option([], "--scenario", "-s", help="Preset name or YAML file (repeatable; default: every preset)."),
    seeds: List[int] = typer.Option([2024], "--seed", help="Simulator seeds (repeatable); pretraining uses 7, so keep off it."),
    seconds: float = typer.Option(20.0, help="Simulated seconds per scenario and seed (the issue's long run: 60)."),
    ues: int = typer.Option(40, help="UEs per scenario (0: the scenario's own count)."),
    horizon: float = typer.Option(None, help="SINR forecast horizon, s (default: the edge twin's handover_horizon_s)."),
    draws: int = typer.Option(32, help="Monte Carlo draws of the SINR oracle per forecast."),
    warmup: float = typer.Option(2.0, help="Simulated seconds at the start of each run learned from but not scored."),
    ewma_alpha: float = typer.Option(None, help="The local twins' EWMA weight of the newest telemetry sample (default: "
                                                "LocalTwinConfig's); 1 = summaries carry the latest SINR unsmoothed."),
    shares: bool = typer.Option(True, "--shares/--no-shares", help="Also score the PRB / MEC share bandits' reward "
                                                                    "forecasts (a simulator run of their own per seed)."),
):
    """MAE and median absolute error of the demand-latency model (per tier), the SINR forecaster (serving and best
    neighbour, at the edge's horizon) and the share bandits' reward forecasts beside running mean / physics baselines,
    persistence / linear trend / oracle and running means, frozen and prequential. Default run: every preset, one seed,
    20 s, 40 UEs (about 20 s on a quiet core)."""
    from tiertwin.jobs.bench import write_results
    from tiertwin.jobs.experiments.fidelity import FidelityConfig, run_fidelity, table
    from tiertwin.pipelines.edge_twin import EdgeTwinConfig
    from tiertwin.pipelines.local_twin import LocalTwinConfig

    config = FidelityConfig(scenarios=tuple(scenarios), seeds=tuple(seeds), seconds=seconds, ues=ues or None,
                            horizon_s=horizon if horizon is not None else EdgeTwinConfig().handover_horizon_s,
                            draws=draws, warmup_s=warmup, shares=shares,
                            ewma_alpha=ewma_alpha if ewma_alpha is not None else LocalTwinConfig().ewma_alpha)
    results = run_fidelity(config, on_progress=console.print)
    path = write_results("fidelity", results)
    console.print(table(results["rows"]))
    for scenario, extra in results["extras"].items():
        for name, e in extra.items():
            speeds = "; ".join(", ".join(f"{t} {v:.1f}" for t, v in s.items()) for s in e["effective_speed_gcps"])
            console.print(f"{scenario}: {name} learned effective speeds (Gcycles/s): {speeds}")
    console.print(f"results: {path}")
