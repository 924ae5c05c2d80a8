"""The pure local twin (pipelines/local_twin.LocalTwin): no broker, records in, records out."""

from __future__ import annotations

import copy
import functools
import pickle
import random

import pytest

from tiertwin.errors import RecordRejected
from tiertwin.pipelines.learners import DEMAND_LATENCY, DemandLatencyModel, default_model
from tiertwin.pipelines.local_twin import EdfQueue, LocalTwin, LocalTwinConfig
from tiertwin.pipelines.models import command_update, model_update, parameters_to_features
from tiertwin.pipelines.pretrain import EPOCH_MS, PRETRAINED_VERSION, SyntheticFleet, train_latency_synthetic
from tiertwin.schemas import SchemaRegistry


class FixedLatencies:
    """A demand-latency model that predicts the same latencies whatever the features (pure unit tests only)."""

    def __init__(self, **predicted: float):
        self.predicted = predicted

    def predict_tiers(self, x: dict) -> dict[str, float]:
        return dict(self.predicted)


def telemetry(ue_id: str = "ue-1", ts_ms: int = EPOCH_MS, seq: int = 1, **changes) -> dict:
    return {"ue_id": ue_id, "ts_ms": ts_ms, "seq": seq, "serving_cell": 3, "sinr_db": 20.0, "rsrp_dbm": -85.0,
            "throughput_dl_mbps": 300.0, "throughput_ul_mbps": 60.0, "rtt_ms": 6.0, "cpu_util": 0.2,
            "battery_pct": 90.0, "neighbours": [], **changes}


def demand(n: int, ue_id: str = "ue-1", ts_ms: int = EPOCH_MS, **changes) -> dict:
    return {"demand_id": f"{ue_id}/d/{n}", "ue_id": ue_id, "ts_ms": ts_ms, "kind": "xr_frame", "compute_gcycles": 0.1,
            "input_bytes": 20_000, "output_bytes": 100_000, "deadline_ms": 20.0, "priority": 6, "serving_cell": 3,
            "emitted_ns": 0, **changes}


def fleet_events(seed: int, ticks: int, n_ues: int = 4) -> list[tuple[str, dict]]:
    fleet = SyntheticFleet(n_ues=n_ues, n_cells=3, seed=seed, demand_every=2)
    return [event for tick in range(ticks) for event in fleet.step(tick * 10)]


def feed(twin: LocalTwin, events: list[tuple[str, dict]]) -> list[dict]:
    """Every event into the twin, a measured outcome for every second decision; the decisions made."""
    decisions = []
    for kind, record in events:
        if kind == "telemetry":
            twin.observe(record)
        elif kind == "cell-report":
            twin.update_edge_state(record)
        else:
            decisions.append(twin.place(record))
            if len(decisions) % 2:
                twin.learn({"kind": "demand", "decision_id": decisions[-1]["decision_id"], "demand_id": record["demand_id"],
                            "placement": decisions[-1]["target"], "latency_ms": 15.0})
    return decisions


def without_clock(decision: dict) -> dict:
    return {k: v for k, v in decision.items() if k not in ("received_ns", "decided_ns")}


def test_placement_picks_the_cheapest_feasible_tier():
    costs = {"local": 2.0, "edge": 1.0, "cloud": 1.5}
    twin = LocalTwin(LocalTwinConfig(tier_costs=costs), FixedLatencies(local=8.0, edge=12.0, cloud=15.0))
    roomy, tight, impossible = (twin.place(demand(i, deadline_ms=d)) for i, d in ((1, 40.0), (2, 11.0), (3, 5.0)))
    assert roomy["target"] == "edge", "all feasible: the cheapest"
    assert tight["target"] == "local", "only the device meets 0.9 x 11 ms"
    assert impossible["target"] == "local", "none feasible: the fastest"
    twin = LocalTwin(LocalTwinConfig(tier_costs=costs), FixedLatencies(local=30.0, edge=30.0, cloud=15.0))
    assert twin.place(demand(4, deadline_ms=20.0))["target"] == "cloud", "the cheaper edge is too slow"
    assert roomy["parameters"]["predicted_latency_ms"] == 12.0 and roomy["parameters"]["predicted_cloud_ms"] == 15.0


def test_tight_deadline_with_loaded_edge_is_placed_locally():
    fleet = SyntheticFleet(n_ues=1, n_cells=2, seed=2)
    ue = fleet.ues[0]
    twin = LocalTwin()
    twin.update_edge_state(fleet.cell_report(1, 0, load=0.0))
    # Loaded: the MEC slice is busy and has little capacity left, the cell's PRBs are all in use.
    twin.update_edge_state({**fleet.cell_report(0, 0, load=1.0), "mec_queue_gcycles": 50.0, "mec_capacity_gcps": 2.0,
                            "mec_utilization": 1.0, "prb_utilization": 1.0})
    radio = {**fleet.telemetry(ue, 0), "sinr_db": 25.0, "throughput_ul_mbps": 200.0, "throughput_dl_mbps": 800.0,
             "rtt_ms": 4.0, "cpu_util": 0.1, "neighbours": []}
    assert twin.observe(radio)
    # 10 ms: too tight for the cloud's backhaul, so the choice is between the edge and the device.
    frame = {"ue_id": ue["ue_id"], "ts_ms": radio["ts_ms"] + 1, "kind": "xr_frame", "compute_gcycles": 0.05,
             "input_bytes": 20_000, "output_bytes": 100_000, "deadline_ms": 10.0, "priority": 6}
    loaded = twin.place({**frame, "demand_id": "on-loaded-cell", "serving_cell": 0})
    idle = twin.place({**frame, "demand_id": "on-idle-cell", "serving_cell": 1})
    assert loaded["target"] == "local"
    assert loaded["parameters"]["x_edge_queue_ms"] == pytest.approx(25_000.0)
    assert loaded["parameters"]["predicted_edge_ms"] > 10.0
    assert idle["target"] == "edge", "the same demand offloads when the edge is idle"


def test_newest_edge_state_per_cell_wins():
    twin = LocalTwin()
    fleet = SyntheticFleet(n_cells=1, seed=3)
    newer, older = fleet.cell_report(0, 100), fleet.cell_report(0, 50)
    twin.update_edge_state(newer)
    twin.update_edge_state(older)
    assert twin.edge_states[0] is newer


def test_edf_wait_grows_with_queued_critical_work():
    twin = LocalTwin(LocalTwinConfig(), FixedLatencies(local=1.0, edge=500.0, cloud=800.0))
    waits = [twin.place(demand(i, deadline_ms=100.0))["parameters"]["edf_wait_ms"] for i in range(3)]
    compute_ms = 0.1 / 20.0 * 1000.0      # 0.1 Gcycles at the device's nominal 20 Gcycle/s
    assert waits == pytest.approx([0.0, compute_ms, 2 * compute_ms])
    # Background work (below critical_priority) queues behind every deadline: it delays no critical demand.
    twin.place(demand(3, compute_gcycles=2.0, priority=1, deadline_ms=400.0))
    assert twin.place(demand(4, deadline_ms=100.0))["parameters"]["edf_wait_ms"] == pytest.approx(3 * compute_ms)
    assert twin.device_queue("ue-1").backlog_ms(EPOCH_MS) == pytest.approx(4 * compute_ms + 100.0)
    # Time drains the queue.
    later = twin.place(demand(5, ts_ms=EPOCH_MS + 1_000, deadline_ms=100.0))
    assert later["parameters"]["edf_wait_ms"] == 0.0


def test_low_battery_doubles_the_cost_of_running_on_the_device():
    config = LocalTwinConfig(tier_costs={"local": 0.8, "edge": 1.0, "cloud": 1.5}, low_battery_pct=20.0)
    twin = LocalTwin(config, FixedLatencies(local=8.0, edge=9.0, cloud=60.0))
    twin.observe(telemetry(battery_pct=90.0))
    assert twin.place(demand(1))["target"] == "local"
    twin.observe(telemetry(ts_ms=EPOCH_MS + 10, seq=2, battery_pct=10.0))
    assert twin.place(demand(2, ts_ms=EPOCH_MS + 20))["target"] == "edge", "local now costs 1.6 > edge 1.0"


def test_learn_changes_the_prediction_for_the_placed_tier_only():
    twin = LocalTwin()
    twin.observe(telemetry())
    decision = twin.place(demand(1))
    x = parameters_to_features(decision["parameters"])
    tier = decision["target"]
    other = next(t for t in ("local", "edge", "cloud") if t != tier)
    before = {t: twin.model.predict_one({**x, "tier": t}) for t in (tier, other)}
    outcome = {"kind": "demand", "decision_id": decision["decision_id"], "demand_id": "ue-1/d/1", "placement": tier,
               "latency_ms": before[tier] + 200.0}
    assert twin.learn(outcome)
    assert twin.model.predict_one({**x, "tier": tier}) > before[tier]
    assert twin.model.predict_one({**x, "tier": other}) == before[other]
    assert not twin.learn(outcome), "an outcome is learned once"
    assert not twin.learn({**outcome, "decision_id": "edge/placement/x/0/1", "demand_id": "not-mine"})
    assert not twin.learn({**outcome, "kind": "decision"})


def test_outcome_without_decision_id_is_joined_by_demand_id():
    twin = LocalTwin()
    decision = twin.place(demand(1))
    n = twin.model.n_learned
    assert twin.learn({"kind": "demand", "decision_id": None, "demand_id": "ue-1/d/1", "placement": decision["target"],
                       "latency_ms": 10.0})
    assert twin.model.n_learned == n + 1


def test_replayed_telemetry_is_not_folded_twice():
    twin = LocalTwin()
    first, second = telemetry(seq=1), telemetry(ts_ms=EPOCH_MS + 50, seq=2, sinr_db=10.0)
    assert twin.observe(first) and twin.observe(second)
    state = (dict(twin.twins["ue-1"].radio), twin.twins["ue-1"].samples)
    assert not twin.observe(first) and not twin.observe(second)
    assert (twin.twins["ue-1"].radio, twin.twins["ue-1"].samples) == state
    assert twin.observe(telemetry(ts_ms=EPOCH_MS + 100, seq=1)), "a restarted device: lower seq, newer time"


@pytest.mark.parametrize("changes, reason", [
    ({"ts_ms": 0}, "bad-timestamp"),
    ({"neighbours": [{"cell_id": 3, "rsrp_dbm": -90.0, "sinr_db": 2.0}]}, "serving-cell-in-neighbours"),
])
def test_semantic_problems_raise_with_their_reason(changes, reason):
    twin = LocalTwin()
    with pytest.raises(RecordRejected) as raised:
        twin.observe(telemetry(**changes))
    assert raised.value.reason == reason and str(raised.value)
    assert "ue-1" not in twin.twins, "nothing of the record was kept"


def test_due_summaries_close_windows_at_the_summary_interval():
    twin = LocalTwin(LocalTwinConfig(summary_interval_ms=100))
    for i, ts in enumerate((0, 50)):
        twin.observe(telemetry(ts_ms=EPOCH_MS + ts, seq=i + 1))
    assert twin.due_summaries() == []
    twin.observe(telemetry(ts_ms=EPOCH_MS + 100, seq=3))
    twin.observe(telemetry("ue-2", ts_ms=EPOCH_MS + 100, seq=1))
    [summary] = twin.due_summaries()
    assert (summary["ue_id"], summary["samples"], summary["window_start_ms"], summary["window_end_ms"]) == (
        "ue-1", 3, EPOCH_MS, EPOCH_MS + 100)
    assert twin.due_summaries() == [], "a window is summarized once"
    twin.observe(telemetry(ts_ms=EPOCH_MS + 150, seq=4))
    twin.observe(telemetry(ts_ms=EPOCH_MS + 250, seq=5))
    assert [(s["samples"], s["window_start_ms"]) for s in twin.due_summaries()] == [(2, EPOCH_MS + 150)]
    registry = SchemaRegistry.default()
    assert registry.decode(registry.encode("LocalSummary", summary))[1]["samples"] == 3


def test_a_summary_carries_the_latest_raw_samples_beside_the_denoised_ones():
    twin = LocalTwin(LocalTwinConfig(summary_interval_ms=100, ewma_alpha=0.3))
    for i, sinr in enumerate((10.0, 10.0, 20.0)):
        twin.observe(telemetry(ts_ms=EPOCH_MS + 50 * i, seq=i + 1, sinr_db=sinr,
                               neighbours=[{"cell_id": 4, "sinr_db": 2.0 * (i + 1), "rsrp_dbm": -100.0}]))
    [summary] = twin.due_summaries()
    assert summary["sinr_db"] == pytest.approx(13.0)       # denoised: 10 + 0.3 * (20 - 10)
    assert summary["sinr_last_db"] == 20.0                  # what the radio said last
    assert summary["best_neighbour_sinr_last_db"] == 6.0 and summary["best_neighbour_sinr_db"] < 6.0


def test_swap_model_takes_only_a_newer_version_between_decisions():
    twin = LocalTwin()
    before = twin.place(demand(1))
    assert (before["model_name"], before["model_version"]) == (DEMAND_LATENCY, PRETRAINED_VERSION)
    fresh = default_model(DEMAND_LATENCY)
    assert not twin.swap_model(model_update(DEMAND_LATENCY, fresh, PRETRAINED_VERSION)), "same version"
    assert not twin.swap_model(model_update("handover-sinr", fresh, 9)), "another model"
    assert twin.swap_model(model_update(DEMAND_LATENCY, fresh, 5))
    assert twin.place(demand(2))["model_version"] == PRETRAINED_VERSION, "v5 runs in shadow: it does not decide"
    assert twin.slot.shadow.version == 5
    assert twin.swap_model(command_update("promote", DEMAND_LATENCY, 5))
    after = twin.place(demand(2))
    assert (before["model_version"], after["model_version"], twin.model_version) == (PRETRAINED_VERSION, 5, 5)
    assert not twin.swap_model(model_update(DEMAND_LATENCY, default_model(DEMAND_LATENCY), 4)), "never downgraded"
    assert twin.place(demand(3))["model_version"] == 5


def test_pickle_round_trip_gives_identical_next_decisions():
    events = fleet_events(seed=11, ticks=30)
    twin = LocalTwin()
    feed(twin, events[: len(events) // 2])
    restored = pickle.loads(pickle.dumps(twin))
    rest = events[len(events) // 2:]
    assert [without_clock(d) for d in feed(restored, rest)] == [without_clock(d) for d in feed(twin, rest)]
    assert restored.twins.keys() == twin.twins.keys() and restored.model.n_learned == twin.model.n_learned
    assert restored.swap_model(model_update(DEMAND_LATENCY, default_model(DEMAND_LATENCY), 9)), "its slot works again"


def test_decisions_encode_with_the_registry():
    registry = SchemaRegistry.default()
    fields = [f["name"] for f in registry.current("Decision").raw["fields"]]
    decisions = feed(LocalTwin(), fleet_events(seed=12, ticks=10))
    assert decisions
    for decision in decisions:
        name, decoded = registry.decode(registry.encode("Decision", decision))
        assert name == "tiertwin.Decision"
        assert decoded["confidence"] == pytest.approx(decision["confidence"], rel=1e-6)
        assert {k: decoded[k] for k in fields if k != "confidence"} == {
            k: decision[k] for k in fields if k != "confidence"}


def test_given_ids_and_stamps_are_used():
    twin = LocalTwin(LocalTwinConfig(site="edge"))
    stamps = {"source_topic": "t", "source_partition": 2, "source_offset": 7, "source_ts_ms": EPOCH_MS,
              "source_emitted_ns": 5, "received_ns": 6, "decided_ns": 0}
    decision = twin.place(demand(1), decision_id="local/placement/t/2/7", stamps=stamps)
    assert decision["decision_id"] == "local/placement/t/2/7" and decision["twin_site"] == "edge"
    assert {k: decision[k] for k in stamps if k != "decided_ns"} == {k: v for k, v in stamps.items() if k != "decided_ns"}
    assert decision["decided_ns"] >= decision["received_ns"]
    default = twin.place(demand(2, emitted_ns=42))
    assert (default["decision_id"], default["source_topic"], default["source_emitted_ns"]) == (
        "local/placement/ue-1/d/2", "device", 42)


@functools.cache
def sgd_model():
    """A trained DemandLatencyModel: the folded fast path is its own (River pipelines), not the shipped residual model's."""
    return train_latency_synthetic(DemandLatencyModel(), 3000, random.Random(7))


def rivers_own(model):
    """``model`` predicting as it did before the folds, with River's ``predict_one`` per tier: the reference."""
    model._fold = lambda tier: None
    return model


def test_fast_path_makes_the_decisions_rivers_own_predictions_make():
    """One seeded stream through two twins: the folded predictions (fast) and River's predict_one (reference),
    learning from outcomes (some measured at another tier than decided) and taking a newer model halfway."""
    fleet = SyntheticFleet(n_ues=8, n_cells=3, seed=31, demand_every=1, load=0.9)   # busy: some work stays local
    events = [event for tick in range(240) for event in fleet.step(tick * 10)]
    fast, reference = (LocalTwin(model=copy.deepcopy(sgd_model()), model_version=PRETRAINED_VERSION) for _ in range(2))
    rivers_own(reference.model)
    retrained = pickle.loads(pickle.dumps(fast.model))
    for decision in feed(LocalTwin(), fleet_events(seed=32, ticks=60)):
        retrained.learn_one({**parameters_to_features(decision["parameters"]), "tier": decision["target"]}, 12.0)
    targets, waited, folded, decided = set(), 0, 0, 0
    for i, (kind, record) in enumerate(events):
        if i == len(events) // 2:
            update = model_update(DEMAND_LATENCY, retrained, PRETRAINED_VERSION + 1)
            promote = command_update("promote", DEMAND_LATENCY, PRETRAINED_VERSION + 1)
            assert fast.swap_model(update) and reference.swap_model(update)
            assert fast.swap_model(promote) and reference.swap_model(promote)
            rivers_own(reference.model)
        if kind == "telemetry":
            assert fast.observe(record) == reference.observe(record)
        elif kind == "cell-report":
            fast.update_edge_state(record)
            reference.update_edge_state(record)
        else:
            a, b = fast.place(record), reference.place(record)
            assert a["target"] == b["target"] and a["model_version"] == b["model_version"]
            assert a["parameters"] == pytest.approx(b["parameters"], rel=1e-9, abs=1e-9)
            assert a["confidence"] == pytest.approx(b["confidence"], rel=1e-9, abs=1e-9)
            assert without_clock({**a, "parameters": None, "confidence": None}) == without_clock(
                {**b, "parameters": None, "confidence": None})
            targets.add(a["target"])
            decided += 1
            folded += all(fast.model._folds.get(t) for t in ("local", "edge", "cloud")) and not reference.model._folds
            waited += a["parameters"]["edf_wait_ms"] > 0
            measured_at = ("local", "edge", "cloud")[i % 3] if i % 4 == 0 else a["target"]
            outcome = {"kind": "demand", "decision_id": a["decision_id"], "demand_id": record["demand_id"],
                       "placement": measured_at, "latency_ms": 0.8 * a["parameters"][f"predicted_{measured_at}_ms"] + 2.0}
            assert fast.learn(outcome) and reference.learn(outcome)
    # The retrained model (taught 12 ms everywhere) may be rolled back on probation: the same in both twins.
    assert fast.model.n_learned == reference.model.n_learned > 0 and fast.model_version == reference.model_version
    assert fast.slot.swaps == reference.slot.swaps >= 1
    assert targets == {"local", "edge", "cloud"} and waited, "the stream exercised every tier and the EDF queue"
    assert folded == decided, "every fast decision was made from folds, every reference one by River's predict_one"


def test_edf_queue_is_the_list_of_sorted_pairs_it_was_to_the_last_bit():
    """The EDF queue is one flat array of doubles now; waits, wait and backlog, the order of the tasks (ties
    included) and its pickle are those of the sorted [deadline, remaining] lists it was (that code, the reference)."""
    import bisect

    class SortedPairs:
        def __init__(self):
            self.tasks, self.clock_ms = [], 0.0

        def _advance(self, now_ms):
            budget = now_ms - self.clock_ms
            while budget > 0 and self.tasks:
                head = self.tasks[0]
                used = min(budget, head[1])
                head[1] -= used
                budget -= used
                if head[1] <= 0:
                    self.tasks.pop(0)
            self.clock_ms = max(self.clock_ms, now_ms)

        def wait_ms(self, now_ms, deadline_ms):
            self._advance(now_ms)
            return float(sum(r for d, r in self.tasks if d <= deadline_ms))

        def backlog_ms(self, now_ms):
            self._advance(now_ms)
            return float(sum(r for _, r in self.tasks))

        def add(self, now_ms, deadline_ms, compute_ms):
            self._advance(now_ms)
            bisect.insort(self.tasks, [float(deadline_ms), float(compute_ms)])

    rng = random.Random(33)
    queue, reference = EdfQueue(), SortedPairs()
    now = 0.0
    for step in range(4000):
        now += rng.choice((0.0, rng.uniform(0.0, 8.0), rng.randint(0, 5)))
        deadline = rng.choice((now + rng.uniform(1.0, 60.0), float("inf"), now + rng.randint(1, 5)))
        ask = rng.random()
        if ask < 0.3:
            assert queue.waits(now, deadline) == (reference.wait_ms(now, deadline), reference.backlog_ms(now)), step
        elif ask < 0.4:
            assert queue.wait_ms(now, deadline) == reference.wait_ms(now, deadline), step
        elif ask < 0.5:
            assert queue.backlog_ms(now) == reference.backlog_ms(now), step
        else:
            compute = rng.choice((rng.uniform(0.5, 12.0), 2.0, 4.0))
            due = rng.choice((now + rng.uniform(1.0, 60.0), now + 10.0, float(int(now) + 20)))
            queue.add(now, due, compute)
            reference.add(now, due, compute)
        assert queue.tasks == reference.tasks and queue.clock_ms == reference.clock_ms, step
    restored = pickle.loads(pickle.dumps(queue))
    assert restored.tasks == reference.tasks and restored.waits(now, 1e18) == queue.waits(now, 1e18)
    before_the_array = EdfQueue.__new__(EdfQueue)     # a pickle of the list layout (its state dict)
    before_the_array.__setstate__({"tasks": [list(t) for t in reference.tasks], "clock_ms": reference.clock_ms})
    assert before_the_array.tasks == queue.tasks


def test_decisions_awaiting_outcomes_and_their_demand_index_stay_bounded():
    twin = LocalTwin(LocalTwinConfig(pending_outcomes=100))
    decisions = [twin.place(demand(n, ts_ms=EPOCH_MS + 50 * n)) for n in range(1, 351)]
    twin.place(demand(340, ts_ms=EPOCH_MS + 50 * 351), decision_id="local/placement/again/340")   # placed again
    assert len(twin.pending) == 100, "demand 340 has two pending decisions"
    assert twin.pending_by_demand == {"ue-1/d/340": "local/placement/again/340"}, "only ids other than the default"
    learned = lambda n, did=None: twin.learn({"kind": "demand", "decision_id": did, "demand_id": f"ue-1/d/{n}",  # noqa: E731
                                              "placement": "edge", "latency_ms": 10.0})
    assert not learned(200), "evicted with its decision: nothing to join"
    assert learned(300) and not learned(300), "joined by demand id once"
    assert learned(340) and learned(340, decisions[339]["decision_id"]), "both placements of demand 340 learn once each"
    assert not learned(340) and len(twin.pending) == 97 and not twin.pending_by_demand


def test_outcomes_join_their_decisions_as_when_every_decision_was_indexed():
    """The demand index holds only decisions placed under an id other than the default one; outcomes with or
    without a decision id join what they joined when it held every pending decision (a reference of that),
    whatever the mix of ids, repeated placements, evictions and outcomes."""
    from collections import OrderedDict

    class EveryDecisionIndexed:
        def __init__(self, limit: int):
            self.pending, self.index, self.limit = OrderedDict(), {}, limit

        def place(self, did: str, demand_id: str) -> None:
            self.pending[did] = demand_id
            self.index[demand_id] = did
            while len(self.pending) > self.limit:
                evicted, evicted_demand = self.pending.popitem(last=False)
                if self.index.get(evicted_demand) == evicted:
                    del self.index[evicted_demand]

        def learn(self, did: str | None, demand_id: str) -> bool:
            did = did or self.index.get(demand_id)
            placed = self.pending.pop(did, None) if did else None
            if placed is None:
                return False
            if self.index.get(placed) == did:
                del self.index[placed]
            return True

    rng = random.Random(3)
    twin, reference = LocalTwin(LocalTwinConfig(pending_outcomes=100)), EveryDecisionIndexed(100)
    placed: list[tuple[str, str]] = []
    for step in range(3000):
        n = rng.randint(1, 150)
        demand_id = f"ue-1/d/{n}"
        if rng.random() < 0.6:
            custom = rng.random() < 0.4
            did = f"local/placement/again/{n}/{rng.randint(0, 2)}" if custom else f"local/placement/{demand_id}"
            twin.place(demand(n, ts_ms=EPOCH_MS + step), decision_id=did if custom or rng.random() < 0.5 else None)
            reference.place(did, demand_id)
            placed.append((did, demand_id))
        else:
            did = rng.choice(placed)[0] if placed and rng.random() < 0.5 else None
            outcome = {"kind": "demand", "decision_id": did, "demand_id": demand_id, "placement": "edge", "latency_ms": 10.0}
            assert twin.learn(outcome) == reference.learn(did, demand_id), step
        assert list(twin.pending) == list(reference.pending), step
        assert {d: did for d, did in twin.pending_by_demand.items() if did is not None} == \
               {d: did for d, did in reference.index.items() if did != f"local/placement/{d}"}, step



def test_place_features_are_demand_features_of_the_twin_state():
    """place() computes the features from radio and edge terms cached per telemetry update and per EdgeState:
    the same floats as demand_features on the twin's state at that moment; the example kept for learning
    (packed) is the same features too."""
    from tiertwin.pipelines.features import demand_features
    from tiertwin.pipelines.local_twin import _unpack_pending

    twin = LocalTwin()
    checked = 0
    for kind, record in fleet_events(seed=9, ticks=400, n_ues=5):
        if kind == "telemetry":
            twin.observe(record)
        elif kind == "cell-report":
            twin.update_edge_state(record)
        else:
            ue = twin.twin(record["ue_id"])
            queue = copy.deepcopy(ue.device)
            critical = record["priority"] >= twin.config.critical_priority
            deadline = record["ts_ms"] + record["deadline_ms"] if critical else float("inf")
            wait, backlog = queue.waits(record["ts_ms"], deadline)
            expected = demand_features(record, ue.radio or None, twin.edge_states.get(record["serving_cell"]), wait, backlog)
            decision = twin.place(record)
            assert parameters_to_features(decision["parameters"]) == expected
            assert _unpack_pending(decision["decision_id"], twin.pending[decision["decision_id"]]) == \
                (expected, decision["target"], record["demand_id"])
            checked += 1
    assert checked > 100


def test_a_restored_twin_places_and_learns_as_the_live_one():
    """The caches of place() are not pickled; a restored twin rebuilds them and decides and learns identically."""
    live = LocalTwin()
    events = fleet_events(seed=4, ticks=300, n_ues=3)
    half = len(events) // 2
    feed(live, events[:half])
    state = live.__getstate__()
    assert "_edge_terms" not in state and "_mae" not in state
    restored = pickle.loads(pickle.dumps(live))
    after_restore = [without_clock(d) for d in feed(restored, events[half:])]
    assert after_restore == [without_clock(d) for d in feed(live, events[half:])]
    assert len(after_restore) > 50 and live.model.n_learned == restored.model.n_learned > 0


def test_sinr_trend_is_the_least_squares_slope_to_the_last_bit():
    """The trend's sums run in C now; each term and the order of the sums are those of the plain formula."""
    from tiertwin.pipelines.local_twin import UETwin

    def reference(history):
        n = len(history)
        t0 = history[0][0]
        ts = [(ts - t0) / 1000.0 for ts, _ in history]
        mean_t, mean_s = sum(ts) / n, sum(s for _, s in history) / n
        var = sum((t - mean_t) ** 2 for t in ts)
        if var <= 0:
            return 0.0
        slope = sum((t - mean_t) * (s - mean_s) for t, (_, s) in zip(ts, history)) / var
        return max(-1000.0, min(1000.0, slope))

    rng = random.Random(8)
    for _ in range(3000):
        twin = UETwin("ue", history_length=rng.randint(2, 40))
        ts = EPOCH_MS + rng.randint(0, 10**9)
        for _ in range(rng.randint(2, 45)):
            ts += rng.choice([0, 1, 99, 100, 101, rng.randint(1, 5000)])
            twin.remember(ts, rng.uniform(-30.0, 50.0))
        assert twin.sinr_trend_db_per_s() == reference(twin.history)


def test_a_twin_pickled_in_the_earlier_layout_restores_and_decides_the_same():
    """UETwin and EdfQueue have slots now (history in two deques, position and neighbour as fields); a checkpoint
    of the earlier layout (their __dict__, with tuples) restores to the same state and the same next decisions."""
    from collections import deque

    from tiertwin.pipelines.local_twin import UETwin

    live = LocalTwin()
    events = fleet_events(seed=6, ticks=200, n_ues=3)
    feed(live, events[:300])
    old = copy.deepcopy(live)
    for ue_id, twin in list(old.twins.items()):     # what the earlier code pickled: the instance __dict__
        state = {name: getattr(twin, name) for name in ("ue_id", "serving_cell", "last_seq", "last_ts_ms", "radio",
                                                        "sinr_last", "neighbour_sinr_last", "battery_pct", "xr_active",
                                                        "window_start_ms", "samples", "sum_dl", "sum_rtt", "sum_cpu",
                                                        "placed")}
        state.update(neighbour=twin.neighbour, position=twin.position, radio_terms=None,
                     history=deque(twin.history, maxlen=twin.history_length),
                     device=EdfQueue.__new__(EdfQueue))
        state["device"].__setstate__({"tasks": twin.device.tasks, "clock_ms": twin.device.clock_ms})  # lists
        restored = UETwin.__new__(UETwin)
        restored.__setstate__(state)
        assert restored.__getstate__().keys() == twin.__getstate__().keys()
        assert {k: v for k, v in restored.__getstate__().items() if k != "device"} == \
               {k: v for k, v in twin.__getstate__().items() if k != "device"}
        old.twins[ue_id] = restored
    assert [without_clock(d) for d in feed(old, events[300:])] == [without_clock(d) for d in feed(live, events[300:])]
    restored = pickle.loads(pickle.dumps(live.twins))
    assert {u: t.__getstate__().keys() for u, t in restored.items()} == {u: t.__getstate__().keys() for u, t in live.twins.items()}


def test_observe_many_is_observe_and_due_summaries_record_by_record():
    """A batch gives the twin state and the summaries (in order) of observe() + due_summaries() per record, with
    replays and a rejected record inside the batch and windows left due by observe() calls before it."""
    telemetry_records = [r for kind, r in fleet_events(seed=5, ticks=400, n_ues=5) if kind == "telemetry"]
    assert len(telemetry_records) > 300
    one_by_one, batched = LocalTwin(), LocalTwin()
    for twin in (one_by_one, batched):      # windows left due: observed without due_summaries()
        for record in telemetry_records[:7]:
            twin.observe(record)
    rest = telemetry_records[7:]
    rest = rest[:100] + rest[90:95] + [{**rest[100], "ts_ms": 0}] + rest[100:]     # replays and a bad timestamp
    expected, replays, rejected = [], 0, []
    for record in rest:
        try:
            replays += not one_by_one.observe(record)
        except RecordRejected as exc:
            rejected.append((record, exc.reason))
            continue
        expected.extend(one_by_one.due_summaries())
    observed = batched.observe_many(rest)
    volatile = lambda s: {k: v for k, v in s.items() if k != "emitted_ns"}  # noqa: E731
    assert [volatile(s) for s in observed.summaries] == [volatile(s) for s in expected] and len(expected) > 100
    assert (observed.fresh, observed.replays) == (len(rest) - replays - 1, replays) and replays == 5
    assert [(r, e.reason) for r, e in observed.rejected] == rejected == [(rest[105], "bad-timestamp")]
    assert {u: t.__getstate__() | {"device": None} for u, t in batched.twins.items()} == \
           {u: t.__getstate__() | {"device": None} for u, t in one_by_one.twins.items()}


def test_twin_state_in_slots_folds_and_summarises_as_the_dict_layout_did():
    """UETwin keeps its state in slots, the history in two deques, position and neighbour as fields, radio terms
    computed by observe(): the same denoised state, radio terms and LocalSummary records as the layout before
    (its code below, the reference), record for record."""
    from collections import deque

    from tiertwin.pipelines.features import radio_terms
    from tiertwin.pipelines.local_twin import DENOISED, UETwin

    class DictLayout:       # UETwin as of b4fdd67 (observe, trend, summary)
        def __init__(self, ue_id, history_length=20):
            self.ue_id, self.serving_cell, self.last_seq, self.last_ts_ms = ue_id, -1, -1, 0
            self.radio, self.neighbour, self.sinr_last, self.neighbour_sinr_last = {}, None, None, None
            self.position, self.battery_pct, self.xr_active = (0.0, 0.0, 0.0), 100.0, False
            self.history = deque(maxlen=history_length)
            self._open_window()

        def _open_window(self):
            self.window_start_ms, self.samples = -1, 0
            self.sum_dl = self.sum_rtt = self.sum_cpu = 0.0
            self.placed = {"local": 0, "edge": 0, "cloud": 0}

        def observe(self, t, alpha):
            if not self.radio:
                self.radio.update({k: float(t[k]) for k in DENOISED})
            else:
                for k in DENOISED:
                    self.radio[k] = self.radio[k] + alpha * (t[k] - self.radio[k])
            self.sinr_last = float(t["sinr_db"])
            if t["neighbours"]:
                best = t["neighbours"][0]
                self.neighbour_sinr_last = float(best["sinr_db"])
                if self.neighbour is not None and self.neighbour[0] == best["cell_id"]:
                    self.neighbour = (best["cell_id"], self.neighbour[1] + alpha * (best["sinr_db"] - self.neighbour[1]))
                else:
                    self.neighbour = (best["cell_id"], float(best["sinr_db"]))
            else:
                self.neighbour = self.neighbour_sinr_last = None
            self.serving_cell, self.last_seq, self.last_ts_ms = t["serving_cell"], t["seq"], t["ts_ms"]
            self.position = (t.get("x_m", 0.0), t.get("y_m", 0.0), t.get("speed_mps", 0.0))
            self.battery_pct, self.xr_active = t["battery_pct"], t.get("xr_active", False)
            self.history.append((t["ts_ms"], self.radio["sinr_db"]))
            if self.window_start_ms < 0:
                self.window_start_ms = t["ts_ms"]
            self.samples += 1
            self.sum_dl += t["throughput_dl_mbps"]
            self.sum_rtt += t["rtt_ms"]
            self.sum_cpu += t["cpu_util"]

        def trend(self):
            n = len(self.history)
            if n < 2:
                return 0.0
            t0 = self.history[0][0]
            ts = [(ts - t0) / 1000.0 for ts, _ in self.history]
            mean_t, mean_s = sum(ts) / n, sum(s for _, s in self.history) / n
            var = sum((t - mean_t) ** 2 for t in ts)
            if var <= 0:
                return 0.0
            return max(-1000.0, min(1000.0, sum((t - mean_t) * (s - mean_s) for t, (_, s) in zip(ts, self.history)) / var))

        def summary(self):
            n = max(self.samples, 1)
            x, y, speed = self.position
            out = {"ue_id": self.ue_id, "serving_cell": self.serving_cell, "window_start_ms": self.window_start_ms,
                   "window_end_ms": self.last_ts_ms, "samples": self.samples, "rsrp_dbm": self.radio["rsrp_dbm"],
                   "sinr_db": self.radio["sinr_db"], "sinr_trend_db_per_s": self.trend(),
                   "throughput_dl_mbps": self.sum_dl / n, "rtt_ms": self.sum_rtt / n,
                   "best_neighbour_cell": self.neighbour[0] if self.neighbour else None,
                   "best_neighbour_sinr_db": self.neighbour[1] if self.neighbour else None,
                   "sinr_last_db": self.sinr_last, "best_neighbour_sinr_last_db": self.neighbour_sinr_last,
                   "x_m": x, "y_m": y, "speed_mps": speed, "battery_pct": self.battery_pct,
                   "cpu_util": min(1.0, self.sum_cpu / n), "xr_active": self.xr_active,
                   "demands": sum(self.placed.values()), "placed_local": self.placed["local"],
                   "placed_edge": self.placed["edge"], "placed_cloud": self.placed["cloud"]}
            self._open_window()
            return out

    rng = random.Random(12)
    slots, dicts = {}, {}
    compared = 0
    for kind, record in fleet_events(seed=12, ticks=1500, n_ues=6):
        if kind != "telemetry":
            continue
        if rng.random() < 0.1:      # a neighbour list that changes: none, another best cell
            record = {**record, "neighbours": rng.choice([[], [{"cell_id": 99, "rsrp_dbm": -95.0, "sinr_db": 1.5}]])}
        new = slots.setdefault(record["ue_id"], UETwin(record["ue_id"], history_length=7))
        old = dicts.setdefault(record["ue_id"], DictLayout(record["ue_id"], history_length=7))
        new.observe(record, 0.3)
        old.observe(record, 0.3)
        assert (new.radio, new.neighbour, new.position, new.history) == (old.radio, old.neighbour, old.position, list(old.history))
        assert new.radio_terms == radio_terms(old.radio)
        if rng.random() < 0.3:
            tier = rng.choice(["local", "edge", "cloud"])
            setattr(new, f"placed_{tier}", getattr(new, f"placed_{tier}") + 1)
            old.placed[tier] += 1
        if new.window_due(100):
            summary = new.summary()
            summary.pop("emitted_ns")
            assert summary == old.summary()
            compared += 1
    assert compared > 500
