"""Cloud twin, bounded: Kafka IO for Beam, and backfill over an archive equals the polars aggregation."""

from __future__ import annotations

import math

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that

from tiertwin.connectors.archive import archive_topics
from tiertwin.connectors.kafka import KafkaSink
from tiertwin.connectors.kafka import read_topic
from tiertwin.jobs.bench.cloud import polars_snapshots, produce, tier_traffic
from tiertwin.pipelines import parquet_log
from tiertwin.connectors.beam_kafka import ReadFromKafka, ReadSpec, WriteToKafka, dead_letter_key
from tiertwin.pipelines.cloud.config import CloudTwinConfig
from tiertwin.pipelines.cloud.job import CloudTwin, ReadArchive
from tiertwin.pipelines.cloud.runtime import backfill
from tiertwin.schemas.examples import example

pytestmark = pytest.mark.broker

T0 = 1_767_225_600_000
STREAMS = ("LocalSummary", "EdgeState", "Decision", "Outcome")


@pytest.fixture
def tier_topics(new_topic):
    return {schema: new_topic(2, prefix=f"test.cloud.{schema.lower()}") for schema in STREAMS}


def test_bounded_read_stops_at_end_offsets_and_dead_letters_undecodable_records(new_topic, settings):
    topic, dead = new_topic(3), new_topic(1)
    records = [example("EdgeState", cell_id=i % 4, ts_ms=T0 + i) for i in range(60)]
    with KafkaSink(settings) as sink:
        for r in records:
            sink.send(topic, "EdgeState", r, key=r["cell_id"])
        sink.send_raw(topic, b"\xc3\x01not-a-fingerprint", key="bad")
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        read = p | ReadFromKafka([topic], ReadSpec(stop="end"), settings)
        assert_that(read.records | beam.MapTuple(lambda schema, r: (schema, r["ts_ms"])),
                    lambda got: sorted(got) == sorted(("EdgeState", r["ts_ms"]) for r in records) or _fail(got))
        read.dead_letters | WriteToKafka(dead, "DeadLetter", dead_letter_key, settings)
    letters = read_topic(dead, settings, expect=1, timeout_s=20)
    assert [(d.value["topic"], d.value["reason"], d.value["original"]) for d in letters] == \
        [(topic, "unknown-fingerprint", b"\xc3\x01not-a-fingerprint")]


def test_bounded_read_can_stop_at_a_time(new_topic, settings):
    topic = new_topic(2)
    with KafkaSink(settings) as sink:
        for i in range(40):
            sink.send(topic, "EdgeState", example("EdgeState", cell_id=i % 2, ts_ms=T0 + 1000 * i), key=i % 2,
                      timestamp_ms=T0 + 1000 * i)
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        read = p | ReadFromKafka([topic], ReadSpec(start=T0 + 10_000, stop=T0 + 20_000), settings)
        assert_that(read.records | beam.MapTuple(lambda _, r: r["ts_ms"]),
                    lambda got: sorted(got) == [T0 + 1000 * i for i in range(10, 20)] or _fail(got))


def _fail(got):
    raise AssertionError(sorted(got)[:20])


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-4)


def test_backfill_over_an_archive_gives_exactly_the_polars_snapshots(tier_topics, new_topic, settings, tmp_path):
    dead = new_topic(1)
    records = list(tier_traffic(T0, 2_000, rate_per_s=400, cells=4, ues=16, seed=3))
    records.append(("Decision", example("Decision", decision_id="no-cell", cell_id=None, source_ts_ms=T0 + 10)))
    with KafkaSink(settings) as sink:
        produce(sink, records, tier_topics)
        sink.send_raw(tier_topics["Outcome"], b"garbage", key="bad")
    archive_topics(list(tier_topics.values()), tmp_path / "log", settings)

    config = CloudTwinConfig(window_s=2, early_firing_s=None, snapshots_topic=None, models_topic=None,
                             snapshots_dir=tmp_path / "snapshots", dead_letter_topic=dead, train=False)
    backfill(tmp_path / "log", config, settings)

    got = sorted(parquet_log.read_records(tmp_path / "snapshots", "TwinSnapshot"),
                 key=lambda s: (s["cell_id"], s["window_start_ms"]))
    expected = polars_snapshots(tmp_path / "log", 2_000)
    assert len(expected) == 4 * 3 and {s["pane"] for s in got} == {"on_time"}
    assert [(s["cell_id"], s["window_start_ms"], s["window_end_ms"]) for s in got] == \
        [(e["cell_id"], e["window_start_ms"], e["window_end_ms"]) for e in expected]
    for s, e in zip(got, expected):
        for field in ("ues", "summaries", "edge_states", "decisions", "outcomes", "decisions_by_tier"):
            assert s[field] == e[field], (field, s, e)
        for field in ("mean_sinr_db", "mean_prb_utilization", "mean_mec_queue_gcycles", "mean_latency_ms",
                      "p95_latency_ms", "deadline_miss_rate"):
            assert _close(s[field], e[field]), (field, s[field], e[field])
    # The snapshots are the archive's date/hour partition of their window.
    assert {p.parent.relative_to(tmp_path / "snapshots").as_posix() for p in parquet_log.files(tmp_path / "snapshots", "TwinSnapshot")} \
        == {"TwinSnapshot/date=2026-01-01/hour=00"}
    letters = read_topic(dead, settings, expect=1, timeout_s=20)
    assert [(d.value["reason"], d.value["original"], d.value["stage"]) for d in letters] == \
        [("truncated", b"garbage", "cloud-twin/backfill")]


def test_training_over_an_archive_publishes_better_versions_in_order(tier_topics, settings, tmp_path):
    with KafkaSink(settings) as sink:
        produce(sink, tier_traffic(T0, 4_000, rate_per_s=400, cells=4, ues=16, seed=5), tier_topics)
    archive_topics(list(tier_topics.values()), tmp_path / "log", settings)
    config = CloudTwinConfig(train_window_s=2, min_examples=50, models_topic=None, snapshots_topic=None,
                             early_firing_s=None)

    def check(all_updates):
        assert {u["model_name"] for u in all_updates} == {"demand-latency", "handover-sinr"}
        for name in ("demand-latency", "handover-sinr"):
            updates = sorted((u for u in all_updates if u["model_name"] == name), key=lambda u: u["version"])
            # No models topic: the trainer starts from the shipped model (version 1), so its versions follow it.
            assert [u["version"] for u in updates] == list(range(2, len(updates) + 2)), updates
            windows = [u["training_window_end_ms"] for u in updates]
            assert windows == sorted(windows), "trained in event-time order"
            unit = {"demand-latency": "ms", "handover-sinr": "db"}[name]
            for u in updates:
                assert u["metrics"][f"mae_{unit}"] < u["metrics"][f"live_mae_{unit}"]
        latency = sorted((u for u in all_updates if u["model_name"] == "demand-latency"), key=lambda u: u["version"])
        assert len(latency) >= 2 and latency[-1]["metrics"]["mae_ms"] < latency[0]["metrics"]["mae_ms"]

    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        read = p | ReadArchive(tmp_path / "log")
        outputs = read.records | CloudTwin(config, settings)
        assert_that(outputs["model_updates"], check)
