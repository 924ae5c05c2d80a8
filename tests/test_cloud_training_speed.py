"""Training's faster paths (#18) compute exactly what the plain ones compute: the RLS step, the projections of a
batch's columns, the examples and the models trained from them."""

from __future__ import annotations

import math
import pickle
import random

from tiertwin.pipelines.rls import RecursiveLeastSquares


def _reference_step(fit: RecursiveLeastSquares, phi: list[float], y: float) -> None:
    """The RLS step as first written (index loops): what the faster one must reproduce to the bit."""
    if not all(map(math.isfinite, phi)) or not math.isfinite(y):
        return
    error = y - sum(w * v for w, v in zip(fit.weights, phi))
    fit.mae += (abs(error) - fit.mae) / min(fit.n + 1, 1000)
    fit.n += 1
    if error == 0.0:
        return
    cap = max(fit.clip * fit.mae, fit.min_clip)
    error = max(-cap, min(cap, error))
    cov, lam, d = fit.cov, fit.forgetting, len(phi)
    p_phi = [sum(row[j] * phi[j] for j in range(d)) for row in cov]
    denominator = lam + sum(phi[i] * p_phi[i] for i in range(d))
    gain = [v / denominator for v in p_phi]
    fit.weights = [w + g * error for w, g in zip(fit.weights, gain)]
    fit._refresh()
    for i in range(d):
        row, g = cov[i], gain[i]
        for j in range(d):
            row[j] = (row[j] - g * p_phi[j]) / lam
    trace = sum(cov[i][i] for i in range(d))
    if trace > d * fit.prior_variance:
        scale = d * fit.prior_variance / trace
        for row in cov:
            for j in range(d):
                row[j] *= scale


def test_the_rls_step_gives_the_reference_steps_weights_and_covariance_to_the_bit():
    rng = random.Random(5)
    for d, forgetting, variance in ((3, 1.0, 10.0), (5, 0.998, 10.0), (9, 0.9995, 1.0)):
        features = tuple(f"f{i}" for i in range(d - 1)) + ("bias",)
        fast = RecursiveLeastSquares(features, {"f0": 1.0}, forgetting=forgetting, prior_variance=variance,
                                     non_negative=("f1",))
        slow = pickle.loads(pickle.dumps(fast))
        for i in range(3000):
            phi = [rng.gauss(0, 1 + i % 7) for _ in range(d - 1)] + [1.0]
            if i % 97 == 0:
                phi[0] = float("nan")        # refused: nothing moves
            y = 2.0 * phi[0] - phi[1] + rng.gauss(0, 1) + (50.0 if i % 31 == 0 else 0.0)  # outliers: clipped
            fast.learn_vector(phi, y)
            _reference_step(slow, phi, y)
        assert (fast.weights, fast.cov, fast.mae, fast.n, fast.used) == (slow.weights, slow.cov, slow.mae, slow.n,
                                                                        slow.used)


T0 = 1_767_225_600_000


def _odd_records() -> list[tuple[str, dict]]:
    """Records the bench traffic lacks: allocations (with and without a cell or a share), other decision kinds,
    a placement to an unknown tier, outcomes of decisions with and without a reward, outcomes without a latency."""
    from tiertwin.schemas.examples import example

    out = []
    for i in range(40):
        kind = ("prb_share", "mec_share", "handover", "placement")[i % 4]
        parameters = {"x_prb_utilization": i / 40, "x_bias": 1.0, **({"share": 0.25 * (1 + i % 4)} if i % 5 else {}),
                      "predicted_latency_ms": 3.0}
        out.append(("Decision", example("Decision", decision_id=f"d{i}", kind=kind, cell_id=None if i % 7 == 0 else i % 3,
                                        source_ts_ms=T0 + 10 * i, parameters=parameters,
                                        target="nowhere" if i % 9 == 0 else "edge")))
        out.append(("Outcome", example("Outcome", decision_id=None if i % 6 == 0 else f"d{i}", ts_ms=T0 + 10 * i + 5,
                                        kind="decision" if i % 2 else "demand", latency_ms=None if i % 3 == 0 else 1.5 * i,
                                        deadline_met=None if i % 4 == 0 else bool(i % 3),
                                        cell_id=None if i % 8 == 0 else i % 3,
                                        effect={"reward": 0.1 * i} if i % 3 else {})))
    return out


def _batches(columnar: bool):
    from tiertwin.jobs.bench.cloud import tier_traffic
    from tiertwin.schemas import SchemaRegistry
    from tiertwin.schemas.batches import decode_batch

    registry = SchemaRegistry.default()
    records = list(tier_traffic(T0, 3_000, rate_per_s=1_000, cells=4, ues=16, seed=7)) + _odd_records()
    values = [registry.encode(s, r) for s, r in records]
    batches, _ = decode_batch(registry, values, topic="t", partition=0, offsets=range(len(values)),
                              timestamps_ms=[T0] * len(values), stage="s")
    if not columnar:
        return batches
    for batch in batches:
        assert batch.columns.num_rows == len(batch)
    return [pickle.loads(pickle.dumps(batch)) for batch in batches]   # crossed a stage as columns


def test_a_batch_projected_from_its_columns_gives_the_record_projection_row_for_row_without_rebuilding_records():
    from tiertwin.pipelines.cloud.trainable import BATCH_PROJECTIONS, decision_fields, forecast_fields, outcome_fields

    projection = {"Decision": decision_fields, "Outcome": outcome_fields, "LocalSummary": forecast_fields}
    columnar, plain = _batches(True), _batches(False)
    assert {b.schema for b in plain} >= set(projection)
    for crossed, batch in zip(columnar, plain):
        assert crossed.schema == batch.schema
        project = projection.get(batch.schema)
        if project is None:
            continue
        expected = [project(r) for r in batch.records]
        for rows in (BATCH_PROJECTIONS[project](crossed), BATCH_PROJECTIONS[project](batch)):
            assert rows == expected
            assert [type(v) for row in rows if row for v in row] == [type(v) for row in expected if row for v in row]
        assert crossed._records is None, "the projection rebuilt the records"
        if project is decision_fields:
            assert {row[0] for row in expected if row} == {"placement", "allocation"}


def _reference_forecast_examples(summaries, horizon_s=0.5, slack_s=0.2):
    """forecast_examples as first written: each summary's horizon found by stepping through the series."""
    from tiertwin.pipelines.features import sinr_forecast_features

    by_ue: dict = {}
    for summary in summaries:
        by_ue.setdefault(summary[0], []).append(summary)
    horizon_ms, slack_ms = horizon_s * 1000.0, slack_s * 1000.0
    examples = []
    for series in by_ue.values():
        series.sort(key=lambda f: f[2])
        for i, (_, cell, t0, sinr, trend, speed) in enumerate(series):
            due, j = t0 + horizon_ms, i + 1
            while j < len(series) and series[j][1] == cell and series[j][2] < due:
                j += 1
            if j == len(series) or series[j][1] != cell or series[j][2] - t0 > horizon_ms + slack_ms:
                continue
            (_, _, t_before, sinr_before, _, _), (_, _, t_after, sinr_after, _, _) = series[j - 1], series[j]
            share = (due - t_before) / (t_after - t_before) if t_after > t_before else 1.0
            examples.append((sinr_forecast_features(sinr, trend, speed, horizon_s),
                             float(sinr_before + share * (sinr_after - sinr_before))))
    return examples


def test_forecast_examples_are_the_stepping_searchs_examples():
    from tiertwin.pipelines.cloud.trainable import forecast_examples

    rng = random.Random(3)
    summaries = []
    for ue in range(12):
        t, cell = T0, ue % 3
        for _ in range(400):
            t += rng.choice((0, 5, 10, 40, 100, 300, 800))        # repeated times, dense runs and gaps
            if rng.random() < 0.03:
                cell = rng.randrange(4)                            # handovers (and back)
            summaries.append((f"ue-{ue}", cell, t, rng.uniform(-5, 30), rng.uniform(-3, 3), rng.uniform(0, 30)))
    rng.shuffle(summaries)
    for horizon_s, slack_s in ((0.5, 0.2), (0.1, 0.0), (2.0, 1.0)):
        expected = _reference_forecast_examples([tuple(s) for s in summaries], horizon_s, slack_s)
        assert len(expected) > 300
        assert forecast_examples([tuple(s) for s in summaries], horizon_s, slack_s) == expected


def _reference_learn(model, x: dict, y: float) -> None:
    """ResidualLatencyModel.learn_one as first written: the gate's prediction, then every candidate again."""
    from tiertwin.pipelines.latency import tier_terms

    tier = model._tier(x)
    y = float(y)
    error = abs(model._predict(x, tier) - y)
    if math.isfinite(error):
        model._mae[tier] += model.error_decay * (error - model._mae[tier])
    model._weigh(x, tier, y)
    if math.isfinite(y):
        mean = model._mean[tier]
        mean[0] += y
        mean[1] += 1
    model._fits[tier].learn_vector(tier_terms(x, tier), y)
    model.n_learned += 1


def test_the_latency_model_learns_to_the_bit_what_it_learned_computing_each_candidate_apart():
    from tiertwin.pipelines.latency import ResidualLatencyModel
    from tiertwin.pipelines.pretrain import load_pretrained

    rng = random.Random(11)
    for model in (ResidualLatencyModel(), load_pretrained("demand-latency")[0]):
        reference = pickle.loads(pickle.dumps(model))
        choices = set()
        for i in range(6000):
            tier = ("local", "edge", "cloud")[i % 3]
            x = {"tier": tier, "local_compute_ms": rng.uniform(1, 60), "local_queue_ms": rng.uniform(0, 10),
                 "uplink_ms": rng.uniform(1, 15), "downlink_ms": rng.uniform(1, 15), "rtt_ms": rng.uniform(4, 30),
                 "edge_compute_ms": rng.uniform(1, 10), "edge_queue_ms": rng.uniform(0, 10),
                 "cloud_compute_ms": rng.uniform(0.5, 2), "edge_queue_low_priority_ms": rng.uniform(0, 5)}
            if i % 50 == 0:
                del x["local_queue_ms"], x["edge_queue_ms"]          # absent features count 0
            regime = (i // 1500) % 3                                    # the truth moves: the gate switches
            truth = {0: sum(x.get(k, 0.0) for k in ("uplink_ms", "downlink_ms", "edge_compute_ms")) * 1.7,
                     1: x["rtt_ms"] + x["local_compute_ms"] * 0.5, 2: 12.0}[regime]
            y = truth + rng.gauss(0, 2) + (400.0 if i % 97 == 0 else 0.0)
            model.learn_one(x, y)
            _reference_learn(reference, x, y)
            choices.add(model.chosen(tier))
        assert _state(model) == _state(reference)
        assert len(choices) >= 3, choices


def _state(value):
    """Everything a model holds, as plain values (floats compared exactly; NaN as its repr)."""
    if isinstance(value, dict):
        return {k: _state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_state(v) for v in value]
    if isinstance(value, float) and value != value:
        return "nan"
    if hasattr(value, "__dict__"):
        return (type(value).__name__, _state(vars(value)))
    return value


def test_the_sinr_forecaster_learns_to_the_bit_what_it_learned_making_its_terms_twice():
    from tiertwin.pipelines.features import sinr_forecast_features
    from tiertwin.pipelines.forecasting import GUARD_DECAY, SinrForecaster
    from tiertwin.pipelines.pretrain import load_pretrained

    def reference_learn(f, x, y):
        role = f._role(x)
        change = float(y) - float(x["sinr_db"])
        guard = f._guards()[role]
        guard[0] += GUARD_DECAY * (abs(f._fits[role].predict(x) - change) - guard[0])
        guard[1] += GUARD_DECAY * (abs(change) - guard[1])
        f._fits[role].learn(x, change)
        f.n_learned += 1

    rng = random.Random(2)
    for model in (SinrForecaster(), load_pretrained("handover-sinr")[0]):
        reference = pickle.loads(pickle.dumps(model))
        for i in range(5000):
            x = sinr_forecast_features(rng.uniform(-5, 30), rng.uniform(-4, 4), rng.choice((1.0, 12.0, 30.0)), 0.5,
                                       other_sinr_db=rng.uniform(-5, 30) if i % 2 else None, neighbour=i % 3 == 0)
            if i % 4 == 0:
                x["geo_change_db"] = rng.uniform(-2, 2)
            y = x["sinr_db"] + 0.8 * x["trend_x_h"] + rng.gauss(0, 1) + (15.0 if i % 53 == 0 else 0.0)
            model.learn_one(x, y)
            reference_learn(reference, x, y)
        assert _state(model) == _state(reference)
