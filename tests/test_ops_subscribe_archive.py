"""Operator interfaces: subscribe, plain-client decoding, archive -> replay, report (real broker)."""

import io
import json
import subprocess
import sys
import time
from collections import defaultdict

import pytest
from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form
from kafka import KafkaConsumer

from tiertwin.client import subscribe_decisions
from tiertwin.connectors.archive import archive_topics, read_archive, replay
from tiertwin.connectors.kafka import KafkaSink
from tiertwin.jobs.experiments.report import write_report
from tiertwin.schemas import SCHEMA_DIR
from tiertwin.schemas.examples import example

pytestmark = pytest.mark.broker


def _decisions(n):
    tiers = ["local", "edge"]
    return [example("Decision", decision_id=f"d-{i}", ue_id=f"ue-{i % 4}", tier=tiers[i % 2],
                    kind="placement" if i % 2 == 0 else "handover", decided_ns=1_000_000_000 + i * 1_000_000,
                    source_emitted_ns=1_000_000_000) for i in range(n)]


# Record timestamps an hour old, not fixed dates: the broker's time-based retention (7 days) deletes a segment
# whose newest record is older, whenever its periodic check runs, and a reader then found the topic empty.
TS0 = int(time.time()) * 1000 - 3_600_000


def _produce(topic, records, schema, settings, key_field="ue_id", ts0=TS0):
    with KafkaSink(settings) as sink:
        for i, r in enumerate(records):
            sink.send(topic, schema, r, key=r[key_field], timestamp_ms=ts0 + i * 10)


def test_subscribe_cli_filters_and_formats(new_topic, settings):
    topic = new_topic(partitions=2)
    _produce(topic, _decisions(12), "Decision", settings)
    base = [sys.executable, "-m", "tiertwin.jobs.cli", "subscribe", topic, "--from-beginning"]
    done = subprocess.run(base + ["--format", "jsonl", "--filter", "ue=ue-1", "--filter", "kind=handover"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(r["value"]["decision_id"] for r in rows) == ["d-1", "d-5", "d-9"]
    assert all(r["schema"] == "tiertwin.Decision" for r in rows)
    table = subprocess.run(base + ["--filter", "tier=edge"], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0
    assert len(table.stdout.splitlines()) == 6 and "6 record(s)" in table.stderr
    assert all("  edge  " in line for line in table.stdout.splitlines())
    bad = subprocess.run(base + ["--filter", "nonsense"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("error: filter 'nonsense'")


def test_python_client_yields_typed_decisions(new_topic, settings):
    topic = new_topic(partitions=1)
    _produce(topic, _decisions(5), "Decision", settings)
    got = list(subscribe_decisions(topic, from_beginning=True, follow=False, filters={"tier": "local"},
                                   settings=settings))
    assert [d.decision_id for d in got] == ["d-0", "d-2", "d-4"]
    assert got[1].decision_latency_ms == pytest.approx(2.0)


def test_plain_kafka_client_decodes_a_decision_with_only_the_schema_file(new_topic, settings):
    topic = new_topic(partitions=1)
    _produce(topic, _decisions(1), "Decision", settings)
    # What a non-tiertwin client does: parse the .avsc, check the single-object header, read the body.
    raw_schema = json.loads((SCHEMA_DIR / "Decision.avsc").read_text())
    expected_fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(raw_schema), "CRC-64-AVRO"))
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    [message] = list(consumer)
    consumer.close()
    assert message.value[:2] == b"\xc3\x01" and message.value[2:10] == expected_fp
    decoded = schemaless_reader(io.BytesIO(message.value[10:]), parse_schema(raw_schema))
    assert decoded == _decisions(1)[0]


def test_archive_then_replay_reproduces_records_in_order_and_report_plots(new_topic, settings, tmp_path):
    source, target = new_topic(partitions=3), new_topic(partitions=3)
    telemetry = [example("Telemetry", ue_id=f"ue-{i % 7}", seq=i) for i in range(300)]
    _produce(source, telemetry, "Telemetry", settings)
    counts = archive_topics([source], tmp_path / "log", settings)
    assert counts == {source: 300}

    order_a = [(r.key, r.offset) for r in read_archive(tmp_path / "log", source)]
    order_b = [(r.key, r.offset) for r in read_archive(tmp_path / "log", source)]
    assert order_a == order_b  # deterministic
    with KafkaSink(settings) as sink:
        assert replay(read_archive(tmp_path / "log", source), sink, to_topic=target, speed=None) == 300

    consumer = KafkaConsumer(target, bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    by_key = defaultdict(list)
    for m in consumer:
        by_key[m.key.decode()].append(m.value)
    consumer.close()
    original = defaultdict(list)
    from tiertwin.schemas import SchemaRegistry
    registry = SchemaRegistry.default()
    for r in telemetry:
        original[r["ue_id"]].append(registry.encode("Telemetry", r))
    assert by_key == original  # same records, same per-key order

    decisions_topic = new_topic(partitions=1)
    _produce(decisions_topic, _decisions(20), "Decision", settings)
    archive_topics([decisions_topic], tmp_path / "log", settings)
    report = write_report(tmp_path / "log", tmp_path / "report")
    assert {p.name for p in report.plots} == {"records_per_topic.png", "decision_latency_cdf.png",
                                              "demand_latency.png"}
    assert all(p.stat().st_size > 5000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in report.plots)
    assert report.records_per_topic == {decisions_topic: 20, source: 300}
    latency = {row["tier"]: row for row in report.decision_latency.iter_rows(named=True)}
    assert latency["local"]["n"] == 10 and latency["edge"]["n"] == 10
    assert latency["edge"]["p50_ms"] == pytest.approx(10.0)  # edge ids 1,3,...,19 -> latencies 1..19 ms


def _partition_contents(topic, settings, expect):
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    contents = defaultdict(list)
    for m in consumer:
        contents[m.partition].append((m.key, m.value, m.timestamp))
        if sum(map(len, contents.values())) >= expect:
            break
    consumer.close()
    return dict(contents)


def test_parallel_replay_writes_every_partition_exactly_as_one_process_does(new_topic, settings, tmp_path):
    from tiertwin.connectors.archive import archived_count, read_archives, replay_parallel

    source, other = new_topic(partitions=3), new_topic(partitions=2)
    one, many = new_topic(partitions=4), new_topic(partitions=4)
    _produce(source, [example("Telemetry", ue_id=f"ue-{i % 11}", seq=i) for i in range(400)], "Telemetry", settings)
    _produce(other, [example("Telemetry", ue_id=f"ue-{i % 5}", seq=1000 + i) for i in range(100)], "Telemetry",
             settings, ts0=TS0 + 5)
    archive_topics([source, other], tmp_path / "log", settings)
    assert archived_count(tmp_path / "log", [source, other]) == 500

    with KafkaSink(settings) as sink:
        assert replay(read_archives(tmp_path / "log", [source, other]), sink, to_topic=one) == 500
    progressed = []
    assert replay_parallel(tmp_path / "log", [source, other], many, workers=3, settings=settings,
                           on_progress=progressed.append) == 500
    assert sum(progressed) == 500
    expected = _partition_contents(one, settings, 500)
    assert len(expected) == 4 and _partition_contents(many, settings, 500) == expected


def test_parallel_replay_to_a_missing_topic_is_a_config_error(new_topic, settings, tmp_path):
    from tiertwin.connectors.archive import replay_parallel
    from tiertwin.errors import ConfigError

    source = new_topic(partitions=1)
    _produce(source, [example("Telemetry", seq=i) for i in range(3)], "Telemetry", settings)
    archive_topics([source], tmp_path / "log", settings)
    with pytest.raises(ConfigError, match="do not exist"):
        replay_parallel(tmp_path / "log", [source], "no.such.topic.here", workers=2, settings=settings)
