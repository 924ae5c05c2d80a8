"""The models the cloud twin can train, in one registry: what each learns from and how its examples are made.

No Beam here: the config validates model names against :data:`TRAINABLE`, and
:mod:`~tiertwin.pipelines.cloud.training` trains whatever it names.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from tiertwin.pipelines.cloud.streams import DECISIONS, OUTCOMES, STREAMS, SUMMARIES
from tiertwin.pipelines.models import FEATURE_PREFIX, parameters_to_features

PLACEMENT_TIERS = ("local", "edge", "cloud")


def placement_features(decision: dict) -> tuple[str, dict] | None:
    """``(decision_id, x)`` of a placement decision, ``x["tier"]`` = where it placed; None otherwise."""
    return _placement(decision["kind"], decision["target"], decision["decision_id"], decision["parameters"])


def _placement(kind: str, target: str, decision_id: str, parameters: dict) -> tuple[str, dict] | None:
    if kind != "placement" or target not in PLACEMENT_TIERS:
        return None
    x: dict[str, Any] = _features(parameters)
    x["tier"] = _TIERS[target]
    return decision_id, x


_TIERS = {tier: tier for tier in PLACEMENT_TIERS}   # one str object per tier, whichever decoder made the record
_FEATURE_KEYS: dict[str, str | None] = {}


def _features(parameters: dict) -> dict[str, float]:
    """:func:`~tiertwin.pipelines.models.parameters_to_features`, with one key object per feature name: the
    training examples of a window are pickled (and unpickled) once or twice on their way to the trainer, and
    pickle writes a key it has seen as a reference (a placement's x pickled in 2.5 us instead of 5.6 here).

    >>> _features({"x_rtt_ms": 8.0, "share": 0.5}) == parameters_to_features({"x_rtt_ms": 8.0, "share": 0.5})
    True
    """
    keys = _FEATURE_KEYS
    x = {}
    for k, v in parameters.items():
        name = keys.get(k, False)
        if name is False:
            name = keys[k] = sys.intern(k[len(FEATURE_PREFIX):]) if k.startswith(FEATURE_PREFIX) else None
            if len(keys) > 10_000:      # names are a small fixed set; never let odd ones grow it without bound
                keys.clear()
        if name is not None:
            x[name] = v
    return x


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


def forecast_examples(summaries: Iterable[tuple], horizon_s: float = 0.5,
                      slack_s: float = 0.2) -> list[tuple[dict, float]]:
    """``(x, y)`` for the handover SINR forecaster, as the edge twin learns it: at the horizon it is asked for.
    For each summary, x = :func:`~tiertwin.pipelines.features.sinr_forecast_features` at ``horizon_s`` and
    y = the UE's SINR ``horizon_s`` later in the same cell, interpolated between the two summaries around
    that moment (none if the UE left the cell first, or the next summary is more than ``slack_s`` late).

    >>> [(x["horizon_s"], x["sinr_db"], x["trend_x_h"], y)
    ...  for x, y in forecast_examples([("ue-1", 3, 1000, 10.0, -2.0, 5.0), ("ue-1", 3, 1500, 9.0, -2.0, 5.0)])]
    [(0.5, 10.0, -1.0, 9.0)]
    >>> [y for _, y in forecast_examples([("u", 3, 0, 10.0, 0.0, 1.0), ("u", 3, 400, 8.0, 0.0, 1.0),
    ...                                   ("u", 3, 600, 6.0, 0.0, 1.0)])]
    [7.0]
    """
    from tiertwin.pipelines.features import sinr_forecast_features

    by_ue: dict[str, list[tuple]] = {}
    for summary in summaries:
        by_ue.setdefault(summary[0], []).append(summary)
    horizon_ms, slack_ms = horizon_s * 1000.0, slack_s * 1000.0
    examples = []
    for series in by_ue.values():
        series.sort(key=lambda f: f[2])
        # The summary at the horizon: the first one after i at or past t0 + horizon, or in another cell. Searched
        # (bisect on the times, and each summary's next cell change) rather than stepped through: a UE reporting
        # every 10 ms has 50 summaries within a 0.5 s horizon.
        n = len(series)
        times = [f[2] for f in series]
        next_cell = [n] * n
        for k in range(n - 2, -1, -1):
            next_cell[k] = k + 1 if series[k + 1][1] != series[k][1] else next_cell[k + 1]
        for i, (_, cell, t0, sinr, trend, speed) in enumerate(series):
            due = t0 + horizon_ms
            j = min(bisect_left(times, due, i + 1), next_cell[i])
            if j == n or series[j][1] != cell or series[j][2] - t0 > horizon_ms + slack_ms:
                continue
            (_, _, t_before, sinr_before, _, _), (_, _, t_after, sinr_after, _, _) = series[j - 1], series[j]
            share = (due - t_before) / (t_after - t_before) if t_after > t_before else 1.0
            examples.append((sinr_forecast_features(sinr, trend, speed, horizon_s),
                             float(sinr_before + share * (sinr_after - sinr_before))))
    return examples


@dataclass(frozen=True)
class TrainableModel:
    """One model the cloud twin trains.

    ``inputs``: each fused stream it learns from, with what of a record it keeps (None: nothing);
    ``examples``: the ``(x, y)`` pairs of a window from those kept rows, by stream;
    ``error_unit``: the unit of its error in the metric names (``mae_ms``, ``live_mae_db``, ...);
    ``baseline``: the naive forecast the model must beat, if it has one (its MAE is published beside the model's
    as ``baseline_mae_<unit>``: docs/evaluation/fidelity.md).
    """

    name: str
    error_unit: str
    inputs: dict[str, Callable[[dict], Any]]
    examples: Callable[[dict[str, list]], list[tuple[dict, float]]]
    baseline: Callable[[dict], float] | None = None


def physics_baseline(x: dict) -> float:
    """The demand-latency model's baseline: transfer + compute at nominal speed + the queue ahead at ``x["tier"]``."""
    from tiertwin.pipelines.latency import physics_estimate

    return physics_estimate(x, x["tier"])


def persistence_baseline(x: dict) -> float:
    """The SINR forecaster's baseline: the SINR now."""
    return float(x["sinr_db"])


# One projection per stream, shared by every model that reads it (the trainer keeps one per stream):
# a decision row is ("placement", decision_id, x) or ("allocation", kind, decision_id, cell_id, ts_ms, share,
# context); an outcome row is (decision_id, latency_ms, cell_id, ts_ms, deadline_met, reward), None where absent.
ALLOCATION_KINDS = {"prb-share": "prb_share", "mec-share": "mec_share"}


def decision_fields(decision: dict) -> tuple | None:
    """What any model learns from in a Decision: a placement's features, or an allocation's share and context."""
    return _decision_row(decision["kind"], decision["target"], decision["decision_id"], decision["parameters"],
                         decision.get("cell_id"), decision["source_ts_ms"])


def _decision_row(kind, target, decision_id, parameters, cell_id, source_ts_ms) -> tuple | None:
    placement = _placement(kind, target, decision_id, parameters)
    if placement is not None:
        return ("placement", *placement)
    if kind in ALLOCATION_KINDS.values() and "share" in parameters and cell_id is not None:
        context = {k: v for k, v in parameters_to_features(parameters).items()}
        return ("allocation", kind, decision_id, cell_id, source_ts_ms, float(parameters["share"]), context)
    return None


def outcome_fields(outcome: dict) -> tuple:
    """What any model learns from in an Outcome."""
    return _outcome_row(outcome["kind"], outcome.get("decision_id"), outcome.get("latency_ms"), outcome.get("cell_id"),
                        outcome["ts_ms"], outcome.get("deadline_met"), outcome.get("effect"))


def _outcome_row(kind, decision_id, latency, cell_id, ts_ms, deadline_met, effect) -> tuple:
    reward = (effect or {}).get("reward") if kind == "decision" else None
    return (decision_id, None if latency is None else float(latency), cell_id, ts_ms,
            deadline_met if kind == "demand" else None, reward)


# The same projections over a batch's columns (RecordBatch.field_values), without rebuilding its record dicts:
# each gives, row for row, what the record projection gives for that row's record (tests/test_cloud_training_speed.py).
def _decision_rows(batch) -> list:
    return list(map(_decision_row, *batch.field_values("kind", "target", "decision_id", "parameters", "cell_id",
                                                       "source_ts_ms")))


def _outcome_rows(batch) -> list:
    return list(map(_outcome_row, *batch.field_values("kind", "decision_id", "latency_ms", "cell_id", "ts_ms",
                                                      "deadline_met", "effect")))


def _forecast_rows(batch) -> list:
    return list(zip(*batch.field_values("ue_id", "serving_cell", "window_end_ms", "sinr_db", "sinr_trend_db_per_s",
                                        "speed_mps")))


def _latency_examples(rows: dict[str, list]) -> list[tuple[dict, float]]:
    placements = [(r[1], r[2]) for r in rows.get(DECISIONS, ()) if r[0] == "placement"]
    return join_examples(placements, [(o[0], o[1]) for o in rows.get(OUTCOMES, ()) if o[0] is not None
                                      and o[1] is not None])


def allocation_examples(kind: str, decisions: Iterable[tuple], outcomes: Iterable[tuple],
                        share_cost: float = 0.3) -> list[tuple[dict, float]]:
    """``(x, y)`` for an allocation bandit, as the edge twin rewards it: ``x`` = the allocation's context plus
    ``"share"``, ``y`` = the share of the cell's demands that met their deadline from that allocation to the
    cell's next one, minus ``share_cost`` x share (or the reward an Outcome of the decision names). The last
    allocation of a cell in the window has no next one and is not learned from.

    >>> decisions = [("allocation", "prb_share", "a1", 3, 1000, 0.5, {"bias": 1.0}),
    ...              ("allocation", "prb_share", "a2", 3, 2000, 1.0, {"bias": 1.0})]
    >>> outcomes = [(None, 12.0, 3, 1500, True, None), (None, 30.0, 3, 1600, False, None)]
    >>> allocation_examples("prb_share", decisions, outcomes)
    [({'bias': 1.0, 'share': 0.5}, 0.35)]
    """
    from tiertwin.pipelines.learners import allocation_reward

    direct = {o[0]: o[5] for o in outcomes if o[0] is not None and o[5] is not None}
    by_cell: dict[int, list[tuple[int, bool]]] = {}
    for o in outcomes:
        if o[4] is not None and o[2] is not None:
            by_cell.setdefault(o[2], []).append((o[3], bool(o[4])))
    allocations: dict[int, list[tuple]] = {}
    for d in decisions:
        if d[0] == "allocation" and d[1] == kind:
            allocations.setdefault(d[3], []).append(d)
    examples = []
    for cell, series in allocations.items():
        series.sort(key=lambda d: d[4])
        for d, following in zip(series, series[1:]):
            x = {**d[6], "share": d[5]}
            if d[2] in direct:
                examples.append((x, float(direct[d[2]])))
                continue
            met = [ok for ts, ok in by_cell.get(cell, ()) if d[4] <= ts < following[4]]
            if met:
                examples.append((x, round(allocation_reward(sum(met) / len(met), d[5], share_cost), 12)))
    return examples


def _allocation_examples(kind: str) -> Callable[[dict[str, list]], list[tuple[dict, float]]]:
    def examples(rows: dict[str, list]) -> list[tuple[dict, float]]:
        return allocation_examples(kind, rows.get(DECISIONS, ()), rows.get(OUTCOMES, ()))
    return examples


def _forecast_examples(rows: dict[str, list]) -> list[tuple[dict, float]]:
    return forecast_examples(rows.get(SUMMARIES, ()))


TRAINABLE: dict[str, TrainableModel] = {m.name: m for m in (
    TrainableModel("demand-latency", "ms", {DECISIONS: decision_fields, OUTCOMES: outcome_fields},
                   _latency_examples, physics_baseline),
    TrainableModel("handover-sinr", "db", {SUMMARIES: forecast_fields}, _forecast_examples, persistence_baseline),
    # The allocation bandits learn the reward of a share in a context from the edge's allocation decisions
    # and the outcomes measured in their cells, as the edge twin does (error unit: reward).
    *(TrainableModel(name, "reward", {DECISIONS: decision_fields, OUTCOMES: outcome_fields},
                     _allocation_examples(kind)) for name, kind in ALLOCATION_KINDS.items()),
)}


# Per record projection -> the same projection of a whole batch (for the projections that have one).
BATCH_PROJECTIONS: dict[Callable, Callable] = {decision_fields: _decision_rows, outcome_fields: _outcome_rows,
                                               forecast_fields: _forecast_rows}


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
