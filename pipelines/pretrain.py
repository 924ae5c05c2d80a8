"""Pre-trained starting models, and the simulator-like data they are trained on.

A fresh agent should not decide blindly, so tiertwin ships a trained model per
name in ``pipelines/pretrained/<name>.pkl`` (version :data:`PRETRAINED_VERSION`).
``tiertwin pretrain`` regenerates them from :class:`SyntheticFleet`-style data:
UEs moving across a line of cells (SINR falls with distance, throughput follows
SINR), demands of the three kinds, MEC servers with queues, and a ground-truth
latency per tier that the features only approximate (radio congestion, protocol
overhead, backhaul), so the learners have something real to learn.

The same generator feeds the agents' tests and benchmarks with valid Telemetry,
Demand and EdgeState records until the simulator is used instead.

>>> fleet = SyntheticFleet(n_ues=2, n_cells=2, seed=1)
>>> kinds = [kind for kind, _ in fleet.step(0)]
>>> kinds.count("telemetry"), kinds.count("cell-report")
(2, 2)
"""

from __future__ import annotations

import math
import pickle
import random
from pathlib import Path
from typing import Any, Iterator

from tiertwin.pipelines.features import TIERS, cell_context, demand_features, sinr_forecast_features
from tiertwin.pipelines.learners import (DEMAND_LATENCY, HANDOVER, MEC_SHARE, MODEL_NAMES, PRB_SHARE,
                                         allocation_reward, default_model)

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
PRETRAINED_VERSION = 1
CELL_SPACING_M = 400.0
CELLS_PER_SITE = 3
BACKHAUL_MS = 25.0
EPOCH_MS = 1_767_225_600_000

DEMAND_KINDS = {
    # kind: (gcycles range, input bytes range, output bytes range, deadline ms range, priority)
    "xr_frame": ((0.02, 0.25), (5_000, 60_000), (50_000, 300_000), (15.0, 30.0), 6),
    "ai_inference": ((0.3, 4.0), (50_000, 500_000), (1_000, 10_000), (50.0, 200.0), 4),
    "content_generation": ((20.0, 150.0), (1_000, 10_000), (500_000, 5_000_000), (1_000.0, 10_000.0), 1),
}


# -- the radio and compute world ---------------------------------------------------------------
def radio_from_sinr(sinr_db: float, cpu_util: float, rng: random.Random) -> dict[str, float]:
    """Throughput and RTT that follow SINR (Shannon-like), with a little noise."""
    spectral = math.log2(1.0 + 10 ** (max(sinr_db, -10.0) / 10.0))
    return {"sinr_db": sinr_db, "rsrp_dbm": max(-156.0, min(-31.0, -120.0 + 2.0 * sinr_db)),
            "throughput_dl_mbps": max(0.5, 40.0 * spectral * rng.uniform(0.8, 1.2)),
            "throughput_ul_mbps": max(0.2, 10.0 * spectral * rng.uniform(0.8, 1.2)),
            "rtt_ms": max(1.0, 4.0 + 60.0 / (1.0 + spectral) + rng.gauss(0.0, 0.5)),
            "cpu_util": cpu_util, "battery_pct": 80.0}


def sample_radio(rng: random.Random) -> dict[str, float]:
    return radio_from_sinr(rng.uniform(-5.0, 30.0), rng.uniform(0.0, 0.9), rng)


def sample_edge(rng: random.Random, load: float | None = None) -> dict[str, float]:
    """An EdgeState-like dict at ``load`` in [0, 1] (random if None)."""
    load = rng.random() if load is None else load
    capacity = rng.choice((100.0, 200.0, 400.0))
    return {"prb_utilization": min(1.0, max(0.0, load + rng.gauss(0, 0.05))),
            "mec_utilization": min(1.0, max(0.0, load + rng.gauss(0, 0.05))),
            "mec_capacity_gcps": capacity, "mec_queue_gcycles": capacity * 0.2 * load ** 3,
            "attached_ues": int(5 + 95 * load), "mean_sinr_db": rng.uniform(0.0, 25.0)}


def sample_demand(rng: random.Random, kind: str | None = None) -> dict[str, Any]:
    kind = kind or rng.choice(tuple(DEMAND_KINDS))
    (g0, g1), (i0, i1), (o0, o1), (d0, d1), priority = DEMAND_KINDS[kind]
    return {"kind": kind, "compute_gcycles": rng.uniform(g0, g1), "input_bytes": rng.randint(i0, i1),
            "output_bytes": rng.randint(o0, o1), "deadline_ms": rng.uniform(d0, d1), "priority": priority}


def true_latency_ms(demand: dict, radio: dict, edge: dict, tier: str, rng: random.Random) -> float:
    """Ground-truth latency: the physics of the features plus congestion and overheads they do not see."""
    x = demand_features(demand, radio, edge)
    noise = abs(rng.gauss(0.0, 0.5))
    if tier == "local":
        return 1.15 * x["local_compute_ms"] + 0.3 + noise
    congestion = 1.0 + 0.6 * x["prb_utilization"]
    network = congestion * (x["uplink_ms"] + x["downlink_ms"]) + 0.5 * x["rtt_ms"]
    if tier == "edge":
        return network + x["edge_queue_ms"] + 1.05 * x["edge_compute_ms"] + 0.5 + noise
    return network + 0.5 * x["rtt_ms"] + BACKHAUL_MS + x["cloud_compute_ms"] + 1.0 + 2 * noise


def allocation_met_rate(share: float, context: dict) -> float:
    """Deadline-met rate of a cell given a share, rising with share and falling with load."""
    need = 0.2 + 0.8 * max(context["prb_utilization"], context["mec_utilization"])
    return 1.0 / (1.0 + math.exp(-8.0 * (share - need)))


# -- pre-training ------------------------------------------------------------------------------
def pretrain_models(samples: int = 20_000, seed: int = 7) -> dict[str, Any]:
    """Train one model per name on ``samples`` synthetic examples; returns ``{name: model}``."""
    rng = random.Random(seed)
    models = {name: default_model(name) for name in MODEL_NAMES}
    train_latency_synthetic(models[DEMAND_LATENCY], samples, rng)
    forecaster = models[HANDOVER]
    for _ in range(samples):
        sinr, trend, speed, horizon = rng.uniform(-5, 30), rng.gauss(0, 4), rng.uniform(0, 30), rng.uniform(0.1, 1.0)
        x = sinr_forecast_features(sinr, trend, speed, horizon)
        forecaster.learn_one(x, sinr + trend * horizon + rng.gauss(0, 0.3))
    for name in (PRB_SHARE, MEC_SHARE):
        allocator = models[name]
        for _ in range(max(samples // 20, 200)):
            context = cell_context(sample_edge(rng))
            share = rng.choice(allocator.shares)
            met = allocation_met_rate(share, context) + rng.gauss(0, 0.05)
            allocator.update(share, context, allocation_reward(met, share))
    return models


def train_latency_synthetic(model: Any, samples: int, rng: random.Random) -> Any:
    """Teach a demand-latency model ``samples`` synthetic demands (every tier each); returns it."""
    for _ in range(samples):
        demand, radio, edge = sample_demand(rng), sample_radio(rng), sample_edge(rng)
        x = demand_features(demand, radio, edge)
        for tier in TIERS:
            model.learn_one({**x, "tier": tier}, true_latency_ms(demand, radio, edge, tier, rng))
    return model


def simulator_latency_examples(scenario: str = "dense-urban-xr", seconds: float = 60.0, seed: int = 7,
                               ues: int | None = None) -> Iterator[tuple[dict, float]]:
    """``(x with x["tier"], measured latency ms)`` from the simulator run offline with random placements.

    Features are built exactly as the local agent builds them (denoised radio of a
    :class:`~tiertwin.pipelines.local_twin.UETwin`, the serving cell's latest report, the
    twin's EDF device queue), so the model starts out calibrated to the simulator's physics.
    """
    from tiertwin.connectors.simulator import World, load_scenario
    from tiertwin.pipelines.local_twin import UETwin

    base = load_scenario(scenario)
    world = World(base.with_overrides(ues=ues, compute={**base.compute.model_dump(), "default_placement": "random"}),
                  seed=seed)
    twins: dict[str, UETwin] = {}
    edge: dict[int, dict] = {}
    waiting: dict[str, tuple[dict, float]] = {}
    for _ in range(int(seconds * 1000 / base.step_ms)):
        world.step()
        for t in world.telemetry_records():
            twins.setdefault(t["ue_id"], UETwin(t["ue_id"])).observe(t, 0.3)
        for report in world.cell_reports():
            edge[report["cell_id"]] = report
        for d in world.demand_records():
            twin = twins.setdefault(d["ue_id"], UETwin(d["ue_id"]))
            deadline = d["ts_ms"] + d["deadline_ms"] if d["priority"] >= 5 else float("inf")
            x = demand_features(d, twin.radio or None, edge.get(d["serving_cell"]), twin.device.wait_ms(d["ts_ms"], deadline),
                                twin.device.backlog_ms(d["ts_ms"]))
            waiting[d["demand_id"]] = (x, deadline, d["ts_ms"])
        for o in world.outcome_records():
            if o["kind"] != "demand" or o["demand_id"] not in waiting:
                continue
            x, deadline, issued_ms = waiting.pop(o["demand_id"])
            if o["placement"] == "local":
                twins[o["ue_id"]].device.add(issued_ms, deadline if deadline != float("inf") else issued_ms + 1e9,
                                             x["local_compute_ms"])
            yield {**x, "tier": o["placement"]}, o["latency_ms"]


def pretrain_on_simulator(models: dict[str, Any], scenario: str = "dense-urban-xr", seconds: float = 60.0,
                          seed: int = 7, ues: int | None = None, epochs: int = 3) -> dict[str, float]:
    """Train ``models[DEMAND_LATENCY]`` on simulator outcomes; returns the held-out MAE per tier (last 20 %)."""
    examples = list(simulator_latency_examples(scenario, seconds, seed, ues))
    split = int(len(examples) * 0.8)
    model = models[DEMAND_LATENCY] = default_model(DEMAND_LATENCY)
    rng = random.Random(seed)
    for _ in range(epochs):
        train = examples[:split]
        rng.shuffle(train)
        for x, y in train:
            model.learn_one(x, y)
    errors: dict[str, list[float]] = {}
    for x, y in examples[split:]:
        errors.setdefault(x["tier"], []).append(abs(model.predict_one(x) - y))
    return {f"{tier}_mae_ms": sum(e) / len(e) for tier, e in errors.items()} | {"examples": float(len(examples))}


def write_pretrained(models: dict[str, Any], out_dir: Path = PRETRAINED_DIR,
                     version: int = PRETRAINED_VERSION) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, model in models.items():
        path = out_dir / f"{name}.pkl"
        path.write_bytes(pickle.dumps({"name": name, "version": version, "model": model},
                                      protocol=pickle.HIGHEST_PROTOCOL))
        paths.append(path)
    return paths


def load_pretrained(name: str, directory: Path = PRETRAINED_DIR) -> tuple[Any, int]:
    """``(model, version)`` shipped for ``name``, or a fresh untrained model at version 0."""
    path = directory / f"{name}.pkl"
    if not path.exists():
        return default_model(name), 0
    doc = pickle.loads(path.read_bytes())
    return doc["model"], int(doc["version"])


# -- a small fleet of UEs for tests and benchmarks ---------------------------------------------
class SyntheticFleet:
    """UEs driving along a line of cells, emitting Telemetry, Demand and EdgeState records.

    ``step(t_ms)`` yields ``(kind, record)`` with kind ``telemetry``, ``demand`` or
    ``cell-report``; ``demand_every`` sets how many telemetry records per UE come with a demand.
    """

    def __init__(self, n_ues: int = 10, n_cells: int = 4, seed: int = 0, demand_every: int = 1,
                 speed_mps: float = 15.0, load: float = 0.3):
        self.rng = random.Random(seed)
        self.n_cells, self.demand_every, self.load = n_cells, demand_every, load
        span = CELL_SPACING_M * n_cells
        self.ues = [{"ue_id": f"ue-{i:04d}", "x": self.rng.uniform(0, span), "v": speed_mps * self.rng.choice((-1, 1)),
                     "seq": 0, "cpu": self.rng.uniform(0.1, 0.6)} for i in range(n_ues)]
        self.demands = 0

    def cell_sinr(self, x: float, cell: int) -> float:
        distance = abs(x - (cell + 0.5) * CELL_SPACING_M) + 10.0
        return max(-30.0, min(50.0, 45.0 - 25.0 * math.log10(distance / 10.0)))

    def _move(self, ue: dict, dt_s: float) -> None:
        span = CELL_SPACING_M * self.n_cells
        ue["x"] += ue["v"] * dt_s
        if not 0 <= ue["x"] <= span:
            ue["v"], ue["x"] = -ue["v"], min(max(ue["x"], 0.0), span)

    def telemetry(self, ue: dict, t_ms: int) -> dict:
        ranked = sorted(range(self.n_cells), key=lambda c: -self.cell_sinr(ue["x"], c))
        serving = ranked[0]
        sinr = self.cell_sinr(ue["x"], serving) + self.rng.gauss(0, 1.0)
        radio = radio_from_sinr(max(-30.0, min(50.0, sinr)), ue["cpu"], self.rng)
        ue["seq"] += 1
        return {
            "ue_id": ue["ue_id"], "ts_ms": EPOCH_MS + t_ms, "seq": ue["seq"], "serving_cell": serving,
            "rsrp_dbm": radio["rsrp_dbm"], "sinr_db": radio["sinr_db"], "cqi": max(0, min(15, int(radio["sinr_db"] / 2))),
            "throughput_dl_mbps": radio["throughput_dl_mbps"], "throughput_ul_mbps": radio["throughput_ul_mbps"],
            "rtt_ms": radio["rtt_ms"],
            "neighbours": [{"cell_id": c, "rsrp_dbm": -110.0, "sinr_db": self.cell_sinr(ue["x"], c)} for c in ranked[1:3]],
            "cpu_util": ue["cpu"], "memory_util": 0.4, "battery_pct": 80.0, "x_m": ue["x"], "y_m": 0.0,
            "latitude": None, "longitude": None, "speed_mps": abs(ue["v"]), "heading_deg": 90.0 if ue["v"] > 0 else 270.0,
            "xr_active": True, "frame_rate_fps": 60, "xr_bitrate_mbps": 30.0, "emitted_ns": 0,
        }

    def demand(self, ue_id: str, t_ms: int, serving_cell: int, kind: str | None = None) -> dict:
        self.demands += 1
        return {"demand_id": f"{ue_id}/d/{self.demands}", "ue_id": ue_id, "ts_ms": EPOCH_MS + t_ms,
                **sample_demand(self.rng, kind), "serving_cell": serving_cell, "emitted_ns": 0}

    def cell_report(self, cell: int, t_ms: int, load: float | None = None) -> dict:
        edge = sample_edge(self.rng, self.load if load is None else load)
        return {"cell_id": cell, "site_id": cell // CELLS_PER_SITE, "ts_ms": EPOCH_MS + t_ms,
                "attached_ues": edge["attached_ues"], "prb_utilization": edge["prb_utilization"],
                "cell_load_mbps": 500.0 * edge["prb_utilization"], "mean_sinr_db": edge["mean_sinr_db"],
                "mec_queue_gcycles": edge["mec_queue_gcycles"], "mec_utilization": edge["mec_utilization"],
                "mec_capacity_gcps": edge["mec_capacity_gcps"], "handovers": 0, "emitted_ns": 0}

    def step(self, t_ms: int, dt_ms: int = 10) -> Iterator[tuple[str, dict]]:
        """One tick: a telemetry record per UE, demands every ``demand_every`` ticks, a report per cell."""
        for cell in range(self.n_cells):
            yield "cell-report", self.cell_report(cell, t_ms)
        for ue in self.ues:
            self._move(ue, dt_ms / 1000.0)
            record = self.telemetry(ue, t_ms)
            yield "telemetry", record
            if ue["seq"] % self.demand_every == 0:
                yield "demand", self.demand(ue["ue_id"], t_ms, record["serving_cell"])
