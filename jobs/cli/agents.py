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
                 "fusing job.")):
    """Run one local or edge twin agent until SIGTERM / SIGINT. `run cloud` starts the cloud twin's streaming Beam job (fusion; training as a second job in a child process)."""
    from tiertwin.errors import ConfigError

    if tier == "cloud":  # jobs/ops/launcher.py starts cloud jobs as `run cloud --config F --runner R`
        from tiertwin.jobs.cli.cloud import run_cloud

        return run_cloud(list(ctx.args), runner=runner, config=config, window_s=window_s, slide_s=slide_s,
                         lateness_s=lateness_s, early_s=early_s, start=start, snapshots_dir=snapshots_dir,
                         train=train, fuse=fuse, train_in_own_process=train_in_own_process, say=console.print)
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
def pretrain(source: str = typer.Option("simulator", help="simulator (offline run, random placements) or synthetic."),
             scenario: str = typer.Option("dense-urban-xr", help="Simulator scenario (preset name or YAML path)."),
             seconds: float = typer.Option(60.0, help="Simulated seconds of demands to learn latency from."),
             ues: int = typer.Option(60, help="UEs in the simulated scenario."),
             samples: int = typer.Option(20_000, help="Synthetic examples per model (handover, bandits, and latency if synthetic)."),
             seed: int = typer.Option(7),
             out: Path = typer.Option(None, help="Directory (default: the shipped pipelines/pretrained)."),
             publish: bool = typer.Option(False, help="Also publish them to the models topic, signed, each as the "
                                                      "next version of its name there."),
             models_topic: str = typer.Option(MODELS)):
    """Train the starting models and write pipelines/pretrained/*.pkl.

    The demand-latency model learns from the simulator's measured outcomes (features built as the
    local agent builds them); the handover forecaster and the share bandits from synthetic streams.
    """
    from tiertwin.errors import ConfigError
    from tiertwin.pipelines.pretrain import (PRETRAINED_DIR, PRETRAINED_VERSION, pretrain_models,
                                             pretrain_on_simulator, write_pretrained)

    if source not in ("simulator", "synthetic"):
        raise ConfigError(f"--source must be simulator or synthetic, not {source!r}")
    models = pretrain_models(samples, seed)
    if source == "simulator":
        held_out = pretrain_on_simulator(models, scenario, seconds, seed, ues)
        console.print("demand-latency on held-out simulator outcomes: " +
                      ", ".join(f"{k} {v:.2f}" for k, v in held_out.items()))
    for path in write_pretrained(models, out or PRETRAINED_DIR):
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
