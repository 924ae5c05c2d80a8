"""SIGKILL a local agent process mid-stream, restart it: no telemetry lost, the same decision ids."""

from __future__ import annotations

import pickle
import re
import signal
import time
from collections import defaultdict

import pytest
import yaml

from tests.agent_support import committed_offset, produce_fleet, read_raw, start_agent_process
from tiertwin.connectors.kafka import KafkaSink, read_topic
from tiertwin.pipelines.pretrain import SyntheticFleet

pytestmark = pytest.mark.broker

TOPIC_NAMES = ("telemetry", "demands", "outcomes", "edge_state", "summaries", "actions", "models", "changelog", "dead_letter")


def test_sigkill_and_restart_lose_no_telemetry_and_repeat_decision_ids(new_topic, group_id, settings, tmp_path):
    topics = {name: new_topic(1 if name == "models" else 3, prefix=f"test.recovery.{name}") for name in TOPIC_NAMES}
    config = {"instance_id": "recovery", "group_id": group_id, "commit_interval_ms": 2000, "session_timeout_ms": 6000,
              **{f"{name}_topic": topic for name, topic in topics.items()}}
    config_path = tmp_path / "local.yaml"
    config_path.write_text(yaml.safe_dump(config))
    fleet = SyntheticFleet(n_ues=6, n_cells=3, seed=21, demand_every=3)

    with KafkaSink(settings) as sink:
        telemetry, demands = produce_fleet(sink, config, fleet, 30, 0)
        first = start_agent_process("local", config_path)
        try:
            assert len(read_topic(topics["actions"], settings, expect=demands, timeout_s=60)) >= demands
            deadline = time.monotonic() + 30
            while committed_offset(settings, group_id, topics["demands"]) < demands and time.monotonic() < deadline:
                time.sleep(0.1)
            assert committed_offset(settings, group_id, topics["demands"]) == demands, "a checkpoint + commit happened"
            more_telemetry, more_demands = produce_fleet(sink, config, fleet, 30, 30)
            telemetry, demands = telemetry + more_telemetry, demands + more_demands
            read_topic(topics["actions"], settings, expect=demands, timeout_s=60)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
    replay_expected = committed_offset(settings, group_id, topics["demands"]) < demands

    second = start_agent_process("local", config_path)
    try:
        deadline = time.monotonic() + 90   # the dead member's session expires, then the restart catches up
        while time.monotonic() < deadline and (committed_offset(settings, group_id, topics["demands"]) < demands
                                               or committed_offset(settings, group_id, topics["telemetry"]) < telemetry):
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
    for record in read_raw(topics["changelog"], settings):
        twins[record[0]] = pickle.loads(record[1])
    per_ue = telemetry // len(fleet.ues)
    for ue in fleet.ues:
        twin = twins[ue["ue_id"]]
        assert twin.last_seq == per_ue
        assert sum(windows[ue["ue_id"]].values()) + twin.samples == per_ue
