"""River-shaped online learners of the local and edge twins.

* :class:`DemandLatencyModel` predicts a demand's end-to-end latency at a tier,
  routing to one online regressor per tier by ``x["tier"]``.
* :class:`HandoverForecaster` forecasts a cell's SINR a short horizon ahead.
* :class:`ShareAllocator` picks a PRB or MEC share for a cell with a contextual
  bandit (River ``LinUCBDisjoint``), rewarded from measured outcomes.

Every model is named (the key on ``tiertwin.models``); :func:`default_model`
returns a fresh, untrained one per name, for the cloud trainer when no model is live.

>>> model = default_model(DEMAND_LATENCY)
>>> x = {"uplink_ms": 4.0, "downlink_ms": 2.0, "rtt_ms": 8.0, "edge_compute_ms": 5.0,
...      "edge_queue_ms": 1.0, "tier": "edge"}
>>> for _ in range(300):
...     model.learn_one(x, 20.0)
>>> round(model.predict_one(x))
20
"""

from __future__ import annotations

import math
from typing import Mapping

from river import bandit, base, compose, linear_model, optim, preprocessing

DEMAND_LATENCY = "demand-latency"
HANDOVER = "handover-sinr"
PRB_SHARE = "prb-share"
MEC_SHARE = "mec-share"
MODEL_NAMES = (DEMAND_LATENCY, HANDOVER, PRB_SHARE, MEC_SHARE)

# Which features explain latency at each tier; others would only add noise to a linear fit.
TIER_FEATURES: dict[str, tuple[str, ...]] = {
    "local": ("local_compute_ms", "local_queue_ms", "local_backlog_ms", "cpu_util"),
    "edge": ("uplink_ms", "downlink_ms", "congested_transfer_ms", "rtt_ms", "edge_compute_ms", "edge_queue_ms", "edge_queue_low_priority_ms",
             "prb_utilization", "mec_utilization", "sinr_db"),
    "cloud": ("uplink_ms", "downlink_ms", "congested_transfer_ms", "rtt_ms", "cloud_compute_ms", "prb_utilization",
              "sinr_db", "input_kb", "output_kb"),
}


STANDARD_CLIP = 20.0


def clip_standardized(x: dict) -> dict:
    """Standardized features beyond +-20 sigma are held there: a linear fit must not extrapolate without bound."""
    return {k: STANDARD_CLIP if v > STANDARD_CLIP else -STANDARD_CLIP if v < -STANDARD_CLIP else v for k, v in x.items()}


def _scaled_linear(lr: float = 0.02) -> base.Regressor:
    # Latency is heavy-tailed (a 5 MB download on a weak link): clipping the loss gradient keeps
    # one outlier from throwing the weights off (a Huber-like update).
    return (preprocessing.StandardScaler() | compose.FuncTransformer(clip_standardized)
            | linear_model.LinearRegression(optimizer=optim.SGD(lr), intercept_lr=lr * 5, clip_gradient=10.0))


# The part of the latency physics alone guarantees: moving the bytes and running the cycles at nominal speed.
PHYSICS_FLOOR_TERMS: dict[str, tuple[str, ...]] = {
    "local": ("local_compute_ms",),
    "edge": ("uplink_ms", "downlink_ms", "edge_compute_ms"),
    "cloud": ("uplink_ms", "downlink_ms", "cloud_compute_ms"),
}


class DemandLatencyModel(base.Regressor):
    """Per-tier online regression of a demand's latency in ms.

    ``learn_one(x, y)`` and ``predict_one(x)`` take the features of
    :func:`~tiertwin.pipelines.features.demand_features` plus ``x["tier"]``
    (``"local"`` / ``"edge"`` / ``"cloud"``); extra keys are ignored. It also keeps a
    running mean absolute error per tier, the scale of its confidence.

    Parameters
    ----------
    regressor
        Prototype cloned for every tier (default: StandardScaler | LinearRegression).
    error_decay
        Weight of the newest absolute error in the running mean absolute error.
    floor_factor
        A prediction is never below this share of the physics estimate (bytes over the link, cycles
        at nominal speed), so a fit learned on a quiet network cannot promise the impossible on a busy one.
    """

    def __init__(self, regressor: base.Regressor | None = None, error_decay: float = 0.02, floor_factor: float = 0.5):
        self.regressor = regressor
        self.error_decay = error_decay
        self.floor_factor = floor_factor
        prototype = regressor if regressor is not None else _scaled_linear()
        self._per_tier = {tier: prototype.clone() for tier in TIER_FEATURES}
        self._mae = {tier: 5.0 for tier in TIER_FEATURES}
        self.n_learned = 0

    @staticmethod
    def _select(x: Mapping, tier: str) -> dict[str, float]:
        return {k: float(x[k]) for k in TIER_FEATURES[tier] if k in x}

    def _tier(self, x: Mapping) -> str:
        tier = x.get("tier")
        if tier not in self._per_tier:
            raise ValueError(f"x['tier'] must be one of {sorted(self._per_tier)}, got {tier!r}")
        return tier

    def learn_one(self, x: dict, y: float) -> None:
        tier = self._tier(x)
        features = self._select(x, tier)
        error = abs(self._per_tier[tier].predict_one(features) - y)
        if math.isfinite(error):
            self._mae[tier] += self.error_decay * (error - self._mae[tier])
        self._per_tier[tier].learn_one(features, float(y))
        self.n_learned += 1

    def _predict(self, x: Mapping, tier: str) -> float:
        floor = self.floor_factor * sum(float(x.get(k, 0.0)) for k in PHYSICS_FLOOR_TERMS[tier])
        return max(floor, self._per_tier[tier].predict_one(self._select(x, tier)))

    def predict_one(self, x: dict) -> float:
        return self._predict(x, self._tier(x))

    def predict_tiers(self, x: Mapping) -> dict[str, float]:
        """Predicted latency at every tier for the same features (``x["tier"]`` not needed)."""
        return {tier: self._predict(x, tier) for tier in self._per_tier}

    def mae(self, tier: str) -> float:
        """Running mean absolute error (ms) of the tier's regressor."""
        return self._mae[tier]


def deadline_confidence(predicted_ms: float, deadline_ms: float, mae_ms: float) -> float:
    """P(latency <= deadline) if the error is Laplace with mean absolute error ``mae_ms``.

    >>> deadline_confidence(10.0, 20.0, 5.0) > 0.9, deadline_confidence(20.0, 20.0, 5.0)
    (True, 0.5)
    """
    slack = (deadline_ms - predicted_ms) / max(mae_ms, 1e-3)
    return 1.0 - 0.5 * math.exp(-slack) if slack >= 0 else 0.5 * math.exp(slack)


class HandoverForecaster(base.Regressor):
    """Forecast of a cell's SINR (dB) ``x["horizon_s"]`` ahead.

    It learns the *change* of SINR from the features of
    :func:`~tiertwin.pipelines.features.sinr_forecast_features`, so an untrained
    forecaster is the persistence forecast and learning can only add the trend.

    >>> from tiertwin.pipelines.features import sinr_forecast_features
    >>> f = HandoverForecaster()
    >>> x = sinr_forecast_features(10.0, -4.0, 1.0, 0.5)
    >>> f.predict_one(x)
    10.0
    >>> for _ in range(500):
    ...     f.learn_one(x, 8.0)
    >>> round(f.predict_one(x), 1)
    8.0
    """

    def __init__(self, regressor: base.Regressor | None = None):
        self.regressor = regressor
        self._delta = (regressor if regressor is not None else _scaled_linear(0.02)).clone()
        self.n_learned = 0

    FEATURES = ("trend_x_h", "speed_x_h", "horizon_s", "sinr_db")

    def _select(self, x: Mapping) -> dict[str, float]:
        return {k: float(x[k]) for k in self.FEATURES if k in x}

    def learn_one(self, x: dict, y: float) -> None:
        self._delta.learn_one(self._select(x), float(y) - float(x["sinr_db"]))
        self.n_learned += 1

    def predict_one(self, x: dict) -> float:
        if self.n_learned == 0:
            return float(x["sinr_db"])
        return float(x["sinr_db"]) + self._delta.predict_one(self._select(x))


class ShareAllocator:
    """Contextual bandit choosing a resource share for a cell (LinUCB, disjoint arms).

    Arms are the share levels; the context is :func:`~tiertwin.pipelines.features.cell_context`;
    the reward (higher is better) comes from measured outcomes.

    >>> allocator = ShareAllocator(shares=(0.5, 1.0), seed=1)
    >>> ctx = {"bias": 1.0, "prb_utilization": 0.9}
    >>> for _ in range(30):
    ...     allocator.update(1.0, ctx, 1.0)
    ...     allocator.update(0.5, ctx, 0.0)
    >>> allocator.pull(ctx)
    1.0
    """

    def __init__(self, shares: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0), alpha: float = 1.0,
                 seed: int | None = 0):
        self.shares = shares
        self.alpha = alpha
        self.seed = seed
        self.policy = bandit.LinUCBDisjoint(alpha=alpha, seed=seed)
        self.n_updates = 0

    def _arm(self, share: float) -> str:
        return f"{share:g}"

    def pull(self, context: dict) -> float:
        arm = self.policy.pull([self._arm(s) for s in self.shares], context)
        return float(arm)

    def update(self, share: float, context: dict, reward: float) -> None:
        self.policy.update(self._arm(share), context, float(reward))
        self.n_updates += 1

    def expected_reward(self, share: float, context: dict) -> float:
        """The posterior mean reward of ``share`` in ``context`` (no exploration bonus)."""
        return self.policy._bayes_lin_regs[self._arm(share)].predict_one(context)


def allocation_reward(deadline_met_rate: float, share: float, share_cost: float = 0.3) -> float:
    """Reward of an allocation: the share of demands that met their deadline, minus what the share costs.

    >>> allocation_reward(1.0, 0.5)
    0.85
    """
    return float(deadline_met_rate) - share_cost * float(share)


def default_model(name: str):
    """A fresh, untrained model for ``name`` (one of :data:`MODEL_NAMES`)."""
    factories = {DEMAND_LATENCY: DemandLatencyModel, HANDOVER: HandoverForecaster,
                 PRB_SHARE: ShareAllocator, MEC_SHARE: ShareAllocator}
    if name not in factories:
        raise KeyError(f"unknown model name {name!r}; known: {sorted(factories)}")
    return factories[name]()
