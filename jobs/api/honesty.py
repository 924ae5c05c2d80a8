"""The twin's honesty meters (issue #19): per tier, the rolling MAE of the latency the local twins forecast beside the
physics baseline's, from the placements they publish and the outcomes that follow (:class:`HonestyMeter`); and the
edge's SINR forecast at its horizon beside persistence's, from the summaries the local twins send (:class:`SinrMeter`).

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

from typing import Any

from tiertwin.pipelines.features import TIERS
from tiertwin.pipelines.latency import physics_estimate
from tiertwin.pipelines.models import parameters_to_features

BASELINE = "physics + queue"



def rolling_maes(errors) -> tuple[int, float, float]:
    """``(n, model MAE, baseline MAE)`` of ``(model error, baseline error)`` pairs."""
    n = len(errors)
    return n, sum(e for e, _ in errors) / n, sum(b for _, b in errors) / n

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
            if not (errors := self.errors.get(tier)):
                continue
            n, model, baseline = rolling_maes(errors)
            rows.append({"tier": tier, "n": n, "model_mae_ms": model, "baseline": BASELINE, "baseline_mae_ms": baseline,
                         "better_than_baseline": model <= baseline})
        return rows


REQUIRED = ("ue_id", "serving_cell", "window_end_ms", "sinr_db", "sinr_trend_db_per_s", "best_neighbour_cell",
            "speed_mps")


class SinrMeter:
    """Rolling (last ``window`` labels per target) MAE of the edge's SINR forecast ``horizon_s`` ahead and of persistence's.

    The API sees every LocalSummary the edge twins see, so it runs the edge's forecaster on them as an edge twin does
    (:class:`~tiertwin.pipelines.edge_twin.UEView`, :func:`~tiertwin.pipelines.edge_twin.forecast_features`, with the
    network's ``geometry`` when the API knows its scenario): it forecasts at each summary and, once the horizon has
    come, scores the forecast and persistence (the SINR at the forecast) against the SINR the cell then has
    (interpolated between the two summaries around it), and teaches the forecaster the label, as the edge does. The
    model is the shipped one (``pipelines/pretrained``) unless given: a replica of the edge's forecaster learning from
    the same summaries, not the edge's own object (a promoted cloud version is not followed). At most ``max_ues`` UEs
    are followed (the first seen), to keep the API's share of the work small.

    >>> from tiertwin.pipelines.forecasting import SinrForecaster
    >>> meter = SinrMeter(model=SinrForecaster(), horizon_s=0.5)
    >>> for k in range(20):      # a UE whose SINR falls 4 dB/s, a summary every 100 ms
    ...     meter.summary({"ue_id": "ue-1", "serving_cell": 3, "window_end_ms": 100 * k, "sinr_db": 20.0 - 0.4 * k,
    ...                    "sinr_trend_db_per_s": -4.0, "best_neighbour_cell": None, "speed_mps": 1.0})
    >>> [(r["target"], r["n"], round(r["baseline_mae_db"], 2)) for r in meter.rows()]
    [('sinr serving', 15, 2.0)]
    """

    def __init__(self, model: Any = None, horizon_s: float = 0.5, geometry: Any = None, window: int = 500,
                 max_ues: int = 200):
        if model is None:
            from tiertwin.pipelines.learners import HANDOVER
            from tiertwin.pipelines.pretrain import load_pretrained

            model = load_pretrained(HANDOVER)[0]
        self.model, self.horizon_s, self.geometry = model, horizon_s, geometry
        self.window, self.max_ues = window, max_ues
        self.views: dict[str, tuple[int, Any, deque]] = {}      # ue -> (serving cell, UEView, forecasts waiting)
        self.errors: dict[str, deque[tuple[float, float]]] = {}
        self.skipped = 0

    def summary(self, s: dict) -> None:
        """Take one LocalSummary: score and learn the forecasts whose horizon has come, forecast from this one."""
        from tiertwin.pipelines.edge_twin import UEView, forecast_features, summary_sinr

        if not all(k in s for k in REQUIRED):      # a partial record (a test's, a hand-made one): nothing to score
            self.skipped += 1
            return
        ue, cell = s["ue_id"], s["serving_cell"]
        known = self.views.get(ue)
        if known is None and len(self.views) >= self.max_ues:
            return
        if known is None or known[0] != cell:       # new here, or handed over: a new view, as at a new edge twin
            known = (cell, UEView(ue), deque(maxlen=64))
        _, view, waiting = known
        now_ms = s["window_end_ms"]
        if view.summaries and now_ms <= view.ts_ms:
            return
        serving_now, neighbour_now = summary_sinr(s)
        now_sinr = {cell: serving_now}
        if s.get("best_neighbour_cell") is not None and neighbour_now is not None:
            now_sinr.setdefault(s["best_neighbour_cell"], neighbour_now)
        before = {cell: view.sinr_db} if view.summaries else {}
        if view.summaries and view.neighbour is not None:
            before.setdefault(view.neighbour[0], view.neighbour[1])
        horizon_ms = self.horizon_s * 1000.0
        while waiting and now_ms - waiting[0][0] >= horizon_ms:
            t0, role, c, x, forecast = waiting.popleft()
            if c not in now_sinr or now_ms - t0 > horizon_ms + 200.0:
                continue
            label = now_sinr[c]
            if c in before and now_ms > view.ts_ms:     # the SINR at exactly t0 + horizon
                share = min(max((t0 + horizon_ms - view.ts_ms) / (now_ms - view.ts_ms), 0.0), 1.0)
                label = before[c] + share * (label - before[c])
            errors = self.errors.setdefault(f"sinr {role}", deque(maxlen=self.window))
            errors.append((abs(forecast - label), abs(x["sinr_db"] - label)))
            self.model.learn_one(x, label)
        view.update(s)
        loads = None if self.geometry is None else self.geometry.loads({})
        for role, c, x in forecast_features(view, cell, self.horizon_s, self.geometry, loads):
            waiting.append((now_ms, role, c, x, self.model.predict_one(x)))
        self.views[ue] = known

    def rows(self) -> list[dict]:
        """One row per SINR target scored: its rolling MAEs (dB), the forecaster's and persistence's."""
        rows = []
        for target in ("sinr serving", "sinr neighbour"):
            if not (errors := self.errors.get(target)):
                continue
            n, model, baseline = rolling_maes(errors)
            rows.append({"tier": "edge", "target": target, "n": n, "model_mae_db": model, "baseline": "persistence",
                         "baseline_mae_db": baseline, "horizon_s": self.horizon_s,
                         "better_than_baseline": model <= baseline})
        return rows
