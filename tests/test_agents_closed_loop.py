"""Both agents in the simulator's closed loop (lockstep), on fresh topics: every demand is placed by the
local twin, the edge twin's decisions apply, and the outcomes flow back into the local learner."""

from __future__ import annotations

import threading

import pytest

from tiertwin.connectors.kafka import KafkaSink, KafkaSource
from tiertwin.connectors.simulator import SimulatorLoop, SimulatorTopics, World, parse_scenario
from tiertwin.pipelines.edge_twin import EdgeAgentConfig, EdgeTwinAgent
from tiertwin.pipelines.local_twin import LocalAgentConfig, LocalTwinAgent

pytestmark = pytest.mark.broker


def test_agents_close_the_loop_with_the_simulator(new_topic, group_id, settings):
    t = {name: new_topic(1 if name == "models" else 2, prefix=f"test.loop.{name}")
         for name in ("telemetry", "demands", "cell_reports", "outcomes", "summaries", "edge_state", "local_actions",
                      "edge_actions", "models", "local_changelog", "edge_changelog", "dead_letters", "migrations")}
    common = {"models_topic": t["models"], "outcomes_topic": t["outcomes"], "dead_letter_topic": t["dead_letters"],
              "commit_interval_ms": 300, "session_timeout_ms": 6000}
    local = LocalTwinAgent(LocalAgentConfig(
        instance_id="loop-local", group_id=f"{group_id}-local", telemetry_topic=t["telemetry"],
        demands_topic=t["demands"], edge_state_topic=t["edge_state"], summaries_topic=t["summaries"],
        actions_topic=t["local_actions"], changelog_topic=t["local_changelog"], **common), settings)
    edge = EdgeTwinAgent(EdgeAgentConfig(
        instance_id="loop-edge", group_id=f"{group_id}-edge", summaries_topic=t["summaries"],
        cell_reports_topic=t["cell_reports"], migrations_topic=t["migrations"], edge_state_topic=t["edge_state"],
        actions_topic=t["edge_actions"],
        changelog_topic=t["edge_changelog"], allocation_interval_ms=500, **common), settings)
    topics = SimulatorTopics(telemetry=t["telemetry"], demands=t["demands"], cell_reports=t["cell_reports"],
                             outcomes=t["outcomes"], actions=(t["local_actions"], t["edge_actions"]),
                             deadletters=t["dead_letters"])
    scenario = parse_scenario({
        "ues": 6, "layout": {"rings": 1, "sectored": False},
        "demands": {"ai_inference": {"per_second": 4, "gcycles": [0.5, 2], "input_bytes": [10_000, 50_000],
                                     "output_bytes": [1_000, 5_000], "deadline_ms": 100, "priority": 4}},
        "compute": {"decision_timeout_ms": 5000, "default_placement": "cloud"}})
    stop = threading.Event()
    threads = [threading.Thread(target=agent.run, args=(stop,), daemon=True) for agent in (local, edge)]
    for thread in threads:
        thread.start()
    sink = KafkaSink(settings, client_id="loop-sim")
    source = KafkaSource(topics.actions, f"{group_id}-sim", settings, on_undecodable="raise", client_id="loop-sim")
    try:
        summary = SimulatorLoop(World(scenario, seed=9), sink, source, topics, realtime=False).run(seconds=3.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        source.close()
        sink.close()
    issued = summary.published["Demand"]
    assert issued >= 20
    assert summary.demands_decided == issued, "every demand was placed by the local twin, none by the timeout"
    assert summary.decisions_rejected == 0, "the simulator could apply every decision"
    assert summary.decisions_applied.get("placement", 0) >= issued
    assert summary.decisions_applied.get("prb_share", 0) > 0 and summary.decisions_applied.get("mec_share", 0) > 0
    assert local.metrics.value("tiertwin_agent_learned_total", model="demand-latency") > 0, "outcomes trained it"
    assert local.edge_states, "the edge twin's forwarded state reached the local twin"
