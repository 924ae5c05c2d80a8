"""The local digital twin: one per UE, beside the device; decides in milliseconds.

Reading order: configuration, then the **data module** (validate, denoise,
keep a short history, compress into LocalSummary records), the **service module**
(predict a demand's latency at each tier, place it at least cost within its
deadline, earliest-deadline-first on the device, learn from outcomes), and the
**communication module** (:class:`LocalTwinAgent`: topics in and out).

In: ``tiertwin.local.telemetry`` and ``tiertwin.local.demands`` (group member,
keyed by UE), ``tiertwin.outcomes`` (group member, same key), and, read whole by
every instance, ``tiertwin.cloud.edge-state`` (edge load) and ``tiertwin.models``.
Out: Decision records (kind ``placement``) to ``tiertwin.actions.local``,
LocalSummary records to ``tiertwin.edge.summaries``, checkpoints to
``tiertwin.state.local-changelog``.

>>> twin = UETwin("ue-1")
>>> for i, sinr in enumerate([10.0, 12.0, 14.0]):
...     twin.observe({"ts_ms": 1000 + 50 * i, "seq": i + 1, "serving_cell": 3, "sinr_db": sinr,
...                   "rsrp_dbm": -90.0, "throughput_dl_mbps": 100.0, "throughput_ul_mbps": 20.0,
...                   "rtt_ms": 8.0, "cpu_util": 0.2, "battery_pct": 90.0, "neighbours": []}, alpha=0.5)
>>> round(twin.radio["sinr_db"], 2), twin.samples, round(twin.sinr_trend_db_per_s(), 1)
(12.5, 3, 25.0)
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict, deque
from typing import Any

from pydantic import Field

from tiertwin.connectors.kafka import KafkaRecord
from tiertwin.pipelines.agent import AgentConfig, TwinAgent, decision_id, decision_stamps
from tiertwin.pipelines.features import TIERS, demand_features
from tiertwin.pipelines.learners import DEMAND_LATENCY, DemandLatencyModel, deadline_confidence
from tiertwin.pipelines.models import features_to_parameters


class LocalAgentConfig(AgentConfig):
    """Configuration of one local agent instance (``tiertwin run local --config FILE``)."""

    group_id: str = "tiertwin-local"
    changelog_topic: str = "tiertwin.state.local-changelog"
    telemetry_topic: str = "tiertwin.local.telemetry"
    demands_topic: str = "tiertwin.local.demands"
    edge_state_topic: str = "tiertwin.cloud.edge-state"
    summaries_topic: str = "tiertwin.edge.summaries"
    actions_topic: str = "tiertwin.actions.local"
    summary_interval_ms: int = Field(100, ge=1, le=600_000, description="One LocalSummary per UE per this much event time")
    ewma_alpha: float = Field(0.3, gt=0, le=1, description="Weight of the newest sample in the denoised radio state")
    history_length: int = Field(20, ge=2, le=10_000, description="Denoised samples kept per UE")
    demand_latency_model: str = DEMAND_LATENCY
    tier_costs: dict[str, float] = Field(default_factory=lambda: {"edge": 1.0, "cloud": 1.5, "local": 2.0})
    low_battery_pct: float = Field(20.0, ge=0, le=100, description="Below this, running on the device costs double")
    deadline_margin: float = Field(0.9, gt=0, le=1, description="A tier is feasible if predicted <= margin * deadline")
    critical_priority: int = Field(5, ge=0, le=7, description="Demands at or above it are time-critical (EDF on the device)")
    pending_outcomes: int = Field(100_000, ge=100, description="Decisions remembered to learn from their outcomes")


# =============================================================================================
# Data module: validation, denoising, history, compression
# =============================================================================================
def semantic_problem(telemetry: dict) -> tuple[str, str] | None:
    """A reason the contract's range checks cannot see, or None.

    >>> semantic_problem({"serving_cell": 3, "neighbours": [{"cell_id": 3}], "ts_ms": 1})
    ('serving-cell-in-neighbours', 'cell 3 is both serving and a neighbour')
    """
    if telemetry["ts_ms"] <= 0:
        return "bad-timestamp", f"ts_ms={telemetry['ts_ms']} is not after the epoch"
    serving = telemetry["serving_cell"]
    if any(n["cell_id"] == serving for n in telemetry["neighbours"]):
        return "serving-cell-in-neighbours", f"cell {serving} is both serving and a neighbour"
    return None


def is_replay(twin: "UETwin", telemetry: dict) -> bool:
    """Was ``telemetry`` already folded into ``twin`` (redelivered after a crash or rebalance)?

    A lower sequence number with a newer event time is a restarted device (or simulator),
    whose records must not be mistaken for replays.

    >>> twin = UETwin("ue-1", history_length=4)
    >>> twin.last_seq, twin.last_ts_ms = 100, 5_000
    >>> is_replay(twin, {"seq": 100, "ts_ms": 5_000}), is_replay(twin, {"seq": 3, "ts_ms": 9_000})
    (True, False)
    """
    return telemetry["seq"] <= twin.last_seq and telemetry["ts_ms"] <= twin.last_ts_ms


DENOISED = ("sinr_db", "rsrp_dbm", "throughput_dl_mbps", "throughput_ul_mbps", "rtt_ms", "cpu_util")


class UETwin:
    """The local twin of one UE: denoised radio state, short history, summary window, device queue."""

    def __init__(self, ue_id: str, history_length: int = 20):
        self.ue_id = ue_id
        self.serving_cell = -1
        self.last_seq = -1
        self.last_ts_ms = 0
        self.radio: dict[str, float] = {}
        self.neighbour: tuple[int, float] | None = None
        self.position = (0.0, 0.0, 0.0)
        self.battery_pct = 100.0
        self.xr_active = False
        self.history: deque[tuple[int, float]] = deque(maxlen=history_length)
        self.device = EdfQueue()
        self._open_window()

    def _open_window(self) -> None:
        self.window_start_ms = -1
        self.samples = 0
        self.sum_dl = self.sum_rtt = self.sum_cpu = 0.0
        self.placed = {tier: 0 for tier in TIERS}

    def observe(self, t: dict, alpha: float) -> None:
        """Fold one telemetry record in (EWMA denoising) and extend the summary window."""
        radio = self.radio
        if not radio:
            radio.update({k: float(t[k]) for k in DENOISED})
        else:
            for k in DENOISED:
                radio[k] += alpha * (t[k] - radio[k])
        if t["neighbours"]:
            best = t["neighbours"][0]
            if self.neighbour is not None and self.neighbour[0] == best["cell_id"]:
                self.neighbour = (best["cell_id"], self.neighbour[1] + alpha * (best["sinr_db"] - self.neighbour[1]))
            else:
                self.neighbour = (best["cell_id"], float(best["sinr_db"]))
        else:
            self.neighbour = None
        self.serving_cell, self.last_seq, self.last_ts_ms = t["serving_cell"], t["seq"], t["ts_ms"]
        self.position = (t.get("x_m", 0.0), t.get("y_m", 0.0), t.get("speed_mps", 0.0))
        self.battery_pct, self.xr_active = t["battery_pct"], t.get("xr_active", False)
        self.history.append((t["ts_ms"], radio["sinr_db"]))
        if self.window_start_ms < 0:
            self.window_start_ms = t["ts_ms"]
        self.samples += 1
        self.sum_dl += t["throughput_dl_mbps"]
        self.sum_rtt += t["rtt_ms"]
        self.sum_cpu += t["cpu_util"]

    def sinr_trend_db_per_s(self) -> float:
        """Least-squares slope of the denoised SINR over the history."""
        n = len(self.history)
        if n < 2:
            return 0.0
        t0 = self.history[0][0]
        ts = [(ts - t0) / 1000.0 for ts, _ in self.history]
        mean_t, mean_s = sum(ts) / n, sum(s for _, s in self.history) / n
        var = sum((t - mean_t) ** 2 for t in ts)
        if var <= 0:
            return 0.0
        slope = sum((t - mean_t) * (s - mean_s) for t, (_, s) in zip(ts, self.history)) / var
        return max(-1000.0, min(1000.0, slope))

    def window_due(self, interval_ms: int) -> bool:
        return self.samples > 0 and self.last_ts_ms - self.window_start_ms >= interval_ms

    def summary(self) -> dict:
        """The LocalSummary of the open window; closes it."""
        n = max(self.samples, 1)
        x, y, speed = self.position
        summary = {
            "ue_id": self.ue_id, "serving_cell": self.serving_cell, "window_start_ms": self.window_start_ms,
            "window_end_ms": self.last_ts_ms, "samples": self.samples, "rsrp_dbm": self.radio["rsrp_dbm"],
            "sinr_db": self.radio["sinr_db"], "sinr_trend_db_per_s": self.sinr_trend_db_per_s(),
            "throughput_dl_mbps": self.sum_dl / n, "rtt_ms": self.sum_rtt / n,
            "best_neighbour_cell": self.neighbour[0] if self.neighbour else None,
            "best_neighbour_sinr_db": self.neighbour[1] if self.neighbour else None,
            "x_m": x, "y_m": y, "speed_mps": speed, "battery_pct": self.battery_pct,
            "cpu_util": min(1.0, self.sum_cpu / n), "xr_active": self.xr_active,
            "demands": sum(self.placed.values()), "placed_local": self.placed["local"],
            "placed_edge": self.placed["edge"], "placed_cloud": self.placed["cloud"], "emitted_ns": time.time_ns(),
        }
        self._open_window()
        return summary


# =============================================================================================
# Service module: latency prediction, placement, EDF on the device, learning from outcomes
# =============================================================================================
class EdfQueue:
    """The device's queue of local work, run earliest-deadline-first (preemptive).

    ``wait_ms(now, deadline)`` is how long a new task with that absolute deadline
    would wait behind work with earlier deadlines.

    >>> q = EdfQueue()
    >>> q.add(now_ms=0, deadline_ms=50, compute_ms=10); q.add(now_ms=0, deadline_ms=20, compute_ms=5)
    >>> q.wait_ms(now_ms=2, deadline_ms=30), q.wait_ms(now_ms=2, deadline_ms=100)
    (3.0, 13.0)
    """

    def __init__(self) -> None:
        self.tasks: list[list[float]] = []   # [absolute deadline ms, remaining compute ms], by deadline
        self.clock_ms = 0.0

    def _advance(self, now_ms: float) -> None:
        budget = now_ms - self.clock_ms
        while budget > 0 and self.tasks:
            head = self.tasks[0]
            used = min(budget, head[1])
            head[1] -= used
            budget -= used
            if head[1] <= 0:
                self.tasks.pop(0)
        self.clock_ms = max(self.clock_ms, now_ms)

    def wait_ms(self, now_ms: float, deadline_ms: float) -> float:
        self._advance(now_ms)
        return float(sum(r for d, r in self.tasks if d <= deadline_ms))

    def backlog_ms(self, now_ms: float) -> float:
        """All work still queued on the device, whatever its deadline."""
        self._advance(now_ms)
        return float(sum(r for _, r in self.tasks))

    def add(self, now_ms: float, deadline_ms: float, compute_ms: float) -> None:
        self._advance(now_ms)
        bisect.insort(self.tasks, [float(deadline_ms), float(compute_ms)])


def choose_tier(predicted: dict[str, float], deadline_ms: float, costs: dict[str, float],
                margin: float) -> str:
    """The cheapest tier predicted to meet ``margin * deadline``; else the fastest.

    >>> choose_tier({"local": 8.0, "edge": 30.0, "cloud": 60.0}, 20.0, {"edge": 1, "cloud": 1.5, "local": 2}, 0.9)
    'local'
    >>> choose_tier({"local": 8.0, "edge": 12.0, "cloud": 60.0}, 20.0, {"edge": 1, "cloud": 1.5, "local": 2}, 0.9)
    'edge'
    """
    feasible = [t for t in predicted if predicted[t] <= margin * deadline_ms]
    if feasible:
        return min(feasible, key=lambda t: (costs.get(t, 1.0), predicted[t]))
    return min(predicted, key=predicted.get)


# =============================================================================================
# Communication module: the agent
# =============================================================================================
class LocalTwinAgent(TwinAgent):
    """The local DT agent. ``LocalTwinAgent(LocalAgentConfig(...)).run(stop_event)``."""

    tier = "local"
    model_names = (DEMAND_LATENCY,)
    config: LocalAgentConfig

    def __init__(self, config: LocalAgentConfig, settings=None):
        if config.demand_latency_model != DEMAND_LATENCY:
            self.model_names = (config.demand_latency_model,)
        super().__init__(config, settings)
        self.latency_slot = self.slots[config.demand_latency_model]
        self.edge_states: dict[int, dict] = {}
        self.pending: OrderedDict[str, tuple[dict, str]] = OrderedDict()
        self.pending_by_demand: dict[str, str] = {}

    def group_topics(self) -> list[str]:
        c = self.config
        return [c.telemetry_topic, c.demands_topic, c.outcomes_topic]

    def side_topics(self) -> dict[str, bool]:
        return {self.config.models_topic: True, self.config.edge_state_topic: False}

    def process_side(self, record: KafkaRecord) -> None:
        if record.topic == self.config.edge_state_topic:
            if record.schema != "tiertwin.EdgeState":
                self.reject(record, "wrong-schema", f"{record.topic} carries tiertwin.EdgeState, got {record.schema}")
                return
            state = record.value
            known = self.edge_states.get(state["cell_id"])
            if known is None or known["ts_ms"] <= state["ts_ms"]:
                self.edge_states[state["cell_id"]] = state
        else:
            super().process_side(record)

    def process(self, batch: list[KafkaRecord], received_ns: int) -> None:
        c = self.config
        count = {c.telemetry_topic: 0, c.demands_topic: 0, c.outcomes_topic: 0}
        handlers = {c.telemetry_topic: ("tiertwin.Telemetry", self.on_telemetry),
                    c.demands_topic: ("tiertwin.Demand", lambda r: self.on_demand(r, received_ns)),
                    c.outcomes_topic: ("tiertwin.Outcome", self.on_outcome)}
        # Decide first, earliest deadline first: demands are what someone is waiting for; telemetry and
        # outcomes of the same batch only refresh state (at most one poll older for these decisions).
        demands = [r for r in batch if r.topic == c.demands_topic and r.schema == "tiertwin.Demand"]
        if demands:
            demands.sort(key=lambda r: r.value["ts_ms"] + r.value["deadline_ms"])
            first = set(map(id, demands))
            batch = demands + [r for r in batch if id(r) not in first]
        for record in batch:
            count[record.topic] = count.get(record.topic, 0) + 1
            schema, handle = handlers[record.topic]
            if record.schema != schema:
                self.reject(record, "wrong-schema", f"{record.topic} carries {schema}, got {record.schema}")
                continue
            try:
                handle(record)
            except Exception as exc:  # one record must not stop the twin: dead-letter it with the cause
                self.reject(record, "processing-error", f"{type(exc).__name__}: {exc}")
        for topic, n in count.items():
            if n:
                self.metrics.records.labels(self.tier, c.instance_id, topic).inc(n)

    def twin(self, ue_id: str) -> UETwin:
        twin = self.twins.get(ue_id)
        if twin is None:
            twin = self.twins[ue_id] = UETwin(ue_id, self.config.history_length)
        return twin

    # -- data path -----------------------------------------------------------------------------
    def on_telemetry(self, record: KafkaRecord) -> None:
        t = record.value
        problem = semantic_problem(t)
        if problem is not None:
            self.reject(record, *problem)
            return
        twin = self.twin(t["ue_id"])
        if is_replay(twin, t):
            self.metrics.replayed.inc()     # already folded into the restored twin
            return
        twin.observe(t, self.config.ewma_alpha)
        self.touch(t["ue_id"], record.partition)
        if twin.window_due(self.config.summary_interval_ms):
            summary = twin.summary()
            self.emit(self.config.summaries_topic, "LocalSummary", summary, key=summary["serving_cell"])

    # -- service path --------------------------------------------------------------------------
    def on_demand(self, record: KafkaRecord, received_ns: int) -> None:
        c, demand = self.config, record.value
        twin = self.twin(demand["ue_id"])
        model, version = self.latency_slot.current()
        now_ms = demand["ts_ms"]
        absolute_deadline = now_ms + demand["deadline_ms"]
        critical = demand["priority"] >= c.critical_priority
        wait = twin.device.wait_ms(now_ms, absolute_deadline if critical else float("inf"))
        x = demand_features(demand, twin.radio or None, self.edge_states.get(demand["serving_cell"]), wait,
                            twin.device.backlog_ms(now_ms))
        predicted = model.predict_tiers(x)
        costs = c.tier_costs
        if twin.battery_pct < c.low_battery_pct:
            costs = {**costs, "local": 2 * costs.get("local", 1.0)}
        tier = choose_tier(predicted, demand["deadline_ms"], costs, c.deadline_margin)
        if tier == "local":
            twin.device.add(now_ms, absolute_deadline if critical else now_ms + 1e9, x["local_compute_ms"])
        twin.placed[tier] += 1
        self.touch(demand["ue_id"], record.partition)
        did = decision_id("local", "placement", record)
        parameters = {"predicted_latency_ms": predicted[tier], "deadline_ms": float(demand["deadline_ms"]),
                      "edf_wait_ms": wait, **{f"predicted_{t}_ms": v for t, v in predicted.items()},
                      **features_to_parameters(x)}
        decision = {
            "decision_id": did, "tier": "local", "kind": "placement", "ue_id": demand["ue_id"],
            "cell_id": demand["serving_cell"], "subject_id": demand["demand_id"], "target": tier,
            "parameters": parameters, "model_name": self.latency_slot.name, "model_version": version,
            "confidence": deadline_confidence(predicted[tier], demand["deadline_ms"], _mae(model, tier)),
            **decision_stamps(record, received_ns),
        }
        self.emit_decision(c.actions_topic, decision, key=demand["ue_id"])
        self._remember(did, demand["demand_id"], x, tier)

    def _remember(self, did: str, demand_id: str, x: dict, tier: str) -> None:
        self.pending[did] = (x, tier)
        self.pending_by_demand[demand_id] = did
        while len(self.pending) > self.config.pending_outcomes:
            self.pending.popitem(last=False)
        if len(self.pending_by_demand) > 2 * self.config.pending_outcomes:
            self.pending_by_demand = {d: i for d, i in self.pending_by_demand.items() if i in self.pending}

    def on_outcome(self, record: KafkaRecord) -> None:
        """Learn predicted-vs-measured latency from a demand's Outcome."""
        outcome = record.value
        if outcome["kind"] != "demand" or outcome["latency_ms"] is None:
            return
        did = outcome["decision_id"] or self.pending_by_demand.get(outcome["demand_id"] or "")
        example = self.pending.pop(did, None) if did else None
        if example is None:
            return
        x, tier = example
        placement = outcome["placement"] if outcome["placement"] in TIERS else tier
        model, _ = self.latency_slot.current()
        model.learn_one({**x, "tier": placement}, outcome["latency_ms"])
        self.metrics.learned.labels(self.tier, self.config.instance_id, self.latency_slot.name).inc()

    def restore_twin(self, twin: Any) -> Any:
        return twin


def _mae(model: Any, tier: str) -> float:
    return model.mae(tier) if isinstance(model, DemandLatencyModel) else 5.0
