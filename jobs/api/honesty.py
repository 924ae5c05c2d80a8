"""The twin's honesty meter: per tier, the rolling MAE of the latency the local twins forecast beside the
physics baseline's, from the placements they publish and the outcomes that follow (issue #19).

A placement Decision carries ``predicted_{local,edge,cloud}_ms`` and its features (``x_*``); its
Outcome, the measured latency (and the decision wait, which no placement model predicts). The
baseline is the physics estimate from the same features (transfer + compute at nominal speed + the
queue ahead, :func:`~tiertwin.pipelines.latency.physics_estimate`), the naive rule a twin must beat.

>>> meter = HonestyMeter(window=10)
>>> meter.decision({"decision_id": "d1", "kind": "placement", "parameters": {"predicted_edge_ms": 9.0,
...     "x_uplink_ms": 2.0, "x_downlink_ms": 1.0, "x_edge_compute_ms": 1.0, "x_edge_queue_ms": 0.0}})
>>> meter.outcome({"kind": "demand", "decision_id": "d1", "placement": "edge", "latency_ms": 10.0,
...                "components_ms": {"decision": 0.5}})
>>> [(r["tier"], r["n"], r["model_mae_ms"], r["baseline_mae_ms"]) for r in meter.summary()]
[('edge', 1, 0.5, 5.5)]
"""

from __future__ import annotations

from collections import OrderedDict, deque

from tiertwin.pipelines.features import TIERS
from tiertwin.pipelines.latency import physics_estimate
from tiertwin.pipelines.models import parameters_to_features

BASELINE = "physics + queue"


class HonestyMeter:
    """Rolling (last ``window`` outcomes per tier) MAE of the model's latency forecasts and of the physics baseline's.

    ``decision(d)`` remembers a placement's forecasts (at most ``pending`` awaiting their outcome);
    ``outcome(o)`` scores them against a demand's measured latency; ``summary()`` is one row per tier seen.
    """

    def __init__(self, window: int = 500, pending: int = 20_000):
        self.window = window
        self.pending_limit = pending
        self.pending: OrderedDict[str, tuple[dict[str, float], dict[str, float]]] = OrderedDict()
        self.errors: dict[str, deque[tuple[float, float]]] = {}

    def decision(self, d: dict) -> None:
        if d.get("kind") != "placement":
            return
        parameters = d.get("parameters") or {}
        x = parameters_to_features(parameters)
        forecasts = {t: parameters[f"predicted_{t}_ms"] for t in TIERS if f"predicted_{t}_ms" in parameters}
        if not forecasts:
            return
        self.pending[d["decision_id"]] = (forecasts, {t: physics_estimate(x, t) for t in forecasts})
        while len(self.pending) > self.pending_limit:
            self.pending.popitem(last=False)

    def outcome(self, o: dict) -> None:
        if o.get("kind") != "demand" or o.get("latency_ms") is None or not o.get("decision_id"):
            return
        known = self.pending.pop(o["decision_id"], None)
        tier = o.get("placement")
        if known is None or tier not in known[0]:
            return
        forecasts, baselines = known
        latency = o["latency_ms"] - (o.get("components_ms") or {}).get("decision", 0.0)
        errors = self.errors.setdefault(tier, deque(maxlen=self.window))
        errors.append((abs(forecasts[tier] - latency), abs(baselines[tier] - latency)))

    def summary(self) -> list[dict]:
        rows = []
        for tier in TIERS:
            errors = self.errors.get(tier)
            if not errors:
                continue
            n = len(errors)
            model = sum(e for e, _ in errors) / n
            baseline = sum(b for _, b in errors) / n
            rows.append({"tier": tier, "n": n, "model_mae_ms": model, "baseline": BASELINE, "baseline_mae_ms": baseline,
                         "better_than_baseline": model <= baseline})
        return rows
