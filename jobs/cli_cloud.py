"""``tiertwin run cloud``, ``tiertwin backfill`` and ``tiertwin bench cloud``: the cloud twin's commands.

Also home of :func:`tier_traffic`, a deterministic generator of the four record
streams the cloud fuses (used by the benchmark and the tests), whose outcomes are
a known function of the decision features, so a trained model can beat an untrained one.

>>> records = list(tier_traffic(1_767_225_600_000, 8, rate_per_s=1000))
>>> [schema for schema, _ in records][:4]
['LocalSummary', 'EdgeState', 'Decision', 'Outcome']
>>> records[3][1]["decision_id"] == records[2][1]["decision_id"]
True
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Iterator, Optional

import typer

TOPIC_OF_SCHEMA = {"LocalSummary": "tiertwin.edge.summaries", "EdgeState": "tiertwin.cloud.edge-state",
                   "Decision": "tiertwin.actions.local", "Outcome": "tiertwin.outcomes"}
KEY_FIELD = {"LocalSummary": "serving_cell", "EdgeState": "cell_id", "Decision": "ue_id", "Outcome": "ue_id"}


# -- synthetic tier traffic --------------------------------------------------------------------
def _latency_ms(tier: str, x: dict) -> float:
    """The ground truth the synthetic outcomes follow (a linear function of the features)."""
    if tier == "local":
        return 1.2 * x["local_compute_ms"] + x["local_queue_ms"] + 0.5
    transfer = x["uplink_ms"] + x["downlink_ms"] + x["rtt_ms"]
    if tier == "edge":
        return transfer + x["edge_compute_ms"] + x["edge_queue_ms"] + 10 * x["prb_utilization"]
    return transfer + x["cloud_compute_ms"] + 20.0


def tier_traffic(start_ms: int, count: int, rate_per_s: float, cells: int = 8, ues: int = 64,
                 seed: int = 0) -> Iterator[tuple[str, dict]]:
    """``count`` records ``(schema, record)`` spaced ``1 / rate_per_s`` apart in event time.

    A cycle of four: a LocalSummary, an EdgeState, then a placement Decision and its Outcome.
    """
    from tiertwin.pipelines.models import features_to_parameters
    from tiertwin.schemas.examples import example

    rng = random.Random(seed)
    step_ms = 1000.0 / rate_per_s
    for i in range(count):
        ts = int(start_ms + i * step_ms)
        ue = rng.randrange(ues)
        cell = ue % cells
        kind = i % 4
        now_ns = time.time_ns()
        if kind == 0:
            yield "LocalSummary", example("LocalSummary", ue_id=f"ue-{ue:04d}", serving_cell=cell,
                                          window_start_ms=ts - 100, window_end_ms=ts,
                                          sinr_db=round(rng.uniform(-5, 30), 2), emitted_ns=now_ns)
        elif kind == 1:
            yield "EdgeState", example("EdgeState", cell_id=cell, ts_ms=ts, prb_utilization=round(rng.random(), 3),
                                       mec_queue_gcycles=round(rng.uniform(0, 10), 3), emitted_ns=now_ns)
        elif kind == 2:
            tier = rng.choice(("local", "edge", "cloud"))
            x = {"local_compute_ms": rng.uniform(5, 60), "local_queue_ms": rng.uniform(0, 10),
                 "cpu_util": rng.random(), "compute_gcycles": rng.uniform(0.1, 1.2),
                 "uplink_ms": rng.uniform(1, 15), "downlink_ms": rng.uniform(1, 15), "rtt_ms": rng.uniform(4, 30),
                 "congested_transfer_ms": rng.uniform(0, 5), "edge_compute_ms": rng.uniform(1, 10),
                 "edge_queue_ms": rng.uniform(0, 10), "cloud_compute_ms": rng.uniform(0.5, 2),
                 "prb_utilization": rng.random(), "mec_utilization": rng.random(), "sinr_db": rng.uniform(-5, 30)}
            decision_id = f"bench/placement/{seed}/{i}"
            decision = example("Decision", decision_id=decision_id, ue_id=f"ue-{ue:04d}", cell_id=cell,
                               subject_id=f"ue-{ue:04d}/d/{i}", target=tier, source_ts_ms=ts,
                               parameters={**features_to_parameters(x), "predicted_latency_ms": 10.0},
                               decided_ns=now_ns)
            yield "Decision", decision
            latency = round(_latency_ms(tier, x) + rng.gauss(0, 1), 3)
            pending = (decision, latency)
        else:
            decision, latency = pending
            yield "Outcome", example("Outcome", outcome_id=f"{decision['decision_id']}/outcome", ts_ms=ts,
                                     ue_id=decision["ue_id"], cell_id=decision["cell_id"],
                                     demand_id=decision["subject_id"], decision_id=decision["decision_id"],
                                     placement=decision["target"], latency_ms=max(0.0, latency), deadline_ms=40.0,
                                     deadline_met=latency <= 40.0, emitted_ns=now_ns)


def produce(sink, records, topics: dict[str, str] | None = None) -> int:
    """Send ``(schema, record)`` pairs to their tier topics (``topics`` maps schema -> topic)."""
    from tiertwin.pipelines.parquet_log import event_time_ms

    topics = topics or TOPIC_OF_SCHEMA
    n = 0
    for schema, record in records:
        sink.send(topics[schema], schema, record, key=record[KEY_FIELD[schema]],
                  timestamp_ms=event_time_ms(schema, record))
        n += 1
    return n


# -- commands ----------------------------------------------------------------------------------
def _group(app: typer.Typer, name: str, help_text: str) -> typer.Typer:
    """The sub-command group ``name``, shared with other areas' modules (``run local``, ``run edge``…)."""
    for info in app.registered_groups:
        if info.name == name and info.typer_instance is not None:
            return info.typer_instance
    group = typer.Typer(help=help_text, no_args_is_help=True)
    app.add_typer(group, name=name)
    return group


def _load_config_file(path: Optional[Path]) -> tuple[dict, dict]:
    """``(cloud twin config fields, runner options)`` from a job config YAML (see jobs/launcher.py)."""
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

    from tiertwin.errors import ConfigError
    from tiertwin.pipelines.cloud_twin import CloudTwinConfig

    try:
        return CloudTwinConfig(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"cloud twin config field {'.'.join(map(str, err['loc'])) or '?'}: {err['msg']}") from None


def _beam_flags(options: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in options.items()]


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    from tiertwin.jobs.cli import console, one_line_errors

    run_app = _group(app, "run", "Run a tier's streaming job in the foreground.")

    @run_app.command("cloud", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    @one_line_errors
    def run_cloud(
        ctx: typer.Context,
        runner: str = typer.Option("prism", help="prism | direct | flink | dataflow (extra Beam flags after --)."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML of cloud twin settings (+ runner_options)."),
        window_s: Optional[float] = typer.Option(None, help="Window size in s (default 10)."),
        slide_s: Optional[float] = typer.Option(None, help="Sliding period in s (default: fixed windows)."),
        lateness_s: Optional[float] = typer.Option(None, help="Allowed lateness in s (default 30)."),
        early_s: Optional[int] = typer.Option(None, help="Early pane every N s (default 2; 0 = none)."),
        start: Optional[str] = typer.Option(None, help="earliest | latest (default latest)."),
        snapshots_dir: Optional[Path] = typer.Option(None, help="Also write snapshots as Parquet here."),
        train: Optional[bool] = typer.Option(None, "--train/--no-train", help="Train and publish models."),
    ):
        """Start the cloud twin's streaming Beam job (fusion + training) and run until Ctrl-C / SIGTERM."""
        from tiertwin.pipelines.cloud_twin import run_streaming
        from tiertwin.settings import Settings

        fields, runner_options = _load_config_file(config)
        overrides = {"window_s": window_s, "slide_s": slide_s, "allowed_lateness_s": lateness_s,
                     "early_firing_s": (early_s or None) if early_s is not None else "keep", "start": start,
                     "snapshots_dir": snapshots_dir, "train": train}
        fields.update({k: v for k, v in overrides.items() if v is not None and v != "keep"})
        cloud = _config(fields)
        settings = Settings.from_env()
        result = run_streaming(cloud, settings, runner, [*_beam_flags(runner_options), *ctx.args])
        console.print(f"cloud twin running on {runner}: {', '.join(cloud.input_topics)} -> "
                      f"{cloud.snapshots_topic}, {cloud.models_topic if cloud.train else 'no training'}")

        def _stop(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _stop)
        try:
            result.wait_until_finish()
        except KeyboardInterrupt:
            result.cancel()
            console.print("cloud twin stopped")

    @app.command("backfill")
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
        from tiertwin.pipelines.cloud_twin import backfill
        from tiertwin.settings import Settings

        cloud = _config({"window_s": window_s, "slide_s": slide_s, "early_firing_s": None,
                         "snapshots_topic": snapshots_topic, "snapshots_dir": out,
                         "models_topic": "tiertwin.models" if publish_models else None})
        started = time.perf_counter()
        backfill(archive_dir, cloud, Settings.from_env(), runner=runner)
        n = sum(1 for _ in parquet_log.read_records(out, "TwinSnapshot"))
        console.print(f"{n} snapshots in {out} ({time.perf_counter() - started:.1f} s)")

    @bench_app.command("cloud")
    @one_line_errors
    def bench_cloud(
        rate: float = typer.Option(10_000, help="Records/s produced (event time = wall clock)."),
        seconds: float = typer.Option(30.0, help="How long to produce."),
        window_s: float = typer.Option(2.0, help="Window size in s."),
        out: Path = typer.Option(Path("bench-results"), help="Results folder."),
    ):
        """Records/s and window-end -> snapshot latency on Prism, beside polars over the same log (ceiling)."""
        from tiertwin.jobs.bench import write_results
        run_cloud_bench = _run_cloud_bench

        results = run_cloud_bench(rate=rate, seconds=seconds, window_s=window_s, log=console.print)
        path = write_results("cloud", results, out)
        console.print(results)
        console.print(f"results in {path}")
