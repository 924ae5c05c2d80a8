"""The twins' learners against simple baselines, on synthetic streams with a known trend (no broker)."""

from __future__ import annotations

import copy
import pickle
import random
import statistics

import pytest
from river import compose, linear_model, preprocessing

from tiertwin.pipelines.features import (DEFAULT_EDGE, DEFAULT_MEC_CAPACITY_GCPS, TIERS, demand_features,
                                         sinr_forecast_features, transfer_ms)
from tiertwin.pipelines.learners import (DEMAND_LATENCY, HANDOVER, MODEL_NAMES, PRB_SHARE, DemandLatencyModel,
                                         ShareAllocator, allocation_reward, default_model)
from tiertwin.pipelines.pretrain import (allocation_met_rate, load_pretrained, sample_demand, sample_edge,
                                         sample_radio, train_latency_synthetic, true_latency_ms)


def test_demand_latency_model_beats_static_and_persistence_baselines_under_a_load_trend():
    rng = random.Random(11)
    model = default_model(DEMAND_LATENCY)
    sums, counts, last = {t: 0.0 for t in TIERS}, {t: 0 for t in TIERS}, {t: None for t in TIERS}
    errors = {"model": [], "static": [], "persistence": []}
    steps = 6000
    for step in range(steps):
        load = step / steps                        # the edge fills up over the stream: a known trend
        demand, radio, edge = sample_demand(rng, "ai_inference"), sample_radio(rng), sample_edge(rng, load)
        tier = TIERS[step % 3]
        x = {**demand_features(demand, radio, edge), "tier": tier}
        y = true_latency_ms(demand, radio, edge, tier, rng)
        if step >= steps // 2:
            errors["model"].append(abs(model.predict_one(x) - y))
            errors["static"].append(abs(sums[tier] / max(counts[tier], 1) - y))
            errors["persistence"].append(abs((last[tier] if last[tier] is not None else 0.0) - y))
        model.learn_one(x, y)
        sums[tier] += y
        counts[tier] += 1
        last[tier] = y
    mae = {name: statistics.fmean(e) for name, e in errors.items()}
    assert mae["model"] < 0.5 * min(mae["static"], mae["persistence"]), mae


def test_handover_forecaster_beats_persistence_on_trending_sinr():
    rng = random.Random(12)
    forecaster = default_model(HANDOVER)
    model_errors, persistence_errors = [], []
    for segment in range(300):
        trend = rng.uniform(-12, 12)               # dB/s: a UE walking towards or away from the cell
        sinr, speed = rng.uniform(0, 25), rng.uniform(1, 30)
        for _ in range(10):
            horizon = 0.1
            x = sinr_forecast_features(sinr, trend, speed, horizon)
            future = sinr + trend * horizon + rng.gauss(0, 0.2)
            if segment >= 150:
                model_errors.append(abs(forecaster.predict_one(x) - future))
                persistence_errors.append(abs(sinr - future))
            forecaster.learn_one(x, future)
            sinr = future
    assert statistics.fmean(model_errors) < 0.6 * statistics.fmean(persistence_errors)


def test_share_allocator_earns_more_than_a_static_share():
    rng = random.Random(13)
    allocator = ShareAllocator(seed=3)
    learned, static = [], []
    for step in range(1500):
        context = {"bias": 1.0, **{k: v for k, v in sample_edge(rng).items() if k in ("prb_utilization", "mec_utilization")}}
        share = allocator.pull(context)
        reward = allocation_reward(allocation_met_rate(share, context), share)
        allocator.update(share, context, reward)
        if step >= 750:
            learned.append(reward)
            static.append(allocation_reward(allocation_met_rate(0.5, context), 0.5))
    assert statistics.fmean(learned) > statistics.fmean(static) + 0.02


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_pickle_and_ship_unchanged(name):
    model, version = load_pretrained(name)
    assert version >= 1, "a trained starting model is shipped for every name"
    clone = pickle.loads(pickle.dumps(model))
    if name == PRB_SHARE or isinstance(model, ShareAllocator):
        context = {"bias": 1.0, "prb_utilization": 0.7}
        assert clone.expected_reward(0.5, context) == model.expected_reward(0.5, context)
        return
    x = {"uplink_ms": 3.0, "downlink_ms": 4.0, "congested_transfer_ms": 2.0, "rtt_ms": 9.0, "edge_compute_ms": 5.0,
         "edge_queue_ms": 1.0, "cloud_compute_ms": 0.5, "local_compute_ms": 30.0, "cpu_util": 0.3,
         "compute_gcycles": 0.5, "prb_utilization": 0.5, "mec_utilization": 0.2, "sinr_db": 12.0,
         "trend_x_h": -1.0, "speed_x_h": 3.0, "horizon_s": 0.5, "tier": "edge"}
    before = copy.deepcopy(x)
    assert clone.predict_one(x) == model.predict_one(x)
    clone.learn_one(x, 20.0)
    assert x == before, "learn_one does not mutate its input"


def test_demand_latency_model_rejects_an_unknown_tier():
    with pytest.raises(ValueError, match="tier"):
        default_model(DEMAND_LATENCY).predict_one({"uplink_ms": 1.0, "tier": "moon"})


# -- the folded predictions (DemandLatencyModel._fold) against River's own predict_one -------------------------
def sgd_model() -> DemandLatencyModel:
    """A trained DemandLatencyModel: the folds are its own (River pipelines), not the shipped residual model's."""
    return train_latency_synthetic(DemandLatencyModel(), 3000, random.Random(7))


def rivers_own(model):
    """``model`` predicting as it did before the folds, with River's ``predict_one`` per tier: the reference."""
    model._fold = lambda tier: None
    return model


def latency_examples(rng: random.Random, n: int) -> list[tuple[dict, str, float]]:
    examples = []
    for _ in range(n):
        demand, radio, edge = sample_demand(rng), sample_radio(rng), sample_edge(rng)
        queue = rng.choice((0.0, rng.uniform(0.0, 80.0), 1e4))      # 1e4 ms: scaled beyond the +-20 sigma clip
        x = demand_features(demand, radio, edge, queue, queue + rng.uniform(0.0, 50.0))
        tier = rng.choice(TIERS)
        examples.append((x, tier, true_latency_ms(demand, radio, edge, tier, rng)))
    return examples


def test_folded_predictions_equal_rivers_own_through_learning_and_pickling():
    rng = random.Random(21)
    fast = sgd_model()
    reference = rivers_own(copy.deepcopy(fast))
    for round_ in range(6):
        for x, _, _ in latency_examples(rng, 200):
            assert fast.predict_tiers(x) == pytest.approx(reference.predict_tiers(x), rel=1e-9, abs=1e-9)
            tier = rng.choice(TIERS)
            assert fast.predict_one({**x, "tier": tier}) == pytest.approx(reference.predict_one({**x, "tier": tier}),
                                                                           rel=1e-9, abs=1e-9)
        assert all(fast._folds[tier] for tier in TIERS) and not reference._folds, "the fast path was the one taken"
        for x, tier, y in latency_examples(rng, 40):      # learning makes the tier's fold stale: it is rebuilt
            fast.learn_one({**x, "tier": tier}, y)
            reference.learn_one({**x, "tier": tier}, y)
            assert fast.predict_tiers(x) == pytest.approx(reference.predict_tiers(x), rel=1e-9, abs=1e-9)
        if round_ % 2:
            fast = pickle.loads(pickle.dumps(fast))        # folds are not pickled: rebuilt after unpickling
            assert fast._folds == {}
    x = latency_examples(rng, 1)[0][0]
    with compose.learn_during_predict():   # River's predict_one updates the scalers here: no fold is used or kept
        assert fast.predict_tiers(x) == reference.predict_tiers(x)
    assert fast._folds == {} and fast.predict_tiers(x) == pytest.approx(reference.predict_tiers(x), rel=1e-9, abs=1e-9)


def test_features_missing_or_unfoldable_regressors_take_rivers_own_path():
    rng = random.Random(22)
    model = sgd_model()
    reference = rivers_own(copy.deepcopy(model))
    x = latency_examples(rng, 1)[0][0]
    partial = {k: v for k, v in x.items() if k not in ("edge_queue_low_priority_ms", "downlink_ms")}
    assert model.predict_tiers(partial) == reference.predict_tiers(partial)
    assert model.predict_tiers({**x, "sinr_db": "12.5"}) == reference.predict_tiers({**x, "sinr_db": "12.5"})
    plain = DemandLatencyModel(regressor=preprocessing.StandardScaler() | linear_model.LinearRegression())
    plain_reference = rivers_own(DemandLatencyModel(regressor=preprocessing.StandardScaler() | linear_model.LinearRegression()))
    for x, tier, y in latency_examples(rng, 100):
        plain.learn_one({**x, "tier": tier}, y)
        plain_reference.learn_one({**x, "tier": tier}, y)
    assert plain.predict_tiers(x) == plain_reference.predict_tiers(x)
    assert plain._folds == {tier: None for tier in TIERS}


def test_demand_features_are_the_physics_written_plainly():
    """demand_features is written for speed (it runs per placement); the same numbers, written the plain way."""
    rng = random.Random(23)
    for i in range(500):
        demand, radio, edge = sample_demand(rng), sample_radio(rng), sample_edge(rng)
        if i % 5 == 0:
            radio = {**radio, "throughput_ul_mbps": rng.choice((0.0, 0.05, 3))}     # below the link floor, an int
        x = demand_features(demand, radio, edge if i % 7 else None, rng.uniform(0.0, 30.0),
                            None if i % 3 == 0 else rng.uniform(0.0, 60.0))
        edge = edge if i % 7 else DEFAULT_EDGE
        capacity = max(float(edge.get("mec_capacity_gcps") or DEFAULT_MEC_CAPACITY_GCPS), 1e-3)
        queue_ms = float(edge.get("mec_queue_gcycles", 0.0)) / capacity * 1000.0
        assert x["uplink_ms"] == transfer_ms(demand["input_bytes"], radio["throughput_ul_mbps"])
        assert x["downlink_ms"] == transfer_ms(demand["output_bytes"], radio["throughput_dl_mbps"])
        assert x["edge_queue_ms"] == queue_ms
        assert x["edge_queue_low_priority_ms"] == queue_ms * (7 - int(demand["priority"])) / 7.0
        assert all(type(v) is float for v in x.values())


def _cell_contexts(n: int, seed: int):
    rng = random.Random(seed)
    for _ in range(n):
        yield {"bias": 1.0, "prb_utilization": rng.random(), "attached_ues": rng.randint(0, 30) / 30}


def test_share_allocator_pulls_and_learns_exactly_like_rivers_linucb():
    """The allocator owns its arms (no reaching into River's privates) but is River's LinUCBDisjoint."""
    from river import bandit

    shares = (0.25, 0.5, 0.75, 1.0)
    ours, rivers = ShareAllocator(shares=shares, seed=3), bandit.LinUCBDisjoint(alpha=1.0, seed=3)
    for i, ctx in enumerate(_cell_contexts(300, seed=4)):
        pulled = ours.pull(ctx)
        assert pulled == float(rivers.pull([f"{s:g}" for s in shares], ctx)), f"pull {i}"
        reward = allocation_reward(1.0 - abs(ctx["prb_utilization"] - pulled), pulled)
        ours.update(pulled, ctx, reward)
        rivers.update(f"{pulled:g}", ctx, reward)


def test_an_allocator_pickled_with_rivers_policy_loads_and_decides_the_same():
    """Shipped models and changelog checkpoints written before the arms moved still load."""
    from river import bandit

    shares = (0.5, 1.0)
    old = ShareAllocator.__new__(ShareAllocator)   # the former layout: a river policy in ``policy``
    old.__dict__.update(shares=shares, alpha=1.0, seed=1, n_updates=0,
                        policy=bandit.LinUCBDisjoint(alpha=1.0, seed=1))
    twin = ShareAllocator(shares=shares, seed=1)
    for ctx in _cell_contexts(50, seed=5):
        old.policy.update(f"{1.0:g}", ctx, ctx["prb_utilization"])
        twin.update(1.0, ctx, ctx["prb_utilization"])
    loaded = pickle.loads(pickle.dumps(old))
    assert "policy" not in vars(loaded)
    for ctx in _cell_contexts(20, seed=6):
        assert loaded.expected_reward(1.0, ctx) == pytest.approx(twin.expected_reward(1.0, ctx))
        assert loaded.pull(ctx) == twin.pull(ctx)
    shipped, _ = load_pretrained(PRB_SHARE)
    assert shipped.pull({"bias": 1.0, "prb_utilization": 0.5}) in shipped.shares
