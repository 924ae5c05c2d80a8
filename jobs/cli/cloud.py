"""``tiertwin run cloud`` (``run_cloud``, behind ``run`` in jobs/cli/agents.py) and ``tiertwin backfill``: the cloud
twin's commands. Its benchmark and traffic generator are in jobs/bench/cloud.py."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Optional

import typer

from tiertwin.jobs.cli.common import console, one_line_errors
from tiertwin.topics import MODELS


def _load_config_file(path: Optional[Path]) -> tuple[dict, dict]:
    """``(cloud twin config fields, runner options)`` from a job config YAML (see jobs/ops/launcher.py)."""
    if path is None:
        return {}, {}
    import yaml

    from tiertwin.errors import ConfigError

    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    runner_options = doc.pop("runner_options", {}) or {}
    return doc, runner_options


def _config(fields: dict):
    from pydantic import ValidationError

    from tiertwin.errors import config_error, dotted
    from tiertwin.pipelines.cloud.config import CloudTwinConfig

    try:
        return CloudTwinConfig(**fields)
    except ValidationError as exc:
        raise config_error(exc, "cloud twin config", field=lambda loc: f"field {dotted(loc)}") from None


def _beam_flags(options: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in options.items()]


def run_cloud(extra_args: list[str], runner: str = "prism", config: Optional[Path] = None,
              window_s: Optional[float] = None, slide_s: Optional[float] = None, lateness_s: Optional[float] = None,
              early_s: Optional[int] = None, start: Optional[str] = None, snapshots_dir: Optional[Path] = None,
              train: Optional[bool] = None, fuse: Optional[bool] = None,
              train_in_own_process: Optional[bool] = None, sdk_workers: Optional[int] = None, say=print) -> None:
    """Start the streaming cloud twin and block until SIGINT / SIGTERM, then drain it (cancel if that stalls)."""
    from tiertwin.errors import JobFailedError
    from tiertwin.pipelines.cloud.runtime import run_streaming
    from tiertwin.settings import Settings

    fields, runner_options = _load_config_file(config)
    overrides = {"window_s": window_s, "slide_s": slide_s, "allowed_lateness_s": lateness_s, "start": start,
                 "snapshots_dir": snapshots_dir, "train": train, "fuse": fuse,
                 "train_in_own_process": train_in_own_process, "sdk_workers": sdk_workers}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if early_s is not None:
        fields["early_firing_s"] = early_s or None
    cloud = _config(fields)
    job = run_streaming(cloud, Settings.from_env(), runner, [*_beam_flags(runner_options), *extra_args])
    trained = (f"{cloud.models_topic} (training job pid {job.trainer.pid})" if job.trainer is not None
               else cloud.models_topic if cloud.train else "not trained")
    workers = f" ({cloud.sdk_workers} SDK workers)" if cloud.sdk_workers > 1 else ""
    say(f"cloud twin running on {runner}{workers}: {', '.join(cloud.input_topics)} -> "
        f"{cloud.snapshots_topic if cloud.fuse else 'not fused'}; models: {trained}")

    # Wait on an event, not inside wait_until_finish: a signal raised into its gRPC stream leaves
    # the stream unusable, and stop() needs to wait on it for the drained job to end.
    stop_requested = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop_requested.set())
    while not stop_requested.wait(1.0):
        if job.ended():
            failure = job.failure()
            if failure is not None:
                say(f"cloud twin: the training job failed ({failure}); stopping the fusing job: {job.stop()}")
                raise JobFailedError(f"cloud twin training job: {failure}")
            job.wait_until_finish()  # raises if it failed
            return
    say(f"cloud twin {job.stop()}")


# -- commands (added to the `tiertwin` tree in jobs/cli/main.py) ---------------------------------
commands = typer.Typer()


@commands.command("backfill")
@one_line_errors
def backfill_cmd(
    archive_dir: Path = typer.Argument(..., help="Folder written by `tiertwin archive` (topic=*/date=*/hour=*)."),
    out: Path = typer.Option(..., "--out", "-o", help="Write snapshots here as Parquet (date/hour partitions)."),
    window_s: float = typer.Option(10.0, help="Window size in s."),
    slide_s: Optional[float] = typer.Option(None, help="Sliding period in s (default: fixed windows)."),
    snapshots_topic: Optional[str] = typer.Option(None, help="Also produce snapshots to this topic."),
    publish_models: bool = typer.Option(False, help="Publish trained models to tiertwin.models."),
    runner: str = typer.Option("direct", help="direct | prism | flink | dataflow."),
):
    """Run the cloud twin bounded over archived logs (replay / backfill) and write the snapshots."""
    from tiertwin.pipelines import parquet_log
    from tiertwin.pipelines.cloud.runtime import backfill
    from tiertwin.settings import Settings

    cloud = _config({"window_s": window_s, "slide_s": slide_s, "early_firing_s": None,
                     "snapshots_topic": snapshots_topic, "snapshots_dir": out,
                     "models_topic": MODELS if publish_models else None})
    started = time.perf_counter()
    backfill(archive_dir, cloud, Settings.from_env(), runner=runner)
    n = sum(1 for _ in parquet_log.read_records(out, "TwinSnapshot"))
    console.print(f"{n} snapshots in {out} ({time.perf_counter() - started:.1f} s)")
