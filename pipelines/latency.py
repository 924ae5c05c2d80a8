"""The demand-latency model that learns what physics misses: :class:`ResidualLatencyModel`.

Per tier, latency = the physics estimate (bytes over the link, cycles at nominal speed, the queue
ahead) corrected by a recursive least-squares fit (:class:`~tiertwin.pipelines.rls.RecursiveLeastSquares`)
over the same physics-shaped terms, starting from weights that *are* the physics estimate. So:

* where physics is exact, the residuals are 0 and the model is the physics estimate, never worse;
* the weight on ``local_compute_ms`` is nominal / effective device speed and the one on
  ``edge_compute_ms`` nominal / effective MEC slice speed, learned online with forgetting: a device
  twice as fast as the training one is followed within a few hundred of its demands;
* no learning rate and no feature scaling that could drift (what degraded the edge tier online);
* a per-tier gate: the fit predicts only while its rolling error is below every naive baseline's (the physics
  estimate, without the queue, with the RTT and the priority-weighted MEC queue, the running mean of the tier's
  latencies: :data:`GATE`); otherwise the best of them does, as the SINR forecaster falls back to persistence.

>>> model = ResidualLatencyModel()
>>> x = {"local_compute_ms": 20.0, "local_queue_ms": 5.0, "tier": "local"}
>>> model.predict_one(x)          # untrained: the physics estimate
25.0
>>> for i in range(300):          # the device runs twice as fast as nominal
...     c = float(i % 17 + 1)
...     model.learn_one({"local_compute_ms": c, "local_queue_ms": 0.0, "tier": "local"}, c / 2)
>>> round(model.effective_speed("local")), round(model.predict_one(x), 1)
(40, 12.5)
"""

from __future__ import annotations

import math
from typing import Mapping

from river import base

from tiertwin.pipelines.features import CLOUD_CAPACITY_GCPS, DEFAULT_MEC_CAPACITY_GCPS, DEVICE_CAPACITY_GCPS
from tiertwin.pipelines.rls import RecursiveLeastSquares

# term -> prior weight; the prior weights sum up the physics estimate (transfer + compute + queue).
TIER_TERMS: dict[str, dict[str, float]] = {
    # The device's EDF queue holds nominal compute ms too: one term, so one learned speed scales both.
    "local": {"local_work_ms": 1.0, "local_backlog_ms": 0.0, "bias": 0.0},
    # Only the physics' own terms and a constant (the air latency both ways, the backhaul): measured on the simulator
    # (tiertwin bench fidelity, 2026-12-03), the RTT the UE reports stood in for cell load, fitted at 3.4 ms per ms
    # across presets and predicted 14 ms for a small frame on an idle cell; the congestion product and the
    # priority-weighted queue came out negative (collinear with the plain ones) and bought nothing.
    "edge": {"uplink_ms": 1.0, "downlink_ms": 1.0, "edge_compute_ms": 1.0, "edge_queue_ms": 1.0, "bias": 0.0},
    "cloud": {"uplink_ms": 1.0, "downlink_ms": 1.0, "cloud_compute_ms": 1.0, "bias": 0.0},
}
# Never below this share of bytes over the link and cycles at nominal speed (what the old model guaranteed too).
FLOOR_FACTOR = 0.5
FLOOR_TERMS = {"local": ("local_compute_ms",), "edge": ("uplink_ms", "downlink_ms", "edge_compute_ms"),
               "cloud": ("uplink_ms", "downlink_ms", "cloud_compute_ms")}
# Innovations are clipped at clip x the running MAE. At the device, latency is the physics estimate but for
# preemption by later, more urgent work (never predictable at placement, always a delay): a tight clip keeps
# the fit near the median, where a mean absolute error wants it (tiertwin bench fidelity, 2026-12-03: dense-urban-xr
# local MAE 1.90 ms at 0.5 against 2.10 at 5; highway-vehicles 7.0 against 9.1). At the edge and in the cloud,
# physics misses whole factors (a MEC slice is a third of the server): a loose clip learns them in a few dozen demands.
FIT_CLIPS = {"local": {"clip": 0.5, "min_clip": 0.1}, "edge": {"clip": 5.0, "min_clip": 1.0},
             "cloud": {"clip": 5.0, "min_clip": 1.0}}
GUARD_DECAY = 0.01     # weight of the newest absolute error in the gate's running MAEs (about 100 outcomes)
# What a tier's gate chooses from: the fit, then the naive baselines of tiertwin bench fidelity (ties go to a baseline).
GATE = ("fit", "physics + queue", "physics", "richest physics", "running mean")
# One candidate takes over from the current one when its running MAE is lower by this share of their running mean
# absolute difference |prediction - current prediction|, after at least GATE_MIN_OUTCOMES outcomes since the last
# switch. Both differences are bounded by how far the two predictions are apart, so a demand stuck for seconds behind
# a collapsed uplink (an error of 10 s for every candidate) weighs no more than any other: with running MAEs themselves
# the highway's edge tier switched on those and ended 0.7 % worse than richest physics.
GATE_MARGIN = 0.1
# and its running MAE this much below the current one's: two near-equal ones stay put, and a baseline hands over to the
# fit only for a clear gain (dense-urban-xr's device, where the fit is physics + queue give or take 0.05 %: switching
# to it after a preempted demand it happened to forecast higher cost 0.6 % at 1 %).
GATE_GAIN = 0.01
GATE_GAIN_TO_FIT = 0.05
GATE_MIN_OUTCOMES = 20      # a fit that has learned fewer is never chosen (a fresh fit's first steps are large)
COMPUTE_TERM = {"local": ("local_work_ms", DEVICE_CAPACITY_GCPS), "edge": ("edge_compute_ms", DEFAULT_MEC_CAPACITY_GCPS),
                "cloud": ("cloud_compute_ms", CLOUD_CAPACITY_GCPS)}


def physics_estimate(x: Mapping, tier: str) -> float:
    """Transfer + compute at nominal speed + queue ahead, in ms (the model's prior).

    >>> physics_estimate({"uplink_ms": 2.0, "downlink_ms": 3.0, "edge_compute_ms": 4.0, "edge_queue_ms": 1.0}, "edge")
    10.0
    >>> physics_estimate({"local_compute_ms": 2.0, "local_queue_ms": 3.0, "local_backlog_ms": 9.0}, "local")
    5.0
    """
    return sum(w * v for w, v in zip(TIER_TERMS[tier].values(), tier_terms(x, tier)))


def physics_ms(x: Mapping, tier: str) -> float:
    """Bytes over the link and cycles at nominal speed (no queue).

    >>> physics_ms({"uplink_ms": 2.0, "downlink_ms": 3.0, "edge_compute_ms": 4.0, "edge_queue_ms": 1.0}, "edge")
    9.0
    """
    if tier == "local":
        return x.get("local_compute_ms", 0.0)
    return x.get("uplink_ms", 0.0) + x.get("downlink_ms", 0.0) + x.get(f"{tier}_compute_ms", 0.0)


def richest_physics_ms(x: Mapping, tier: str) -> float:
    """Physics plus every delay the features name: EDF wait (local); RTT and the priority-weighted MEC queue (edge);
    RTT (cloud)."""
    if tier == "local":
        return x.get("local_compute_ms", 0.0) + x.get("local_queue_ms", 0.0)
    extra = x.get("edge_queue_low_priority_ms", 0.0) if tier == "edge" else 0.0
    return physics_ms(x, tier) + x.get("rtt_ms", 0.0) + extra


def tier_terms(x: Mapping, tier: str) -> list[float]:
    """The tier's terms of ``x`` in :data:`TIER_TERMS` order (absent features count 0)."""
    g = x.get
    if tier == "local":
        queue = g("local_queue_ms", 0.0)
        return [g("local_compute_ms", 0.0) + queue, g("local_backlog_ms", queue) - queue, 1.0]
    return [1.0 if k == "bias" else g(k, 0.0) for k in TIER_TERMS[tier]]


class ResidualLatencyModel(base.Regressor):
    """Per-tier latency (ms) = physics estimate corrected online; ``x["tier"]`` routes (see the module docstring).

    ``predict_tiers(x)`` predicts every tier at once (what a placement needs) and ``mae(tier)`` is the
    running mean absolute error, as for :class:`~tiertwin.pipelines.learners.DemandLatencyModel`.

    Parameters
    ----------
    forgetting
        RLS forgetting factor per example of a tier.
    error_decay
        Weight of the newest absolute error in the running mean absolute error.
    """

    def __init__(self, forgetting: float = 0.998, error_decay: float = 0.02):
        self.forgetting = forgetting
        self.error_decay = error_decay
        self._fits = {tier: self._fresh_fit(tier) for tier in TIER_TERMS}
        self._mae = {tier: 5.0 for tier in TIER_TERMS}
        self.n_learned = 0
        self._init_guard()

    def _init_guard(self) -> None:
        # The physics prior, never learning, and the gate: per tier, the running MAE of each candidate of GATE, the
        # one predicting now (the fit to start with: a pretrained one was judged before it shipped, a fresh one is
        # physics + queue) and the running mean's [sum, count] (dense-urban-xr's device:
        # physics + queue is exact but for preemption, and the fit, pulled by that one-sided tail, was 1 % worse).
        self._priors = {tier: self._fresh_fit(tier) for tier in TIER_TERMS}
        self._gate = {tier: [0.0] * len(GATE) for tier in TIER_TERMS}
        self._choice = {tier: 0 for tier in TIER_TERMS}
        # per tier: [outcomes since the last switch, [running MAE difference to the current], [running |difference|]]
        self._versus = {tier: [0, [0.0] * len(GATE), [0.0] * len(GATE)] for tier in TIER_TERMS}
        self._mean = {tier: [0.0, 0] for tier in TIER_TERMS}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "_gate" not in state:        # pickled before the gate (or the guard before it)
            self._init_guard()
            self.__dict__.pop("_guard", None)

    def _fresh_fit(self, tier: str) -> RecursiveLeastSquares:
        terms = TIER_TERMS[tier]
        return RecursiveLeastSquares(tuple(terms), terms, forgetting=self.forgetting, **FIT_CLIPS[tier],
                                     non_negative=tuple(k for k in terms if k != "bias"))

    def released(self, forgetting: float = 0.998, forget: tuple[str, ...] = ("local",)) -> "ResidualLatencyModel":
        """This model ready to ship after pretraining: the tiers in ``forget`` back at the physics prior (a device's
        speed belongs to the device, not to the training fleet), the others keeping their weights with their
        uncertainty reset to the prior's, so they adapt at once to the network they land in; ``forgetting`` from now on."""
        self.forgetting = forgetting
        self._init_guard()
        for tier, fit in self._fits.items():
            if tier in forget:
                self._fits[tier] = self._fresh_fit(tier)
                continue
            fit.forgetting = self.forgetting
            d = len(fit.features)
            fit.cov = [[fit.prior_variance if i == j else 0.0 for j in range(d)] for i in range(d)]
        return self

    def _tier(self, x: Mapping) -> str:
        tier = x.get("tier")
        if tier not in self._fits:
            raise ValueError(f"x['tier'] must be one of {sorted(self._fits)}, got {tier!r}")
        return tier

    def chosen(self, tier: str) -> str:
        """The candidate of :data:`GATE` predicting the tier now."""
        return GATE[self._choice[tier]]

    def _candidate(self, x: Mapping, tier: str, choice: int) -> float:
        """The prediction of candidate ``GATE[choice]``."""
        if choice < 2:
            return self._predict(x, tier, choice == 0)
        if choice == 2:
            return physics_ms(x, tier)
        if choice == 3:
            return richest_physics_ms(x, tier)
        total, n = self._mean[tier]
        return total / n if n else 0.0

    def _predict(self, x: Mapping, tier: str, fitted: bool | None = None) -> float:
        if fitted is None:      # the gate's choice (a naive baseline that has been doing better lately)
            choice = self._choice[tier]
            if choice > 1:
                return self._candidate(x, tier, choice)
            fitted = choice == 0
        fit = self._fits[tier] if fitted else self._priors[tier]
        try:
            value = fit.predict_vector(tier_terms(x, tier))
        except TypeError:   # a feature that is not a number: as if absent
            x = {k: v for k, v in x.items() if isinstance(v, (int, float))}
            value = fit.predict_vector(tier_terms(x, tier))
        floor = 0.0
        for k in FLOOR_TERMS[tier]:
            floor += x.get(k, 0.0)
        floor *= FLOOR_FACTOR
        return value if value > floor else floor

    def predict_one(self, x: dict) -> float:
        return self._predict(x, self._tier(x))

    def predict_tiers(self, x: Mapping) -> dict[str, float]:
        """Predicted latency at every tier for the same features (``x["tier"]`` not needed).

        A placement asks this for every demand, on the device: the same arithmetic as :meth:`predict_one`,
        written out: 4.1 us a call against 12.8 us through :meth:`predict_one`'s path, and 7.8 us for the folded
        DemandLatencyModel (loaded 2-core machine, 2026-12-03). A feature missing or not a number takes the
        general path."""
        out = {}
        choices = self._choice
        try:
            for tier, fit in self._fits.items():
                choice = choices[tier]
                if choice > 1:
                    out[tier] = self._candidate(x, tier, choice)
                    continue
                w = (fit if choice == 0 else self._priors[tier]).used
                if tier == "local":
                    queue = x["local_queue_ms"]
                    value = w[0] * (x["local_compute_ms"] + queue) + w[1] * (x.get("local_backlog_ms", queue) - queue) + w[2]
                    floor = FLOOR_FACTOR * x["local_compute_ms"]
                else:
                    value = 0.0
                    for k, wk in zip(fit.features, w):
                        value += wk if k == "bias" else wk * x[k]
                    floor = 0.0
                    for k in FLOOR_TERMS[tier]:
                        floor += x[k]
                    floor *= FLOOR_FACTOR
                out[tier] = value if value > floor else floor
        except (KeyError, TypeError):
            return {tier: self._predict(x, tier) for tier in self._fits}
        return out

    def learn_one(self, x: dict, y: float) -> None:
        tier = self._tier(x)
        y = float(y)
        # Every candidate's prediction once (the cloud trainer learns tens of thousands of examples a window):
        # the gate's choice among them is what _predict gives, and the fit and the prior share their terms.
        predictions = self._candidates(x, tier)
        error = abs(predictions[self._choice[tier]] - y)
        if math.isfinite(error):
            self._mae[tier] += self.error_decay * (error - self._mae[tier])
        self._weigh(x, tier, y, predictions)
        if math.isfinite(y):
            mean = self._mean[tier]
            mean[0] += y
            mean[1] += 1
        self._fits[tier].learn_vector(tier_terms(x, tier), y)
        self.n_learned += 1

    def _candidates(self, x: Mapping, tier: str) -> list[float]:
        """``[self._candidate(x, tier, i) for i in range(len(GATE))]``, the same numbers with the terms made once."""
        fit, prior = self._fits[tier], self._priors[tier]
        try:
            phi = tier_terms(x, tier)
            fitted, physics = fit.predict_vector(phi), prior.predict_vector(phi)
        except TypeError:   # a feature that is not a number: each prediction its own way, as _predict does
            fitted, physics = self._predict(x, tier, True), self._predict(x, tier, False)
        else:
            floor = 0.0
            for k in FLOOR_TERMS[tier]:
                floor += x.get(k, 0.0)
            floor *= FLOOR_FACTOR
            fitted = fitted if fitted > floor else floor
            physics = physics if physics > floor else floor
        total, n = self._mean[tier]
        return [fitted, physics, physics_ms(x, tier), richest_physics_ms(x, tier), total / n if n else 0.0]

    def _weigh(self, x: Mapping, tier: str, y: float, predictions: list[float] | None = None) -> None:
        """The gate: score every candidate on the outcome and switch if one has earned it (see GATE_MARGIN)."""
        gate, current = self._gate[tier], self._choice[tier]
        versus = self._versus[tier]
        if predictions is None:
            predictions = [self._candidate(x, tier, i) for i in range(len(GATE))]
        if not all(map(math.isfinite, predictions)) or not math.isfinite(y):
            return
        errors = [abs(p - y) for p in predictions]
        versus[0] += 1
        for i, (p, e) in enumerate(zip(predictions, errors)):
            gate[i] += GUARD_DECAY * (e - gate[i])
            versus[1][i] += GUARD_DECAY * (e - errors[current] - versus[1][i])
            versus[2][i] += GUARD_DECAY * (abs(p - predictions[current]) - versus[2][i])
        eligible = self._fits[tier].n >= GATE_MIN_OUTCOMES
        candidates = range(0 if eligible else 1, len(GATE))
        if current == 0 and not eligible:           # a fresh fit: the best baseline so far
            best = min(candidates, key=gate.__getitem__)
        elif versus[0] >= GATE_MIN_OUTCOMES:
            best = min(candidates, key=lambda i: versus[1][i] + GATE_MARGIN * versus[2][i])
            gain = GATE_GAIN_TO_FIT if best == 0 else GATE_GAIN
            if versus[1][best] + GATE_MARGIN * versus[2][best] >= 0.0 or gate[best] >= (1.0 - gain) * gate[current]:
                return
        else:
            return
        if best != current:
            self._choice[tier] = best
            self._versus[tier] = [0, [0.0] * len(GATE), [0.0] * len(GATE)]

    def mae(self, tier: str) -> float:
        """Running mean absolute error (ms) of the tier's predictions."""
        return self._mae[tier]

    def coefficients(self, tier: str) -> dict[str, float]:
        return self._fits[tier].coefficients()

    def effective_speed(self, tier: str) -> float:
        """The compute speed (Gcycles/s) the tier's fit implies: nominal / weight on its compute term."""
        term, nominal = COMPUTE_TERM[tier]
        weight = self._fits[tier].coefficients()[term]
        return nominal / weight if weight > 1e-9 else math.inf
