"""A produce/consume round trip of every Avro contract through its declared topic.

It proves the platform end to end (broker, topics, codec, source and sink) and
reports per-schema latency from ``send`` to decoded receipt.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from tiertwin.connectors.kafka import KafkaSink, TopicReader, admin_client
from tiertwin.connectors.topics import load_topology
from tiertwin.schemas.examples import EXAMPLE_NAMES, example
from tiertwin.settings import Settings
from tiertwin.stats import percentiles


@dataclass(frozen=True)
class RoundTripResult:
    schema: str
    topic: str
    sent: int
    received: int
    intact: bool
    p50_ms: float
    p99_ms: float


def topic_for(schema: str) -> str:
    """The declared topic that carries ``schema`` (the round trip mirrors its partitioning)."""
    return next(t.name for t in load_topology().topics if t.schema_ == schema)


def run_roundtrip(count: int = 100, settings: Settings | None = None, timeout_s: float = 30.0) -> list[RoundTripResult]:
    settings = settings or Settings.from_env()
    # Scratch copies of the declared topics: example records must never reach live agents
    # (an example ModelUpdate on tiertwin.models would be hot-swapped in).
    scratch = {name: f"tiertwin.roundtrip.{uuid.uuid4().hex[:8]}.{name}" for name in EXAMPLE_NAMES}
    declared = load_topology().by_name()
    admin = admin_client(settings)
    admin.create_topics({scratch[n]: {"num_partitions": declared[topic_for(n)].partitions, "replication_factor": 1}
                         for n in EXAMPLE_NAMES}, timeout_ms=30_000)
    try:
        return _round_trip(count, settings, scratch, timeout_s)
    finally:
        admin.delete_topics(list(scratch.values()))
        admin.close()


def _round_trip(count: int, settings: Settings, scratch: dict[str, str], timeout_s: float) -> list[RoundTripResult]:
    results = []
    with KafkaSink(settings, client_id="tiertwin-roundtrip") as sink:
        for name in EXAMPLE_NAMES:
            topic = scratch[name]
            sent: dict[bytes, dict] = {}
            sent_at: dict[bytes, float] = {}
            latencies, intact, received = [], True, 0
            # Read from the end offsets, resolved before anything is produced.
            with TopicReader([topic], settings, on_undecodable="raise", client_id="tiertwin-roundtrip",
                             start="end", require=False) as reader:
                for i in range(count):
                    key = f"roundtrip-{name}-{i}".encode()
                    record = example(name)
                    sent[key] = record
                    sent_at[key] = time.perf_counter()
                    sink.send(topic, name, record, key=key)
                sink.flush()
                deadline = time.monotonic() + timeout_s
                while received < count and time.monotonic() < deadline:
                    for rec in reader.poll(100):
                        if rec.key in sent:
                            received += 1
                            latencies.append((time.perf_counter() - sent_at[rec.key]) * 1000)
                            intact &= rec.value == sent.pop(rec.key)
            p50, p99 = percentiles(latencies, [50, 99])
            results.append(RoundTripResult(name, topic, count, received, intact and received == count, p50, p99))
    return results
