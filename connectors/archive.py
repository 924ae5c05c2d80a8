"""Telemetry logs on disk: archive Kafka topics to Parquet, replay them back into Kafka.

Layout (Hive-style, readable by polars / pyarrow / Spark)::

    DIR/topic=<topic>/date=YYYY-MM-DD/hour=HH/part-<partition>-<first offset>.parquet

Each row keeps the record exactly (``value`` = Avro single-object bytes, ``key``)
with its coordinates (``partition``, ``offset``, ``timestamp_ms``) and, for people and
polars, the decoded top-level fields as columns (maps and arrays as JSON text).
"""

from __future__ import annotations

import heapq
import itertools
import json
import multiprocessing
import queue
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from kafka import TopicPartition

from tiertwin.connectors.kafka import KafkaSink, KeyHashCachePartitioner, TopicReader, admin_client
from tiertwin.errors import ConfigError, RecordRejected, TiertwinError
from tiertwin.schemas import SchemaRegistry
from tiertwin.settings import Settings

COORDINATES = ("partition", "offset", "timestamp_ms", "key", "value", "schema")


@dataclass(frozen=True)
class ArchivedRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes


def _flat(record: dict) -> dict:
    return {k: json.dumps(v, default=lambda b: b.hex() if isinstance(b, bytes) else str(b))
            if isinstance(v, (dict, list)) else (v.hex() if isinstance(v, bytes) else v)
            for k, v in record.items()}


def archive_topics(topics: Iterable[str], out_dir: Path, settings: Settings | None = None,
                   registry: SchemaRegistry | None = None, rows_per_file: int = 200_000,
                   on_progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Copy every record now in ``topics`` (beginning to current end) into Parquet. Returns counts per topic.

    Records that do not decode are archived too (raw bytes kept, ``schema`` empty):
    an archive is a faithful copy, not a filter.
    """
    registry = registry or SchemaRegistry.default()
    counts: dict[str, int] = {}
    for topic in topics:
        # Undecodable records are kept, raw: this reader decodes (without validating) by itself.
        with TopicReader([topic], settings, registry=registry, on_undecodable="raise", client_id="tiertwin-archive",
                         profile="throughput") as reader:
            end = reader.end_offsets
            rows: dict[tuple, list[dict]] = defaultdict(list)
            total = 0
            while not reader.at_end():
                for m in reader.poll_raw(500):
                    if m.offset >= end[TopicPartition(m.topic, m.partition)]:
                        continue
                    try:
                        name, value = registry.decode(m.value, validate=False)
                    except RecordRejected:
                        name, value = "", {}
                    hour = datetime.fromtimestamp(m.timestamp / 1000, tz=timezone.utc)
                    rows[(hour.strftime("%Y-%m-%d"), hour.strftime("%H"), m.partition)].append(
                        {"partition": m.partition, "offset": m.offset, "timestamp_ms": m.timestamp,
                         "key": m.key, "value": m.value, "schema": name, **_flat(value)})
                    total += 1
                    if on_progress:
                        on_progress(1)
        for (date, hour, partition), chunk in rows.items():
            folder = out_dir / f"topic={topic}" / f"date={date}" / f"hour={hour}"
            folder.mkdir(parents=True, exist_ok=True)
            for start in range(0, len(chunk), rows_per_file):
                part = chunk[start:start + rows_per_file]
                pq.write_table(pa.Table.from_pylist(part),
                               folder / f"part-{partition}-{part[0]['offset']:012d}.parquet")
        counts[topic] = total
    return counts


def archived_topics(log_dir: Path) -> list[str]:
    return sorted(p.name.removeprefix("topic=") for p in Path(log_dir).glob("topic=*") if p.is_dir())


def archive_files(log_dir: Path, topic: str | None = None) -> list[Path]:
    """The Parquet files of ``topic`` (every topic if None) in the archive layout, in a stable order."""
    return sorted(Path(log_dir).glob(f"topic={topic or '*'}/date=*/hour=*/*.parquet"))


def archived_count(log_dir: Path, topics: Iterable[str]) -> int:
    """How many records the archive holds for ``topics`` (from the Parquet footers, nothing read)."""
    return sum(pq.ParquetFile(path).metadata.num_rows for topic in topics for path in archive_files(log_dir, topic))


def read_archive(log_dir: Path, topic: str) -> Iterator[ArchivedRecord]:
    """The archived records of ``topic`` in replay order.

    Each source partition is read in offset order (so per-key order is kept: a key
    lives in one partition), and partitions are merged by timestamp; ties break on
    (partition, offset), so the order is the same on every run.
    """
    files = archive_files(log_dir, topic)
    if not files:
        raise ConfigError(f"no archived records of {topic!r} under {log_dir}")
    by_partition: dict[int, list[ArchivedRecord]] = defaultdict(list)
    for path in files:
        table = pq.read_table(path, columns=["partition", "offset", "timestamp_ms", "key", "value"])
        for row in table.to_pylist():
            by_partition[row["partition"]].append(ArchivedRecord(topic, row["partition"], row["offset"],
                                                                 row["timestamp_ms"], row["key"], row["value"]))
    streams = []
    for partition, records in sorted(by_partition.items()):
        records.sort(key=lambda r: r.offset)
        streams.append(((r.timestamp_ms, r.partition, r.offset, r) for r in records))
    for *_, record in heapq.merge(*streams, key=lambda item: item[:3]):
        yield record


def parse_speed(speed: str) -> float | None:
    """``"1x"`` -> 1.0, ``"10x"`` -> 10.0, ``"max"`` -> None (as fast as possible)."""
    if speed == "max":
        return None
    try:
        factor = float(speed.removesuffix("x"))
    except ValueError:
        raise ConfigError(f"--speed {speed!r}: use 1x, 10x, 0.5x or max") from None
    if factor <= 0:
        raise ConfigError(f"--speed {speed!r} must be positive")
    return factor


def replay(records: Iterable[ArchivedRecord], sink: KafkaSink, to_topic: str | None = None,
           speed: float | None = None, on_progress: Callable[[int], None] | None = None,
           origin_ts_ms: int | None = None, partitions: Iterable[int | None] | None = None) -> int:
    """Re-publish ``records`` in order, keeping inter-arrival times divided by ``speed``.

    The pace is measured from ``origin_ts_ms`` (default: the first record's timestamp).
    ``partitions``, if given, is each record's target partition, already computed as Kafka's
    default partitioner would (it saves the producer that work).
    The original record timestamps are kept, so event time survives the replay.
    Returns the number of records published (all acknowledged).
    """
    count = reported = 0
    first_ts, started = origin_ts_ms, time.perf_counter()
    send = sink.send_raw
    targets = iter(partitions) if partitions is not None else itertools.repeat(None)
    for record, partition in zip(records, targets):
        if speed is not None:
            first_ts = record.timestamp_ms if first_ts is None else first_ts
            due = started + (record.timestamp_ms - first_ts) / 1000 / speed
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        send(to_topic or record.topic, record.value, key=record.key, timestamp_ms=record.timestamp_ms, partition=partition)
        count += 1
        if on_progress and (count - reported >= 256 or speed is not None):
            on_progress(count - reported)
            reported = count
    if on_progress and count > reported:
        on_progress(count - reported)
    sink.flush()
    return count


def read_archives(log_dir: Path, topics: Iterable[str]) -> Iterator[ArchivedRecord]:
    """The archived records of several topics, merged by timestamp (ties: topic, partition, offset)."""
    streams = [((r.timestamp_ms, r.topic, r.partition, r.offset, r) for r in read_archive(log_dir, t)) for t in sorted(topics)]
    for *_, record in heapq.merge(*streams, key=lambda item: item[:4]):
        yield record


def target_partition(record: ArchivedRecord, to_topic: str | None, partitions: dict[str, int],
                     partitioner: KeyHashCachePartitioner) -> int | None:
    """The partition Kafka's default partitioner gives ``record`` in its target topic (None if keyless).

    Each replay worker owns the target partitions ``p`` with ``p % workers == index`` (keyless
    records: their source partition), so every partition, and so every key, is written by one
    process in archive order."""
    if record.key is None:
        return None
    return partitioner.key_partition(record.key, partitions[to_topic or record.topic])


def _replay_worker(index: int, workers: int, log_dir: Path, topics: list[str], to_topic: str | None,
                   partitions: dict[str, int], speed: float | None, settings: Settings, profile: str,
                   start: "multiprocessing.synchronize.Barrier", done: "multiprocessing.sharedctypes.Synchronized",
                   results: "multiprocessing.Queue") -> None:
    """Child process: replay this worker's share of the archive, starting with the others."""
    try:
        records = list(read_archives(log_dir, topics))
        origin = records[0].timestamp_ms if records else None
        partitioner = KeyHashCachePartitioner()
        targets = [target_partition(r, to_topic, partitions, partitioner) for r in records]
        mine = [(r, p) for r, p in zip(records, targets) if (r.partition if p is None else p) % workers == index]
        del records, targets
        pending = 0

        def progress(n: int) -> None:
            nonlocal pending
            pending += n
            if pending >= 1000:
                with done.get_lock():
                    done.value += pending
                pending = 0

        with KafkaSink(settings, profile=profile, client_id=f"tiertwin-replay-{index}") as sink:
            start.wait()
            count = replay([r for r, _ in mine], sink, to_topic, speed, on_progress=progress, origin_ts_ms=origin,
                           partitions=[p for _, p in mine])
        with done.get_lock():
            done.value += pending
        results.put((index, count, None))
    except BaseException as exc:  # the parent reports it; a worker must never hang the barrier
        start.abort()
        results.put((index, 0, f"{type(exc).__name__}: {exc}"))


class ReplayFailed(TiertwinError):
    """A replay worker failed; nothing it had not acknowledged is counted."""


def replay_parallel(log_dir: Path, topics: Iterable[str], to_topic: str | None = None, speed: float | None = None,
                    workers: int = 2, settings: Settings | None = None,
                    on_progress: Callable[[int], None] | None = None,
                    on_start: Callable[[], None] | None = None) -> int:
    """Replay archived ``topics`` with ``workers`` producer processes; returns the records published.

    kafka-python spends most of a send in Python, so one process tops out well below
    the broker; several processes share the work by *target partition*: each partition
    is written by exactly one worker, in archive order, so per-key order and the
    content of every partition are the same as with one process (and on every run).
    With a ``speed``, every worker paces from the same origin (the archive's first
    timestamp) and starts at the same moment. ``on_start`` runs when they start.
    """
    settings = settings or Settings.from_env()
    topics = sorted(topics)
    targets = {to_topic} if to_topic else set(topics)
    admin = admin_client(settings)
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(sorted(targets))
                     if not t.get("error_code")}
    finally:
        admin.close()
    missing = targets - described.keys()
    if missing:
        raise ConfigError(f"target topic(s) {sorted(missing)} do not exist; see `tiertwin topics list`")
    ctx = multiprocessing.get_context("spawn")
    start, done, results = ctx.Barrier(workers + 1), ctx.Value("q", 0), ctx.Queue()
    profile = "throughput" if speed is None else "low-latency"
    procs = [ctx.Process(target=_replay_worker, daemon=True,
                         args=(i, workers, Path(log_dir), topics, to_topic, described, speed, settings, profile,
                               start, done, results)) for i in range(workers)]
    for proc in procs:
        proc.start()
    outcomes: dict[int, tuple[int, str | None]] = {}
    try:
        try:
            start.wait(timeout=300)
        except Exception:   # BrokenBarrierError: a worker failed while loading
            pass
        if on_start:
            on_start()
        reported = 0
        while len(outcomes) < workers:
            try:
                index, count, error = results.get(timeout=0.1)
                outcomes[index] = (count, error)
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    break
            if on_progress and done.value > reported:
                on_progress(done.value - reported)
                reported = done.value
        if on_progress and done.value > reported:
            on_progress(done.value - reported)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    errors = [f"worker {i}: {e}" for i, (_, e) in sorted(outcomes.items()) if e]
    lost = [i for i in range(workers) if i not in outcomes]
    if errors or lost:
        raise ReplayFailed("; ".join(errors + [f"worker {i} died (exit code {procs[i].exitcode})" for i in lost]))
    return sum(count for count, _ in outcomes.values())
