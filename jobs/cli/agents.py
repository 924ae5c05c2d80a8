"""``tiertwin run local|edge|cloud`` and ``tiertwin pretrain``: running the tiers' jobs and training their starting models."""

from __future__ import annotations

import enum
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import typer

from tiertwin.jobs.cli.common import console, one_line_errors
from tiertwin.procs import freeze_heap
from tiertwin.topics import MODELS


class Tier(str, enum.Enum):
    local = "local"
    edge = "edge"


# -- running agents ----------------------------------------------------------------------------
def make_agent(tier: str, config_file: Path | None = None, **overrides: Any):
    """An agent of ``tier`` from a YAML config file and overrides (not started)."""
    from tiertwin.pipelines.edge_twin import EdgeAgentConfig, EdgeTwinAgent
    from tiertwin.pipelines.local_twin import LocalAgentConfig, LocalTwinAgent

    if tier == "local":
        return LocalTwinAgent(LocalAgentConfig.load(config_file, **overrides))
    return EdgeTwinAgent(EdgeAgentConfig.load(config_file, **overrides))


def run_until_signalled(agent) -> None:
    """Run ``agent`` in this thread until SIGTERM / SIGINT; then checkpoint, flush, commit and exit."""
    stop = threading.Event()
    # Process-wide interpreter settings: only here, for a process that is one agent, not in library code.
    sys.setswitchinterval(agent.config.gil_switch_interval_ms / 1000)
    agent.open()
    if agent.config.gc_freeze_after_open:
        freeze_heap()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent.run(stop)


# -- commands (added to the `tiertwin` tree in jobs/cli/main.py) ---------------------------------
commands = typer.Typer()


@commands.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@one_line_errors
def run(ctx: typer.Context,
        tier: str = typer.Argument(..., help="Which tier: local, edge (agents) or cloud (Beam)."),
        config: Path = typer.Option(None, "--config", "-c", help="YAML config (see the README)."),
        metrics_port: Optional[int] = typer.Option(None, help="Serve Prometheus metrics on this port."),
        instance_id: Optional[str] = typer.Option(None, help="Override the config's instance id."),
        runner: str = typer.Option("prism", help="cloud: prism | direct | flink | dataflow; Beam flags go after --."),
        window_s: Optional[float] = typer.Option(None, help="cloud: window size in s (default 10)."),
        slide_s: Optional[float] = typer.Option(None, help="cloud: sliding period in s (default: fixed windows)."),
        lateness_s: Optional[float] = typer.Option(None, help="cloud: allowed lateness in s (default 30)."),
        early_s: Optional[int] = typer.Option(None, help="cloud: early pane every N s (default 2; 0 = none)."),
        start: Optional[str] = typer.Option(None, help="cloud: earliest | latest (default latest)."),
        snapshots_dir: Optional[Path] = typer.Option(None, help="cloud: also write snapshots as Parquet here."),
        train: Optional[bool] = typer.Option(None, "--train/--no-train", help="cloud: train and publish models."),
        fuse: Optional[bool] = typer.Option(None, "--fuse/--no-fuse", help="cloud: fuse the tiers into snapshots."),
        train_in_own_process: Optional[bool] = typer.Option(
            None, "--train-in-own-process/--train-in-job",
            help="cloud, LOOPBACK runners: training as a second job in a child process (default) or in the "
                 "fusing job."),
        sdk_workers: Optional[int] = typer.Option(
            None, "--sdk-workers", min=1, max=16,
            help="cloud: SDK worker processes the fusing job reads and aggregates in (default 1).")):
    """Run one local or edge twin agent until SIGTERM / SIGINT. `run cloud` starts the cloud twin's streaming Beam job (fusion; training as a second job in a child process)."""
    from tiertwin.errors import ConfigError

    if tier == "cloud":  # jobs/ops/launcher.py starts cloud jobs as `run cloud --config F --runner R`
        from tiertwin.jobs.cli.cloud import run_cloud

        return run_cloud(list(ctx.args), runner=runner, config=config, window_s=window_s, slide_s=slide_s,
                         lateness_s=lateness_s, early_s=early_s, start=start, snapshots_dir=snapshots_dir,
                         train=train, fuse=fuse, train_in_own_process=train_in_own_process,
                         sdk_workers=sdk_workers, say=console.print)
    if ctx.args:
        raise ConfigError(f"unexpected arguments for `run {tier}`: {' '.join(ctx.args)}")
    choices = [t.value for t in Tier]
    if tier not in choices:
        raise ConfigError(f"tier must be one of {', '.join(choices + ['cloud'])}, not {tier!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = {k: v for k, v in {"metrics_port": metrics_port, "instance_id": instance_id}.items() if v is not None}
    agent = make_agent(tier, config, **overrides)
    run_until_signalled(agent)


@commands.command("pretrain")
@one_line_errors
def pretrain(source: str = typer.Option("simulator", help="simulator (offline runs of every preset) or synthetic."),
             scenarios: list[str] = typer.Option([], "--scenario", help="Simulator scenarios (repeatable; default: every preset)."),
             seconds: float = typer.Option(30.0, help="Simulated seconds per scenario and seed."),
             ues: int = typer.Option(40, help="UEs per simulated scenario (0: the scenario's own)."),
             train_seeds: list[int] = typer.Option([7], "--train-seed", help="Seeds the models learn from (repeatable)."),
             held_out_seeds: list[int] = typer.Option([2024], "--held-out-seed",
                                                      help="Seeds the models are judged on, never trained on (repeatable)."),
             force: bool = typer.Option(False, help="Write the retrained models even where they measure worse than the shipped ones."),
             samples: int = typer.Option(20_000, help="Synthetic examples per model (the share bandits; every model if synthetic)."),
             seed: int = typer.Option(7, help="Seed of the synthetic examples."),
             out: Path = typer.Option(None, help="Directory (default: the shipped pipelines/pretrained)."),
             publish: bool = typer.Option(False, help="Also publish them to the models topic."),
             models_topic: str = typer.Option(MODELS)):
    """Train the starting models, judge them against the shipped ones, write the better ones to pipelines/pretrained/.

    simulator: the demand-latency model (residual on physics) and the SINR forecaster learn from offline simulator
    runs of every preset on the training seeds; then the fidelity table (tiertwin bench fidelity) of the retrained
    and the shipped models on the held-out seeds is printed, and a retrained model is written only if its
    prequential MAE is lower on average over scenarios and targets (or with --force). The PRB / MEC share bandits
    are written from synthetic streams only with --source synthetic (which writes every model, unjudged).
    """
    from tiertwin.errors import ConfigError
    from tiertwin.pipelines.learners import DEMAND_LATENCY, HANDOVER
    from tiertwin.pipelines.pretrain import (PRETRAINED_DIR, PRETRAINED_VERSION, load_pretrained, pretrain_models,
                                             write_pretrained)

    if source not in ("simulator", "synthetic"):
        raise ConfigError(f"--source must be simulator or synthetic, not {source!r}")
    directory = out or PRETRAINED_DIR
    if source == "synthetic":
        models = pretrain_models(samples, seed)
    else:
        from tiertwin.jobs.experiments.fidelity import (FidelityConfig, compare, run_fidelity, table,
                                                        train_candidates)
        from tiertwin.pipelines.forecasting import SinrForecaster

        common = dict(scenarios=tuple(scenarios), seconds=seconds, ues=ues or None)
        candidates = train_candidates(FidelityConfig(seeds=tuple(train_seeds), **common), on_progress=console.print)
        shipped = {name: load_pretrained(name)[0] for name in (DEMAND_LATENCY, HANDOVER)}
        how = "horizon" if isinstance(shipped[HANDOVER], SinrForecaster) else "steps"
        results = run_fidelity(FidelityConfig(seeds=tuple(held_out_seeds), **common),
                               {"shipped": shipped[DEMAND_LATENCY], "retrained": candidates[DEMAND_LATENCY]},
                               {"shipped": (shipped[HANDOVER], how), "retrained": (candidates[HANDOVER], "horizon")},
                               on_progress=console.print)
        console.print(table(results["rows"], title=f"Retrained vs shipped on held-out seeds {list(held_out_seeds)}"))
        verdict = compare(results["rows"], "retrained", "shipped")
        models = {}
        for name, family in ((DEMAND_LATENCY, "latency"), (HANDOVER, "sinr")):
            v = verdict.get(family, {"mean_ratio": float("nan"), "better": 0, "cases": 0})
            better = v["mean_ratio"] < 1.0
            console.print(f"{name}: retrained prequential MAE / shipped = {v['mean_ratio']:.3f} on average, lower in "
                          f"{v['better']}/{v['cases']} scenario-targets: {'better' if better else 'not better'}"
                          + ("" if better or not force else " (written anyway: --force)"))
            if better or force:
                models[name] = candidates[name]
    for path in write_pretrained(models, directory):
        console.print(f"wrote {path}")
    if publish:
        from tiertwin.connectors.kafka import KafkaSink
        from tiertwin.pipelines.models import next_version, publish_model, read_models_topic

        # The next number on the topic, never the shipped one again: twins already run version 1 and would
        # ignore a second version 1 (the twins shadow the new version and promote it on a measured win).
        on_topic = read_models_topic(topic=models_topic)
        with KafkaSink(client_id="tiertwin-pretrain") as sink:
            for name, model in models.items():
                version = next_version(on_topic, name, shipped=PRETRAINED_VERSION)
                publish_model(sink, name, model, version, topic=models_topic,
                              trained_on=samples, producer="tiertwin pretrain")
                console.print(f"published {name} v{version} to {models_topic} (signed; shadowed by the twins "
                              "until it wins)")
