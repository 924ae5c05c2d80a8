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


# -- the same aggregation in polars (the single-machine ceiling, and an independent check) --------
def _archive_frames(archive_dir: Path) -> dict:
    """Decoded columns of a ``tiertwin archive`` folder, one polars frame per contract."""
    import polars as pl

    from tiertwin.pipelines.parquet_log import EVENT_TIME_FIELDS, short_name

    parts: dict[str, list] = {}
    for path in sorted(Path(archive_dir).glob("topic=*/date=*/hour=*/*.parquet")):
        df = pl.read_parquet(path, hive_partitioning=False)
        for (schema,), group in df.group_by("schema"):
            name = short_name(schema) if schema else ""
            if name in EVENT_TIME_FIELDS:
                parts.setdefault(name, []).append(group.with_columns(pl.col(EVENT_TIME_FIELDS[name]).alias("event_ms")))
    return {name: pl.concat(frames, how="diagonal_relaxed") for name, frames in parts.items()}


def polars_snapshots(archive_dir: Path, window_ms: int) -> list[dict]:
    """Per-cell, per-fixed-window fusion of an archive in polars: what the cloud twin's
    snapshots must contain (without ``pane`` / ``emitted_ns``), sorted by cell and window."""
    import polars as pl

    frames = _archive_frames(archive_dir)
    empty = pl.DataFrame({"cell_id": [], "window_start_ms": []}, schema={"cell_id": pl.Int64, "window_start_ms": pl.Int64})

    def keyed(name: str, cell: str, *cols: str) -> pl.DataFrame:
        if name not in frames:
            return empty
        df = frames[name].filter(pl.col(cell).is_not_null())
        return df.select(pl.col(cell).cast(pl.Int64).alias("cell_id"),
                         (pl.col("event_ms") // window_ms * window_ms).cast(pl.Int64).alias("window_start_ms"),
                         *[pl.col(c) for c in cols])

    key = ["cell_id", "window_start_ms"]
    s = keyed("LocalSummary", "serving_cell", "ue_id", "sinr_db")
    e = keyed("EdgeState", "cell_id", "prb_utilization", "mec_queue_gcycles")
    d = keyed("Decision", "cell_id", "ue_id", "tier")
    o = keyed("Outcome", "cell_id", "ue_id", "latency_ms", "deadline_met")
    parts = []
    if s.width > 2:
        parts.append(s.group_by(key).agg(pl.len().alias("summaries"), pl.col("sinr_db").cast(pl.Float64).mean().alias("mean_sinr_db")))
    if e.width > 2:
        parts.append(e.group_by(key).agg(pl.len().alias("edge_states"),
                                         pl.col("prb_utilization").cast(pl.Float64).mean().alias("mean_prb_utilization"),
                                         pl.col("mec_queue_gcycles").cast(pl.Float64).mean().alias("mean_mec_queue_gcycles")))
    if d.width > 2:
        parts.append(d.group_by(key).agg(pl.len().alias("decisions")))
        tiers = d.group_by([*key, "tier"]).agg(pl.len().alias("n"))
        parts.append(tiers.group_by(key).agg(pl.struct("tier", "n").alias("decisions_by_tier")))
    if o.width > 2:
        lat = pl.col("latency_ms").cast(pl.Float64).drop_nulls()
        judged = pl.col("deadline_met").drop_nulls()
        parts.append(o.group_by(key).agg(
            pl.len().alias("outcomes"), lat.mean().alias("mean_latency_ms"),
            lat.quantile(0.95, interpolation="linear").alias("p95_latency_ms"),
            pl.when(judged.len() > 0).then((~judged).sum() / judged.len()).otherwise(None).alias("deadline_miss_rate")))
    ue_parts = [f.select(*key, "ue_id") for f in (s, d, o) if f.width > 2]
    if ue_parts:
        parts.append(pl.concat(ue_parts).drop_nulls("ue_id").group_by(key).agg(pl.col("ue_id").n_unique().alias("ues")))
    if not parts:
        return []
    joined = parts[0]
    for part in parts[1:]:
        joined = joined.join(part, on=key, how="full", coalesce=True)
    rows = []
    for row in joined.sort(key).to_dicts():
        rows.append({
            "cell_id": row["cell_id"], "window_start_ms": row["window_start_ms"],
            "window_end_ms": row["window_start_ms"] + window_ms, "ues": row.get("ues") or 0,
            **{n: row.get(n) or 0 for n in ("summaries", "edge_states", "decisions", "outcomes")},
            **{n: row.get(n) for n in ("mean_sinr_db", "mean_prb_utilization", "mean_mec_queue_gcycles",
                                       "mean_latency_ms", "p95_latency_ms", "deadline_miss_rate")},
            "decisions_by_tier": {t["tier"]: t["n"] for t in (row.get("decisions_by_tier") or [])},
        })
    return rows


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
