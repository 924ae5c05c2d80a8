"""Service instances share their group's partitions; one is SIGKILLed and the survivors take over.

Two local-twin service instances share the UE partitions of one consumer group. One is killed mid-stream.
The survivor is assigned its partitions once the dead member's session expires, restores those UEs' twins
from the changelog, and decides their demands under the same replay-stable ids. No UE's twin is lost:
per UE, the summary windows and the twin's open window count every telemetry record exactly once.
Three edge-twin instances share the cells the same way; one is killed, and every cell twin the survivors
checkpoint afterwards still holds the UEs it had seen before the kill.
"""

from __future__ import annotations

import pickle
import re
import signal
import time
from collections import defaultdict

import pytest
import yaml

from tests.agent_support import (committed_offset, produce_fleet, read_raw, start_agent_process, terminate_all,
                                 wait_until)
from tiertwin.connectors.kafka import KafkaSink, read_topic
from tiertwin.pipelines.pretrain import SyntheticFleet

pytestmark = pytest.mark.broker

TOPIC_NAMES = ("telemetry", "demands", "outcomes", "edge_state", "summaries", "actions", "models", "changelog",
               "dead_letter")
PARTITIONS = 4


def _log(path) -> str:
    return path.read_text() if path.exists() else ""


def test_two_local_instances_share_partitions_and_the_survivor_takes_over_a_killed_ones_twins(
        new_topic, group_id, settings, tmp_path):
    topics = {name: new_topic(1 if name == "models" else PARTITIONS, prefix=f"test.failover.{name}")
              for name in TOPIC_NAMES}
    fleet = SyntheticFleet(n_ues=16, n_cells=4, seed=31, demand_every=3)
    configs, agents, logs = [], [], []
    for name in ("a", "b"):
        config = {"instance_id": f"failover-{name}", "group_id": group_id, "commit_interval_ms": 1000,
                  "session_timeout_ms": 6000, **{f"{t}_topic": topic for t, topic in topics.items()}}
        path = tmp_path / f"local-{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        configs.append((config, path))
        logs.append(tmp_path / f"local-{name}.log")
    config = configs[0][0]

    with KafkaSink(settings) as sink:
        for (_, path), log in zip(configs, logs):
            agents.append(start_agent_process("local", path, log))
        try:
            telemetry, demands = produce_fleet(sink, config, fleet, 30, 0)
            assert len(read_topic(topics["actions"], settings, expect=demands, timeout_s=90)) >= demands
            # both members hold partitions: each has restored (possibly zero) twins for its own assignment
            wait_until(lambda: all("restored" in _log(log) for log in logs), 30)
            owners = {name: re.findall(r"partitions \[?([^\n]*)", _log(log)) for name, log in zip("ab", logs)}
            assert all(owners.values()), f"both instances were assigned partitions: {owners}"
            wait_until(lambda: committed_offset(settings, group_id, topics["demands"]) >= demands, 30)
            assert committed_offset(settings, group_id, topics["demands"]) == demands, "a checkpoint + commit happened"

            more_telemetry, more_demands = produce_fleet(sink, config, fleet, 30, 30)
            telemetry, demands = telemetry + more_telemetry, demands + more_demands
            killed_at = time.monotonic()
            agents[0].send_signal(signal.SIGKILL)    # mid-stream: some of these records are not yet decided
            agents[0].wait(10)
            more_telemetry, more_demands = produce_fleet(sink, config, fleet, 20, 60)
            telemetry, demands = telemetry + more_telemetry, demands + more_demands
            # the dead member's session expires, then the survivor catches up
            wait_until(lambda: committed_offset(settings, group_id, topics["demands"]) >= demands
                       and committed_offset(settings, group_id, topics["telemetry"]) >= telemetry, 90)
            takeover_s = time.monotonic() - killed_at
        finally:
            terminate_all(agents)
    assert agents[1].returncode == 0, _log(logs[1])[-2000:]
    assert committed_offset(settings, group_id, topics["demands"]) == demands, _log(logs[1])[-2000:]
    print(f"survivor caught up {takeover_s:.1f} s after the kill (session timeout 6 s)")

    # The survivor restored the killed instance's twins when its partitions moved over.
    restored_by_survivor = [int(n) for n in re.findall(r"restored (\d+) twins", _log(logs[1]))]
    assert len(restored_by_survivor) >= 2 and sum(restored_by_survivor[1:]) > 0, _log(logs[1])[-3000:]

    # Every demand decided, and a demand decided twice (before and after the kill) kept its id.
    ids_by_demand = defaultdict(set)
    for record in read_topic(topics["actions"], settings):
        ids_by_demand[record.value["subject_id"]].add(record.value["decision_id"])
    assert len(ids_by_demand) == demands, "every demand was decided"
    assert all(len(ids) == 1 for ids in ids_by_demand.values()), "a re-decided demand keeps its decision id"

    # No UE's twin lost: its summaries plus its open window count each of its telemetry records once.
    windows = defaultdict(dict)
    for record in read_topic(topics["summaries"], settings):
        s = record.value
        known = windows[s["ue_id"]].setdefault(s["window_start_ms"], s["samples"])
        assert known == s["samples"], "a replayed summary is identical"
    twins = {key: pickle.loads(value) for key, value in read_raw(topics["changelog"], settings)}
    per_ue = telemetry // len(fleet.ues)
    for ue in fleet.ues:
        twin = twins[ue["ue_id"]]
        assert twin.last_seq == per_ue, ue["ue_id"]
        assert sum(windows[ue["ue_id"]].values()) + twin.samples == per_ue, ue["ue_id"]


EDGE_TOPIC_NAMES = ("summaries", "cell_reports", "migrations", "edge_state", "actions", "outcomes", "models",
                    "changelog", "dead_letter")
CELLS = 6


def _summary(ue_id: str, cell: int, t_ms: int) -> dict:
    from tiertwin.pipelines.pretrain import EPOCH_MS
    from tiertwin.schemas.examples import example

    return example("LocalSummary", ue_id=ue_id, serving_cell=cell, window_start_ms=EPOCH_MS + t_ms - 100,
                   window_end_ms=EPOCH_MS + t_ms, sinr_db=10.0, sinr_trend_db_per_s=0.0, best_neighbour_cell=None,
                   best_neighbour_sinr_db=None, speed_mps=1.0, emitted_ns=time.time_ns())


def _cell_twins(topic, settings) -> dict[str, object]:
    """The latest checkpoint of every cell twin (the changelog also keeps the instances' model slots)."""
    return {key: pickle.loads(value) for key, value in read_raw(topic, settings) if key.isdigit()}


def test_three_edge_instances_share_cells_and_survivors_restore_a_killed_ones_cell_twins(
        new_topic, group_id, settings, tmp_path):
    topics = {name: new_topic(1 if name == "models" else CELLS, prefix=f"test.edge-failover.{name}")
              for name in EDGE_TOPIC_NAMES}
    fleet = SyntheticFleet(n_cells=CELLS, seed=5)
    agents, logs = [], []
    for name in ("a", "b", "c"):
        config = {"instance_id": f"edge-{name}", "group_id": group_id, "commit_interval_ms": 500,
                  "session_timeout_ms": 6000, "ue_timeout_ms": 600_000,
                  **{f"{t}_topic": topic for t, topic in topics.items()}}
        path = tmp_path / f"edge-{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        logs.append(tmp_path / f"edge-{name}.log")
        agents.append(start_agent_process("edge", path, logs[-1]))
    sent = 0
    try:
        with KafkaSink(settings) as sink:
            for cell in range(CELLS):
                sink.send(topics["cell_reports"], "EdgeState", fleet.cell_report(cell, 0), key=cell)
                sink.send(topics["summaries"], "LocalSummary", _summary(f"ue-{cell}-before", cell, 100), key=cell)
                sent += 1
            sink.flush()
            # every cell's twin, with the UE it has seen, is checkpointed, and all three hold partitions
            wait_until(lambda: len(_cell_twins(topics["changelog"], settings)) == CELLS
                       and committed_offset(settings, group_id, topics["summaries"]) == sent
                       and all("restored" in _log(log) for log in logs), 90)
            assert len(_cell_twins(topics["changelog"], settings)) == CELLS, _log(logs[0])[-2000:]
            assert all("restored" in _log(log) for log in logs), "all three instances were assigned cells"

            agents[0].send_signal(signal.SIGKILL)
            agents[0].wait(10)
            killed_at = time.monotonic()
            for cell in range(CELLS):
                sink.send(topics["summaries"], "LocalSummary", _summary(f"ue-{cell}-after", cell, 200), key=cell)
                sent += 1
            sink.flush()

            def every_cell_knows_both_ues() -> bool:
                twins = _cell_twins(topics["changelog"], settings)
                return len(twins) == CELLS and all(
                    {f"ue-{c}-before", f"ue-{c}-after"} <= set(twins[str(c)].ues) for c in range(CELLS))

            wait_until(lambda: committed_offset(settings, group_id, topics["summaries"]) == sent
                       and every_cell_knows_both_ues(), 90)
            takeover_s = time.monotonic() - killed_at
    finally:
        terminate_all(agents)
    survivors = "\n".join(_log(log) for log in logs[1:])
    assert all(agent.returncode == 0 for agent in agents[1:]), survivors[-2000:]
    print(f"edge survivors caught up {takeover_s:.1f} s after the kill (session timeout 6 s)")
    # A lost cell twin would come back empty: its UE from before the kill would be missing.
    assert every_cell_knows_both_ues(), survivors[-3000:]
    restored = [int(n) for n in re.findall(r"restored (\d+) twins", survivors)]
    assert sum(restored) > 0 and len(restored) > 2, "the survivors restored the killed instance's cell twins"
