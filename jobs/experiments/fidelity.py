"""Twin fidelity: every learned forecaster against naive baselines, on fresh simulator seeds.

``tiertwin bench fidelity`` and ``tiertwin pretrain`` run this. For each scenario and seed, the
simulator runs offline (no Kafka) with every demand placed at random (so every tier is measured)
by an in-process placer that builds its features exactly as the local twin does (denoised radio,
the serving cell's latest report, the device's EDF queue, which the placer fills). Telemetry is
denoised and summarised as the local twin does; the summaries update edge-twin UE views
(:class:`~tiertwin.pipelines.edge_twin.UEView`). Two streams come out:

* **demand latency**, per tier: the features at placement and the latency measured.
  Baselines: the running mean of the tier's latencies; ``physics`` (bytes over the link and cycles
  at nominal speed); ``physics + queue`` (plus the device's EDF wait or the MEC queue ahead); the
  ``richest physics`` the features allow (plus the RTT and, at the edge, the priority-weighted MEC
  queue instead of the whole of it).
* **SINR at the edge's horizon**, for the serving cell and the best neighbour of every summary:
  the edge's features (``sinr_forecast_features`` of the view) and the SINR the UE has on that cell
  ``horizon_s`` later (the simulator's). Baselines: ``persistence`` (the summary's SINR), a
  ``linear trend`` (SINR + trend x horizon) and the ``oracle``
  (:func:`~tiertwin.connectors.simulator.oracle.sinr_oracle`: the conditional mean given the
  simulator's own state, the limit of any forecaster).

A third, separate run per scenario and seed (:func:`simulate_shares`) scores the **share forecasts**: every
``allocation_interval_s`` each cell gets a PRB and a MEC share drawn at random (the logging policy: every share is
tried in every context, so every model is scored on the same stream) and applied to the world; its reward is what
the edge twin rewards (the share of the cell's demands that met their deadline until the next allocation, minus
``share_cost`` x share). A ShareAllocator's forecast is its posterior mean reward of that share in that context
(``expected_reward``); baselines: the ``running mean`` of the rewards and the ``running mean per share``.

Each model is scored **frozen** (predicts, never learns) and **prequential** (predicts, then learns
when the label exists: a latency at its outcome, a SINR ``horizon_s`` after the forecast), as the
agents learn. The first ``warmup_s`` of each run is learned from but not scored.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from tiertwin.pipelines.features import TIERS, demand_features, sinr_forecast_features

SHARES = (0.25, 0.5, 0.75, 1.0)             # the ShareAllocator's arms

LATENCY_TARGETS = tuple(f"latency {tier}" for tier in TIERS)
SINR_TARGETS = ("sinr serving", "sinr neighbour")
SHARE_TARGETS = ("reward prb_share", "reward mec_share")
TRAINING_SEEDS = (7,)
HELD_OUT_SEEDS = (2024, 2025)


@dataclass(frozen=True)
class FidelityConfig:
    scenarios: tuple[str, ...] = ()          # empty: every preset
    seeds: tuple[int, ...] = (2024,)
    seconds: float = 20.0
    ues: int | None = 40                     # None: the scenario's own
    horizon_s: float = 0.5                   # the edge twin's handover_horizon_s
    draws: int = 32                          # Monte Carlo draws of the oracle
    warmup_s: float = 2.0
    summary_interval_ms: int = 100           # the local twin's defaults
    ewma_alpha: float = 0.3
    shares: bool = True                      # also score the share bandits' reward forecasts (a run of their own)
    allocation_interval_s: float = 1.0       # the edge twin's allocation_interval_ms
    share_cost: float = 0.3                  # the edge twin's share_cost


@dataclass
class Trace:
    """What one simulator run yields for scoring, in time order."""

    scenario: str
    seed: int
    latency: list[tuple[int, dict, float]] = field(default_factory=list)      # (t_ms, x with tier, latency ms)
    sinr: list[tuple[int, str, dict, float, float]] = field(default_factory=list)  # (t_ms, target, x, truth, oracle)
    steps: list[tuple[int, dict, float]] = field(default_factory=list)       # consecutive summaries (t_ms, x(dt), sinr)
    start_ms: int = 0


# -- baselines ----------------------------------------------------------------------------------
# physics_ms (bytes over the link and cycles at nominal speed) and richest_physics_ms (plus every delay the features
# name) live beside the residual model, whose per-tier gate weighs its fit against them.
from tiertwin.pipelines.latency import physics_ms, richest_physics_ms  # noqa: E402


# -- one simulator run --------------------------------------------------------------------------
def simulate(scenario: str, seed: int, config: FidelityConfig) -> Trace:
    """Run ``scenario`` offline on ``seed``; the latency and SINR streams of the module docstring."""
    from tiertwin.connectors.simulator import World, load_scenario
    from tiertwin.connectors.simulator.oracle import sinr_oracle
    from tiertwin.pipelines.edf import edf_key
    from tiertwin.pipelines.edge_twin import UEView, forecast_features
    from tiertwin.pipelines.local_twin import UETwin

    from tiertwin.pipelines.geometry import RadioGeometry

    base = load_scenario(scenario)
    world = World(base.with_overrides(ues=config.ues), seed=seed)
    geometry = RadioGeometry.from_scenario(base)     # what the edge twin deployed in this network knows
    trace = Trace(scenario=base.name, seed=seed, start_ms=world.now_ms)
    twins: dict[str, UETwin] = {}
    views: dict[str, tuple[int, UEView]] = {}     # ue -> (cell of its last summary, view)
    edge: dict[int, dict] = {}
    placed: dict[str, tuple[dict, str]] = {}
    rng = random.Random(seed)
    critical = base.device.critical_priority
    horizon_ms = config.horizon_s * 1000.0
    due: dict[int, list[tuple[int, int, int]]] = {}   # t_ms -> [(point index, ue, cell)]

    def place(d: dict) -> tuple[str, None, float]:
        twin = twins.setdefault(d["ue_id"], UETwin(d["ue_id"]))
        key = edf_key(d["ts_ms"], d["deadline_ms"], d["priority"], critical)
        wait, backlog = twin.device.waits(d["ts_ms"], key if d["priority"] >= critical else math.inf)
        x = demand_features(d, twin.radio or None, edge.get(d["serving_cell"]), wait, backlog)
        tier = TIERS[rng.randrange(3)]
        if tier == "local":
            twin.device.add(d["ts_ms"], key, x["local_compute_ms"])
        placed[d["demand_id"]] = (x, tier)
        return tier, None, 0.0

    world.placer = place
    for _ in range(int(config.seconds * 1000 / base.step_ms)):
        world.step()
        now = world.now_ms
        for key in [k for k in due if k <= now]:
            for index, ue, cell in due.pop(key):
                t, target, x, _, oracle = trace.sinr[index]
                trace.sinr[index] = (t, target, x, float(np.clip(world.sinr_matrix[ue, cell], -30.0, 50.0)), oracle)
        asked: list[tuple[int, int, int]] = []
        for t in world.telemetry_records():
            twin = twins.setdefault(t["ue_id"], UETwin(t["ue_id"]))
            twin.observe(t, config.ewma_alpha)
            if not twin.window_due(config.summary_interval_ms):
                continue
            s = twin.summary()
            cell = s["serving_cell"]
            last_cell, view = views.get(s["ue_id"], (None, None))
            if view is None:
                view = UEView(s["ue_id"])
            elif last_cell == cell and view.summaries:    # what EdgeTwin learned from before: the next summary
                dt = (s["window_end_ms"] - view.ts_ms) / 1000.0
                if 0 < dt <= 5.0:
                    trace.steps.append((now, sinr_forecast_features(view.sinr_db, view.trend, view.speed, dt),
                                        s["sinr_db"]))
            view.update(s)
            views[s["ue_id"]] = (cell, view)
            ue = world.ue_index[s["ue_id"]]
            loads = geometry.loads({c: r["prb_utilization"] for c, r in edge.items()})
            for role, c, x in forecast_features(view, cell, config.horizon_s, geometry, loads):
                target = f"sinr {role}"
                asked.append((len(trace.sinr), ue, c))
                trace.sinr.append((now, target, x, math.nan, math.nan))
        if asked:
            oracle = sinr_oracle(world, [a[1] for a in asked], [a[2] for a in asked], config.horizon_s,
                                 draws=config.draws, rng=np.random.default_rng([seed, now]))
            for (index, ue, cell), value in zip(asked, oracle.tolist()):
                t, target, x, truth, _ = trace.sinr[index]
                trace.sinr[index] = (t, target, x, truth, value)
                due.setdefault(int(now + horizon_ms), []).append((index, ue, cell))
        for report in world.cell_reports():
            edge[report["cell_id"]] = report
        world.demand_records()
        for o in world.outcome_records():
            if o["kind"] == "demand" and o["demand_id"] in placed:
                x, tier = placed.pop(o["demand_id"])
                latency = o["latency_ms"] - o["components_ms"].get("decision", 0.0)
                trace.latency.append((o["ts_ms"], {**x, "tier": o["placement"] or tier}, latency))
    trace.sinr = [p for p in trace.sinr if not math.isnan(p[3])]
    return trace


# -- scoring ------------------------------------------------------------------------------------
def _errors(pairs: Iterable[tuple[float, float]]) -> list[float]:
    return [abs(p - y) for p, y in pairs]


def _summary(errors: list[float]) -> dict[str, float]:
    if not errors:
        return {"mae": math.nan, "median_ae": math.nan, "n": 0}
    return {"mae": float(np.mean(errors)), "median_ae": float(np.median(errors)), "n": len(errors)}


def score_latency(traces: list[Trace], models: dict[str, Any], warmup_s: float) -> dict[str, dict[str, list[float]]]:
    """Absolute errors per target and name: baselines, then each model frozen and prequential."""
    from tiertwin.pipelines.latency import physics_estimate

    errors: dict[str, dict[str, list[float]]] = {t: {} for t in LATENCY_TARGETS}

    def add(tier: str, name: str, predicted: float, y: float) -> None:
        errors[f"latency {tier}"].setdefault(name, []).append(abs(predicted - y))

    for trace in traces:
        scored_from = trace.start_ms + warmup_s * 1000
        sums, counts = {t: 0.0 for t in TIERS}, {t: 0 for t in TIERS}
        frozen = {name: copy.deepcopy(m) for name, m in models.items()}
        online = {name: copy.deepcopy(m) for name, m in models.items()}
        for t_ms, x, y in trace.latency:
            tier = x["tier"]
            if t_ms >= scored_from:
                add(tier, "running mean", sums[tier] / counts[tier] if counts[tier] else 0.0, y)
                add(tier, "physics", physics_ms(x, tier), y)
                add(tier, "physics + queue", physics_estimate(x, tier), y)   # the residual model's prior
                add(tier, "richest physics", richest_physics_ms(x, tier), y)
                for name, m in frozen.items():
                    add(tier, f"{name}, frozen", m.predict_one(x), y)
                for name, m in online.items():
                    add(tier, f"{name}, prequential", m.predict_one(x), y)
            for m in online.values():
                m.learn_one(x, y)
            sums[tier] += y
            counts[tier] += 1
    return errors


def score_sinr(traces: list[Trace], models: dict[str, tuple[Any, str]], horizon_s: float,
               warmup_s: float) -> dict[str, dict[str, list[float]]]:
    """Absolute errors per SINR target and name. ``models``: name -> (model, how it learns online:
    ``horizon`` = from the SINR ``horizon_s`` after each forecast, ``steps`` = from consecutive
    summaries, as the edge twin did before)."""
    errors: dict[str, dict[str, list[float]]] = {t: {} for t in SINR_TARGETS}
    horizon_ms = horizon_s * 1000.0
    for trace in traces:
        scored_from = trace.start_ms + warmup_s * 1000
        frozen = {name: copy.deepcopy(m) for name, (m, _) in models.items()}
        online = {name: (copy.deepcopy(m), how) for name, (m, how) in models.items()}
        learned, step_i = 0, 0
        for t_ms, target, x, truth, oracle in trace.sinr:
            while learned < len(trace.sinr) and trace.sinr[learned][0] + horizon_ms <= t_ms:
                _, _, lx, ly, _ = trace.sinr[learned]
                for m, how in online.values():
                    if how == "horizon":
                        m.learn_one(lx, ly)
                learned += 1
            while step_i < len(trace.steps) and trace.steps[step_i][0] <= t_ms:
                _, sx, sy = trace.steps[step_i]
                for m, how in online.values():
                    if how == "steps":
                        m.learn_one(sx, sy)
                step_i += 1
            if t_ms < scored_from:
                continue
            e = errors[target]
            e.setdefault("persistence", []).append(abs(x["sinr_db"] - truth))
            e.setdefault("linear trend", []).append(abs(x["sinr_db"] + x["trend_x_h"] - truth))
            e.setdefault("oracle", []).append(abs(oracle - truth))
            for name, m in frozen.items():
                e.setdefault(f"{name}, frozen", []).append(abs(m.predict_one(x) - truth))
            for name, (m, _) in online.items():
                e.setdefault(f"{name}, prequential", []).append(abs(m.predict_one(x) - truth))
    return errors


LATENCY_BASELINES = ("running mean", "physics", "physics + queue", "richest physics")
SINR_BASELINES = ("persistence", "linear trend", "oracle")
SHARE_BASELINES = ("running mean", "running mean per share")


def rows_for(scenario: str, errors: dict[str, dict[str, list[float]]]) -> list[dict]:
    """One row per target and name, with how it compares to the best naive baseline (and for SINR, to the oracle)."""
    rows = []
    for target, by_name in errors.items():
        summaries = {name: _summary(e) for name, e in by_name.items()}
        naive = [n for n in summaries if n in LATENCY_BASELINES or n in SHARE_BASELINES
                 or n in ("persistence", "linear trend")]
        best = min(naive, key=lambda n: summaries[n]["mae"]) if naive else None
        persistence, oracle = summaries.get("persistence"), summaries.get("oracle")
        for name, s in summaries.items():
            kind = "baseline" if name in LATENCY_BASELINES or name in SINR_BASELINES or name in SHARE_BASELINES else "model"
            row = {"scenario": scenario, "target": target, "name": name, "kind": kind, **s}
            if best is not None and summaries[best]["mae"] > 0:
                row["vs_best_baseline"] = 1.0 - s["mae"] / summaries[best]["mae"]
                row["best_baseline"] = best
            if persistence and oracle and persistence["mae"] > oracle["mae"]:
                row["gap_closed"] = (persistence["mae"] - s["mae"]) / (persistence["mae"] - oracle["mae"])
            rows.append(row)
    return rows


# -- the whole benchmark ------------------------------------------------------------------------
def default_candidates() -> tuple[dict[str, Any], dict[str, tuple[Any, str]]]:
    """The models scored by default: the shipped ones (pipelines/pretrained) and the current classes fresh
    (the residual latency model starts at physics, the SINR forecaster at persistence)."""
    from tiertwin.pipelines.forecasting import SinrForecaster
    from tiertwin.pipelines.latency import ResidualLatencyModel
    from tiertwin.pipelines.learners import DEMAND_LATENCY, HANDOVER
    from tiertwin.pipelines.pretrain import load_pretrained

    latency, _ = load_pretrained(DEMAND_LATENCY)
    handover, _ = load_pretrained(HANDOVER)
    how = "horizon" if isinstance(handover, SinrForecaster) else "steps"
    latency_models = {"shipped": latency}
    sinr_models = {"shipped": (handover, how)}
    if not isinstance(latency, ResidualLatencyModel):
        latency_models["residual, fresh"] = ResidualLatencyModel()
    if not isinstance(handover, SinrForecaster):
        sinr_models["horizon RLS, fresh"] = (SinrForecaster(), "horizon")
    return latency_models, sinr_models


def default_share_models() -> dict[str, dict[str, Any]]:
    """The shipped share bandits (pipelines/pretrained), by decision kind: ``{kind: {"shipped": allocator}}``."""
    from tiertwin.pipelines.learners import MEC_SHARE, PRB_SHARE
    from tiertwin.pipelines.pretrain import load_pretrained

    return {"prb_share": {"shipped": load_pretrained(PRB_SHARE)[0]}, "mec_share": {"shipped": load_pretrained(MEC_SHARE)[0]}}


def simulate_shares(scenario: str, seed: int, config: FidelityConfig) -> list[tuple[int, str, dict, float]]:
    """Run ``scenario`` offline on ``seed`` with random PRB and MEC shares per cell every ``allocation_interval_s``
    (demands placed at random); ``(t_ms, kind, x = context + share, reward)`` of each allocation, in time order."""
    from tiertwin.connectors.simulator import World, load_scenario
    from tiertwin.pipelines.features import cell_context
    from tiertwin.pipelines.learners import allocation_reward

    base = load_scenario(scenario)
    world = World(base.with_overrides(ues=config.ues), seed=seed)
    rng = random.Random(seed + 1)
    world.placer = lambda d: (TIERS[rng.randrange(3)], None, 0.0)
    interval_ms = config.allocation_interval_s * 1000.0
    open_: dict[tuple[int, str], list] = {}     # (cell, kind) -> [t_ms, x, demands met, demands measured]
    out: list[tuple[int, str, dict, float]] = []
    last = -math.inf
    for _ in range(int(config.seconds * 1000 / base.step_ms)):
        world.step()
        for o in world.outcome_records():
            if o["kind"] == "demand" and o.get("deadline_met") is not None:
                for kind in ("prb_share", "mec_share"):
                    allocation = open_.get((o["cell_id"], kind))
                    if allocation is not None:
                        allocation[2] += int(o["deadline_met"])
                        allocation[3] += 1
        reports = world.cell_reports()
        world.telemetry_records()
        world.demand_records()
        if not reports or world.now_ms - last < interval_ms:
            continue
        last = world.now_ms
        for report in reports:
            context = cell_context(report)
            for kind in ("prb_share", "mec_share"):
                previous = open_.pop((report["cell_id"], kind), None)
                if previous is not None and previous[3] > 0:
                    t0, x, met, measured = previous
                    out.append((t0, kind, x, allocation_reward(met / measured, x["share"], config.share_cost)))
                share = rng.choice(SHARES)
                world.apply_decision({"decision_id": f"fidelity/{kind}/{report['cell_id']}/{world.now_ms}", "kind": kind,
                                      "cell_id": report["cell_id"], "ue_id": None, "target": "",
                                      "parameters": {"share": share}})
                open_[(report["cell_id"], kind)] = [world.now_ms, {**context, "share": share}, 0, 0]
    return out


def score_shares(traces: list[list[tuple[int, str, dict, float]]], models: dict[str, dict[str, Any]], start_ms: list[int],
                 warmup_s: float) -> dict[str, dict[str, list[float]]]:
    """Absolute errors of the reward forecasts per kind and name: the running means, then each model frozen and
    prequential (``models``: kind -> name -> allocator)."""
    errors: dict[str, dict[str, list[float]]] = {t: {} for t in SHARE_TARGETS}
    for trace, start in zip(traces, start_ms):
        frozen = {kind: {n: copy.deepcopy(m) for n, m in by.items()} for kind, by in models.items()}
        online = {kind: {n: copy.deepcopy(m) for n, m in by.items()} for kind, by in models.items()}
        sums: dict[str, list[float]] = {}
        for t_ms, kind, x, reward in trace:
            e = errors[f"reward {kind}"]
            total = sums.setdefault(kind, [0.0, 0])
            per_share = sums.setdefault(f"{kind}/{x['share']:g}", [0.0, 0])
            if t_ms >= start + warmup_s * 1000:
                e.setdefault("running mean", []).append(abs((total[0] / total[1] if total[1] else 0.0) - reward))
                mean = per_share[0] / per_share[1] if per_share[1] else (total[0] / total[1] if total[1] else 0.0)
                e.setdefault("running mean per share", []).append(abs(mean - reward))
                for name, m in frozen.get(kind, {}).items():
                    e.setdefault(f"{name}, frozen", []).append(abs(m.predict_one(x) - reward))
                for name, m in online.get(kind, {}).items():
                    e.setdefault(f"{name}, prequential", []).append(abs(m.predict_one(x) - reward))
            for m in online.get(kind, {}).values():
                m.learn_one(x, reward)
            for acc in (total, per_share):
                acc[0] += reward
                acc[1] += 1
    return errors


def run_fidelity(config: FidelityConfig, latency_models: dict[str, Any] | None = None,
                 sinr_models: dict[str, tuple[Any, str]] | None = None,
                 on_progress: Callable[[str], None] = lambda _: None,
                 share_models: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Score the models on every scenario and seed of ``config``; ``{"config", "rows", "extras"}``. The share
    forecasts are scored when ``config.shares`` (``share_models`` default: the shipped bandits)."""
    from tiertwin.connectors.simulator.scenarios import preset_names

    if latency_models is None or sinr_models is None:
        default_latency, default_sinr = default_candidates()
        latency_models = default_latency if latency_models is None else latency_models
        sinr_models = default_sinr if sinr_models is None else sinr_models
    if config.shares and share_models is None:
        share_models = default_share_models()
    rows: list[dict] = []
    extras: dict[str, Any] = {}
    for scenario in config.scenarios or tuple(preset_names()):
        traces = []
        for seed in config.seeds:
            traces.append(simulate(scenario, seed, config))
            on_progress(f"{scenario} seed {seed}: {len(traces[-1].latency)} demands, {len(traces[-1].sinr)} SINR forecasts")
        errors = score_latency(traces, latency_models, config.warmup_s)
        errors.update(score_sinr(traces, sinr_models, config.horizon_s, config.warmup_s))
        if config.shares:
            share_traces = [simulate_shares(scenario, seed, config) for seed in config.seeds]
            on_progress(f"{scenario}: {sum(len(t) for t in share_traces)} share allocations rewarded")
            errors.update(score_shares(share_traces, share_models, [t.start_ms for t in traces], config.warmup_s))
        rows.extend(rows_for(scenario, errors))
        extras[scenario] = adapted(traces, latency_models)
    return {"config": {k: getattr(config, k) for k in config.__dataclass_fields__}, "rows": rows, "extras": extras}


def adapted(traces: list[Trace], latency_models: dict[str, Any]) -> dict[str, Any]:
    """The effective speeds each latency model with that notion ends up with after learning every trace online."""
    out = {}
    for name, model in latency_models.items():
        if not hasattr(model, "effective_speed"):
            continue
        speeds = []
        for trace in traces:
            m = copy.deepcopy(model)
            for _, x, y in trace.latency:
                m.learn_one(x, y)
            speeds.append({tier: m.effective_speed(tier) for tier in TIERS})
        out[name] = {"effective_speed_gcps": speeds}
    return out


# -- pretraining on the simulator ---------------------------------------------------------------
def train_candidates(config: FidelityConfig, on_progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """A :class:`~tiertwin.pipelines.latency.ResidualLatencyModel` and a
    :class:`~tiertwin.pipelines.forecasting.SinrForecaster` trained on simulator runs of every scenario of
    ``config`` on its seeds (the training seeds: keep them apart from the ones the models are judged on).

    Examples of every run are shuffled together and learned without forgetting (an average over the
    fleet, not the last scenario), then released to learn online with forgetting; the device tier stays at
    the physics prior (a device's speed is the device's own)."""
    from tiertwin.connectors.simulator.scenarios import preset_names
    from tiertwin.pipelines.forecasting import SinrForecaster
    from tiertwin.pipelines.latency import ResidualLatencyModel
    from tiertwin.pipelines.learners import DEMAND_LATENCY, HANDOVER

    latency_examples, sinr_examples = [], []
    for scenario in config.scenarios or tuple(preset_names()):
        for seed in config.seeds:
            trace = simulate(scenario, seed, config)
            on_progress(f"training run {scenario} seed {seed}: {len(trace.latency)} demands, {len(trace.sinr)} SINR forecasts")
            latency_examples += [(x, y) for _, x, y in trace.latency]
            sinr_examples += [(x, y) for _, _, x, y, _ in trace.sinr]
    rng = random.Random(0)
    rng.shuffle(latency_examples)
    rng.shuffle(sinr_examples)
    latency = ResidualLatencyModel(forgetting=1.0)
    for x, y in latency_examples:
        latency.learn_one(x, y)
    forecaster = SinrForecaster(forgetting=1.0, horizon_s=config.horizon_s)
    for x, y in sinr_examples:
        forecaster.learn_one(x, y)
    return {DEMAND_LATENCY: latency.released(), HANDOVER: forecaster.released()}


def compare(rows: list[dict], candidate: str, incumbent: str) -> dict[str, dict[str, float]]:
    """Per target family (``latency``, ``sinr``): the mean over scenarios and targets of the candidate's
    prequential MAE over the incumbent's, and in how many of them the candidate is better."""
    by_key = {(r["scenario"], r["target"], r["name"]): r["mae"] for r in rows}
    out: dict[str, dict[str, float]] = {}
    for (scenario, target, name), mae in by_key.items():
        if name != f"{candidate}, prequential":
            continue
        base = by_key.get((scenario, target, f"{incumbent}, prequential"))
        if base is None or not (math.isfinite(mae) and math.isfinite(base)) or base <= 0:
            continue
        family = out.setdefault(target.split()[0], {"ratios": [], "better": 0, "cases": 0})
        family["ratios"].append(mae / base)
        family["better"] += mae < base
        family["cases"] += 1
    return {f: {"mean_ratio": float(np.mean(v["ratios"])), "better": v["better"], "cases": v["cases"]}
            for f, v in out.items()}


def table(rows: list[dict], title: str = "Twin fidelity"):
    """A rich Table of the rows: MAE, median AE, n, against the best naive baseline and (SINR) the oracle gap."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("scenario", "target", "forecaster", "MAE", "median AE", "n", "vs best naive", "oracle gap closed"):
        t.add_column(col, justify="right" if col in ("MAE", "median AE", "n", "vs best naive", "oracle gap closed") else "left")
    last = None
    for r in rows:
        key = (r["scenario"], r["target"])
        vs = f"{r['vs_best_baseline']:+.0%}" if "vs_best_baseline" in r and r["kind"] == "model" else ""
        gap = f"{r['gap_closed']:.0%}" if "gap_closed" in r and r["name"] != "oracle" and r["name"] != "persistence" else ""
        unit = " dB" if r["target"].startswith("sinr") else "" if r["target"].startswith("reward") else " ms"
        style = "bold" if r["kind"] == "model" else None
        t.add_row(r["scenario"] if key != last else "", r["target"] if key != last else "", r["name"],
                  f"{r['mae']:.3f}{unit}", f"{r['median_ae']:.3f}", str(r["n"]), vs, gap, style=style,
                  end_section=False)
        last = key
    return t
