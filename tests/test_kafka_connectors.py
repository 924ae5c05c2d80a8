"""Kafka source and sink against the real managed broker."""

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from tiertwin.connectors.kafka import DeadLetterSink, KafkaSink, KafkaSource, read_topic
from tiertwin.jobs.bench.roundtrip import run_roundtrip
from tiertwin.schemas import MAGIC, SchemaRegistry
from tiertwin.schemas.examples import EXAMPLE_NAMES, example

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parent.parent


def test_every_schema_round_trips_through_kafka_intact(broker, settings):
    results = run_roundtrip(count=20, settings=settings)
    assert [r.schema for r in results] == list(EXAMPLE_NAMES)
    for r in results:
        assert (r.sent, r.received, r.intact) == (20, 20, True), r


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_sigkilled_consumer_restarts_in_its_group_and_loses_nothing(new_topic, group_id, settings, tmp_path):
    topic = new_topic(partitions=3)
    keys = [f"ue-{i:04d}" for i in range(1000)]
    with KafkaSink(settings) as sink:
        for i, key in enumerate(keys):
            sink.send(topic, "Telemetry", example("Telemetry", ue_id=key, seq=i), key=key)
    out = tmp_path / "processed.txt"
    cmd = [sys.executable, "-m", "tests.workers.slow_consumer", topic, group_id, str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        _wait_for(lambda: len(_lines(out)) >= 300, 60, "the first consumer to process 300 records")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed_at = len(_lines(out))
    assert killed_at < 1000, "the consumer finished before it could be killed mid-way"
    second = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        _wait_for(lambda: set(_lines(out)) >= set(keys), 90, "every key to be processed")
    finally:
        second.terminate()
        second.wait()
    counts = Counter(_lines(out))
    assert set(counts) == set(keys)
    assert sum(counts.values()) >= 1000


def test_a_commit_refused_by_a_rebalance_is_skipped_and_the_member_goes_on(new_topic, group_id, settings):
    topic = new_topic(partitions=3)
    members = [KafkaSource([topic], group_id, settings, on_undecodable="raise", client_id=name) for name in ("first", "idle", "joiner")]
    first, idle, joiner = members
    stop = threading.Event()
    joining = threading.Thread(target=lambda: [joiner.poll(100) for _ in iter(stop.is_set, True)], daemon=True)
    try:
        _wait_for(lambda: [first.poll(50), idle.poll(50)] and first.consumer.assignment()
                  and idle.consumer.assignment(), 30, "two members with partitions")
        assert first.commit() is True
        # A third member joins. The rebalance cannot finish until the idle member polls again,
        # so the first member, once it polls, is a member between generations.
        joining.start()
        refused = False
        deadline = time.monotonic() + 30
        while not refused and time.monotonic() < deadline:
            first.poll(50)
            refused = first.commit() is False
        assert refused, "no commit was refused while the group rebalanced"
        idle.close()  # it leaves the group, so the rebalance completes without it
        _wait_for(lambda: first.poll(50) is not None and first.commit(), 30, "the first member to commit again")
        _wait_for(lambda: bool(joiner.consumer.assignment()), 30, "the joining member to get a partition")
    finally:
        stop.set()
        if joining.is_alive():
            joining.join(10)
        for member in members:
            member.close()


def test_malformed_records_are_dead_lettered_and_good_ones_processed(new_topic, group_id, settings):
    registry = SchemaRegistry.default()
    topic, dead_topic = new_topic(partitions=1), new_topic(partitions=1, prefix="test-dlq")
    telemetry = registry.current("Telemetry")
    nan_record = registry.encode("Telemetry", example("Telemetry"))  # valid bytes, then patch a float to NaN
    import io
    from fastavro import schemaless_writer
    buf = io.BytesIO()
    buf.write(telemetry.header)
    schemaless_writer(buf, telemetry.parsed, example("Telemetry", rsrp_dbm=math.nan))
    nan_record = buf.getvalue()
    values = [
        registry.encode("Telemetry", example("Telemetry", ue_id="good-0")),
        os.urandom(64),                                                   # random bytes
        registry.encode("Telemetry", example("Telemetry", ue_id="good-1")),
        b"\x00\x01" + os.urandom(40),                                     # wrong magic
        MAGIC + b"\x11" * 8 + os.urandom(20),                             # unknown fingerprint
        nan_record,                                                       # valid Avro carrying NaN
        registry.encode("Telemetry", example("Telemetry", ue_id="good-2"))[:30],  # truncated body
        registry.encode("Telemetry", example("Telemetry", ue_id="good-3")),
    ]
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap)
    for v in values:
        producer.send(topic, v, key=b"k")
    producer.flush()
    producer.close()

    with KafkaSink(settings) as dl_sink:
        source = KafkaSource([topic], group_id, settings, dead_letters=DeadLetterSink(dl_sink, "test", dead_topic),
                             on_undecodable="dead-letter")
        good = []
        _wait_for(lambda: good.extend(source.poll(200)) or len(good) + source.rejected >= len(values), 30,
                  "all records to be handled")
        source.commit()
        source.close()
    assert [r.value["ue_id"] for r in good] == ["good-0", "good-1", "good-3"]

    consumer = KafkaConsumer(dead_topic, bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    letters = [registry.decode(m.value)[1] for m in consumer]
    consumer.close()
    assert len(letters) == 5
    assert [(l["offset"], l["topic"], l["original"]) for l in letters] == [
        (i, topic, values[i]) for i in (1, 3, 4, 5, 6)]
    reasons = [l["reason"] for l in letters]
    assert reasons[1:] == ["bad-magic", "unknown-fingerprint", "non-finite-field", "truncated"]
    assert reasons[0] in {"bad-magic", "truncated"}  # random bytes almost always fail the magic check
    assert all(l["detail"] for l in letters)


def test_each_reader_says_what_becomes_of_an_undecodable_record(new_topic, settings):
    from kafka import TopicPartition

    from tiertwin.errors import ConfigError, RecordRejected

    topic = new_topic(partitions=1)
    registry = SchemaRegistry.default()
    with KafkaSink(settings) as sink:
        sink.send_raw(topic, registry.encode("Telemetry", example("Telemetry", ue_id="before")), key="k")
        sink.send_raw(topic, os.urandom(64), key="k")
        sink.send_raw(topic, registry.encode("Telemetry", example("Telemetry", ue_id="after")), key="k")

    def read(policy):
        source = KafkaSource([], None, settings, on_undecodable=policy)
        source.consumer.assign([TopicPartition(topic, 0)])
        source.consumer.seek_to_beginning()
        got = []
        try:
            _wait_for(lambda: got.extend(source.poll(200)) or (source.rejected and len(got) >= 2), 30,
                      "the three records")
        finally:
            source.close()
        return [r.value["ue_id"] for r in got], source.rejected

    assert read("skip") == (["before", "after"], 1)  # the batch goes on without it
    with pytest.raises(RecordRejected):
        read("raise")
    with pytest.raises(ConfigError, match="needs a DeadLetterSink"):
        KafkaSource([], None, settings, on_undecodable="dead-letter")


def test_cli_reports_a_missing_broker_in_one_line(tmp_path):
    env = {**os.environ, "TIERTWIN_BROKER_PORT": "1", "TIERTWIN_CONNECT_TIMEOUT_S": "3",
           "TIERTWIN_HOME": str(tmp_path)}
    for args in (["broker", "status"], ["topics", "list"], ["topics", "apply"], ["roundtrip"]):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "tiertwin.jobs.cli", *args], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: cannot reach Kafka at 127.0.0.1:1"), lines
        assert time.monotonic() - started < 30


def test_broker_status_reports_a_4x_broker(broker):
    done = subprocess.run([sys.executable, "-m", "tiertwin.jobs.cli", "broker", "status"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Apache Kafka 4." in done.stdout
    assert "tiertwin.local.telemetry" in done.stdout


def test_topology_apply_is_idempotent(broker, settings):
    from tiertwin.connectors.topics import apply_topology, describe_topics, load_topology

    topology = load_topology()
    assert set(apply_topology(topology, settings).values()) == {"up to date"}
    described = {t["name"]: t for t in describe_topics(settings)}
    for spec in topology.topics:
        assert described[spec.name]["partitions"] == spec.partitions
        assert described[spec.name]["cleanup.policy"] == spec.cleanup_policy


def test_a_flush_with_nothing_sent_since_the_last_returns_without_waking_the_producer(new_topic, settings):
    # A Beam sink flushes at the end of every bundle, records or not; kafka-python's flush waits for its sender
    # thread even with nothing queued (0.1-40 ms on a busy SDK worker).
    topic = new_topic(partitions=1)
    with KafkaSink(settings) as sink:
        flushes = []
        real_flush = sink._producer.flush
        sink._producer.flush = lambda timeout=None: flushes.append(timeout) or real_flush(timeout=timeout)
        sink.flush()
        assert flushes == []
        sink.send(topic, "EdgeState", example("EdgeState", cell_id=3))
        sink.flush()
        sink.flush()
        assert len(flushes) == 1
    assert [r.value["cell_id"] for r in read_topic(topic, settings, timeout_s=5.0)] == [3]
