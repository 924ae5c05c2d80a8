"""Twin fidelity (issue #19): the benchmark's table, and the models' properties against their baselines (no broker)."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from tiertwin.jobs.experiments.fidelity import (LATENCY_BASELINES, LATENCY_TARGETS, SHARE_BASELINES, SHARE_TARGETS,
                                                SINR_BASELINES, SINR_TARGETS, FidelityConfig, run_fidelity)
from tiertwin.pipelines.forecasting import SinrForecaster
from tiertwin.pipelines.latency import ResidualLatencyModel

TINY = FidelityConfig(scenarios=("dense-urban-xr", "highway-vehicles"), seeds=(2024,), seconds=3.0, ues=8, draws=4,
                      warmup_s=0.5)


def test_fidelity_has_a_row_per_scenario_target_model_and_baseline():
    from tiertwin.pipelines.learners import ShareAllocator

    latency = {"residual": ResidualLatencyModel()}
    sinr = {"rls": (SinrForecaster(), "horizon")}
    shares = {"prb_share": {"bandit": ShareAllocator()}, "mec_share": {"bandit": ShareAllocator()}}
    results = run_fidelity(TINY, latency, sinr, share_models=shares)
    rows = {(r["scenario"], r["target"], r["name"]): r for r in results["rows"]}
    for scenario in TINY.scenarios:
        for target in LATENCY_TARGETS:
            for name in (*LATENCY_BASELINES, "residual, frozen", "residual, prequential"):
                assert (scenario, target, name) in rows, (scenario, target, name)
        for target in SINR_TARGETS:
            for name in (*SINR_BASELINES, "rls, frozen", "rls, prequential"):
                row = rows[(scenario, target, name)]
                assert row["n"] > 0 and math.isfinite(row["mae"]) and row["median_ae"] <= row["mae"] * 10
        for target in SHARE_TARGETS:       # the bandits' reward forecasts beside the running means
            for name in (*SHARE_BASELINES, "bandit, frozen", "bandit, prequential"):
                row = rows[(scenario, target, name)]
                assert row["n"] > 0 and math.isfinite(row["mae"])
    assert {r["kind"] for r in results["rows"]} == {"baseline", "model"}
    # an untrained residual model frozen is the physics + queue estimate, an untrained forecaster is persistence
    for scenario in TINY.scenarios:
        assert rows[(scenario, "latency edge", "residual, frozen")]["mae"] == rows[(scenario, "latency edge", "physics + queue")]["mae"]
        assert rows[(scenario, "sinr serving", "rls, frozen")]["mae"] == rows[(scenario, "sinr serving", "persistence")]["mae"]


def test_bench_fidelity_writes_its_results(tmp_path, monkeypatch):
    from tiertwin.jobs.cli.main import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["bench", "fidelity", "--scenario", "stadium-event", "--seconds", "3",
                                      "--ues", "6", "--draws", "2", "--warmup", "0.5"])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "bench-results" / "fidelity.json").read_text())
    targets = {r["target"] for r in doc["results"]["rows"]}
    assert targets == set(LATENCY_TARGETS) | set(SINR_TARGETS) | set(SHARE_TARGETS)
    assert "oracle" in result.output and "persistence" in result.output


def test_the_edge_forecaster_learns_at_its_horizon_and_beats_persistence_on_a_known_trend():
    import random

    from tiertwin.pipelines.edge_twin import EdgeTwin, EdgeTwinConfig
    from tiertwin.pipelines.features import sinr_forecast_features
    from tiertwin.pipelines.learners import HANDOVER
    from tiertwin.schemas.examples import example

    horizons = []

    class Recording(SinrForecaster):
        def learn_one(self, x, y):
            horizons.append(x["horizon_s"])
            super().learn_one(x, y)

    config = EdgeTwinConfig(handover_horizon_s=0.6)
    twin = EdgeTwin(config, {HANDOVER: (Recording(horizon_s=0.6), 0)})
    rng = random.Random(5)
    t = 1_000
    for segment in range(200):       # a UE walking towards or away from its cell: a known trend, a little noise
        trend, sinr = rng.uniform(-10, 10), rng.uniform(0, 25)
        ue = f"ue-{segment}"
        for k in range(20):          # a summary every 200 ms, the SINR on the line
            twin.observe_summary(example("LocalSummary", ue_id=ue, serving_cell=0, window_start_ms=t - 100,
                                         window_end_ms=t, sinr_db=sinr + trend * k * 0.2 + rng.gauss(0, 0.1),
                                         sinr_trend_db_per_s=trend, best_neighbour_cell=None,
                                         best_neighbour_sinr_db=None, speed_mps=1.5, emitted_ns=0))
            t += 200
    assert horizons and set(horizons) == {0.6}, "it learns at the horizon it is asked for"
    model = twin.slots[HANDOVER].current()[0]
    model_errors, persistence_errors = [], []
    for _ in range(500):
        trend, sinr = rng.uniform(-10, 10), rng.uniform(0, 25)
        future = sinr + trend * 0.6
        model_errors.append(abs(model.predict_one(sinr_forecast_features(sinr, trend, 1.5, 0.6)) - future))
        persistence_errors.append(abs(sinr - future))
    assert sum(model_errors) < 0.2 * sum(persistence_errors)


def test_the_residual_latency_model_is_never_worse_than_physics_where_physics_is_exact():
    import random

    from tiertwin.pipelines.features import TIERS
    from tiertwin.pipelines.latency import physics_estimate
    from tiertwin.pipelines.pretrain import sample_demand, sample_edge, sample_radio
    from tiertwin.pipelines.features import demand_features

    for seed in range(5):            # a property over random streams: latency is exactly the physics estimate
        rng = random.Random(seed)
        model = ResidualLatencyModel()
        for _ in range(600):
            x = demand_features(sample_demand(rng), sample_radio(rng), sample_edge(rng), rng.uniform(0, 50),
                                rng.uniform(50, 100))
            tier = rng.choice(TIERS)
            y = physics_estimate(x, tier)
            assert abs(model.predict_one({**x, "tier": tier}) - y) <= 1e-9 * max(1.0, y)
            model.learn_one({**x, "tier": tier}, y)


def test_the_residual_latency_model_learns_an_unseen_device_speed():
    import random

    from tiertwin.pipelines.features import demand_features
    from tiertwin.pipelines.pretrain import sample_demand, sample_radio

    rng = random.Random(3)
    model = ResidualLatencyModel()
    errors = []
    for i in range(400):             # the device runs 40 Gcycles/s, the features assume 20
        x = {**demand_features(sample_demand(rng, "xr_frame"), sample_radio(rng), None, rng.uniform(0, 20)), "tier": "local"}
        y = (x["local_compute_ms"] + x["local_queue_ms"]) / 2
        errors.append(abs(model.predict_one(x) - y))
        model.learn_one(x, y)
    assert abs(model.effective_speed("local") - 40.0) < 0.5
    assert sum(errors[-100:]) < 0.1 * sum(errors[:100])


def test_pretrain_judges_the_retrained_models_on_held_out_seeds_before_writing(tmp_path):
    from tiertwin.jobs.cli.main import app

    result = CliRunner().invoke(app, ["pretrain", "--scenario", "stadium-event", "--seconds", "3", "--ues", "6",
                                      "--held-out-seed", "2025", "--out", str(tmp_path), "--force"])
    assert result.exit_code == 0, result.output
    assert "retrained, prequential" in result.output and "shipped, prequential" in result.output
    assert "demand-latency: retrained prequential MAE / shipped" in result.output
    assert {p.name for p in tmp_path.iterdir()} == {"demand-latency.pkl", "handover-sinr.pkl"}


def test_the_twin_api_shows_each_tiers_rolling_mae_beside_the_physics_baseline():
    from fastapi.testclient import TestClient

    from tiertwin.jobs.api.twin_api import TwinView, create_app
    from tiertwin.pipelines.local_twin import LocalTwin
    from tiertwin.pipelines.pretrain import SyntheticFleet

    view, twin = TwinView(), LocalTwin()
    fleet = SyntheticFleet(n_ues=4, n_cells=2, seed=3)
    for tick in range(60):
        for kind, record in fleet.step(tick * 10):
            if kind == "telemetry":
                twin.observe(record)
            elif kind == "cell-report":
                twin.update_edge_state(record)
            else:
                decision = twin.place(record)
                view.apply("tiertwin.actions.local", "tiertwin.Decision", decision)
                tier = decision["target"]
                truth = 1.1 * decision["parameters"][f"predicted_{tier}_ms"] + 1.0
                view.apply("tiertwin.outcomes", "tiertwin.Outcome",
                           {"kind": "demand", "decision_id": decision["decision_id"], "placement": tier,
                            "latency_ms": truth + 2.0, "components_ms": {"decision": 2.0}})
    from tiertwin.jobs.api.twin_view_routes import StateFeed
    from tiertwin.schemas.examples import example

    for k in range(40):     # a UE whose SINR falls along a line, a summary every 100 ms: the SINR meter's input
        view.apply("tiertwin.edge.summaries", "tiertwin.LocalSummary",
                   example("LocalSummary", ue_id="ue-m", serving_cell=2, window_start_ms=100 * k, window_end_ms=100 * k + 100,
                           sinr_db=25.0 - 0.5 * k, sinr_last_db=25.0 - 0.5 * k, sinr_trend_db_per_s=-5.0,
                           best_neighbour_cell=4, best_neighbour_sinr_db=5.0 + 0.5 * k,
                           best_neighbour_sinr_last_db=5.0 + 0.5 * k, x_m=10.0 * k, y_m=0.0, speed_mps=10.0))
    frame, _ = StateFeed(view).frame(None, -1)      # what the live view draws beside the live models
    assert {r["tier"] for r in frame["fidelity"]} == {r["tier"] for r in view.honesty.summary()} != set()
    assert {r["target"] for r in frame["sinr_fidelity"]} == {"serving", "neighbour"}
    rows = TestClient(create_app(view)).get("/fidelity").json()
    latency = [r for r in rows if r["target"].startswith("latency")]
    assert latency and {r["tier"] for r in latency} <= {"local", "edge", "cloud"}
    for r in latency:
        assert r["n"] > 0 and r["baseline"] == "physics + queue" and r["target"] == f"latency {r['tier']}"
        assert r["model_mae_ms"] >= 0 and r["baseline_mae_ms"] >= 0 and isinstance(r["better_than_baseline"], bool)
    sinr = {r["target"]: r for r in rows if r["target"].startswith("sinr")}
    assert set(sinr) == {"sinr serving", "sinr neighbour"}
    for r in sinr.values():     # persistence misses the 2.5 dB the line moves in 0.5 s
        assert r["tier"] == "edge" and r["baseline"] == "persistence" and r["n"] > 20
        assert abs(r["baseline_mae_db"] - 2.5) < 0.01 and r["model_mae_db"] >= 0


def test_the_residual_models_fast_placement_path_predicts_what_predict_one_does():
    import random

    from tiertwin.pipelines.features import TIERS, demand_features
    from tiertwin.pipelines.pretrain import load_pretrained, sample_demand, sample_edge, sample_radio

    rng = random.Random(9)
    model, _ = load_pretrained("demand-latency")
    assert isinstance(model, ResidualLatencyModel)
    for i in range(600):
        x = demand_features(sample_demand(rng), sample_radio(rng), sample_edge(rng), rng.uniform(0, 40), 60.0)
        if i % 50 == 0:
            x.pop("edge_queue_ms")                        # a feature missing: the general path
        fast = model.predict_tiers(x)
        assert fast == {tier: model.predict_one({**x, "tier": tier}) for tier in TIERS}
        tier = rng.choice(TIERS)
        model.learn_one({**x, "tier": tier}, 1.3 * fast[tier] + rng.uniform(0, 5))   # the guard and the fit move


def test_the_cloud_trains_the_forecaster_at_the_edge_horizon_and_publishes_each_models_baseline():
    from tiertwin.pipelines.cloud.trainable import TRAINABLE, forecast_examples
    from tiertwin.pipelines.edge_twin import EdgeTwinConfig

    series = [("ue-1", 3, t, 10.0 - 0.004 * t, -4.0, 1.5) for t in range(0, 3000, 200)]
    examples = forecast_examples(series, EdgeTwinConfig().handover_horizon_s)
    assert examples and {x["horizon_s"] for x, _ in examples} == {0.5}
    assert all(abs(y - (x["sinr_db"] - 2.0)) < 1e-9 for x, y in examples), "the SINR 0.5 s later, interpolated"
    x = {"uplink_ms": 2.0, "downlink_ms": 3.0, "edge_compute_ms": 4.0, "edge_queue_ms": 1.0, "tier": "edge"}
    assert TRAINABLE["demand-latency"].baseline(x) == 10.0
    assert TRAINABLE["handover-sinr"].baseline({"sinr_db": 7.5}) == 7.5


def test_the_forecaster_with_geometry_beats_persistence_driving_past_a_mast_at_its_horizon():
    """Approaching and receding: vehicles drive past site 0 of the highway preset (the sector's boresight turns
    to its back in a few metres); the SINR is the deterministic one plus a little noise. Learning from the edge
    twin's own labels, the forecaster with the site geometry beats persistence at the configured horizon."""
    import random

    import numpy as np

    from tiertwin.pipelines.edge_twin import EdgeTwin, EdgeTwinConfig, UEView, forecast_features
    from tiertwin.pipelines.geometry import RadioGeometry
    from tiertwin.pipelines.learners import HANDOVER
    from tiertwin.schemas.examples import example

    horizon = 0.5
    geometry = RadioGeometry.from_scenario("highway-vehicles")
    twin = EdgeTwin(EdgeTwinConfig(scenario="highway-vehicles", handover_horizon_s=horizon),
                    {HANDOVER: (SinrForecaster(horizon_s=horizon), 0)})
    rng = random.Random(11)

    def drive(ue: str, t0: int, seconds: float = 12.0):
        """(t_ms, x, sinr of every cell) every 100 ms of a vehicle crossing the layout past site 0."""
        direction, lane, speed = rng.choice((1.0, -1.0)), rng.uniform(-30.0, 30.0), rng.uniform(22.0, 36.0)
        x0 = -direction * speed * seconds / 2
        for k in range(int(seconds * 10)):
            x = x0 + direction * speed * k * 0.1
            sinr = geometry.mean_sinr_db(np.array([[x, lane]]))[0] + np.array([rng.gauss(0, 0.3) for _ in range(geometry.n_cells)])
            yield t0 + 100 * k, x, lane, speed, np.clip(sinr, -30, 50)

    def summary(ue, t, x, lane, speed, sinr, serving):
        others = [c for c in np.argsort(-sinr) if c != serving]
        return example("LocalSummary", ue_id=ue, serving_cell=int(serving), window_start_ms=t - 100, window_end_ms=t,
                       sinr_db=float(sinr[serving]), sinr_last_db=float(sinr[serving]), sinr_trend_db_per_s=0.0,
                       best_neighbour_cell=int(others[0]), best_neighbour_sinr_db=float(sinr[others[0]]),
                       best_neighbour_sinr_last_db=float(sinr[others[0]]), x_m=x, y_m=lane, speed_mps=speed,
                       emitted_ns=0)

    t = 1_000
    for n in range(40):                              # learn, as the edge does
        serving = None
        for t, x, lane, speed, sinr in drive(f"ue-{n}", t + 10_000):
            if serving is None or sinr[serving] < sinr.max() - 6:      # an A3-like handover
                serving = int(np.argmax(sinr))
            twin.observe_summary(summary(f"ue-{n}", t, x, lane, speed, sinr, serving))
    model = twin.slots[HANDOVER].current()[0]
    assert model.n_learned > 1000 and model.coefficients("serving fast")["geo_change_db"] > 0.5
    model_errors, persistence_errors = [], []
    for n in range(10):                              # judge on fresh drives, frozen
        track = list(drive(f"test-{n}", t + 100_000))
        view, serving = UEView(f"test-{n}"), None
        for i, (t_ms, x, lane, speed, sinr) in enumerate(track[:-5]):
            if serving is None or sinr[serving] < sinr.max() - 6:
                serving = int(np.argmax(sinr))
            view.update(summary(view.ue_id, t_ms, x, lane, speed, sinr, serving))
            if i < 2:
                continue
            for _, cell, features in forecast_features(view, serving, horizon, geometry):
                future = track[i + 5][4][cell]             # the SINR 0.5 s later
                model_errors.append(abs(model.predict_one(features) - future))
                persistence_errors.append(abs(features["sinr_db"] - future))
    assert sum(model_errors) < 0.5 * sum(persistence_errors), (sum(model_errors), sum(persistence_errors))


def test_the_latency_gate_is_never_worse_than_the_best_naive_baseline_on_a_stream():
    """Property: on streams where one naive baseline is the truth but for noise (physics without the queue, the
    richest physics, a constant that only the running mean finds), the gated model's prequential MAE per tier is
    at most the best baseline's, scored after each tier's first 50 outcomes (no gate knows the winner before it has
    seen any), with 2 % of slack for its rolling errors' noise."""
    import random

    from tiertwin.pipelines.features import TIERS, demand_features
    from tiertwin.pipelines.latency import physics_estimate, physics_ms, richest_physics_ms
    from tiertwin.pipelines.pretrain import sample_demand, sample_edge, sample_radio

    truths = {"physics": physics_ms, "richest physics": richest_physics_ms, "running mean": lambda x, tier: 40.0}
    for seed in range(3):
        for truth_name, truth in truths.items():
            rng = random.Random(seed)
            model = ResidualLatencyModel()
            errors = {tier: {"model": 0.0, "physics + queue": 0.0, "physics": 0.0, "richest physics": 0.0,
                             "running mean": 0.0} for tier in TIERS}
            sums, counts = {t: 0.0 for t in TIERS}, {t: 0 for t in TIERS}
            for _ in range(3000):
                x = demand_features(sample_demand(rng), sample_radio(rng), sample_edge(rng), rng.uniform(0, 50),
                                    rng.uniform(50, 100))
                tier = rng.choice(TIERS)
                y = truth(x, tier) * rng.uniform(0.7, 1.3) + rng.expovariate(0.2) * (rng.random() < 0.05) * 20
                e = errors[tier] if counts[tier] >= 50 else {}
                for name, predicted in (("model", model.predict_one({**x, "tier": tier})),
                                        ("physics + queue", physics_estimate(x, tier)), ("physics", physics_ms(x, tier)),
                                        ("richest physics", richest_physics_ms(x, tier)),
                                        ("running mean", sums[tier] / counts[tier] if counts[tier] else 0.0)):
                    e[name] = e.get(name, 0.0) + abs(predicted - y)
                model.learn_one({**x, "tier": tier}, y)
                sums[tier] += y
                counts[tier] += 1
            for tier, e in errors.items():
                best = min(v for k, v in e.items() if k != "model")
                assert e["model"] <= 1.02 * best, (seed, truth_name, tier, e)
