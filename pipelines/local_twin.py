"""The local digital twin: the twins of a device's UEs, deciding in-process in microseconds.

Reading order: configuration, then the **data module** (validate, denoise, keep a short
history, compress into LocalSummary records), the **service module** (predict a demand's
latency at each tier, place it at least cost within its deadline, earliest-deadline-first
on the device, learn from outcomes), :class:`LocalTwin` (both modules for a set of UEs, with
no Kafka inside: what a device runs, and what the what-if replay drives), and the
**communication module** (:class:`LocalTwinAgent`: the same twin deployed as a Kafka service,
``tiertwin run local``).

The agent reads ``tiertwin.local.telemetry`` and ``tiertwin.local.demands`` (group member,
keyed by UE), ``tiertwin.outcomes`` (group member, same key), and, read whole by every
instance, ``tiertwin.cloud.edge-state`` (edge load) and ``tiertwin.models``.
It writes Decision records (kind ``placement``) to ``tiertwin.actions.local``,
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

import itertools
import operator
import struct
import time
from array import array
from collections import OrderedDict, deque
from typing import Any, Iterable, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from tiertwin.connectors.kafka import KafkaRecord
from tiertwin.errors import RecordRejected
from tiertwin.pipelines.agent import AgentConfig, TwinAgent, decision_id, decision_stamps
from tiertwin.pipelines.edf import NOT_CRITICAL_OFFSET_MS, edf_key
from tiertwin.pipelines.features import (DEFAULT_EDGE_TERMS, DEFAULT_RADIO_TERMS, DEMAND_FEATURES, MIN_LINK_MBPS,
                                          TIERS, edge_terms, placement_features, radio_terms)
from tiertwin.pipelines.learners import DEMAND_LATENCY, deadline_confidence
from tiertwin.pipelines.models import FEATURE_PREFIX, ModelSlot
from tiertwin.pipelines.pretrain import load_pretrained
from tiertwin.topics import (ACTIONS_LOCAL, DEMANDS, EDGE_STATE, LOCAL_CHANGELOG, SUMMARIES,
                             TELEMETRY)

TwinSite = Literal["device", "edge", "cloud"]
_INFINITY = float("inf")
_time_ns = time.time_ns
_TWOS = itertools.repeat(2)
_sub, _truediv = operator.sub, operator.truediv


class LocalTwinConfig(BaseModel):
    """The local twin's knobs (no topics: a device needs none of them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    summary_interval_ms: int = Field(100, ge=1, le=600_000, description="One LocalSummary per UE per this much event time")
    ewma_alpha: float = Field(0.3, gt=0, le=1, description="Weight of the newest sample in the denoised radio state")
    history_length: int = Field(20, ge=2, le=10_000, description="Denoised samples kept per UE")
    demand_latency_model: str = DEMAND_LATENCY
    tier_costs: dict[str, float] = Field(default_factory=lambda: {"edge": 1.0, "cloud": 1.5, "local": 2.0})
    low_battery_pct: float = Field(20.0, ge=0, le=100, description="Below this, running on the device costs double")
    deadline_margin: float = Field(0.9, gt=0, le=1, description="A tier is feasible if predicted <= margin * deadline")
    critical_priority: int = Field(5, ge=0, le=7, description="Demands at or above it are time-critical (EDF on the device)")
    pending_outcomes: int = Field(100_000, ge=100, description="Decisions remembered to learn from their outcomes")
    site: TwinSite = Field("device", description="Where this twin runs; stamped on every Decision as twin_site")


class LocalAgentConfig(AgentConfig, LocalTwinConfig):
    """Configuration of one local agent instance (``tiertwin run local --config FILE``): the twin's knobs and its topics."""

    group_id: str = "tiertwin-local"
    changelog_topic: str = LOCAL_CHANGELOG
    telemetry_topic: str = TELEMETRY
    demands_topic: str = DEMANDS
    edge_state_topic: str = EDGE_STATE
    summaries_topic: str = SUMMARIES
    actions_topic: str = ACTIONS_LOCAL
    site: TwinSite = Field("edge", description="Where this service runs (at the edge unless deployed in the cloud)")


class ImplausibleRecord(RecordRejected):
    """A record that passed the contract's range checks but makes no sense (``reason`` says why)."""

    reason = "implausible"


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
    """The local twin of one UE: denoised radio state, short history, summary window, device queue.

    Its fields are slots (no per-twin ``__dict__``): a device runtime hosts 10,000 of them, and each
    placement and telemetry record touches one. The history is two arrays of doubles (event times,
    denoised SINR), the position, best neighbour and placements per tier plain fields, so a telemetry
    record leaves no tuple behind for the garbage collector to walk; :attr:`history`, :attr:`position`,
    :attr:`neighbour` and :attr:`placed` read them as before. Pickles as a dict of its fields; a pickle of
    the earlier layout (a ``__dict__`` with tuples) restores.
    """

    __slots__ = ("ue_id", "serving_cell", "last_seq", "last_ts_ms", "radio", "neighbour_cell", "neighbour_sinr",
                 "sinr_last", "neighbour_sinr_last", "x_m", "y_m", "speed_mps", "battery_pct", "xr_active",
                 "history_length", "history_ts", "history_sinr", "device", "window_start_ms", "samples", "sum_dl",
                 "sum_rtt", "sum_cpu", "placed_local", "placed_edge", "placed_cloud", "radio_terms")

    def __init__(self, ue_id: str, history_length: int = 20):
        self.ue_id = ue_id
        self.serving_cell = -1
        self.last_seq = -1
        self.last_ts_ms = 0
        self.radio: dict[str, float] = {}
        self.neighbour_cell: int | None = None            # best neighbour: cell and denoised SINR
        self.neighbour_sinr: float | None = None
        self.sinr_last: float | None = None               # the latest samples, not denoised (the edge forecasts
        self.neighbour_sinr_last: float | None = None     # from them: a smoothed "now" lags the radio)
        self.x_m = self.y_m = self.speed_mps = 0.0
        self.battery_pct = 100.0
        self.xr_active = False
        # The last history_length event times (ms, exact in a double) and denoised SINR, oldest first: two arrays of
        # doubles, not deques of float and int objects (the trend read 40 objects out of the caches per summary)
        self.history_length = history_length
        self.history_ts = array("d")
        self.history_sinr = array("d")
        self.device = EdfQueue()
        # features.radio_terms of ``radio`` (what place() needs of it), updated with it; None before any telemetry.
        self.radio_terms: tuple | None = None
        self._open_window()

    # -- the earlier layout's fields, read as before (copies) -------------------------------------------------
    @property
    def history(self) -> list[tuple[int, float]]:
        """``(ts_ms, denoised SINR)`` of the last ``history_length`` samples, oldest first (a copy)."""
        return [(int(ts), s) for ts, s in zip(self.history_ts, self.history_sinr)]

    @property
    def position(self) -> tuple[float, float, float]:
        return self.x_m, self.y_m, self.speed_mps

    @property
    def placed(self) -> dict[str, int]:
        """Demands placed per tier in the open summary window (a copy)."""
        return {"local": self.placed_local, "edge": self.placed_edge, "cloud": self.placed_cloud}

    @property
    def neighbour(self) -> tuple[int, float] | None:
        return None if self.neighbour_cell is None else (self.neighbour_cell, self.neighbour_sinr)

    @neighbour.setter
    def neighbour(self, value: tuple[int, float] | None) -> None:
        self.neighbour_cell, self.neighbour_sinr = (None, None) if value is None else value

    def remember(self, ts_ms: int, sinr_db: float) -> None:
        """Append one ``(ts_ms, denoised SINR)`` sample to the history (``observe`` does, per record)."""
        self.history_ts.append(ts_ms)
        self.history_sinr.append(sinr_db)
        if len(self.history_ts) > self.history_length:
            del self.history_ts[0], self.history_sinr[0]

    def __getstate__(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict) -> None:
        if "history" in state:      # the earlier layout (a __dict__): tuples for the history, position, neighbour
            state = dict(state)
            history = state.pop("history")
            state["history_length"] = history.maxlen
            state["history_ts"] = array("d", [ts for ts, _ in history])
            state["history_sinr"] = array("d", [s for _, s in history])
            state["x_m"], state["y_m"], state["speed_mps"] = state.pop("position", (0.0, 0.0, 0.0))
            neighbour = state.pop("neighbour", None)
            state["neighbour_cell"], state["neighbour_sinr"] = (None, None) if neighbour is None else neighbour
            state.setdefault("sinr_last", None)
            state.setdefault("neighbour_sinr_last", None)
            radio = state.get("radio")
            state["radio_terms"] = radio_terms(radio) if radio else None
        if "history_length" not in state:     # the history in deques before
            state = dict(state)
            state["history_length"] = state["history_ts"].maxlen
            state["history_ts"] = array("d", state["history_ts"])
            state["history_sinr"] = array("d", state["history_sinr"])
        if "placed" in state:       # a dict of counts per tier before
            state = dict(state)
            placed = state.pop("placed")
            state["placed_local"], state["placed_edge"], state["placed_cloud"] = (placed[t] for t in TIERS)
        for name in self.__slots__:
            setattr(self, name, state[name])

    def _open_window(self) -> None:
        self.window_start_ms = -1
        self.samples = 0
        self.sum_dl = self.sum_rtt = self.sum_cpu = 0.0
        self.placed_local = self.placed_edge = self.placed_cloud = 0

    def observe(self, t: dict, alpha: float) -> None:
        """Fold one telemetry record in (EWMA denoising) and extend the summary window."""
        radio = self.radio
        if not radio:
            radio.update({k: float(t[k]) for k in DENOISED})
            sinr, ul, dl = radio["sinr_db"], radio["throughput_ul_mbps"], radio["throughput_dl_mbps"]
            rtt, cpu = radio["rtt_ms"], radio["cpu_util"]
        else:   # for k in DENOISED: radio[k] += alpha * (t[k] - radio[k]), unrolled (per record, on the device)
            v = radio["sinr_db"]
            radio["sinr_db"] = sinr = v + alpha * (t["sinr_db"] - v)
            v = radio["rsrp_dbm"]
            radio["rsrp_dbm"] = v + alpha * (t["rsrp_dbm"] - v)
            v = radio["throughput_dl_mbps"]
            radio["throughput_dl_mbps"] = dl = v + alpha * (t["throughput_dl_mbps"] - v)
            v = radio["throughput_ul_mbps"]
            radio["throughput_ul_mbps"] = ul = v + alpha * (t["throughput_ul_mbps"] - v)
            v = radio["rtt_ms"]
            radio["rtt_ms"] = rtt = v + alpha * (t["rtt_ms"] - v)
            v = radio["cpu_util"]
            radio["cpu_util"] = cpu = v + alpha * (t["cpu_util"] - v)
        # features.radio_terms(radio), from the values just stored (the same floats): computed here, 10 times a
        # second per UE, instead of by the first placement after each record (1.8 us there, at 10,000 UEs).
        self.radio_terms = ((MIN_LINK_MBPS if MIN_LINK_MBPS > ul else ul) * 1000.0,
                            (MIN_LINK_MBPS if MIN_LINK_MBPS > dl else dl) * 1000.0, rtt, sinr, cpu)
        self.sinr_last = float(t["sinr_db"])
        neighbours = t["neighbours"]
        if neighbours:
            best = neighbours[0]
            cell, best_sinr = best["cell_id"], best["sinr_db"]
            self.neighbour_sinr_last = float(best_sinr)
            known = self.neighbour_cell
            if known is not None and known == cell:
                v = self.neighbour_sinr
                self.neighbour_sinr = v + alpha * (best_sinr - v)
            else:
                self.neighbour_cell, self.neighbour_sinr = cell, float(best_sinr)
        else:
            self.neighbour_cell = self.neighbour_sinr = self.neighbour_sinr_last = None
        ts_ms = t["ts_ms"]
        self.serving_cell, self.last_seq, self.last_ts_ms = t["serving_cell"], t["seq"], ts_ms
        self.x_m, self.y_m, self.speed_mps = t.get("x_m", 0.0), t.get("y_m", 0.0), t.get("speed_mps", 0.0)
        self.battery_pct, self.xr_active = t["battery_pct"], t.get("xr_active", False)
        times = self.history_ts
        times.append(ts_ms)
        self.history_sinr.append(sinr)
        if len(times) > self.history_length:
            del times[0], self.history_sinr[0]
        if self.window_start_ms < 0:
            self.window_start_ms = ts_ms
        self.samples += 1
        self.sum_dl += t["throughput_dl_mbps"]
        self.sum_rtt += t["rtt_ms"]
        self.sum_cpu += t["cpu_util"]

    def sinr_trend_db_per_s(self) -> float:
        """Least-squares slope of the denoised SINR over the history."""
        times = self.history_ts
        n = len(times)
        if n < 2:
            return 0.0
        # Each term and the order of every sum as the plain formula's (test: the same float), in C (map):
        # t = (ts - t0) / 1000, slope = sum((t - mean_t) * (s - mean_s)) / sum((t - mean_t) ** 2). (d ** 2, not
        # d * d: they differ in the last bit for about 1 value in 1,000 here.)
        ts = list(map(_truediv, map(_sub, times, itertools.repeat(times[0], n)), itertools.repeat(1000.0, n)))
        ss = self.history_sinr
        mean_t, mean_s = sum(ts) / n, sum(ss) / n
        dt = list(map(_sub, ts, itertools.repeat(mean_t, n)))
        var = sum(map(pow, dt, _TWOS))
        if var <= 0:
            return 0.0
        slope = sum(map(operator.mul, dt, map(_sub, ss, itertools.repeat(mean_s, n)))) / var
        return max(-1000.0, min(1000.0, slope))

    def window_due(self, interval_ms: int) -> bool:
        return self.samples > 0 and self.last_ts_ms - self.window_start_ms >= interval_ms

    def summary(self) -> dict:
        """The LocalSummary of the open window; closes it."""
        n = max(self.samples, 1)
        radio = self.radio
        local, edge, cloud = self.placed_local, self.placed_edge, self.placed_cloud
        summary = {
            "ue_id": self.ue_id, "serving_cell": self.serving_cell, "window_start_ms": self.window_start_ms,
            "window_end_ms": self.last_ts_ms, "samples": self.samples, "rsrp_dbm": radio["rsrp_dbm"],
            "sinr_db": radio["sinr_db"], "sinr_trend_db_per_s": self.sinr_trend_db_per_s(),
            "throughput_dl_mbps": self.sum_dl / n, "rtt_ms": self.sum_rtt / n,
            "best_neighbour_cell": self.neighbour_cell, "best_neighbour_sinr_db": self.neighbour_sinr,
            "sinr_last_db": self.sinr_last, "best_neighbour_sinr_last_db": self.neighbour_sinr_last,
            "x_m": self.x_m, "y_m": self.y_m, "speed_mps": self.speed_mps, "battery_pct": self.battery_pct,
            "cpu_util": min(1.0, self.sum_cpu / n), "xr_active": self.xr_active,
            "demands": local + edge + cloud, "placed_local": local,
            "placed_edge": edge, "placed_cloud": cloud, "emitted_ns": _time_ns(),
        }
        self._open_window()
        return summary


# =============================================================================================
# Service module: latency prediction, placement, EDF on the device, learning from outcomes
# =============================================================================================
class EdfQueue:
    """The device's queue of local work, run earliest-deadline-first (preemptive).

    ``wait_ms(now, deadline)`` is how long a new task with that absolute deadline
    would wait behind work with earlier deadlines. The twin queues a demand under its
    :func:`~tiertwin.pipelines.edf.edf_key`, the order the (simulated) device runs it in.

    >>> q = EdfQueue()
    >>> q.add(now_ms=0, deadline_ms=50, compute_ms=10); q.add(now_ms=0, deadline_ms=20, compute_ms=5)
    >>> q.wait_ms(now_ms=2, deadline_ms=30), q.wait_ms(now_ms=2, deadline_ms=100)
    (3.0, 13.0)
    """

    __slots__ = ("queue", "clock_ms")

    def __init__(self) -> None:
        # The tasks, flat: absolute deadline ms, remaining compute ms, the next task's deadline, ..., ordered by
        # (deadline, remaining) as sorted [deadline, remaining] lists were. One array of doubles, not a list of lists
        # of float objects: a placement at 10,000 UEs reads a queue that is out of the caches, and each local
        # placement added a list for the garbage collector to walk.
        self.queue = array("d")
        self.clock_ms = 0.0

    @property
    def tasks(self) -> list[list[float]]:
        """``[absolute deadline ms, remaining compute ms]`` of every queued task, in the order they run (a copy)."""
        q = self.queue
        return [[q[i], q[i + 1]] for i in range(0, len(q), 2)]

    def __getstate__(self) -> dict:
        return {"tasks": self.tasks, "clock_ms": self.clock_ms}

    def __setstate__(self, state: dict) -> None:     # also a pickle from before the slots (its __dict__)
        self.queue = array("d", [v for task in state["tasks"] for v in task])
        self.clock_ms = state["clock_ms"]

    def _advance(self, now_ms: float) -> None:
        budget = now_ms - self.clock_ms
        q = self.queue
        while budget > 0 and q:
            remaining = q[1]
            used = min(budget, remaining)
            q[1] = remaining = remaining - used
            budget -= used
            if remaining <= 0:
                del q[:2]
        self.clock_ms = max(self.clock_ms, now_ms)

    def wait_ms(self, now_ms: float, deadline_ms: float) -> float:
        return self.waits(now_ms, deadline_ms)[0]

    def backlog_ms(self, now_ms: float) -> float:
        """All work still queued on the device, whatever its deadline."""
        return self.waits(now_ms, _INFINITY)[1]

    def waits(self, now_ms: float, deadline_ms: float) -> tuple[float, float]:
        """``(wait_ms(now_ms, deadline_ms), backlog_ms(now_ms))``, the same numbers, in one pass.

        >>> q = EdfQueue()
        >>> q.add(now_ms=0, deadline_ms=50, compute_ms=10); q.add(now_ms=0, deadline_ms=20, compute_ms=5)
        >>> q.waits(now_ms=2, deadline_ms=30), q.waits(now_ms=2, deadline_ms=float("inf"))
        ((3.0, 13.0), (13.0, 13.0))
        """
        if now_ms > self.clock_ms:
            self._advance(now_ms)
        q = self.queue
        if not q:
            return 0.0, 0.0
        # Both sums in one pass, each in queue order from 0.0 (what sum() of the same terms gives, bit for bit)
        wait = backlog = 0.0
        pairs = iter(q)
        for deadline, remaining in zip(pairs, pairs):
            backlog += remaining
            if deadline <= deadline_ms:
                wait += remaining
        return wait, backlog

    def add(self, now_ms: float, deadline_ms: float, compute_ms: float) -> None:
        self._advance(now_ms)
        _edf_insert(self.queue, float(deadline_ms), float(compute_ms))


def _edf_insert(q: array, deadline: float, compute: float) -> None:
    """Queue a task in a flat EDF queue: after every task ``[d, r] <= [deadline, compute]`` (``bisect.insort`` of the
    pair into sorted pairs; queues are a few tasks long, the scan is shorter than a bisection's calls)."""
    i, n = 0, len(q)
    while i < n:
        d = q[i]
        if deadline < d or (deadline == d and compute < q[i + 1]):
            break
        i += 2
    q[i:i] = array("d", (deadline, compute))


def choose_tier(predicted: dict[str, float], deadline_ms: float, costs: dict[str, float],
                margin: float) -> str:
    """The cheapest tier predicted to meet ``margin * deadline``; else the fastest.

    >>> choose_tier({"local": 8.0, "edge": 30.0, "cloud": 60.0}, 20.0, {"edge": 1, "cloud": 1.5, "local": 2}, 0.9)
    'local'
    >>> choose_tier({"local": 8.0, "edge": 12.0, "cloud": 60.0}, 20.0, {"edge": 1, "cloud": 1.5, "local": 2}, 0.9)
    'edge'
    """
    # One pass, no temporaries: this runs for every demand, on the device.
    limit = margin * deadline_ms
    best, best_cost, best_latency = None, 0.0, 0.0
    fastest, fastest_latency = None, _INFINITY
    for tier, latency in predicted.items():
        if fastest is None or latency < fastest_latency:
            fastest, fastest_latency = tier, latency
        if latency <= limit:
            cost = costs.get(tier, 1.0)
            if best is None or cost < best_cost or (cost == best_cost and latency < best_latency):
                best, best_cost, best_latency = tier, cost, latency
    return best if best is not None else fastest


# =============================================================================================
# The local twin: data and service modules for a set of UEs, no Kafka inside
# =============================================================================================
_PREDICTED_KEYS = {tier: f"predicted_{tier}_ms" for tier in TIERS}


class _ParameterNames(dict):
    """Feature name -> its Decision parameter name (``x_<name>``, see models.features_to_parameters), built once per name."""

    def __missing__(self, name: str) -> str:
        self[name] = key = FEATURE_PREFIX + name
        return key


_FEATURE_KEYS = _ParameterNames()


def _compile_parameters_builder():
    """``parameters(predicted_ms, deadline_ms, wait_ms, predicted, x)``: a Decision's parameters in one dict display
    (the same keys and order as built key by key before: chosen tier, deadline, EDF wait, ``predicted_<tier>_ms``,
    then ``x_<feature>`` in :data:`~tiertwin.pipelines.features.DEMAND_FEATURES` order). Features other than those
    (a model's own ``x``) are added after them."""
    predicted = ", ".join(f"{_PREDICTED_KEYS[t]!r}: p[{t!r}]" for t in TIERS)
    features = ", ".join(f"{FEATURE_PREFIX + k!r}: x[{k!r}]" for k in DEMAND_FEATURES)
    source = (f"def parameters(chosen, deadline, wait, p, x):\n"
              f"    return {{'predicted_latency_ms': chosen, 'deadline_ms': deadline, 'edf_wait_ms': wait, {predicted}, "
              f"{features}}}\n")
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # noqa: S102 - built from the module's own constant names
    return namespace["parameters"]


_decision_parameters = _compile_parameters_builder()
_EXAMPLE = struct.Struct(f"<{len(DEMAND_FEATURES)}d")
# A decision under the default id waits for its outcome as one bytes object: its features and its tier's index in
# TIERS (the demand id is in the decision id). Others (another id, another tier) as (_EXAMPLE bytes, tier, demand id).
_EXAMPLE_TIER = struct.Struct(f"<{len(DEMAND_FEATURES)}dB")
_TIER_CODES = {tier: code for code, tier in enumerate(TIERS)}
_DEFAULT_ID_PREFIX = len("local/placement/")


def _pack_example(x: dict) -> bytes | dict:
    """A placement's features as they wait for the outcome (up to ``pending_outcomes`` of them): one bytes object
    instead of a dict of 18 float objects. At 10,000 UEs 100,000 examples wait; freeing an old dict (its floats
    long out of the cache) cost each placement that evicted one more than the packing does. Exact (doubles)."""
    if len(x) == len(DEMAND_FEATURES):
        try:
            return _EXAMPLE.pack(*[x[k] for k in DEMAND_FEATURES])
        except (KeyError, struct.error):
            pass
    return x


def _unpack_example(packed: bytes | dict) -> dict:
    if type(packed) is bytes:
        return dict(zip(DEMAND_FEATURES, _EXAMPLE.unpack(packed)))
    return packed


def _unpack_pending(did: str, example: bytes | tuple) -> tuple[dict, str, str]:
    """``(features, tier, demand id)`` of a decision awaiting its outcome (``LocalTwin.pending[did]``)."""
    if type(example) is bytes:  # under the default id
        values = _EXAMPLE_TIER.unpack(example)
        return dict(zip(DEMAND_FEATURES, values)), TIERS[values[-1]], did[_DEFAULT_ID_PREFIX:]
    x, tier, demand_id = example
    return _unpack_example(x), tier, demand_id


class Observed(NamedTuple):
    """What :meth:`LocalTwin.observe_many` did with a batch of telemetry."""

    fresh: int                                       # records folded in
    replays: int                                     # records already folded in (not again)
    summaries: list[dict]                            # LocalSummary records that fell due, in order
    rejected: list[tuple[dict, RecordRejected]]      # (record, why) for records that make no sense


def _serving_in(neighbours: list[dict], serving: int) -> bool:
    """Is the serving cell among the neighbours (a loop: per telemetry record, a generator costs more than it)?"""
    for n in neighbours:
        if n["cell_id"] == serving:
            return True
    return False


class LocalTwin:
    """The local twins of a set of UEs (a device hosts its own UE's, the service many). No Kafka inside.

    Feed it decoded records: ``observe(telemetry)``, ``update_edge_state(edge_state)``,
    ``learn(outcome)``, ``swap_model(model_update)``; ask it ``place(demand)`` for a complete
    Decision record and ``due_summaries()`` for the LocalSummary records to send up. Its state
    (UE twins, edge state, model, decisions awaiting outcomes) pickles whole.

    >>> twin = LocalTwin(LocalTwinConfig(summary_interval_ms=100))
    >>> radio = {"ue_id": "ue-1", "serving_cell": 3, "sinr_db": 20.0, "rsrp_dbm": -85.0, "throughput_dl_mbps": 300.0,
    ...          "throughput_ul_mbps": 60.0, "rtt_ms": 6.0, "cpu_util": 0.2, "battery_pct": 90.0, "neighbours": []}
    >>> [twin.observe({**radio, "ts_ms": 1_000 + 50 * i, "seq": i}) for i in (1, 2, 3, 3)]
    [True, True, True, False]
    >>> [(s["ue_id"], s["samples"]) for s in twin.due_summaries()]
    [('ue-1', 3)]
    >>> demand = {"demand_id": "ue-1/d/1", "ue_id": "ue-1", "ts_ms": 1_160, "kind": "xr_frame", "compute_gcycles": 0.1,
    ...           "input_bytes": 20_000, "output_bytes": 100_000, "deadline_ms": 20.0, "priority": 6, "serving_cell": 3}
    >>> decision = twin.place(demand)
    >>> decision["decision_id"], decision["target"], decision["twin_site"], decision["model_version"]
    ('local/placement/ue-1/d/1', 'edge', 'device', 1)
    >>> twin.learn({"kind": "demand", "decision_id": decision["decision_id"], "demand_id": "ue-1/d/1",
    ...             "placement": decision["target"], "latency_ms": 14.0})
    True
    """

    def __init__(self, config: LocalTwinConfig | None = None, model: Any | None = None, model_version: int = 1):
        self.config = config = config or LocalTwinConfig()
        if model is None:   # the shipped pretrained model, at its shipped version
            model, model_version = load_pretrained(config.demand_latency_model)
        self.slot = ModelSlot(config.demand_latency_model, model, model_version)
        self.twins: dict[str, UETwin] = {}
        self.edge_states: dict[int, dict] = {}
        # decision id -> the example kept to learn from its outcome: _EXAMPLE_TIER bytes (features and tier) under the
        # default id, else (x packed by _pack_example, tier, demand id)
        self.pending: OrderedDict[str, bytes | tuple[Any, str, str]] = OrderedDict()
        # demand id -> its latest pending decision id, for the decisions whose id is not the default one
        # (local/placement/<demand id>: found without an index, so a device runtime's index stays empty); None: the
        # demand's decision under the default id awaits its outcome, but the demand was placed again since under
        # another id, so an outcome without a decision id joins neither (as when the index held every decision).
        self.pending_by_demand: dict[str, str | None] = {}
        self._due: dict[str, None] = {}     # UEs whose summary window is due, in the order they became due
        # Both cost tables are built once: place() only picks one.
        self._costs = {tier: float(config.tier_costs.get(tier, 1.0)) for tier in TIERS}
        self._low_battery_costs = {**self._costs, "local": 2 * self._costs["local"]}
        self._init_caches()

    def _init_caches(self) -> None:
        # Caches of place(), not state (not pickled): per cell (EdgeState, features.edge_terms of it), and
        # (model, its per-tier running error) for the decision's confidence.
        self._edge_terms: dict[int, tuple[dict, tuple]] = {}
        self._mae: tuple[Any, Any] = (None, None)

    # -- state ---------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.slot.name

    @property
    def model_version(self) -> int:
        return self.slot.version

    @property
    def model(self) -> Any:
        return self.slot.model

    def twin(self, ue_id: str) -> UETwin:
        """The UE's twin (created empty on first sight)."""
        twin = self.twins.get(ue_id)
        if twin is None:
            twin = self.twins[ue_id] = UETwin(ue_id, self.config.history_length)
        return twin

    def device_queue(self, ue_id: str) -> EdfQueue:
        """The UE's EDF queue of local work (the device runs its local work in this order)."""
        return self.twin(ue_id).device

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_edge_terms", None)
        state.pop("_mae", None)
        return state

    def __setstate__(self, state: dict) -> None:
        # The slot pickles whole (version, revision, shadow); pickles made before that carry its fields.
        if "slot_state" in state:
            name, model, version, swaps = state.pop("slot_state")
            state["slot"] = ModelSlot(name, model, version, swaps)
        self.__dict__.update(state)
        self._init_caches()

    # -- data module ---------------------------------------------------------------------------
    def observe(self, telemetry: dict) -> bool:
        """Fold one Telemetry record in; False if it was already folded in (a replay).

        Raises :class:`ImplausibleRecord` (``reason`` e.g. ``bad-timestamp``) for a record that makes no sense.
        """
        # semantic_problem and is_replay, inlined (per record, on the device); they give the reason.
        ts_ms, serving = telemetry["ts_ms"], telemetry["serving_cell"]
        if ts_ms <= 0 or _serving_in(telemetry["neighbours"], serving):
            problem = semantic_problem(telemetry)
            raise ImplausibleRecord(problem[1], reason=problem[0])
        ue_id = telemetry["ue_id"]
        twin = self.twins.get(ue_id) or self.twin(ue_id)
        if telemetry["seq"] <= twin.last_seq and ts_ms <= twin.last_ts_ms:
            return False
        c = self.config
        twin.observe(telemetry, c.ewma_alpha)
        if twin.last_ts_ms - twin.window_start_ms >= c.summary_interval_ms:     # window_due (samples > 0 now)
            self._due[ue_id] = None
        return True

    def observe_many(self, telemetry: Iterable[dict]) -> Observed:
        """:meth:`observe` every record in turn, each followed by :meth:`due_summaries` (what a device runtime does
        per record), in one call: a simulator step's telemetry, or a device's batch. The same twin state and the
        same summaries, in the same order, as the calls one by one; a record that makes no sense does not stop the
        others (it is returned with its error in ``rejected``)."""
        fresh = replays = 0
        summaries: list[dict] = []
        rejected: list[tuple[dict, RecordRejected]] = []
        observe, due_summaries = self.observe, self.due_summaries
        for t in telemetry:
            try:
                if observe(t):
                    fresh += 1
                else:
                    replays += 1
            except ImplausibleRecord as exc:
                rejected.append((t, exc))
                continue
            if self._due:
                summaries.extend(due_summaries())
        return Observed(fresh, replays, summaries, rejected)

    def due_summaries(self) -> list[dict]:
        """The LocalSummary records of the windows that are due (``summary_interval_ms`` of event time); closes them."""
        if not self._due:
            return []
        due, self._due = self._due, {}
        interval = self.config.summary_interval_ms
        return [twin.summary() for twin in map(self.twins.get, due) if twin is not None and twin.window_due(interval)]

    def update_edge_state(self, state: dict) -> None:
        """Take an EdgeState record (the newest per cell wins): the edge load placements are predicted with."""
        known = self.edge_states.get(state["cell_id"])
        if known is None or known["ts_ms"] <= state["ts_ms"]:
            self.edge_states[state["cell_id"]] = state

    # -- service module ------------------------------------------------------------------------
    def place(self, demand: dict, *, decision_id: str | None = None, stamps: dict | None = None) -> dict:
        """Place one Demand at the cheapest tier predicted to meet its deadline; the Decision record.

        ``decision_id`` defaults to ``local/placement/<demand_id>`` (the same demand, the same id);
        ``stamps`` (the provenance fields, see :func:`~tiertwin.pipelines.agent.decision_stamps`) default
        to the demand itself as the source. A demand placed locally enters the UE's EDF queue.
        """
        received_ns = _time_ns()
        c = self.config
        ue_id = demand["ue_id"]
        twin = self.twins.get(ue_id) or self.twin(ue_id)
        slot = self.slot
        model, version = slot.current()
        now_ms, deadline_ms, cell = demand["ts_ms"], demand["deadline_ms"], demand["serving_cell"]
        # The device runs local work in edf_key order (the simulated device too); background work
        # (below critical_priority) waits behind everything queued. edf_key, inlined (per demand, on the device).
        critical = demand["priority"] >= c.critical_priority
        key = float(now_ms) + (float(deadline_ms) if critical else NOT_CRITICAL_OFFSET_MS)
        queue = twin.device
        if queue.queue:
            wait, backlog = queue.waits(now_ms, key if critical else _INFINITY)
        else:   # nothing queued: what waits() gives, without its calls
            if now_ms > queue.clock_ms:
                queue.clock_ms = now_ms
            wait = backlog = 0.0
        # The radio and edge terms change with telemetry and EdgeState, not per demand: computed once per update.
        terms = twin.radio_terms
        if terms is None:
            terms = twin.radio_terms = radio_terms(twin.radio) if twin.radio else DEFAULT_RADIO_TERMS
        edge = self.edge_states.get(cell)
        if edge is None:
            cell_terms = DEFAULT_EDGE_TERMS
        else:
            cached = self._edge_terms.get(cell)
            if cached is None or cached[0] is not edge:
                cached = self._edge_terms[cell] = (edge, edge_terms(edge))
            cell_terms = cached[1]
        x = placement_features(demand, terms, cell_terms, wait, backlog)
        predicted = model.predict_tiers(x)
        costs = self._low_battery_costs if twin.battery_pct < c.low_battery_pct else self._costs
        tier = choose_tier(predicted, deadline_ms, costs, c.deadline_margin)
        if tier == "local":     # EdfQueue.add; its clock is at now_ms already (waits, or the empty-queue branch)
            _edf_insert(queue.queue, key, x["local_compute_ms"])
            twin.placed_local += 1
        elif tier == "edge":
            twin.placed_edge += 1
        elif tier == "cloud":
            twin.placed_cloud += 1
        else:   # as the per-tier dict of counts did for a tier it did not know
            raise KeyError(tier)
        chosen = predicted[tier]
        # The features travel with the decision (the cloud learns from them): one dict display, built once.
        try:
            if len(predicted) != len(TIERS):
                raise KeyError
            parameters = _decision_parameters(chosen, float(deadline_ms), wait, predicted, x)
        except KeyError:    # a model predicting other tiers than the three: key by key
            parameters = {"predicted_latency_ms": chosen, "deadline_ms": float(deadline_ms), "edf_wait_ms": wait}
            for t, v in predicted.items():
                parameters[_PREDICTED_KEYS[t]] = v
            for k, v in x.items():
                parameters[_FEATURE_KEYS[k]] = v
        mae = self._mae
        if mae[0] is not model:     # the model's running error per tier (DemandLatencyModel, ResidualLatencyModel)
            fn = getattr(model, "mae", None)
            mae = self._mae = (model, fn if callable(fn) else None)
        confidence = deadline_confidence(chosen, deadline_ms, mae[1](tier) if mae[1] is not None else 5.0)
        demand_id = demand["demand_id"]
        if decision_id:
            did = decision_id
            indexed = did != f"local/placement/{demand_id}"
        else:   # the default id: found from the demand id without the index
            did, indexed = f"local/placement/{demand_id}", False
        if stamps is None:
            decision = {
                "decision_id": did, "tier": "local", "kind": "placement", "ue_id": ue_id, "cell_id": cell,
                "subject_id": demand_id, "target": tier, "parameters": parameters,
                "model_name": slot.name, "model_version": version, "model_revision": slot.revision,
                "confidence": confidence, "source_topic": "device", "source_partition": 0, "source_offset": 0,
                "source_ts_ms": now_ms, "source_emitted_ns": demand.get("emitted_ns", 0), "received_ns": received_ns,
                "twin_site": c.site,
            }
        else:
            decision = {
                "decision_id": did, "tier": "local", "kind": "placement", "ue_id": ue_id, "cell_id": cell,
                "subject_id": demand_id, "target": tier, "parameters": parameters,
                "model_name": slot.name, "model_version": version, "model_revision": slot.revision,
                "confidence": confidence,
            }
            decision.update(stamps)
            decision["twin_site"] = c.site
        # The example kept for learning. x is placement_features' dict, in DEMAND_FEATURES order: packed as it is
        # (see _pack_example).
        pending, index = self.pending, self.pending_by_demand
        code = _TIER_CODES.get(tier)
        if indexed or code is None:
            pending[did] = (_EXAMPLE.pack(*x.values()), tier, demand_id)
        else:   # no tuple (one object fewer to allocate and, evicted out of the caches, to free)
            pending[did] = _EXAMPLE_TIER.pack(*x.values(), code)
        if indexed:
            index[demand_id] = did
        elif index:     # the demand's latest decision has the default id again
            index.pop(demand_id, None)
        if len(pending) > c.pending_outcomes:
            limit = c.pending_outcomes
            while len(pending) > limit:
                # The demand's entry goes with its decision, one at a time: rebuilding the index when it had
                # grown to twice the limit stalled one placement in 100 000 for 64 ms (200 000 entries).
                evicted, example = pending.popitem(last=False)
                if index:
                    self._forget_demand(evicted[_DEFAULT_ID_PREFIX:] if type(example) is bytes else example[2], evicted)
        decision["decided_ns"] = _time_ns()
        return decision

    def _forget_demand(self, demand_id: str, did: str) -> None:
        """``did`` (a decision of ``demand_id``) no longer awaits its outcome: the index forgets it."""
        index = self.pending_by_demand
        if demand_id not in index:
            return
        known, default = index[demand_id], f"local/placement/{demand_id}"
        if known == did:    # the demand's latest decision (not if it was placed again since)
            if did != default and default in self.pending:
                index[demand_id] = None     # its earlier decision, under the default id, stays out of reach
            else:
                del index[demand_id]
        elif known is None and did == default:
            del index[demand_id]

    def learn(self, outcome: dict) -> bool:
        """Learn predicted-vs-measured latency from a demand's Outcome; False if it is not a demand this twin placed."""
        if outcome["kind"] != "demand" or outcome.get("latency_ms") is None:
            return False
        did = outcome.get("decision_id")
        if not did:     # joined by demand id: its latest decision (the index has those without the default id)
            demand_id = outcome.get("demand_id") or ""
            index = self.pending_by_demand
            did = index[demand_id] if demand_id in index else f"local/placement/{demand_id}"
        example = self.pending.pop(did, None) if did else None
        if example is None:
            return False
        x, tier, demand_id = _unpack_pending(did, example)
        self._forget_demand(demand_id, did)
        placement = outcome.get("placement")
        # The slot scores a shadow (or the previous model, on probation) on the same example first.
        # The model predicts once the placement is decided: the wait for the decision is not its to learn
        # (a slow decision path would otherwise teach every tier to be slower).
        waited = (outcome.get("components_ms") or {}).get("decision", 0.0)
        self.slot.learn({**x, "tier": placement if placement in TIERS else tier}, outcome["latency_ms"] - waited)
        return True

    def swap_model(self, update: dict) -> bool:
        """Take a ModelUpdate record (a newer version of this twin's model, or an operator command); True if taken.

        A newer version runs in shadow until the slot promotes it (:class:`~tiertwin.pipelines.models.ModelSlot`);
        decisions read the model and its version together, so a swap falls between two decisions.
        Raises :class:`~tiertwin.pipelines.models.ModelRejected` (unsigned, badly signed, digest mismatch,
        does not load) before anything is unpickled; the live model stays.
        """
        return self.slot.offer(update)


# =============================================================================================
# Communication module: the twin as a Kafka service
# =============================================================================================
class LocalTwinAgent(TwinAgent):
    """The local twin deployed as a service (at the edge or in the cloud): routes Kafka records to a
    :class:`LocalTwin` and sends what it returns. ``LocalTwinAgent(LocalAgentConfig(...)).run(stop_event)``.

    Decision ids and provenance come from the input record's coordinates, so a replay after a
    crash yields the same ids; the UE twins are checkpointed to the changelog (``self.twins`` is
    the LocalTwin's ``twins``).
    """

    tier = "local"
    model_names = (DEMAND_LATENCY,)
    config: LocalAgentConfig

    def __init__(self, config: LocalAgentConfig, settings=None):
        if config.demand_latency_model != DEMAND_LATENCY:
            self.model_names = (config.demand_latency_model,)
        super().__init__(config, settings)
        slot = self.slots[config.demand_latency_model]
        twin_config = LocalTwinConfig(**config.model_dump(include=set(LocalTwinConfig.model_fields)))
        self.local_twin = LocalTwin(twin_config, slot.model, slot.version)
        self.slots[slot.name] = self.local_twin.slot    # hot swaps (offer_model) reach the twin's decisions
        self.local_twin.twins = self.twins              # checkpointed and restored by TwinAgent

    @property
    def latency_slot(self) -> ModelSlot:
        return self.local_twin.slot

    @property
    def edge_states(self) -> dict[int, dict]:
        return self.local_twin.edge_states

    def twin(self, ue_id: str) -> UETwin:
        return self.local_twin.twin(ue_id)

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
            self.local_twin.update_edge_state(record.value)
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
            except RecordRejected as exc:
                self.reject(record, exc.reason, str(exc))
            except Exception as exc:  # one record must not stop the twin: dead-letter it with the cause
                self.reject(record, "processing-error", f"{type(exc).__name__}: {exc}")
        for topic, n in count.items():
            if n:
                self.metrics.records.labels(self.tier, c.instance_id, topic).inc(n)

    def on_telemetry(self, record: KafkaRecord) -> None:
        if not self.local_twin.observe(record.value):
            self.metrics.replayed.inc()     # already folded into the restored twin
            return
        self.touch(record.value["ue_id"], record.partition)
        for summary in self.local_twin.due_summaries():
            self.emit(self.config.summaries_topic, "LocalSummary", summary, key=summary["serving_cell"])

    def on_demand(self, record: KafkaRecord, received_ns: int) -> None:
        demand = record.value
        decision = self.local_twin.place(demand, decision_id=decision_id("local", "placement", record),
                                         stamps=decision_stamps(record, received_ns))
        self.touch(demand["ue_id"], record.partition)
        self.emit_decision(self.config.actions_topic, decision, key=demand["ue_id"])

    def on_outcome(self, record: KafkaRecord) -> None:
        """Learn predicted-vs-measured latency from a demand's Outcome."""
        if self.local_twin.learn(record.value):
            self.metrics.learned.labels(self.tier, self.config.instance_id, self.latency_slot.name).inc()

    def restore_twin(self, twin: Any) -> Any:
        return twin


def _mae(model: Any, tier: str) -> float:
    mae = getattr(model, "mae", None)     # DemandLatencyModel, ResidualLatencyModel: their running error per tier
    return mae(tier) if callable(mae) else 5.0
