"""The models the cloud twin can train, in one registry: what each learns from and how its examples are made.

No Beam here: the config validates model names against :data:`TRAINABLE`, and
:mod:`~tiertwin.pipelines.cloud.training` trains whatever it names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from tiertwin.pipelines.cloud.streams import DECISIONS, OUTCOMES, STREAMS, SUMMARIES
from tiertwin.pipelines.models import parameters_to_features

PLACEMENT_TIERS = ("local", "edge", "cloud")


def placement_features(decision: dict) -> tuple[str, dict] | None:
    """``(decision_id, x)`` of a placement decision, ``x["tier"]`` = where it placed; None otherwise."""
    if decision["kind"] != "placement" or decision["target"] not in PLACEMENT_TIERS:
        return None
    x: dict[str, Any] = parameters_to_features(decision["parameters"])
    x["tier"] = decision["target"]
    return decision["decision_id"], x


def measured_latency(outcome: dict) -> tuple[str, float] | None:
    """``(decision_id, latency_ms)`` of an outcome that measured a decision's demand; None otherwise."""
    if outcome.get("decision_id") is None or outcome.get("latency_ms") is None:
        return None
    return outcome["decision_id"], float(outcome["latency_ms"])


def join_examples(placements: Iterable[tuple[str, dict]], latencies: Iterable[tuple[str, float]]) -> list:
    """``(x, y)`` pairs: each placement with the latency measured for the same decision_id."""
    latency = dict(latencies)
    return [(x, latency[did]) for did, x in placements if did in latency]


def forecast_fields(summary: dict) -> tuple:
    """What the SINR forecaster learns from in a LocalSummary."""
    return (summary["ue_id"], summary["serving_cell"], summary["window_end_ms"], summary["sinr_db"],
            summary["sinr_trend_db_per_s"], summary["speed_mps"])


def forecast_examples(summaries: Iterable[tuple]) -> list[tuple[dict, float]]:
    """``(x, y)`` for the handover SINR forecaster, as the edge twin learns it: each UE's
    consecutive summaries in the same cell, 0 < dt <= 5 s apart; x from the earlier one
    (:func:`~tiertwin.pipelines.features.sinr_forecast_features` with horizon dt), y = the later SINR.

    >>> forecast_examples([("ue-1", 3, 1000, 10.0, -2.0, 5.0), ("ue-1", 3, 1500, 9.0, -2.0, 5.0)])
    [({'trend_x_h': -1.0, 'speed_x_h': 2.5, 'horizon_s': 0.5, 'sinr_db': 10.0}, 9.0)]
    """
    from tiertwin.pipelines.features import sinr_forecast_features

    by_ue: dict[str, list[tuple]] = {}
    for summary in summaries:
        by_ue.setdefault(summary[0], []).append(summary)
    examples = []
    for series in by_ue.values():
        series.sort(key=lambda f: f[2])
        for (_, cell, t0, sinr, trend, speed), (_, next_cell, t1, next_sinr, _, _) in zip(series, series[1:]):
            dt = (t1 - t0) / 1000.0
            if next_cell == cell and 0 < dt <= 5.0:
                examples.append((sinr_forecast_features(sinr, trend, speed, dt), float(next_sinr)))
    return examples


@dataclass(frozen=True)
class TrainableModel:
    """One model the cloud twin trains.

    ``inputs``: each fused stream it learns from, with what of a record it keeps (None: nothing);
    ``examples``: the ``(x, y)`` pairs of a window from those kept rows, by stream;
    ``error_unit``: the unit of its error in the metric names (``mae_ms``, ``live_mae_db``, ...).
    """

    name: str
    error_unit: str
    inputs: dict[str, Callable[[dict], Any]]
    examples: Callable[[dict[str, list]], list[tuple[dict, float]]]


def _latency_examples(rows: dict[str, list]) -> list[tuple[dict, float]]:
    return join_examples(rows.get(DECISIONS, ()), rows.get(OUTCOMES, ()))


def _forecast_examples(rows: dict[str, list]) -> list[tuple[dict, float]]:
    return forecast_examples(rows.get(SUMMARIES, ()))


TRAINABLE: dict[str, TrainableModel] = {m.name: m for m in (
    TrainableModel("demand-latency", "ms", {DECISIONS: placement_features, OUTCOMES: measured_latency},
                   _latency_examples),
    TrainableModel("handover-sinr", "db", {SUMMARIES: forecast_fields}, _forecast_examples),
)}


def training_schemas(model_names: Iterable[str]) -> set[str]:
    """The record schemas the given models learn from.

    >>> sorted(training_schemas(["demand-latency"]))
    ['Decision', 'Outcome']
    """
    return {schema for schema, stream in STREAMS.items() for name in model_names if stream in TRAINABLE[name].inputs}


def training_examples(decisions: Iterable[dict], outcomes: Iterable[dict]) -> list[tuple[dict, float]]:
    """``(x, y)`` for each placement decision that has a measured outcome (joined by decision_id).

    >>> from tiertwin.schemas.examples import example
    >>> d = example("Decision", parameters={"x_rtt_ms": 8.0, "predicted_latency_ms": 12.5})
    >>> training_examples([d], [example("Outcome")])
    [({'rtt_ms': 8.0, 'tier': 'edge'}, 13.25)]
    """
    placements = [p for p in map(placement_features, decisions) if p is not None]
    return join_examples(placements, [m for m in map(measured_latency, outcomes) if m is not None])
