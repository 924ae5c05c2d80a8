"""The cloud twin's Kafka read on librdkafka (#18): the same records, dead letters and snapshots as the
kafka-python read on the same log; a malformed record of a batch dead-letters alone; the partition reader's
positions (seek back after a split) and credentials."""

from __future__ import annotations

import math

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from tiertwin.jobs.bench.cloud import tier_traffic
from tiertwin.schemas import SchemaRegistry

from tests.cloud_support import collect_to, read_back

T0 = 1_767_225_600_000
REGISTRY = SchemaRegistry.default()
CLIENTS = ("librdkafka", "kafka-python")


def _fuse_from_kafka(topic: str, settings, client: str, batches: bool | str, folder) -> dict[str, list]:
    """Read ``topic`` to its end with ``client`` and fuse it (bounded, 2 s windows): snapshots, dead letters.
    ``batches="fold"``: batches folded into partial aggregates inside the read (as a job that only fuses)."""
    from tiertwin.connectors.beam_kafka import DEAD_LETTERS, RECORDS, ReadFromKafka, ReadSpec
    from tiertwin.pipelines.cloud.config import CloudTwinConfig
    from tiertwin.pipelines.cloud.fusion import FoldInRead, FuseTiers, SnapshotAggregates
    from tiertwin.pipelines.cloud.job import SplitBySchema, _Partials

    if batches == "fold":
        folder.mkdir()
        paths = {name: folder / name for name in ("snapshots", "letters")}
        config = CloudTwinConfig(window_s=2, early_firing_s=None, allowed_lateness_s=0, train=False,
                                 kafka_client=client)
        spec = ReadSpec(stop="end", max_poll_records=300, client=client)
        with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
            read = p | ReadFromKafka([topic], spec, settings, batches=True, fold=FoldInRead(config))
            (read[RECORDS] | _Partials() | SnapshotAggregates(config)
             | "Snapshots" >> beam.Map(collect_to(paths["snapshots"])))
            read[DEAD_LETTERS] | "Letters" >> beam.Map(collect_to(paths["letters"]))
        return {name: read_back(path) for name, path in paths.items()}

    folder.mkdir()
    paths = {name: folder / name for name in ("snapshots", "letters")}
    config = CloudTwinConfig(window_s=2, early_firing_s=None, allowed_lateness_s=0, train=False,
                             batches=batches, kafka_client=client)
    spec = ReadSpec(stop="end", max_poll_records=300, client=client)
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        read = p | ReadFromKafka([topic], spec, settings, batches=batches)
        read[RECORDS] | SplitBySchema() | FuseTiers(config) | "Snapshots" >> beam.Map(collect_to(paths["snapshots"]))
        read[DEAD_LETTERS] | "Letters" >> beam.Map(collect_to(paths["letters"]))
    return {name: read_back(path) for name, path in paths.items()}


def _comparable(snapshots: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in s.items() if k != "emitted_ns"} for s in snapshots),
                  key=lambda s: (s["cell_id"], s["window_start_ms"]))


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)  # polars adds floats in its own order
    return a == b


@pytest.mark.broker
def test_both_clients_fuse_the_same_snapshots_and_a_malformed_record_dead_letters_alone(new_topic, settings,
                                                                                       tmp_path, monkeypatch):
    from tiertwin.connectors.kafka import KafkaSink
    from tiertwin.schemas import batches as batches_module

    monkeypatch.setattr(batches_module, "COLUMNAR_MIN_ROWS", 16)  # fetches of 300 mixed records: decoded column-wise

    topic = new_topic(2)
    records = list(tier_traffic(T0, 3_000, rate_per_s=500, cells=4, ues=16, seed=5))
    bad = [b"garbage", b"\xc3\x01" + bytes(8) + b"x"]
    with KafkaSink(settings) as sink:
        for i, (schema, record) in enumerate(records):
            if i in (700, 2100):  # inside fetches: each between valid records of the same partition
                sink.send_raw(topic, bad[i // 2000], partition=i % 2)
            sink.send_raw(topic, REGISTRY.encode(schema, record), partition=i % 2)
    runs = {(client, batches): _fuse_from_kafka(topic, settings, client, batches, tmp_path / f"{client}-{batches}")
            for client in CLIENTS for batches in (True, False, "fold")}
    reference = _comparable(runs[("kafka-python", False)]["snapshots"])
    fused = sum(s["summaries"] + s["edge_states"] + s["decisions"] + s["outcomes"] for s in reference)
    assert fused == len(records), "every valid record is fused once"
    for (client, batches), run in runs.items():
        snapshots = _comparable(run["snapshots"])
        assert len(snapshots) == len(reference), (client, batches)
        for got, want in zip(snapshots, reference):
            assert got.keys() == want.keys() and all(_close(got[k], want[k]) for k in want), (client, batches, got)
        letters = sorted((d["partition"], d["reason"], d["original"]) for d in run["letters"])
        assert letters == [(0, "truncated", bad[0]), (0, "unknown-fingerprint", bad[1])], (client, batches)


@pytest.mark.broker
def test_the_partition_reader_seeks_back_and_reports_its_position(new_topic, settings):
    from kafka import TopicPartition

    from tiertwin.connectors.rdkafka import RdKafkaPartitionConsumer, RdKafkaSink
    from tiertwin.errors import TiertwinError

    topic = new_topic(1)
    with RdKafkaSink(settings) as sink:
        for i in range(100):
            sink.send_raw(topic, b"v%d" % i, partition=0)
    tp = TopicPartition(topic, 0)
    consumer = RdKafkaPartitionConsumer(settings, "test-rdkafka-read", max_poll_records=30, fetch_max_wait_ms=100)
    consumer.assign([tp])
    consumer.seek(tp, 10)
    first = consumer.poll(5_000)[tp]
    assert [m.offset for m in first] == list(range(10, 10 + len(first))) and first[0].value == b"v10"
    assert consumer.position(tp) == first[-1].offset + 1 and consumer.highwater(tp) == 100
    consumer.seek(tp, 3)  # a split under the fetch in hand: the resumed range reads from its own start
    assert consumer.position(tp) == 3
    offsets = []
    while len(offsets) < 97:
        offsets += [m.offset for m in consumer.poll(5_000).get(tp, [])]
    assert offsets == list(range(3, 100)) and consumer.position(tp) == 100
    assert consumer.poll(200) == {}
    consumer.close()
    with pytest.raises(Exception) as closed:
        consumer.poll(10)
    assert type(closed.value).__name__ == "IllegalStateError" and not isinstance(closed.value, TiertwinError)


@pytest.mark.broker
def test_the_partition_reader_reads_with_the_tier_credentials(secure_broker):
    from kafka import TopicPartition

    from tests.secure_support import settings_as
    from tiertwin.connectors.rdkafka import RdKafkaPartitionConsumer, RdKafkaSink
    from tiertwin.schemas.examples import example

    topic = "tiertwin.actions.local"
    with RdKafkaSink(settings_as(secure_broker, "tiertwin-local"), client_id="test-rdkafka-local") as sink:
        sink.send_raw(topic, REGISTRY.encode("Decision", example("Decision", decision_id="read-back")), partition=0)
        sink.flush(20)
    consumer = RdKafkaPartitionConsumer(settings_as(secure_broker, "tiertwin-cloud"), "tiertwin-cloud-test-read")
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        found = []
        for _ in range(40):
            found += [REGISTRY.decode(m.value)[1]["decision_id"] for m in consumer.poll(500).get(tp, [])]
            if "read-back" in found:
                break
        assert "read-back" in found
    finally:
        consumer.close()


def test_a_batch_crosses_a_stage_as_columns_and_rebuilds_the_same_records():
    from apache_beam.coders import PickleCoder

    from tiertwin.schemas.batches import COLUMN_CHECKS_MIN_ROWS, decode_batch
    from tiertwin.schemas.examples import example

    records = list(tier_traffic(T0, 4 * COLUMN_CHECKS_MIN_ROWS, rate_per_s=1_000, cells=4, ues=16, seed=3))
    records.append(("Outcome", example("Outcome", cell_id=2, ts_ms=T0, latency_ms=None)))  # a null in a column
    values = [REGISTRY.encode(s, r) for s, r in records]
    batches, letters = decode_batch(REGISTRY, values, topic="t", partition=0, offsets=range(len(values)),
                                    timestamps_ms=[T0] * len(values), stage="s")
    assert not letters and len(batches) == 4
    coder = PickleCoder()  # what Beam encodes a RecordBatch element with between stages
    for batch in batches:
        assert batch._columns is not None  # a full fetch: checked on its columns, so it crosses as columns
        copy = coder.decode(coder.encode(batch))
        assert type(copy).__name__ == "_ColumnarBatch" and len(copy) == len(batch)
        assert copy.event_ms == batch.event_ms and copy.columns.equals(batch.columns)
        assert repr(copy.records) == repr(batch.records), batch.schema  # same values, types and field order
        again = coder.decode(coder.encode(copy))  # crossing again, with or without its records rebuilt
        assert repr(again.records) == repr(batch.records)
