"""The edge twin agent against the real broker (single-partition fresh topics keep cross-cell order)."""

from __future__ import annotations

import time

import pytest

from tiertwin.connectors.kafka import KafkaSink
from tiertwin.connectors.kafka import read_topic
from tiertwin.pipelines.edge_twin import EdgeTwinAgent
from tiertwin.pipelines.learners import HANDOVER, PRB_SHARE
from tiertwin.pipelines.pretrain import EPOCH_MS, SyntheticFleet
from tiertwin.schemas.examples import example

from tests.agent_support import Running, edge_agent_config, wait_until

pytestmark = pytest.mark.broker


@pytest.fixture
def edge_config(new_topic, group_id):
    return edge_agent_config(new_topic, group_id)


def send(sink, topic, schema, records, key_field):
    for record in records:
        record["emitted_ns"] = time.time_ns()
        sink.send(topic, schema, record, key=record[key_field])
    sink.flush()


def summary(ue_id: str, cell: int, t_ms: int, sinr: float, trend: float, neighbour: int | None, neighbour_sinr: float | None):
    return example("LocalSummary", ue_id=ue_id, serving_cell=cell, window_start_ms=EPOCH_MS + t_ms - 100,
                   window_end_ms=EPOCH_MS + t_ms, sinr_db=sinr, sinr_trend_db_per_s=trend, best_neighbour_cell=neighbour,
                   best_neighbour_sinr_db=neighbour_sinr, speed_mps=15.0)


def test_cell_reports_are_forwarded_and_shares_allocated(edge_config, settings):
    fleet = SyntheticFleet(n_cells=2, seed=1)
    reports = [fleet.cell_report(c, t) for t in (0, 500, 1500) for c in (0, 1)]
    with KafkaSink(settings) as sink, Running(EdgeTwinAgent(edge_config, settings)) as agent:
        send(sink, edge_config.cell_reports_topic, "EdgeState", reports, "cell_id")
        forwarded = read_topic(edge_config.edge_state_topic, settings, expect=len(reports), timeout_s=30)
        decisions = read_topic(edge_config.actions_topic, settings, expect=8, timeout_s=30)
    assert [(r.value["cell_id"], r.value["ts_ms"]) for r in forwarded] == [(r["cell_id"], r["ts_ms"]) for r in reports]
    kinds = sorted((d.value["kind"], d.value["cell_id"]) for d in decisions)
    # Two allocation rounds per cell (t=0 and t=1500; t=500 is within the interval).
    assert kinds == sorted([(k, c) for k in ("prb_share", "mec_share") for c in (0, 1)] * 2)
    allocator = agent.slots[PRB_SHARE].model
    for d in (r.value for r in decisions):
        assert d["parameters"]["share"] in allocator.shares and d["target"] == ""
        assert d["decision_id"] == f"edge/{d['kind']}/{d['source_topic']}/{d['source_partition']}/{d['source_offset']}"
        assert d["model_version"] >= 1 and d["twin_site"] == "edge"


def test_bandits_learn_from_outcomes(edge_config, settings):
    fleet = SyntheticFleet(n_cells=1, seed=2)
    with KafkaSink(settings) as sink, Running(EdgeTwinAgent(edge_config, settings)) as agent:
        send(sink, edge_config.cell_reports_topic, "EdgeState", [fleet.cell_report(0, 0)], "cell_id")
        assert wait_until(lambda: "0" in agent.twins and agent.twins["0"].allocations.get("prb_share"))
        before = agent.slots[PRB_SHARE].model.n_updates
        outcomes = [example("Outcome", outcome_id=f"o{i}", cell_id=0, deadline_met=i % 3 != 0) for i in range(9)]
        send(sink, edge_config.outcomes_topic, "Outcome", outcomes, "ue_id")
        assert wait_until(lambda: agent.twins["0"].allocations["prb_share"][4] == 9)
        send(sink, edge_config.cell_reports_topic, "EdgeState", [fleet.cell_report(0, 2000)], "cell_id")
        assert wait_until(lambda: agent.slots[PRB_SHARE].model.n_updates == before + 1)


def test_handover_when_neighbour_forecast_beats_serving_by_hysteresis(edge_config, settings):
    fading = [summary("ue-a", 0, 100 * i, 12.0 - 1.5 * i, -15.0, 1, 6.0 + 1.5 * i) for i in range(8)]
    steady = [summary("ue-b", 0, 100 * i, 15.0, 0.0, 1, 14.0) for i in range(8)]
    with KafkaSink(settings) as sink, Running(EdgeTwinAgent(edge_config, settings)):
        send(sink, edge_config.summaries_topic, "LocalSummary", fading + steady, "serving_cell")
        decisions = read_topic(edge_config.actions_topic, settings, expect=1, timeout_s=30)
        time.sleep(1.0)
        decisions = read_topic(edge_config.actions_topic, settings, timeout_s=5)
    handovers = [d.value for d in decisions if d.value["kind"] == "handover"]
    assert [(h["ue_id"], h["target"]) for h in handovers] == [("ue-a", "cell:1")], "one, thanks to the cooldown"
    assert read_topic(edge_config.migrations_topic, settings, timeout_s=2) == [], "cell 1 is this instance's: no hand-off"
    h = handovers[0]
    assert h["parameters"]["margin_db"] > 0 and h["model_name"] == HANDOVER
    assert h["parameters"]["neighbour_forecast_db"] - h["parameters"]["serving_forecast_db"] > edge_config.hysteresis_db


def test_twin_migrates_when_ue_moves_to_another_site(edge_config, settings):
    fleet = SyntheticFleet(n_cells=4, seed=3)
    reports = [fleet.cell_report(0, 0), fleet.cell_report(3, 0)]    # cell 0 on site 0, cell 3 on site 1
    with KafkaSink(settings) as sink, Running(EdgeTwinAgent(edge_config, settings)) as agent:
        send(sink, edge_config.cell_reports_topic, "EdgeState", reports, "cell_id")
        assert wait_until(lambda: len(agent.site_of) == 2)
        moves = [summary("ue-m", 0, 100 * i, 10.0, 0.0, None, None) for i in range(3)]
        moves.append(summary("ue-m", 3, 400, 10.0, 0.0, None, None))
        send(sink, edge_config.summaries_topic, "LocalSummary", moves, "serving_cell")
        decisions = read_topic(edge_config.actions_topic, settings, timeout_s=30,
                               until=lambda rs: any(r.value["kind"] == "migration" for r in rs))
    migration = [d.value for d in decisions if d.value["kind"] == "migration"]
    assert [(m["ue_id"], m["target"], m["cell_id"]) for m in migration] == [("ue-m", "site:1", 3)]
    assert "ue-m" not in agent.twins["0"].ues
    assert agent.twins["3"].ues["ue-m"].summaries == 4, "the UE's twin state followed it"


def test_twin_follows_a_ue_to_the_edge_instance_of_another_site(edge_config, settings):
    """Two instances, one per site (cells 0 and 3): the first hands the UE's twin over while the
    neighbour is close; the second adopts it at the UE's first summary there and decides the migration."""
    fleet = SyntheticFleet(n_cells=4, seed=3)
    site0 = edge_config.model_copy(update={"cells": [0], "instance_id": "site-0", "group_id": edge_config.group_id + "-0"})
    site1 = edge_config.model_copy(update={"cells": [3], "instance_id": "site-1", "group_id": edge_config.group_id + "-1"})
    nearing = [summary("ue-x", 0, 100 * i, 10.0, 0.0, 3, 8.5) for i in range(3)]   # neighbour 3 within 3 dB, no handover
    with KafkaSink(settings) as sink, Running(EdgeTwinAgent(site0, settings)) as first, \
            Running(EdgeTwinAgent(site1, settings)) as second:
        send(sink, edge_config.cell_reports_topic, "EdgeState", [fleet.cell_report(0, 0), fleet.cell_report(3, 0)], "cell_id")
        assert wait_until(lambda: first.site_of == {0: 0} and second.site_of == {3: 1})
        send(sink, edge_config.summaries_topic, "LocalSummary", nearing, "serving_cell")
        handed = read_topic(edge_config.migrations_topic, settings, expect=2, timeout_s=30)
        assert wait_until(lambda: second.handed_in.get("ue-x", {}).get("summaries") == 3)
        send(sink, edge_config.summaries_topic, "LocalSummary", [summary("ue-x", 3, 400, 11.0, 2.0, 0, 7.0)], "serving_cell")
        decisions = read_topic(edge_config.actions_topic, settings, timeout_s=30,
                               until=lambda rs: any(r.value["kind"] == "migration" for r in rs))
        # The first site's cell forgets the UE once it has been silent there for ue_timeout_ms.
        send(sink, edge_config.cell_reports_topic, "EdgeState", [fleet.cell_report(0, 200 + site0.ue_timeout_ms + 1)], "cell_id")
        assert wait_until(lambda: "ue-x" not in first.twins["0"].ues and "ue-x" not in first.ue_cell)
    assert [(h.value["ue_id"], h.value["from_cell"], h.value["from_site"], h.value["to_cell"], h.value["reason"],
             h.value["ts_ms"] - EPOCH_MS, h.value["summaries"]) for h in handed] == [
        ("ue-x", 0, 0, 3, "neighbour-close", 0, 1), ("ue-x", 0, 0, 3, "neighbour-close", 200, 3)], \
        "at most one hand-off per handoff_interval_ms (200 ms)"
    migration = [d.value for d in decisions if d.value["kind"] == "migration"]
    assert [(m["ue_id"], m["target"], m["cell_id"]) for m in migration] == [("ue-x", "site:1", 3)]
    assert migration[0]["parameters"]["handed_over"] == 1.0 and migration[0]["parameters"]["from_cell"] == 0.0
    view = second.twins["3"].ues["ue-x"]
    assert view.summaries == 4 and "ue-x" not in second.handed_in, "the twin state followed the UE across instances"
    assert first.metrics.value("tiertwin_agent_twin_handoffs_total", direction="sent") == 2
    assert second.metrics.value("tiertwin_agent_twin_handoffs_total", direction="adopted") == 1


def test_edge_checkpoint_restores_cell_twins(edge_config, settings):
    fleet = SyntheticFleet(n_cells=2, seed=4)
    with KafkaSink(settings) as sink:
        send(sink, edge_config.cell_reports_topic, "EdgeState", [fleet.cell_report(0, 0), fleet.cell_report(1, 0)], "cell_id")
        send(sink, edge_config.summaries_topic, "LocalSummary", [summary("ue-r", 1, 100, 9.0, 0.0, None, None)], "serving_cell")
    first = EdgeTwinAgent(edge_config, settings)
    with Running(first):
        assert wait_until(lambda: "ue-r" in getattr(first.twins.get("1"), "ues", {}))
    second = EdgeTwinAgent(edge_config.model_copy(update={"instance_id": "restored"}), settings)
    with Running(second):
        assert wait_until(lambda: len(second.twins) == 2)
    assert second.twins["1"].ues["ue-r"].sinr_db == 9.0 and second.site_of == first.site_of
