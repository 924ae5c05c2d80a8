"""A small moving network published as real tier records, for the live-view tests.

:class:`NetworkFeed` writes LocalSummary (UE twins with positions), EdgeState (cell
twins), Decision (all three tiers, with realistic per-tier latencies) and Outcome
records to the topics of a :class:`~tiertwin.jobs.api.twin_api.ViewTopics`, through
:class:`~tiertwin.connectors.kafka.KafkaSink`, so the twin API reads them exactly as
it reads the agents' output. UEs walk random waypoints over the scenario's layout
and are served by the nearest cell.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from tiertwin.connectors.kafka import KafkaSink

TIER_LATENCY_MS = {"local": (0.6, 2.5), "edge": (3.0, 12.0), "cloud": (40.0, 160.0)}


class NetworkFeed:
    def __init__(self, layout: dict, ues: int, topics, settings, period_s: float = 0.4, seed: int = 7):
        self.layout, self.topics, self.settings, self.period_s = layout, topics, settings, period_s
        self.rng = np.random.default_rng(seed)
        self.radius = layout["area_radius_m"] * 0.95
        self.ue_ids = [f"ue-{i:04d}" for i in range(ues)]
        self.xy = self._points(ues)
        self.goal = self._points(ues)
        self.speed = self.rng.uniform(3.0, 14.0, ues)
        self.xr = self.rng.random(ues) < 0.55
        self.cell_xy = np.array([[c["x_m"], c["y_m"]] for c in layout["cells"]])
        self.cell_site = [c["site_id"] for c in layout["cells"]]
        self.sent_decisions = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _points(self, n: int) -> np.ndarray:
        r = self.radius * np.sqrt(self.rng.random(n))
        a = self.rng.uniform(0, 2 * np.pi, n)
        return np.column_stack([r * np.cos(a), r * np.sin(a)])

    def serving(self) -> np.ndarray:
        d = ((self.xy[:, None, :] - self.cell_xy[None, :, :]) ** 2).sum(axis=2)
        return d.argmin(axis=1)

    def step(self, sink: KafkaSink) -> None:
        dt = self.period_s
        delta = self.goal - self.xy
        dist = np.linalg.norm(delta, axis=1)
        arrived = dist < self.speed * dt
        self.xy = np.where(arrived[:, None], self.goal,
                           self.xy + delta / np.maximum(dist, 1e-9)[:, None] * (self.speed * dt)[:, None])
        self.goal[arrived] = self._points(int(arrived.sum()))
        serving = self.serving()
        now_ms, now_ns = int(time.time() * 1000), time.time_ns()
        for i, ue in enumerate(self.ue_ids):
            cell = int(serving[i])
            sinr = float(25 - np.linalg.norm(self.xy[i] - self.cell_xy[cell]) / 8 + self.rng.normal(0, 1))
            sink.send(self.topics.summaries, "LocalSummary", {
                "ue_id": ue, "serving_cell": cell, "window_start_ms": now_ms - 100, "window_end_ms": now_ms,
                "samples": 10, "rsrp_dbm": -70.0 - 30 * self.rng.random(), "sinr_db": max(-10.0, min(40.0, sinr)),
                "sinr_trend_db_per_s": float(self.rng.normal(0, 0.5)), "throughput_dl_mbps": 50.0 + 300 * self.rng.random(),
                "rtt_ms": 6.0 + 6 * self.rng.random(), "best_neighbour_cell": (cell + 1) % len(self.cell_site),
                "best_neighbour_sinr_db": max(-10.0, sinr - 6), "x_m": float(self.xy[i, 0]), "y_m": float(self.xy[i, 1]),
                "speed_mps": float(self.speed[i]), "battery_pct": 40.0 + 55 * self.rng.random(),
                "cpu_util": float(self.rng.random()), "xr_active": bool(self.xr[i]), "demands": 4, "placed_local": 1,
                "placed_edge": 2, "placed_cloud": 1, "emitted_ns": now_ns}, key=str(cell))
        attached = np.bincount(serving, minlength=len(self.cell_site))
        for cell, site in enumerate(self.cell_site):
            prb = float(min(1.0, 0.08 + attached[cell] / max(1, attached.max()) * 0.85))
            sink.send(self.topics.edge_state, "EdgeState", {
                "cell_id": cell, "site_id": site, "ts_ms": now_ms, "attached_ues": int(attached[cell]),
                "prb_utilization": prb, "cell_load_mbps": 2000 * prb, "mean_sinr_db": 8 + 10 * self.rng.random(),
                "mec_queue_gcycles": float(20 * prb * self.rng.random()), "mec_utilization": prb * 0.9,
                "mec_capacity_gcps": 300.0, "handovers": int(self.rng.integers(0, 3)), "emitted_ns": now_ns}, key=str(cell))
        for _ in range(max(3, len(self.ue_ids) // 40)):
            self._decide(sink, serving, now_ms)

    def _decide(self, sink: KafkaSink, serving: np.ndarray, now_ms: int) -> None:
        tier = self.rng.choice(["local"] * 6 + ["edge"] * 3 + ["cloud"])
        i = int(self.rng.integers(len(self.ue_ids)))
        ue, cell = self.ue_ids[i], int(serving[i])
        kind, target, model = {"local": ("placement", str(self.rng.choice(["local", "edge", "cloud"])), "demand-latency"),
                               "edge": ("handover", f"cell:{(cell + 1) % len(self.cell_site)}", "handover-sinr"),
                               "cloud": ("prb_share", "slice:xr", "prb-share")}[tier]
        low, high = TIER_LATENCY_MS[tier]
        decided = time.time_ns()
        emitted = decided - int(self.rng.uniform(low, high) * 1e6)
        self.sent_decisions += 1
        decision_id = f"{tier}/{kind}/feed/{self.sent_decisions}"
        sink.send(self.topics.decisions[0], "Decision", {
            "decision_id": decision_id, "tier": tier, "kind": kind, "ue_id": ue, "cell_id": cell,
            "subject_id": None, "target": target, "parameters": {"predicted_latency_ms": 9.5}, "model_name": model,
            "model_version": 3, "confidence": 0.8, "source_topic": "feed", "source_partition": 0,
            "source_offset": self.sent_decisions, "source_ts_ms": now_ms, "source_emitted_ns": emitted,
            "received_ns": emitted + 100_000, "decided_ns": decided}, key=ue)
        if kind == "placement":
            latency = float(self.rng.gamma(4.0, 4.0))
            sink.send(self.topics.outcomes, "Outcome", {
                "outcome_id": f"{decision_id}/outcome", "ts_ms": now_ms, "kind": "demand", "ue_id": ue, "cell_id": cell,
                "demand_id": f"{ue}/d/{self.sent_decisions}", "decision_id": decision_id, "placement": target,
                "latency_ms": latency, "deadline_ms": 20.0, "deadline_met": latency <= 20.0,
                "components_ms": {"compute": latency / 2}, "effect": {}, "emitted_ns": time.time_ns()}, key=ue)

    # -- background running ------------------------------------------------------------------
    def start(self) -> "NetworkFeed":
        self._thread = threading.Thread(target=self._run, name="network-feed", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with KafkaSink(self.settings) as sink:
            while not self._stop.is_set():
                began = time.monotonic()
                self.step(sink)
                sink.flush()
                self._stop.wait(max(0.0, self.period_s - (time.monotonic() - began)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=15)
