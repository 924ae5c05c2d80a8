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
import random
from typing import Mapping

from river import base, compose, linear_model, optim, preprocessing

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


_STALE = object()   # no fold built since the regressor last learned


def fold_scaled_linear(regressor: base.Regressor, features: tuple[str, ...]) -> tuple | None:
    """The prediction of a ``StandardScaler | clip_standardized | LinearRegression`` pipeline as plain numbers.

    Returns ``(terms, intercept)``, one ``(feature, mean, std, weight)`` term per feature with a
    variance, in ``features`` order; :func:`predict_folded` computes from them exactly what River's
    ``predict_one`` computes (the same operations in the same order), without the scaled and clipped
    dicts River builds per call. None if ``regressor`` has another shape (its own ``predict_one`` is used).
    The terms are a snapshot: they are stale as soon as the regressor learns.

    >>> reg = _scaled_linear()
    >>> for i in range(50):
    ...     reg.learn_one({"a": float(i % 7), "b": float(i % 3)}, 2.0 * (i % 7) - (i % 3))
    >>> x = {"a": 3.5, "b": 1.0}
    >>> predict_folded(fold_scaled_linear(reg, ("a", "b")), x) == reg.predict_one(x)
    True
    """
    if type(regressor) is not compose.Pipeline or len(regressor.steps) != 3:
        return None
    scaler, clip, linear = regressor.steps.values()
    if not (type(scaler) is preprocessing.StandardScaler and scaler.with_std and scaler.window_size is None
            and type(clip) is compose.FuncTransformer and clip.func is clip_standardized
            and type(linear) is linear_model.LinearRegression and type(linear.loss) is optim.losses.Squared):
        return None
    means, variances, weights = scaler.means, scaler.vars, linear._weights
    terms = []
    for k in features:
        variance, weight = variances.get(k, 0.0), weights.get(k)
        if weight is not None and not math.isfinite(weight):
            return None         # River's arithmetic on it (inf * 0.0 is nan) is not worth copying
        if not variance:
            continue            # River scales a feature without variance to 0.0: it adds nothing
        if weight is None:
            return None         # the scaler knows a feature the regression never learned (not via the pipeline)
        terms.append((k, means[k], variance ** 0.5, weight))
    return tuple(terms), linear.intercept


def predict_folded(fold: tuple, x: Mapping, clip: float = STANDARD_CLIP) -> float:
    """What the folded pipeline predicts for ``x`` (see :func:`fold_scaled_linear`); KeyError if a feature is absent."""
    terms, intercept = fold
    total = 0.0
    for k, mean, std, weight in terms:
        z = (x[k] - mean) / std
        if z > clip:
            z = clip
        elif z < -clip:
            z = -clip
        total += weight * z
    return total + intercept


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
        self._folds: dict[str, tuple | None] = {}

    # The folds (see _fold) are a cache of the regressors' state: never pickled, rebuilt on first use.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_folds", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._folds = {}

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
        self._folds.pop(tier, None)
        self.n_learned += 1

    def _fold(self, tier: str) -> tuple | None:
        """The tier's regressor as plain numbers (:func:`fold_scaled_linear`), rebuilt after the tier learns.

        A placement predicts all three tiers, per demand, on the device. River's way builds three dicts
        per tier (the selected, scaled and clipped features); the fold computes the same numbers straight
        from the features: ``predict_tiers`` 4 us against 12 us for the three bare ``predict_one`` calls, and
        place() p50 19-23 us instead of 31-43 us in ``tiertwin bench local`` (2026-12-02, loaded 2-core machine).
        None: the regressor has another shape, River's ``predict_one`` is used.
        """
        fold = self._folds.get(tier, _STALE)
        if fold is _STALE:
            fold = self._folds[tier] = fold_scaled_linear(self._per_tier[tier], TIER_FEATURES[tier])
        return fold

    def _predict(self, x: Mapping, tier: str) -> float:
        if compose.Pipeline._LEARN_UNSUPERVISED_DURING_PREDICT:
            self._folds.clear()     # River's predict_one below updates the scalers: the folds go stale
        else:
            fold = self._fold(tier)
            if fold is not None:
                try:
                    floor = 0.0
                    for k in PHYSICS_FLOOR_TERMS[tier]:
                        floor += x[k]
                    return max(self.floor_factor * floor, predict_folded(fold, x))
                except (KeyError, TypeError):
                    pass    # a feature missing or not a number: River's way below makes of it what it always did
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

    Arms are the share levels, each with its own Bayesian linear regression of the reward on the
    context (:func:`~tiertwin.pipelines.features.cell_context`); a pull takes the arm with the
    highest upper bound (posterior mean + one standard deviation), ties broken at random. This is
    River's ``bandit.LinUCBDisjoint``, owned here so that :meth:`expected_reward` can read an arm's
    posterior through River's public estimator API. The reward (higher is better) comes from
    measured outcomes.

    >>> allocator = ShareAllocator(shares=(0.5, 1.0), seed=1)
    >>> ctx = {"bias": 1.0, "prb_utilization": 0.9}
    >>> for _ in range(30):
    ...     allocator.update(1.0, ctx, 1.0)
    ...     allocator.update(0.5, ctx, 0.0)
    >>> allocator.pull(ctx)
    1.0
    >>> round(allocator.expected_reward(1.0, ctx), 2), round(allocator.expected_reward(0.5, ctx), 2)
    (0.98, 0.0)
    """

    def __init__(self, shares: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0), alpha: float = 1.0,
                 seed: int | None = 0):
        self.shares = shares
        self.alpha = alpha
        self.seed = seed
        self.arms = {self._arm(s): linear_model.BayesianLinearRegression(alpha=alpha) for s in shares}
        self._rng = random.Random(seed)
        self.n_updates = 0

    def __setstate__(self, state: dict) -> None:
        # Allocators pickled before the arms were owned here (shipped models, changelog checkpoints)
        # hold a river LinUCBDisjoint; its per-arm regressions and random state carry over unchanged.
        policy = state.pop("policy", None)
        if policy is not None:
            regressions = vars(policy)["_bayes_lin_regs"]
            state["arms"] = {self._arm(s): regressions.get(self._arm(s)) or
                             linear_model.BayesianLinearRegression(alpha=state["alpha"]) for s in state["shares"]}
            state["_rng"] = vars(policy)["_rng"]
        self.__dict__.update(state)

    @staticmethod
    def _arm(share: float) -> str:
        return f"{share:g}"

    def pull(self, context: dict) -> float:
        bounds = {}
        for share in self.shares:
            posterior = self.arms[self._arm(share)].predict_one(context, with_dist=True)
            bounds[share] = posterior.mu + posterior.sigma
        best = max(bounds.values())
        candidates = [share for share, bound in bounds.items() if bound == best]
        return float(self._rng.choice(candidates) if len(candidates) > 1 else candidates[0])

    def update(self, share: float, context: dict, reward: float) -> None:
        self.arms[self._arm(share)].learn_one(context, float(reward))
        self.n_updates += 1

    def expected_reward(self, share: float, context: dict) -> float:
        """The posterior mean reward of ``share`` in ``context`` (no exploration bonus)."""
        return self.arms[self._arm(share)].predict_one(context)

    # The regressor view of the same arms, ``x`` = the context plus ``"share"``, ``y`` = the reward: how the
    # model lifecycle scores a shadow allocator beside the live one and how the cloud trains one
    # (docs/twins/model-lifecycle.md). Updating through it is updating the arm of that share.
    def learn_one(self, x: dict, y: float) -> None:
        share, context = self._split(x)
        self.update(share, context, y)

    def predict_one(self, x: dict) -> float:
        share, context = self._split(x)
        return self.expected_reward(share, context)

    @staticmethod
    def _split(x: dict) -> tuple[float, dict]:
        context = dict(x)
        return float(context.pop("share")), context


def allocation_reward(deadline_met_rate: float, share: float, share_cost: float = 0.3) -> float:
    """Reward of an allocation: the share of demands that met their deadline, minus what the share costs.

    >>> allocation_reward(1.0, 0.5)
    0.85
    """
    return float(deadline_met_rate) - share_cost * float(share)


def default_model(name: str):
    """A fresh, untrained model for ``name`` (one of :data:`MODEL_NAMES`).

    The demand-latency model is the residual on physics (:class:`~tiertwin.pipelines.latency.ResidualLatencyModel`)
    and the handover forecaster the horizon-learned RLS (:class:`~tiertwin.pipelines.forecasting.SinrForecaster`),
    the classes shipped in pipelines/pretrained (a model update must be of the live model's class).
    :class:`DemandLatencyModel` and :class:`HandoverForecaster` remain for the models pickled before (issue #19).
    """
    from tiertwin.pipelines.forecasting import SinrForecaster
    from tiertwin.pipelines.latency import ResidualLatencyModel

    factories = {DEMAND_LATENCY: ResidualLatencyModel, HANDOVER: SinrForecaster,
                 PRB_SHARE: ShareAllocator, MEC_SHARE: ShareAllocator}
    if name not in factories:
        raise KeyError(f"unknown model name {name!r}; known: {sorted(factories)}")
    return factories[name]()
