"""The closed loop on the real broker: decisions on an action topic change the simulated world."""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager

import pytest

from tests.agent_support import wait_until
from tiertwin.connectors.kafka import KafkaSink, KafkaSource
from tiertwin.connectors.simulator import SimulatorLoop, SimulatorTopics, World, parse_scenario

pytestmark = pytest.mark.broker
# Fresh topics: a group formed before the broker's metadata knows a topic gets no partitions until the
# next metadata refresh (5 min by default); refresh every second instead. A record that does not decode
# fails the test.
FRESH = {"metadata_max_age_ms": 1000, "on_undecodable": "raise"}


def _decision(decision_id: str, kind: str, **fields) -> dict:
    return {"decision_id": decision_id, "tier": "edge" if kind != "placement" else "local", "kind": kind,
            "ue_id": None, "cell_id": None, "subject_id": None, "target": "", "parameters": {},
            "model_name": "test", "model_version": 0, "confidence": 1.0, "source_topic": "t", "source_partition": 0,
            "source_offset": 0, "source_ts_ms": 0, "source_emitted_ns": 0, "received_ns": 0,
            "decided_ns": time.time_ns(), **fields}


def _read_all(topic: str, settings, until, timeout_s: float = 20.0) -> list:
    records = []
    with KafkaSource([topic], f"reader-{uuid.uuid4().hex[:8]}", settings, client_id="test-sim-reader", **FRESH) as src:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not until(records):
            records += src.poll(200)
    return records


@contextmanager
def _running(loop: SimulatorLoop, seconds: float = 30.0):
    """``loop`` running in real time on a thread once it holds its action partitions; yields where its
    summary will be (``["summary"]``, after the block) and stops it on exit."""
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(summary=loop.run(seconds=seconds)), daemon=True)
    runner.start()
    try:
        assert loop.ready.wait(60) and loop.source.consumer.assignment(), \
            "the simulator never got its action partitions"
        yield result
    finally:
        loop.stop()
        runner.join(30)


def test_decisions_on_the_action_topic_change_the_world(broker, settings, new_topic, group_id):
    topics = SimulatorTopics(telemetry=new_topic(2), demands=new_topic(2), cell_reports=new_topic(1),
                             outcomes=new_topic(2), actions=(new_topic(2),), deadletters=new_topic(1))
    scenario = parse_scenario({
        "ues": 4, "layout": {"rings": 1, "sectored": False}, "telemetry_hz": 5,
        "mobility": [{"model": "random_waypoint", "speed_mps": [0.0, 0.0]}],
        "demands": {"xr_frame": {"per_second": 0, "gcycles": [0.1, 0.2], "input_bytes": [100, 200],
                                 "deadline_ms": 20, "priority": 6},
                    "ai_inference": {"per_second": 4, "gcycles": [1, 2], "input_bytes": [1000, 2000],
                                     "output_bytes": [100, 200], "deadline_ms": 100, "priority": 4}},
        "compute": {"decision_timeout_ms": 15_000, "default_placement": "cloud"},  # generous: shared, loaded CI
        "handover": {"decision_hold_ms": 600_000}})
    world = World(scenario, seed=11)
    sink = KafkaSink(settings, client_id="test-sim")
    source = KafkaSource(topics.actions, group_id, settings, client_id="test-sim", **FRESH)
    loop = SimulatorLoop(world, sink, source, topics, realtime=True)
    try:
        with _running(loop) as result:
            target = (int(world.serving[1]) + 1) % world.layout.n_cells
            with KafkaSink(settings, client_id="test-sim-agent") as agent:
                agent.send(topics.actions[0], "Decision", _decision("ho-1", "handover", ue_id="ue-0001",
                                                                    target=f"cell:{target}"), key="ue-0001")
                agent.send(topics.actions[0], "Decision", _decision("bad-1", "handover", ue_id="ue-9999",
                                                                    target="cell:0"), key="ue-9999")
                agent.flush()
                # act as a local twin: place the first demands on the edge
                demands = _read_all(topics.demands, settings, lambda recs: len(recs) >= 3)
                assert len(demands) >= 3
                for rec in demands[:3]:
                    d = rec.value
                    agent.send(topics.actions[0], "Decision",
                               _decision(f"place-{d['demand_id']}", "placement", ue_id=d["ue_id"],
                                         subject_id=d["demand_id"], target="edge"), key=d["ue_id"])
                agent.flush()
            wait_until(lambda: world.stats.decided >= 3 and int(world.serving[1]) == target)
    finally:
        source.close()
        sink.close()
    summary = result["summary"]
    assert int(world.serving[1]) == target
    assert summary.decisions_applied.get("handover") == 1 and summary.handovers_decided == 1
    assert summary.decisions_applied.get("placement") == 3 and summary.demands_decided == 3
    assert summary.decisions_rejected == 1

    placed = {f"place-{r.value['demand_id']}" for r in demands[:3]}
    outcomes = _read_all(topics.outcomes, settings,
                         lambda recs: placed <= {r.value["decision_id"] for r in recs}
                         and any(r.value["decision_id"] == "ho-1" for r in recs))
    by_decision = {r.value["decision_id"]: r.value for r in outcomes if r.value["decision_id"]}
    assert by_decision["ho-1"]["kind"] == "decision" and "sinr_after_db" in by_decision["ho-1"]["effect"]
    for decision_id in placed:
        out = by_decision[decision_id]
        assert out["placement"] == "edge" and out["components_ms"]["backhaul"] == 0.0
        assert out["components_ms"]["decision"] > 0.0  # the agent's round trip is part of the latency
    letters = _read_all(topics.deadletters, settings, lambda recs: len(recs) >= 1)
    assert [r.value["reason"] for r in letters] == ["inapplicable-decision"]
    assert summary.published["Telemetry"] > 0 and summary.published["EdgeState"] > 0


def test_as_fast_as_possible_with_an_agent_runs_in_lockstep(broker, settings, new_topic, group_id):
    topics = SimulatorTopics(telemetry=new_topic(1), demands=new_topic(1), cell_reports=new_topic(1),
                             outcomes=new_topic(1), actions=(new_topic(1),), deadletters=new_topic(1))
    scenario = parse_scenario({
        "ues": 4, "layout": {"rings": 1, "sectored": False}, "device": {"xr_share": 0.0},
        "demands": {"ai_inference": {"per_second": 5, "gcycles": [1, 2], "input_bytes": [1000, 2000],
                                     "output_bytes": [100, 200], "deadline_ms": 100, "priority": 4}},
        "compute": {"decision_timeout_ms": 20_000, "default_placement": "cloud"}})
    world = World(scenario, seed=5)
    stop_agent, agent_ready = threading.Event(), threading.Event()

    def agent() -> None:  # a minimal local twin: every demand to the edge
        with KafkaSource([topics.demands], f"agent-{group_id}", settings, client_id="test-agent", **FRESH) as src, \
                KafkaSink(settings, client_id="test-agent") as out:
            while not stop_agent.is_set():
                if src.consumer.assignment():
                    agent_ready.set()
                for rec in src.poll(20):
                    d = rec.value
                    out.send(topics.actions[0], "Decision", _decision(f"p-{d['demand_id']}", "placement",
                             ue_id=d["ue_id"], subject_id=d["demand_id"], target="edge"), key=d["ue_id"])
                out.flush()

    helper = threading.Thread(target=agent, daemon=True)
    helper.start()
    assert agent_ready.wait(60), "the test agent never got the demands partition"
    sink = KafkaSink(settings, client_id="test-sim", profile="throughput")
    source = KafkaSource(topics.actions, group_id, settings, client_id="test-sim", **FRESH)
    try:
        summary = SimulatorLoop(world, sink, source, topics, realtime=False).run(seconds=2.0)
    finally:
        stop_agent.set()
        helper.join(10)
        source.close()
        sink.close()
    issued = summary.published["Demand"]
    assert issued >= 10 and summary.sim_seconds == pytest.approx(2.0)
    # the simulated clock waited for the agent: every demand was placed by its decision, none by the timeout
    assert summary.demands_decided == issued and summary.demands_by_placement == {"edge": issued}
    assert summary.late_decisions == 0


def _device_topics(new_topic) -> SimulatorTopics:
    local, edge = new_topic(2), new_topic(1)
    return SimulatorTopics(telemetry=new_topic(2), demands=new_topic(2), cell_reports=new_topic(1),
                           outcomes=new_topic(2), actions=(local, edge), deadletters=new_topic(1),
                           local_actions=local, summaries=new_topic(1), models=new_topic(1), edge_state=new_topic(1))


def _device_runtime(topics: SimulatorTopics, settings, tmp_path):
    from tiertwin.pipelines.device import DeviceConfig, DeviceRuntime

    config = DeviceConfig(device_id=f"test-sim-{uuid.uuid4().hex[:8]}", topics=topics.device_topics(),
                          spill_dir=tmp_path / "spill")
    return DeviceRuntime(config, settings)


def test_device_mode_places_in_process_and_applies_edge_decisions_from_kafka(broker, settings, new_topic, group_id,
                                                                              tmp_path):
    topics = _device_topics(new_topic)
    local_actions, edge_actions = topics.actions
    scenario = parse_scenario({
        "ues": 4, "layout": {"rings": 1, "sectored": False}, "telemetry_hz": 10,
        "mobility": [{"model": "random_waypoint", "speed_mps": [0.0, 0.0]}],
        "demands": {"ai_inference": {"per_second": 4, "gcycles": [1, 2], "input_bytes": [1000, 2000],
                                     "output_bytes": [100, 200], "deadline_ms": 100, "priority": 4}},
        "compute": {"decision_timeout_ms": 10, "default_placement": "cloud"},
        "handover": {"decision_hold_ms": 600_000}})
    world = World(scenario, seed=11)
    sink = KafkaSink(settings, client_id="test-sim")
    source = KafkaSource(topics.decision_topics("device"), group_id, settings, client_id="test-sim", **FRESH)
    assert topics.decision_topics("device") == (edge_actions,)   # the device's own decisions are not read back
    runtime = _device_runtime(topics, settings, tmp_path)
    loop = SimulatorLoop(world, sink, source, topics, realtime=True, local_twin="device", runtime=runtime)
    try:
        with _running(loop) as result:
            target = (int(world.serving[1]) + 1) % world.layout.n_cells
            with KafkaSink(settings, client_id="test-sim-edge") as edge:   # act as the edge twin
                edge.send(edge_actions, "Decision", _decision("ho-1", "handover", ue_id="ue-0001",
                                                              target=f"cell:{target}"), key="ue-0001")
                edge.flush()
            wait_until(lambda: world.stats.decided >= 10 and int(world.serving[1]) == target)
    finally:
        runtime.close()
        source.close()
        sink.close()
    summary = result["summary"]
    # the edge decision came through Kafka and was applied
    assert int(world.serving[1]) == target and summary.decisions_applied.get("handover") == 1
    # every demand was placed in-process the moment it arose: none late, none waited for a timeout
    issued = summary.published["Demand"]
    assert issued >= 10 and summary.demands_decided == issued and summary.demands_defaulted == 0
    assert summary.late_decisions == 0 and summary.duplicate_decisions == 0
    assert summary.device["placements"] == issued and summary.device["outcomes_reported"] == issued
    # what left the device reached Kafka: its decisions (twin_site device) and the demands' outcomes
    demand_ids = {r.value["demand_id"] for r in _read_all(topics.demands, settings, lambda recs: len(recs) >= issued)}
    decisions = _read_all(local_actions, settings, lambda recs: len(recs) >= issued)
    assert {d.value["subject_id"] for d in decisions} == demand_ids
    assert {d.value["twin_site"] for d in decisions} == {"device"} and {d.value["tier"] for d in decisions} == {"local"}
    outcomes = _read_all(topics.outcomes, settings,
                         lambda recs: sum(r.value["kind"] == "demand" for r in recs) >= issued
                         and any(r.value["decision_id"] == "ho-1" for r in recs))
    demand_outcomes = [o.value for o in outcomes if o.value["kind"] == "demand"]
    assert len(demand_outcomes) == issued                      # once each: not published twice
    assert {o["decision_id"] for o in demand_outcomes} == {d.value["decision_id"] for d in decisions}
    # the decision wait is the measured place() call (speed is for `bench local`), never the 10 ms timeout
    assert all(o["components_ms"]["decision"] > 0.0 for o in demand_outcomes)
    assert not any(o["components_ms"]["decision"] == 10.0 for o in demand_outcomes)
    assert any(o.value["decision_id"] == "ho-1" and o.value["kind"] == "decision" for o in outcomes)


def test_device_mode_in_lockstep(broker, settings, new_topic, group_id, tmp_path):
    topics = _device_topics(new_topic)
    scenario = parse_scenario({
        "ues": 4, "layout": {"rings": 1, "sectored": False}, "device": {"xr_share": 0.5},
        "compute": {"decision_timeout_ms": 10, "default_placement": "cloud"}})
    sink = KafkaSink(settings, client_id="test-sim", profile="throughput")
    source = KafkaSource(topics.decision_topics("device"), group_id, settings, client_id="test-sim", **FRESH)
    runtime = _device_runtime(topics, settings, tmp_path)
    try:
        summary = SimulatorLoop(World(scenario, seed=5), sink, source, topics, realtime=False, local_twin="device",
                                runtime=runtime).run(seconds=2.0)
    finally:
        runtime.close()
        source.close()
        sink.close()
    issued = summary.published["Demand"]
    assert issued >= 10 and summary.sim_seconds == pytest.approx(2.0)
    assert summary.demands_decided == issued and summary.late_decisions == 0 and summary.demands_defaulted == 0
    assert sum(summary.demands_by_placement.values()) == issued == summary.device["outcomes_reported"]
