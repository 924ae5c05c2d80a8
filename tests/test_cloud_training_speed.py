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
