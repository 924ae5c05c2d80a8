"""``tiertwin bench cloud``: records/s and window-end -> snapshot latency of the cloud twin on Prism, beside a polars
re-implementation of fusion over the same log (the ceiling); ``--drain N``: how fast it empties a backlog.

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
import time
from pathlib import Path
from typing import Iterator

import typer

from tiertwin.errors import ConfigError
from tiertwin.jobs.bench import python_loop_cpu_ms
from tiertwin.jobs.cli.common import console, one_line_errors
from tiertwin.stats import percentiles
from tiertwin.topics import ACTIONS_LOCAL, EDGE_STATE, OUTCOMES, SUMMARIES


TOPIC_OF_SCHEMA = {"LocalSummary": SUMMARIES, "EdgeState": EDGE_STATE,
                   "Decision": ACTIONS_LOCAL, "Outcome": OUTCOMES}


KEY_FIELD = {"LocalSummary": "serving_cell", "EdgeState": "cell_id", "Decision": "ue_id", "Outcome": "ue_id"}


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


def _archive_frames(archive_dir: Path) -> dict:
    """Decoded columns of a ``tiertwin archive`` folder, one polars frame per contract."""
    import polars as pl

    from tiertwin.connectors.archive import archive_files
    from tiertwin.pipelines.parquet_log import EVENT_TIME_FIELDS, short_name

    parts: dict[str, list] = {}
    for path in archive_files(archive_dir):
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


STREAMS = ("LocalSummary", "EdgeState", "Decision", "Outcome")


BENCH_CELLS = 8  # tier_traffic's default


def _produce_paced(bootstrap_env: dict, topics: dict, rate: float, seconds: float, window_ms: int, seed: int,
                   done, client: str = "librdkafka") -> None:
    """Producer process: ``tier_traffic`` with event time = wall clock, paced to ``rate``, from a window
    boundary (puts ``start_ms`` on ``done``, then ``(count sent, most ms any send was behind its event time,
    CPU s this process used while sending)``).

    The records are made and Avro-encoded before that boundary (about 25 µs each), so while the job is
    measured this process only sends: on a 2-core machine a producer that also built and encoded
    records took a third of a core from the job it measures. It sends through librdkafka by default
    (:class:`~tiertwin.connectors.rdkafka.RdKafkaSink`, 5.8 µs of CPU a record against 37.6 through
    kafka-python): one kafka-python producer tops out near 40k records/s here and would take most of a core
    at 30k. Kafka's Java ProducerPerformance cannot offer this traffic: it reads its payload file as UTF-8
    text (binary Avro bodies do not survive), sends to one topic, without keys or event-time timestamps.
    """
    import os

    os.environ.update(bootstrap_env)
    from tiertwin.connectors.kafka import KafkaSink
    from tiertwin.pipelines.parquet_log import event_time_ms
    from tiertwin.schemas import SchemaRegistry

    count = int(rate * seconds)
    prepare_s = 1.0 + count * 60e-6  # generous: a loaded machine encodes slower
    start_ms = (int((time.time() + prepare_s) * 1000) // window_ms + 1) * window_ms
    registry = SchemaRegistry.default()
    encoded = [(topics[schema], registry.encode(schema, record), record[KEY_FIELD[schema]],
                event_time_ms(schema, record))
               for schema, record in tier_traffic(start_ms, count, rate, seed=seed)]
    done.put(start_ms)
    chunk = max(1, int(rate * 0.02))
    sent, behind_ms = 0, 0.0
    if client == "librdkafka":
        from tiertwin.connectors.rdkafka import RdKafkaSink as Sink
    else:
        Sink = KafkaSink
    cpu_started = time.process_time()
    with Sink(profile="throughput", client_id="tiertwin-bench-cloud") as sink:
        for first in range(0, count, chunk):
            batch = encoded[first:first + chunk]
            wait = batch[-1][3] / 1000 - time.time()
            if wait > 0:
                time.sleep(wait)
            else:
                behind_ms = max(behind_ms, -wait * 1000)
            for topic, value, key, ts_ms in batch:
                sink.send_raw(topic, value, key=key, timestamp_ms=ts_ms)
            sent += len(batch)
        sink.flush()
    done.put((sent, behind_ms, time.process_time() - cpu_started))


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    p50, p95 = percentiles(values, [50, 95])
    return {"count": len(values), "p50_ms": p50, "p95_ms": p95, "max_ms": max(values)}


def _cpu_seconds(trainer_pid: int | None = None) -> dict[str, float]:
    """CPU seconds used so far by this process (the LOOPBACK SDK worker runs in it) with its SDK worker
    child processes (``--sdk-workers`` > 1), by the Prism process it started, by the training job's
    process with its Prism (when training runs in its own process) and by the whole machine (Linux /proc;
    empty elsewhere)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")

    def of(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    def prism_pids(parent: int, marker: bytes = b"prism") -> list[int]:
        pids = []
        for task in Path(f"/proc/{parent}/task").iterdir():
            try:
                for child in (task / "children").read_text().split():
                    if marker in Path(f"/proc/{child}/cmdline").read_bytes():
                        pids.append(int(child))
            except OSError:  # a thread or child that just ended
                continue
        return pids

    try:
        machine = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        workers = prism_pids(os.getpid(), b"tiertwin.pipelines.cloud.worker")
        used = {"sdk_worker": of(os.getpid()) + sum(of(pid) for pid in workers),
                "prism": sum(of(pid) for pid in prism_pids(os.getpid())),
                "machine": (sum(machine) - machine[3] - machine[4]) / tick}
        if trainer_pid is not None:
            used["training_job"] = of(trainer_pid) + sum(of(pid) for pid in prism_pids(trainer_pid))
        return used
    except OSError:
        return {}


def _run_cloud_bench(rate: float, seconds: float, window_s: float, log=print, partitions: int = 2,
                     train: bool = True, train_in_own_process: bool = True, batches: bool = True,
                     client: str = "librdkafka", producer_client: str = "librdkafka",
                     read_interval_s: float | None = None) -> dict:
    """The streaming cloud twin on Prism at ``rate`` records/s, then polars over the same log."""
    import multiprocessing
    import os
    import tempfile

    from tiertwin.connectors.archive import archive_topics
    from tiertwin.connectors.kafka import KafkaSource, read_topic
    from tiertwin.pipelines.cloud.config import CloudTwinConfig
    from tiertwin.pipelines.cloud.runtime import run_streaming
    from tiertwin.pipelines.cloud.trainable import training_schemas
    from tiertwin.settings import Settings

    settings = Settings.from_env()
    load_before, loop_before = os.getloadavg()[0], python_loop_cpu_ms()  # how busy, and how fast, the host is
    topics, out, admin = _bench_topics(settings, partitions)
    window_ms = int(window_s * 1000)
    config = CloudTwinConfig(window_s=window_s, early_firing_s=None, allowed_lateness_s=max(window_s, 5.0),
                             input_topics=tuple(topics.values()), snapshots_topic=out["snapshots"],
                             dead_letter_topic=out["deadletters"], models_topic=out["models"], start="earliest",
                             train_window_s=max(window_s, 5.0), min_examples=100, train=train,
                             train_in_own_process=train_in_own_process, batches=batches, kafka_client=client)
    if read_interval_s is not None:
        config = config.model_copy(update={"read_interval_s": read_interval_s})
    # These topics are not in the topology, so say which of them the training job needs.
    config = config.model_copy(update={"training_topics": tuple(topics[schema] for schema
                                                                in sorted(training_schemas(config.model_names)))})
    result = None
    try:
        started = time.perf_counter()
        result = run_streaming(config, settings, "prism")
        startup_s = time.perf_counter() - started
        # Long-polling fetches (answered as soon as a snapshot arrives): this reader shares the process,
        # and so the GIL, with the LOOPBACK SDK worker, and 5 ms fetch waits took a third of a core.
        source = KafkaSource([out["snapshots"]], None, settings, client_id="tiertwin-bench-cloud-read",
                             on_undecodable="raise", fetch_max_wait_ms=500)  # the job's own output: must decode
        # Warm up: the job is live once a window of a few records has come out as a snapshot.
        ctx = multiprocessing.get_context("spawn")
        env = {k: v for k, v in os.environ.items() if k.startswith("TIERTWIN_")}
        done = ctx.Queue()
        warm = ctx.Process(target=_produce_paced, args=(env, topics, 200, window_s, window_ms, 99, done))
        warm.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not source.poll(200):
            pass
        warm.join()
        done.get(), done.get()
        log(f"prism job live after {time.perf_counter() - started:.1f} s (startup {startup_s:.1f} s)")
        # Measure: windows entirely inside the production period.
        # Traffic goes on for a window after the measured ones, as in a stream that does not stop: the
        # last measured window closes on records after it, not on the idle timeout of a silent topic.
        tail_s = window_s + 1.0
        producer = ctx.Process(target=_produce_paced, args=(env, topics, rate, seconds + tail_s, window_ms, 1, done,
                                                            producer_client))
        producer.start()
        start_ms = done.get(timeout=60)
        # The producer encodes every record before it sends the first, at start_ms, seconds from now (about
        # 12 s at 10k records/s, 35 s at 30k): the idle job's CPU until then is not the records' cost.
        time.sleep(max(0.0, start_ms / 1000 - time.time()))
        trainer_pid = result.trainer.pid if result.trainer is not None else None
        cpu_before, wall_before = _cpu_seconds(trainer_pid), time.monotonic()
        end_ms = start_ms + int(seconds * 1000)
        snapshots: list[tuple[dict, float]] = []
        deadline = time.monotonic() + seconds + 60 + 3 * window_s
        last_window_end = start_ms + (int(seconds * 1000) // window_ms) * window_ms
        while time.monotonic() < deadline:
            for r in source.poll(200):
                snapshots.append((r.value, time.time() * 1000))
            last_cells = {v["cell_id"] for v, _ in snapshots if v["pane"] == "on_time"
                          and v["window_end_ms"] >= last_window_end}
            if len(last_cells) >= BENCH_CELLS:  # every cell's snapshot of the last window is out
                break
        cpu_after, wall_s = _cpu_seconds(trainer_pid), time.monotonic() - wall_before
        handled = int(rate * min(seconds + tail_s, (time.time() * 1000 - start_ms) / 1000))  # produced so far
        producer.join(timeout=30)
        produced, producer_behind_ms, producer_cpu_s = done.get(timeout=30)
        source.close()
    finally:
        if result is not None:
            stopped = result.stop()
            log(f"prism job {stopped}")
    measured = [(v, t) for v, t in snapshots if start_ms <= v["window_start_ms"] and v["window_end_ms"] <= end_ms]
    on_time = [(v, t) for v, t in measured if v["pane"] == "on_time"]
    per_window: dict[int, float] = {}
    for v, received in on_time:  # a window is out when its last cell's snapshot is out
        per_window[v["window_end_ms"]] = max(per_window.get(v["window_end_ms"], 0.0), received - v["window_end_ms"])
    fused = sum(v["summaries"] + v["edge_states"] + v["decisions"] + v["outcomes"] for v, _ in on_time)
    in_windows = int(rate * (len(per_window) * window_s)) if per_window else 0
    totals = {(v["cell_id"], v["window_start_ms"]): v["summaries"] + v["edge_states"] + v["decisions"] + v["outcomes"]
              for v, _ in on_time}
    late_with_data = sum(1 for v, _ in measured if v["pane"] == "late" and v["summaries"] + v["edge_states"]
                         + v["decisions"] + v["outcomes"] > totals.get((v["cell_id"], v["window_start_ms"]), 0))
    # Sustained: from the first record's time (event time = wall clock) until the last measured
    # window's snapshot is out, so falling behind shows as a lower rate, not a burst at the end.
    span_s = (max(t for _, t in on_time) - start_ms) / 1000 if on_time else 0.0

    # The ceiling: the same aggregation in polars over the same records, archived to Parquet.
    with tempfile.TemporaryDirectory() as tmp:
        archive_started = time.perf_counter()
        counts = archive_topics(list(topics.values()), Path(tmp), settings)
        archive_s = time.perf_counter() - archive_started
        polars_started = time.perf_counter()
        reference = polars_snapshots(Path(tmp), window_ms)
        polars_s = time.perf_counter() - polars_started
    archived = sum(counts.values())
    # Proof that training ran: what the trainer published (a model is published when it beats the live one).
    updates = [r.value for r in read_topic(out["models"], settings, timeout_s=3.0)] if train else []
    admin.delete_topics([*topics.values(), *out.values()])
    admin.close()
    beam_rate = fused / span_s if span_s else 0.0
    # From the first record until the last snapshot: what the job cost, beside what the machine had.
    cpu = {f"{name}_s": cpu_after[name] - cpu_before[name] for name in cpu_before if name in cpu_after}
    cpu.update(wall_s=wall_s, machine_capacity_s=wall_s * (os.cpu_count() or 1),
               sdk_worker_ms_per_1k_records=1000 * cpu["sdk_worker_s"] / (handled / 1000)
               if "sdk_worker_s" in cpu and handled > 0 else None)
    polars_rate = archived / polars_s if polars_s else 0.0
    snapshot_latency = _percentiles(list(per_window.values()))
    return {
        "runner": "prism", "trains_models": train, "batches": batches, "kafka_client": client,
        "training": ("own process" if result is not None and result.trainer is not None
                     else "in the fusing job" if train else "off"),
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "python_loop_cpu_ms_at_start": loop_before,
        "offered_records_per_s": rate, "seconds": seconds, "window_s": window_s,
        "read_interval_s": config.read_interval_s,
        "partitions_per_topic": partitions, "produced": produced,
        "producer_max_behind_ms": producer_behind_ms, "prism_startup_s": startup_s,
        "producer": {"client": producer_client, "cpu_s": producer_cpu_s},
        "windows_measured": len(per_window), "records_in_measured_windows_offered": in_windows,
        "records_fused_on_time": fused, "on_time_completeness": fused / in_windows if in_windows else None,
        "late_panes_with_new_records": late_with_data,
        "beam_prism_records_per_s": beam_rate,
        "window_end_to_snapshot_ms": snapshot_latency,
        "window_end_to_snapshot_ms_by_window": [round(per_window[end]) for end in sorted(per_window)],
        "cpu_while_measured": cpu,
        "target_snapshot_within_2s_at_10k": bool(rate >= 10_000 and snapshot_latency.get("p95_ms", 1e9) <= 2000),
        # #18: at 30k offered, >= 28.5k sustained, p95 <= 1 s, >= 99.5 % of records on time
        "target_30k": bool(rate >= 30_000 and beam_rate >= 28_500 and snapshot_latency.get("p95_ms", 1e9) <= 1000
                           and in_windows and fused / in_windows >= 0.995),
        "model_updates_published": {name: sum(1 for u in updates if u["model_name"] == name)
                                    for name in config.model_names} if train else None,
        "polars_ceiling": {"records": archived, "seconds": polars_s, "records_per_s": polars_rate,
                           "snapshots": len(reference), "archive_seconds": archive_s},
        "ratio_beam_to_polars_records_per_s": beam_rate / polars_rate if polars_rate else None,
    }


def _prefill(topics: dict[str, str], count: int, window_ms: int, partitions: int, settings, log=print) -> dict:
    """Produce ``count`` tier records (event time spaced 0.1 ms, ending about now), then one sentinel per
    partition far ahead in event time, so the job's watermark passes every window of the backlog as soon
    as it has read it (a drained partition would otherwise wait out its idle timeout and a window)."""
    from tiertwin.connectors.rdkafka import RdKafkaSink
    from tiertwin.pipelines.parquet_log import event_time_ms
    from tiertwin.schemas.examples import example

    rate = 10_000.0
    start_ms = (int(time.time() * 1000 - count / rate * 1000) // window_ms) * window_ms
    end_ms = start_ms + int(count / rate * 1000)
    started = time.perf_counter()
    # Through librdkafka (5.8 us of CPU a record against 37.6 through kafka-python), so a backlog of a million
    # records fills in about a minute.
    with RdKafkaSink(settings, profile="throughput", client_id="tiertwin-bench-cloud-fill") as sink:
        produced = produce(sink, tier_traffic(start_ms, count, rate, seed=1), topics)
        sentinel_ms = end_ms + 10 * window_ms
        sentinel = {"LocalSummary": example("LocalSummary", serving_cell=999, window_start_ms=sentinel_ms - 100,
                                            window_end_ms=sentinel_ms),
                    "EdgeState": example("EdgeState", cell_id=999, ts_ms=sentinel_ms),
                    "Decision": example("Decision", cell_id=999, source_ts_ms=sentinel_ms, kind="handover"),
                    "Outcome": example("Outcome", cell_id=999, ts_ms=sentinel_ms, decision_id=None)}
        for schema, topic in topics.items():
            for partition in range(partitions):
                sink.send_raw(topic, sink.registry.encode(schema, sentinel[schema]), key="sentinel",
                              timestamp_ms=event_time_ms(schema, sentinel[schema]), partition=partition)
        sink.flush()
    log(f"pre-filled {produced} records in {time.perf_counter() - started:.1f} s")
    return {"start_ms": start_ms, "end_ms": end_ms, "produced": produced}


def _counters(result) -> dict:
    """The job's Beam counters by name (committed values; empty if the runner reports none)."""
    try:
        found = result.metrics().query().get("counters", [])
    except Exception:  # noqa: BLE001 -- a runner without metrics: the bench reports none
        return {}
    totals: dict[str, int] = {}
    for c in found:
        name = f"{c.key.metric.namespace}/{c.key.metric.name}"
        totals[name] = totals.get(name, 0) + (c.committed or 0)
    return totals


def _bench_topics(settings, partitions: int):
    """Fresh tier topics (``partitions`` each) and output topics for one bench run; ``(tier topics by
    schema, output topics by name, the admin client that made them)``."""
    import uuid

    from tiertwin.connectors.kafka import admin_client

    tag = uuid.uuid4().hex[:8]
    topics = {schema: f"bench.cloud.{schema.lower()}.{tag}" for schema in STREAMS}
    out = {name: f"bench.cloud.{name}.{tag}" for name in ("snapshots", "deadletters", "models")}
    admin = admin_client(settings)
    admin.create_topics({t: {"num_partitions": partitions if t in topics.values() else 1, "replication_factor": 1}
                         for t in [*topics.values(), *out.values()]}, timeout_ms=30_000)
    return topics, out, admin


def _run_drain_bench(count: int, window_s: float, log=print, partitions: int = 2, train: bool = False,
                     batches: bool = True, read_max_s: float | None = None, client: str = "librdkafka",
                     sdk_workers: int = 1, fold_in_read: bool = True) -> dict:
    """Pre-fill the tier topics with ``count`` records, start the job from the earliest offsets, and measure
    how fast it empties them: from the job's submission (when it starts reading) until every window of the
    backlog has its on-time snapshot, with the CPU the SDK worker and Prism (and the training job, if on)
    used meanwhile; then polars over the same log, with its CPU."""
    import os
    import tempfile

    from tiertwin.connectors.archive import archive_topics
    from tiertwin.connectors.kafka import KafkaSource, read_topic
    from tiertwin.pipelines.cloud.config import CloudTwinConfig
    from tiertwin.pipelines.cloud.runtime import run_streaming
    from tiertwin.pipelines.cloud.trainable import training_schemas
    from tiertwin.settings import Settings

    settings = Settings.from_env()
    load_before, loop_before = os.getloadavg()[0], python_loop_cpu_ms()  # how busy, and how fast, the host is
    topics, out, admin = _bench_topics(settings, partitions)
    window_ms = int(window_s * 1000)
    filled = _prefill(topics, count, window_ms, partitions, settings, log)
    # Lateness long enough that no record of the backlog is dropped: a record the watermark passed is
    # fused in a late pane, counted below, and the share fused on time is reported beside the rate.
    config = CloudTwinConfig(window_s=window_s, early_firing_s=None, allowed_lateness_s=600,
                             input_topics=tuple(topics.values()), snapshots_topic=out["snapshots"],
                             dead_letter_topic=out["deadletters"], models_topic=out["models"], start="earliest",
                             train_window_s=max(window_s, 5.0), min_examples=100, train=train, batches=batches,
                             kafka_client=client, sdk_workers=sdk_workers, fold_in_read=fold_in_read)
    config = config.model_copy(update={"training_topics": tuple(topics[schema] for schema
                                                                in sorted(training_schemas(config.model_names)))})
    if read_max_s is not None:
        config = config.model_copy(update={"read_max_s": read_max_s})
    last_window_end = (filled["end_ms"] // window_ms) * window_ms  # windows wholly inside the backlog
    in_windows = min(count, (last_window_end - filled["start_ms"]) * 10)  # tier_traffic at 10 records per ms
    source = KafkaSource([out["snapshots"]], None, settings, client_id="tiertwin-bench-cloud-read",
                         on_undecodable="raise", fetch_max_wait_ms=500)
    result, snapshots, on_time = None, {}, {}
    try:
        started = time.monotonic()
        result = run_streaming(config, settings, "prism")
        submitted_s = time.monotonic() - started
        trainer_pid = result.trainer.pid if result.trainer is not None else None
        # From here the job reads: building and submitting it (seconds of imports and Prism start-up) is not draining.
        cpu_before = _cpu_seconds(trainer_pid)
        first_s = None
        deadline = started + 600
        total = 0  # panes accumulate: a window's newest pane holds all its records so far
        last_window = last_window_end - window_ms
        settled_at = None  # when the last window had all its on-time snapshots and nothing new came
        last_progress = (time.monotonic() - started, cpu_before)
        while time.monotonic() < deadline and total < in_windows:
            if sum(1 for (_, w) in on_time if w == last_window) >= BENCH_CELLS:
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at > 10:
                    break  # records missing from the snapshots: reported as such (all_fused false)
            fetched = source.poll(200)
            if fetched:  # the time and CPU of the last snapshot (not of the wait for missing records)
                settled_at, last_progress = None, (time.monotonic() - started, _cpu_seconds(trainer_pid))
            for r in fetched:
                v = r.value
                if v["cell_id"] >= BENCH_CELLS or v["window_end_ms"] > last_window_end:
                    continue  # a sentinel's window
                n = v["summaries"] + v["edge_states"] + v["decisions"] + v["outcomes"]
                key = (v["cell_id"], v["window_start_ms"])
                total += max(0, n - snapshots.get(key, 0))
                snapshots[key] = max(n, snapshots.get(key, 0))
                if v["pane"] == "on_time":
                    on_time[key] = n
                first_s = first_s if first_s is not None else time.monotonic() - started
        drained_s, cpu_after = last_progress
    finally:
        source.close()
        if result is not None:
            log(f"prism job {result.stop()}")
    counters = _counters(result.result) if result is not None else {}
    fused = sum(snapshots.values())
    # After the drain every window has fired its last pane: what the job fused in the end, late panes included.
    final: dict = {}
    for r in read_topic(out["snapshots"], settings, timeout_s=5.0):
        v = r.value
        if v["cell_id"] < BENCH_CELLS and v["window_end_ms"] <= last_window_end:
            key = (v["cell_id"], v["window_start_ms"])
            final[key] = max(final.get(key, 0), v["summaries"] + v["edge_states"] + v["decisions"] + v["outcomes"])
    with tempfile.TemporaryDirectory() as tmp:
        counts = archive_topics(list(topics.values()), Path(tmp), settings)
        polars_started = time.process_time()
        polars_wall = time.perf_counter()
        reference = polars_snapshots(Path(tmp), window_ms)
        polars_cpu_s, polars_s = time.process_time() - polars_started, time.perf_counter() - polars_wall
    archived = sum(counts.values())
    admin.delete_topics([*topics.values(), *out.values()])
    admin.close()
    cpu = {f"{name}_s": cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    job_cpu_s = cpu.get("sdk_worker_s", 0.0) + cpu.get("prism_s", 0.0)
    return {
        "mode": "drain", "runner": "prism", "batches": batches, "fold_in_read": fold_in_read, "kafka_client": client,
        "trains_models": train,
        "sdk_workers": sdk_workers,
        "read_max_s": config.read_max_s,
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "python_loop_cpu_ms_at_start": loop_before,
        "records_prefilled": filled["produced"], "partitions_per_topic": partitions, "window_s": window_s,
        # Where records went (Beam counters, sentinels included): read from Kafka, aggregated by fusion.
        "counters": counters, "records_fused_after_drain": sum(final.values()),
        "all_fused": fused == in_windows, "windows": len(snapshots), "records_fused": fused,
        "records_in_complete_windows": in_windows, "records_fused_on_time": sum(on_time.values()),
        "job_submitted_s": submitted_s, "first_snapshot_s": first_s, "drained_s": drained_s,
        # From the job's submission (it reads from then on) until the last window's snapshots are out.
        "records_per_s": fused / (drained_s - submitted_s) if drained_s > submitted_s else None,
        "records_per_s_including_startup": fused / drained_s if drained_s else None,
        "cpu_while_draining": cpu,
        "cpu_ms_per_1k_records": 1000 * job_cpu_s / (fused / 1000) if fused else None,
        "polars_ceiling": {"records": archived, "seconds": polars_s, "records_per_s": archived / polars_s,
                           "cpu_ms_per_1k_records": 1000 * polars_cpu_s / (archived / 1000),
                           "snapshots": len(reference)},
    }


def _worker_counts(workers: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]`` (each 1-16)."""
    try:
        counts = [int(w) for w in workers.split(",") if w.strip()]
    except ValueError:
        counts = []
    if not counts or any(not 1 <= c <= 16 for c in counts):
        raise ConfigError(f"--workers: a count of SDK workers (1-16) or a list like 1,2, not {workers!r}")
    return counts


def _drain_per_worker_count(counts: list[int], drain: int, window_s: float, out: Path, **options) -> None:
    """The drain bench once per SDK worker count, on a fresh backlog of the same size each time; the
    throughput of each against the first count's."""
    from tiertwin.jobs.bench import write_results

    runs = []
    for n in counts:
        console.print(f"-- {n} SDK worker{'s' if n > 1 else ''}")
        runs.append(_run_drain_bench(drain, window_s, log=console.print, sdk_workers=n, **options))
    base = runs[0]["records_per_s"] or 0
    summary = [{"sdk_workers": r["sdk_workers"], "records_per_s": r["records_per_s"], "all_fused": r["all_fused"],
                "records_fused": r["records_fused"], "cpu_ms_per_1k_records": r["cpu_ms_per_1k_records"],
                "speedup": (r["records_per_s"] or 0) / base if base else None} for r in runs]
    path = write_results("cloud-drain-workers", {"mode": "drain-workers", "records_prefilled": drain,
                                                 "window_s": window_s, "summary": summary, "runs": runs}, out)
    for row in summary:
        console.print(f"{row['sdk_workers']} SDK worker(s): {row['records_per_s'] or 0:.0f} records/s "
                      f"(x{row['speedup'] or 0:.2f}), {row['cpu_ms_per_1k_records'] or 0:.1f} ms CPU per 1,000 "
                      f"records, all fused: {row['all_fused']}")
    console.print(f"results in {path}")


bench_commands = typer.Typer()


@bench_commands.command("cloud")
@one_line_errors
def bench_cloud(
    rate: float = typer.Option(10_000, help="Records/s produced (event time = wall clock)."),
    seconds: float = typer.Option(30.0, help="How long to produce."),
    window_s: float = typer.Option(2.0, help="Window size in s."),
    out: Path = typer.Option(Path("bench-results"), help="Results folder."),
    train: bool = typer.Option(True, "--train/--no-train", help="Also train the global models (as `run cloud` does)."),
    train_in_own_process: bool = typer.Option(
        True, "--train-in-own-process/--train-in-job",
        help="Training as a second job in a child process (as `run cloud` does) or inside the fusing job."),
    drain: int = typer.Option(0, help="Drain mode: pre-fill the topics with N records and measure how fast the "
                                      "job empties them (records/s, CPU per 1,000 records) instead of a paced rate."),
    batches: bool = typer.Option(True, "--batches/--records",
                                 help="Records cross the job in batches (default) or one element each."),
    read_max_s: float = typer.Option(None, help="Drain mode: the job's read_max_s (how long a partition with a "
                                                "backlog is read per bundle); default: CloudTwinConfig's."),
    client: str = typer.Option("librdkafka", help="The Kafka client the job reads with: librdkafka or kafka-python."),
    fold_in_read: bool = typer.Option(True, "--fold-in-read/--no-fold-in-read",
                                      help="Drain mode, with --no-train: fold into partial aggregates inside the "
                                           "Kafka read (CloudTwinConfig.fold_in_read, the default) or not."),
    producer_client: str = typer.Option("librdkafka", help="Paced mode: the client that offers the traffic "
                                                          "(librdkafka or kafka-python)."),
    read_interval_s: float = typer.Option(None, help="Paced mode: the job's read_interval_s (how often a caught-up "
                                                     "partition is read; each read is a bundle): fewer reads cost "
                                                     "less CPU and delay the snapshots; default: CloudTwinConfig's."),
    workers: str = typer.Option("1", help="Drain mode: SDK worker processes of the job, or a list (`1,2`) to "
                                          "drain the same backlog once per count and compare."),
):
    """Records/s and window-end -> snapshot latency on Prism, beside polars over the same log (ceiling);
    with --drain N, how fast the job empties a backlog of N records and its CPU per 1,000 records."""
    from tiertwin.jobs.bench import write_results
    run_cloud_bench = _run_cloud_bench

    if drain:
        # The backlog is laid out at 10 records per ms of event time (tier_traffic); only whole windows count.
        least = int(2 * window_s * 1000 * 10)
        if drain < least:
            raise ConfigError(f"--drain {drain:,} records span {drain // 10:,} ms of event time: less than two "
                              f"{window_s:g} s windows; drain at least {least:,} (or use a smaller --window-s)")
        counts = _worker_counts(workers)
        if len(counts) > 1:
            _drain_per_worker_count(counts, drain, window_s, out, train=train, batches=batches,
                                    read_max_s=read_max_s, client=client, fold_in_read=fold_in_read)
            return
        results = _run_drain_bench(drain, window_s, log=console.print, train=train, batches=batches,
                                   read_max_s=read_max_s, client=client, sdk_workers=counts[0],
                                   fold_in_read=fold_in_read)
        path = write_results("cloud-drain", results, out)
        ceiling = results["polars_ceiling"]
        console.print(f"drained {results['records_fused']} of {results['records_in_complete_windows']} records "
                      f"({results['records_fused_on_time']} on time; {'batches' if batches else 'records'}, "
                      f"{client}) in "
                      f"{results['drained_s'] - results['job_submitted_s']:.1f} s after the job's submission: "
                      f"{results['records_per_s'] or 0:.0f} records/s, "
                      f"{results['cpu_ms_per_1k_records'] or 0:.1f} ms CPU per 1,000 records (SDK worker + Prism); "
                      f"polars ceiling {ceiling['records_per_s']:.0f} records/s, "
                      f"{ceiling['cpu_ms_per_1k_records']:.2f} ms CPU per 1,000")
        console.print(f"results in {path}")
        return
    results = run_cloud_bench(rate=rate, seconds=seconds, window_s=window_s, log=console.print, train=train,
                              train_in_own_process=train_in_own_process, batches=batches, client=client,
                              producer_client=producer_client, read_interval_s=read_interval_s)
    path = write_results("cloud", results, out)
    latency, ceiling = results["window_end_to_snapshot_ms"], results["polars_ceiling"]
    console.print(f"Prism at {rate:.0f} records/s offered: {results['beam_prism_records_per_s']:.0f} records/s fused, "
                  f"window end -> snapshot p50 {latency.get('p50_ms', float('nan')):.0f} ms, "
                  f"p95 {latency.get('p95_ms', float('nan')):.0f} ms over {latency['count']} windows, "
                  f"{100 * (results['on_time_completeness'] or 0):.2f} % of records on time; "
                  f"polars ceiling {ceiling['records_per_s']:.0f} records/s "
                  f"(ratio {results['ratio_beam_to_polars_records_per_s'] or 0:.3f})")
    console.print(f"results in {path}")
