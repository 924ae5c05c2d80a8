"""SIGKILL a local agent process mid-stream, restart it: no telemetry lost, the same decision ids."""

from __future__ import annotations

import pickle
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest
import yaml

from tiertwin.connectors.kafka import KafkaSink, admin_client
from tiertwin.connectors.kafka import read_topic
from tiertwin.pipelines.pretrain import SyntheticFleet

pytestmark = pytest.mark.broker

TOPIC_NAMES = ("telemetry", "demands", "outcomes", "edge_state", "summaries", "actions", "models", "changelog", "dead_letter")


def start_agent(config_path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tiertwin.jobs.cli", "run", "local", "--config", str(config_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def produce(sink, config, fleet, ticks, start_tick):
    telemetry = demands = 0
    for tick in range(start_tick, start_tick + ticks):
        for kind, record in fleet.step(tick * 10):
            record["emitted_ns"] = time.time_ns()
            if kind == "telemetry":
                sink.send(config["telemetry_topic"], "Telemetry", record, key=record["ue_id"])
                telemetry += 1
            elif kind == "demand":
                sink.send(config["demands_topic"], "Demand", record, key=record["ue_id"])
                demands += 1
    sink.flush()
    return telemetry, demands


def committed(settings, group: str, topic: str) -> int:
    admin = admin_client(settings)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0)


def test_sigkill_and_restart_lose_no_telemetry_and_repeat_decision_ids(new_topic, group_id, settings, tmp_path):
    topics = {name: new_topic(1 if name == "models" else 3, prefix=f"test.recovery.{name}") for name in TOPIC_NAMES}
    config = {"instance_id": "recovery", "group_id": group_id, "commit_interval_ms": 2000, "session_timeout_ms": 6000,
              **{f"{name}_topic": topic for name, topic in topics.items()}}
    config_path = tmp_path / "local.yaml"
    config_path.write_text(yaml.safe_dump(config))
    fleet = SyntheticFleet(n_ues=6, n_cells=3, seed=21, demand_every=3)

    with KafkaSink(settings) as sink:
        telemetry, demands = produce(sink, config, fleet, 30, 0)
        first = start_agent(config_path)
        try:
            assert len(read_topic(topics["actions"], settings, expect=demands, timeout_s=60)) >= demands
            deadline = time.monotonic() + 30
            while committed(settings, group_id, topics["demands"]) < demands and time.monotonic() < deadline:
                time.sleep(0.1)
            assert committed(settings, group_id, topics["demands"]) == demands, "a checkpoint + commit happened"
            more_telemetry, more_demands = produce(sink, config, fleet, 30, 30)
            telemetry, demands = telemetry + more_telemetry, demands + more_demands
            read_topic(topics["actions"], settings, expect=demands, timeout_s=60)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
    replay_expected = committed(settings, group_id, topics["demands"]) < demands

    second = start_agent(config_path)
    try:
        deadline = time.monotonic() + 90   # the dead member's session expires, then the restart catches up
        while time.monotonic() < deadline and (committed(settings, group_id, topics["demands"]) < demands
                                               or committed(settings, group_id, topics["telemetry"]) < telemetry):
            time.sleep(0.2)
    finally:
        second.send_signal(signal.SIGTERM)
        _, log = second.communicate(timeout=60)
    assert second.returncode == 0, log[-2000:]

    ids_by_demand = defaultdict(set)
    for record in read_topic(topics["actions"], settings):
        d = record.value
        ids_by_demand[d["subject_id"]].add(d["decision_id"])
        assert d["decision_id"] == f"local/placement/{d['source_topic']}/{d['source_partition']}/{d['source_offset']}"
    assert len(ids_by_demand) == demands, "every demand was decided"
    assert all(len(ids) == 1 for ids in ids_by_demand.values()), "reprocessing repeats the same decision id"
    total = sum(1 for _ in read_topic(topics["actions"], settings))
    if replay_expected:
        assert total > demands, "the uncommitted tail was reprocessed"
    restored = [int(n) for n in re.findall(r"restored (\d+) twins", log)]
    assert restored and sum(restored) > 0, log[-2000:]

    # No telemetry lost: per UE, the distinct summary windows plus the open window count every record once.
    windows = defaultdict(dict)
    for record in read_topic(topics["summaries"], settings):
        s = record.value
        known = windows[s["ue_id"]].setdefault(s["window_start_ms"], s["samples"])
        assert known == s["samples"], "a replayed summary is identical"
    twins = {}
    for record in _raw(topics["changelog"], settings):
        twins[record[0]] = pickle.loads(record[1])
    per_ue = telemetry // len(fleet.ues)
    for ue in fleet.ues:
        twin = twins[ue["ue_id"]]
        assert twin.last_seq == per_ue
        assert sum(windows[ue["ue_id"]].values()) + twin.samples == per_ue


def _raw(topic, settings):
    """(key, value) of every record of a raw-bytes topic, latest last."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap.split(","), group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out = []
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for messages in consumer.poll(timeout_ms=500).values():
                out.extend((m.key.decode(), m.value) for m in messages if m.value is not None)
        return out
    finally:
        consumer.close()
