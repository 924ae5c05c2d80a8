"""The pure edge twin (pipelines/edge_twin.EdgeTwin): no broker, records in, records out."""

from __future__ import annotations

import pickle
import random

import pytest

from tiertwin.pipelines.edge_twin import EdgeTwin, EdgeTwinConfig
from tiertwin.pipelines.learners import HANDOVER, MEC_SHARE, PRB_SHARE, HandoverForecaster, ShareAllocator, allocation_reward
from tiertwin.pipelines.models import command_update, model_update
from tiertwin.pipelines.pretrain import EPOCH_MS, SyntheticFleet
from tiertwin.schemas import SchemaRegistry
from tiertwin.schemas.examples import example


class RecordingAllocator(ShareAllocator):
    """A real ShareAllocator that also keeps the rewards it was given (pure unit tests only)."""

    def __init__(self):
        super().__init__()
        self.rewards: list[tuple[float, float]] = []

    def update(self, share: float, context: dict, reward: float) -> None:
        self.rewards.append((share, reward))
        super().update(share, context, reward)


def summary(ue_id: str, cell: int, t_ms: int, sinr: float, neighbour: int | None = None,
            neighbour_sinr: float | None = None, trend: float = 0.0) -> dict:
    return example("LocalSummary", ue_id=ue_id, serving_cell=cell, window_start_ms=EPOCH_MS + t_ms - 100,
                   window_end_ms=EPOCH_MS + t_ms, sinr_db=sinr, sinr_trend_db_per_s=trend, best_neighbour_cell=neighbour,
                   best_neighbour_sinr_db=neighbour_sinr, speed_mps=15.0, emitted_ns=0)


def persistence_twin(**config) -> EdgeTwin:
    """An edge twin whose SINR forecast is the persistence forecast (an untrained forecaster), so its
    handover margin is plain arithmetic: neighbour SINR - serving SINR - hysteresis."""
    return EdgeTwin(EdgeTwinConfig(**config), {HANDOVER: (HandoverForecaster(), 0)})


def without_clock(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("decided_ns", "received_ns", "emitted_ns")}


def edge_events(seed: int, ticks: int, n_ues: int = 6, n_cells: int = 4) -> list[tuple[str, dict]]:
    """UEs wandering over a line of cells: a summary per UE per 100 ms (SINR fading towards a neighbour),
    a report per cell per 250 ms, a demand outcome per summary."""
    rng, fleet = random.Random(seed), SyntheticFleet(n_cells=n_cells, seed=seed)
    ues = {f"ue-{i}": [rng.randrange(n_cells), rng.uniform(5, 20)] for i in range(n_ues)}
    events: list[tuple[str, dict]] = []
    for tick in range(ticks):
        t = 100 * tick
        if tick % 5 in (0, 2):
            events += [("report", fleet.cell_report(cell, t)) for cell in range(n_cells)]
        for ue_id, ue in ues.items():
            if ue[1] < 2 and rng.random() < 0.5:   # the network hands it over
                ue[0], ue[1] = (ue[0] + 1) % n_cells, rng.uniform(12, 20)
            ue[1] += rng.uniform(-2.5, 1.0)
            events.append(("summary", summary(ue_id, ue[0], t, ue[1], (ue[0] + 1) % n_cells, 10 + rng.uniform(-3, 3),
                                              trend=rng.uniform(-10, 5))))
            events.append(("outcome", example("Outcome", outcome_id=f"o-{ue_id}-{t}", kind="demand", cell_id=ue[0],
                                              deadline_met=rng.random() < 0.7)))
    return events


def feed(twin: EdgeTwin, events: list[tuple[str, dict]]) -> list[dict]:
    """Every event into the twin; the Decision, TwinMigration and EdgeState records it returned, in order."""
    records = []
    for kind, record in events:
        if kind == "outcome":
            twin.learn(record)
            continue
        out = twin.observe_summary(record) if kind == "summary" else twin.observe_cell_report(record)
        records += out.decisions + out.migrations + ([out.edge_state] if out.edge_state else [])
    return records


# -- handover ---------------------------------------------------------------------------------
def test_handover_when_the_neighbour_forecast_beats_serving_by_more_than_the_hysteresis():
    twin = persistence_twin(hysteresis_db=3.0)
    wins = twin.observe_summary(summary("ue-a", 0, 100, 10.0, neighbour=1, neighbour_sinr=13.5))
    assert [(d["kind"], d["ue_id"], d["cell_id"], d["target"]) for d in wins.decisions] == [("handover", "ue-a", 0, "cell:1")]
    h = wins.decisions[0]
    assert h["parameters"]["margin_db"] == pytest.approx(0.5) and h["model_name"] == HANDOVER
    assert h["parameters"]["serving_forecast_db"] == 10.0 and h["parameters"]["neighbour_forecast_db"] == 13.5
    assert 0.5 < h["confidence"] < 1.0
    assert wins.migrations == [], "cell 1 is held here: nothing to hand off"


@pytest.mark.parametrize("neighbour_sinr", [13.0, 11.0, 4.0])
def test_no_handover_while_the_neighbour_does_not_beat_the_hysteresis(neighbour_sinr):
    twin = persistence_twin(hysteresis_db=3.0)
    out = twin.observe_summary(summary("ue-b", 0, 100, 10.0, neighbour=1, neighbour_sinr=neighbour_sinr))
    assert out.decisions == [] and out.touched == [0] and "ue-b" in twin.twins["0"].ues


def test_no_handover_without_a_neighbour_nor_within_the_cooldown():
    twin = persistence_twin(hysteresis_db=3.0, handover_cooldown_ms=2_000)
    assert twin.observe_summary(summary("ue-c", 0, 100, 10.0)).decisions == []
    assert len(twin.observe_summary(summary("ue-c", 0, 200, 5.0, 1, 20.0)).decisions) == 1
    assert twin.observe_summary(summary("ue-c", 0, 2_100, 5.0, 1, 20.0)).decisions == [], "within the cooldown"
    assert len(twin.observe_summary(summary("ue-c", 0, 2_200, 5.0, 1, 20.0)).decisions) == 1


def test_the_forecast_learns_at_its_horizon_and_replays_are_skipped():
    twin = persistence_twin()        # handover_horizon_s 0.5
    twin.observe_summary(summary("ue-d", 0, 100, 10.0, trend=-8.0))
    out = twin.observe_summary(summary("ue-d", 0, 200, 9.0, trend=-8.0))
    assert out.learned == [] and twin.slots[HANDOVER].model.n_learned == 0, "0.1 s later: the horizon has not come"
    out = twin.observe_summary(summary("ue-d", 0, 600, 6.0, trend=-8.0))
    assert out.learned == [HANDOVER] and twin.slots[HANDOVER].model.n_learned == 1, "the forecast made at 100 ms"
    replay = twin.observe_summary(summary("ue-d", 0, 600, 6.0, trend=-8.0))
    assert replay.replayed and replay.learned == [] and twin.twins["0"].ues["ue-d"].summaries == 3


def test_cells_not_served_change_nothing():
    twin = persistence_twin(cells=[0])
    assert twin.observe_summary(summary("ue-e", 5, 100, 10.0, 0, 30.0)) == twin.observe_cell_report(
        SyntheticFleet(n_cells=6).cell_report(5, 0))
    assert twin.twins == {} and twin.ue_cell == {} and twin.site_of == {}


# -- allocation -------------------------------------------------------------------------------
def test_shares_are_allocated_within_bounds_once_per_interval_per_cell():
    fleet = SyntheticFleet(n_cells=2, seed=1)
    twin = EdgeTwin(EdgeTwinConfig(allocation_interval_ms=1_000))
    decisions = []
    for t in (0, 500, 1_500):
        for cell in (0, 1):
            out = twin.observe_cell_report(fleet.cell_report(cell, t))
            assert out.edge_state["cell_id"] == cell and out.touched == [cell]
            decisions += [(t, d) for d in out.decisions]
    assert sorted((t, d["kind"], d["cell_id"]) for t, d in decisions) == sorted(
        (t, kind, cell) for t in (0, 1_500) for kind in ("prb_share", "mec_share") for cell in (0, 1)), \
        "t=500 is within the interval"
    for _, d in decisions:
        allocator = twin.slots[PRB_SHARE if d["kind"] == "prb_share" else MEC_SHARE].model
        assert d["parameters"]["share"] in allocator.shares and 0 < d["parameters"]["share"] <= 1
        assert d["target"] == "" and d["ue_id"] is None and 0 <= d["confidence"] <= 1
        assert d["model_name"] == (PRB_SHARE if d["kind"] == "prb_share" else MEC_SHARE)
    for kind in ("prb_share", "mec_share"):   # the open allocation: the latest decision, nothing measured yet
        latest = [d for t, d in decisions if t == 1_500 and d["kind"] == kind and d["cell_id"] == 0][0]
        assert twin.twins["0"].allocations[kind][:2] == [latest["decision_id"], latest["parameters"]["share"]]
        assert twin.twins["0"].allocations[kind][3:] == [0, 0]


def test_the_next_allocation_learns_the_share_of_deadlines_met_minus_the_share_cost():
    fleet = SyntheticFleet(n_cells=1, seed=2)
    prb, mec = RecordingAllocator(), RecordingAllocator()
    twin = EdgeTwin(EdgeTwinConfig(share_cost=0.3), {PRB_SHARE: (prb, 1), MEC_SHARE: (mec, 1)})
    first = twin.observe_cell_report(fleet.cell_report(0, 0))
    shares = {d["kind"]: d["parameters"]["share"] for d in first.decisions}
    for i in range(9):   # 6 of 9 deadlines met in the cell; an outcome elsewhere counts for nothing
        assert twin.learn(example("Outcome", outcome_id=f"o{i}", kind="demand", cell_id=0, deadline_met=i % 3 != 0)) == []
    twin.learn(example("Outcome", outcome_id="elsewhere", kind="demand", cell_id=7, deadline_met=False))
    assert twin.twins["0"].allocations["prb_share"][3:] == [6, 9]
    second = twin.observe_cell_report(fleet.cell_report(0, 1_000))
    assert second.learned == [PRB_SHARE, MEC_SHARE]
    assert prb.rewards == [(shares["prb_share"], pytest.approx(allocation_reward(6 / 9, shares["prb_share"], 0.3)))]
    assert mec.rewards == [(shares["mec_share"], pytest.approx(allocation_reward(6 / 9, shares["mec_share"], 0.3)))]


def test_a_decision_outcome_rewards_its_allocation_once():
    fleet = SyntheticFleet(n_cells=1, seed=3)
    prb = RecordingAllocator()
    twin = EdgeTwin(EdgeTwinConfig(), {PRB_SHARE: (prb, 1)})
    allocation = [d for d in twin.observe_cell_report(fleet.cell_report(0, 0)).decisions if d["kind"] == "prb_share"][0]
    twin.learn(example("Outcome", outcome_id="d1", kind="demand", cell_id=0, deadline_met=True))
    rewarded = example("Outcome", outcome_id="r1", kind="decision", cell_id=0, decision_id=allocation["decision_id"],
                       effect={"reward": 0.8})
    assert twin.learn(rewarded) == [PRB_SHARE]
    assert prb.rewards == [(allocation["parameters"]["share"], 0.8)]
    assert twin.observe_cell_report(fleet.cell_report(0, 1_000)).learned == [MEC_SHARE], \
        "the PRB share is not rewarded again from the demand outcomes"


def test_swap_model_takes_only_a_newer_version():
    twin = EdgeTwin()
    before = twin.slots[PRB_SHARE].version
    assert not twin.swap_model(model_update(PRB_SHARE, ShareAllocator(), before)), "same version"
    assert not twin.swap_model(model_update("demand-latency", ShareAllocator(), 99)), "not one of its models"
    assert twin.swap_model(model_update(PRB_SHARE, ShareAllocator(), before + 5))
    assert twin.slots[PRB_SHARE].shadow.version == before + 5, "a newer allocator runs in shadow first"
    assert twin.swap_model(command_update("promote", PRB_SHARE, before + 5))
    decisions = twin.observe_cell_report(SyntheticFleet(n_cells=1).cell_report(0, 0)).decisions
    assert {d["kind"]: d["model_version"] for d in decisions}["prb_share"] == before + 5


# -- migration --------------------------------------------------------------------------------
def test_migration_export_adopt_round_trip():
    """Two twins, one per site (cells 0 and 3): the first hands the UE's twin over while the neighbour is
    close; the second adopts it at the UE's first summary there and decides the migration."""
    fleet = SyntheticFleet(n_cells=4, seed=3)
    site0, site1 = persistence_twin(cells=[0]), persistence_twin(cells=[3])
    site0.observe_cell_report(fleet.cell_report(0, 0))
    site1.observe_cell_report(fleet.cell_report(3, 0))
    handed = []
    for i in range(3):   # neighbour 3 within handoff_margin_db (3 dB), no handover
        out = site0.observe_summary(summary("ue-x", 0, 100 * i, 10.0, 3, 8.5))
        assert out.decisions == []
        handed += out.migrations
    assert [(m["from_cell"], m["from_site"], m["to_cell"], m["reason"], m["ts_ms"] - EPOCH_MS, m["summaries"])
            for m in handed] == [(0, 0, 3, "neighbour-close", 0, 1), (0, 0, 3, "neighbour-close", 200, 3)], \
        "at most one hand-off per handoff_interval_ms (200 ms)"
    exported = site0.export("ue-x", to_cell=3, reason="neighbour-close")
    assert without_clock(exported) == without_clock(handed[-1]), "the latest view"
    SchemaRegistry.default().encode("TwinMigration", exported)

    assert site1.adopt(handed[0]) and site1.adopt(exported) and not site1.adopt(handed[0]), "an older one is ignored"
    assert not site0.adopt({**exported, "to_cell": 0}), "the UE is already there"
    arrived = site1.observe_summary(summary("ue-x", 3, 400, 11.0, 0, 7.0, trend=2.0))
    assert arrived.adopted and site1.handed_in == {}
    assert [(d["kind"], d["ue_id"], d["target"], d["cell_id"]) for d in arrived.decisions] == [("migration", "ue-x", "site:1", 3)]
    assert arrived.decisions[0]["parameters"] == {"from_site": 0.0, "to_site": 1.0, "from_cell": 0.0, "summaries": 3.0,
                                                  "handed_over": 1.0}
    view = site1.twins["3"].ues["ue-x"]
    assert view.summaries == 4 and view.sinr_db == 11.0 and site1.ue_cell == {"ue-x": 3}


def test_a_ue_moving_between_sites_of_one_twin_keeps_its_view_and_migrates():
    fleet = SyntheticFleet(n_cells=4, seed=3)
    twin = persistence_twin()
    for cell in (0, 3):
        twin.observe_cell_report(fleet.cell_report(cell, 0))
    for i in range(3):
        twin.observe_summary(summary("ue-m", 0, 100 * i, 10.0))
    moved = twin.observe_summary(summary("ue-m", 3, 400, 10.0))
    assert sorted(moved.touched) == [0, 3] and moved.migrations == [] and not moved.adopted
    assert [(d["kind"], d["target"], d["parameters"]["handed_over"]) for d in moved.decisions] == [("migration", "site:1", 0.0)]
    assert "ue-m" not in twin.twins["0"].ues and twin.twins["3"].ues["ue-m"].summaries == 4


def test_a_decided_handover_to_a_cell_held_elsewhere_hands_the_twin_over():
    twin = persistence_twin(cells=[0])
    out = twin.observe_summary(summary("ue-h", 0, 100, 5.0, 1, 20.0))
    assert [d["kind"] for d in out.decisions] == ["handover"]
    assert [(m["to_cell"], m["reason"]) for m in out.migrations] == [(1, "handover-decided")]
    partitioned = EdgeTwin(EdgeTwinConfig(), {HANDOVER: (HandoverForecaster(), 0)}, holds_cell=lambda cell: cell % 2 == 0)
    assert [m["to_cell"] for m in partitioned.observe_summary(summary("ue-h", 0, 100, 5.0, 1, 20.0)).migrations] == [1]
    assert partitioned.observe_summary(summary("ue-i", 0, 100, 5.0, 2, 20.0)).migrations == [], "cell 2 is held here"


def test_departed_ues_leave_after_ue_timeout_ms():
    fleet = SyntheticFleet(n_cells=1, seed=5)
    twin = EdgeTwin(EdgeTwinConfig(ue_timeout_ms=5_000))
    twin.observe_summary(summary("ue-r", 0, 100, 9.0))
    twin.observe_summary(summary("ue-s", 0, 3_000, 9.0))
    kept = twin.observe_cell_report({**fleet.cell_report(0, 100 + 5_000), "attached_ues": 0})
    assert set(twin.twins["0"].ues) == {"ue-r", "ue-s"} and kept.edge_state["attached_ues"] == 2, \
        "silent for exactly ue_timeout_ms: still here; the forwarded count is at least the twin's"
    gone = twin.observe_cell_report({**fleet.cell_report(0, 100 + 5_001), "attached_ues": 0})
    assert set(twin.twins["0"].ues) == {"ue-s"} and twin.ue_cell == {"ue-s": 0}
    assert gone.edge_state["attached_ues"] == 1
    assert twin.observe_cell_report(fleet.cell_report(0, 0)).replayed, "an older report changes nothing"


# -- state, ids, contracts --------------------------------------------------------------------
def test_pickle_round_trip_gives_identical_next_decisions():
    events = edge_events(seed=11, ticks=60)
    twin = EdgeTwin(holds_cell=lambda cell: cell != 3)
    first = feed(twin, events[: len(events) // 2])
    restored = pickle.loads(pickle.dumps(twin))
    assert restored.holds_cell is None, "the agent's partitions are not part of the twin"
    restored.holds_cell = twin.holds_cell
    rest = events[len(events) // 2:]
    after, expected = feed(restored, rest), feed(twin, rest)
    kinds = {r.get("kind") for r in first + expected}
    assert {"handover", "prb_share", "mec_share", "migration"} <= kinds, "the run exercises every decision kind"
    assert [without_clock(r) for r in after] == [without_clock(r) for r in expected]
    assert restored.ue_cell == twin.ue_cell and restored.site_of == twin.site_of
    assert restored.slots[PRB_SHARE].model.n_updates == twin.slots[PRB_SHARE].model.n_updates > 0
    assert restored.swap_model(model_update(PRB_SHARE, ShareAllocator(), 99)), "its slots work again"


def test_decisions_and_records_encode_with_the_registry():
    registry = SchemaRegistry.default()
    records = feed(EdgeTwin(holds_cell=lambda cell: cell != 3), edge_events(seed=12, ticks=40))
    names = {"Decision": 0, "TwinMigration": 0, "EdgeState": 0}
    for record in records:
        name = "Decision" if "decision_id" in record else "TwinMigration" if "to_cell" in record else "EdgeState"
        names[name] += 1
        decoded_name, decoded = registry.decode(registry.encode(name, record))
        assert decoded_name == f"tiertwin.{name}"
        if name == "Decision":
            assert decoded["twin_site"] == "edge" and decoded["decision_id"] == record["decision_id"]
            assert decoded["parameters"] == pytest.approx(record["parameters"], rel=1e-6)
    assert all(names.values()), names


def test_given_ids_and_stamps_are_used_else_ids_from_the_record():
    twin = persistence_twin()
    stamps = {"source_topic": "t", "source_partition": 2, "source_offset": 7, "source_ts_ms": EPOCH_MS,
              "source_emitted_ns": 5, "received_ns": 6, "decided_ns": 0}
    ids = {"handover": "edge/handover/t/2/7", "migration": "edge/migration/t/2/7"}
    h = twin.observe_summary(summary("ue-a", 0, 100, 5.0, 1, 20.0), decision_ids=ids, stamps=stamps).decisions[0]
    assert h["decision_id"] == "edge/handover/t/2/7"
    assert {k: h[k] for k in stamps if k != "decided_ns"} == {k: v for k, v in stamps.items() if k != "decided_ns"}
    assert h["decided_ns"] > 0
    default = twin.observe_summary(summary("ue-b", 0, 100, 5.0, 1, 20.0)).decisions[0]
    assert (default["decision_id"], default["source_topic"], default["source_ts_ms"]) == (
        f"edge/handover/ue-b/{EPOCH_MS + 100}", "edge", EPOCH_MS + 100)
    report = SyntheticFleet(n_cells=1).cell_report(0, 0)
    assert [d["decision_id"] for d in twin.observe_cell_report(report).decisions] == [
        f"edge/prb_share/0/{EPOCH_MS}", f"edge/mec_share/0/{EPOCH_MS}"]
