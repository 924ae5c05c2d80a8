"""Demands: vectorized arrivals of XR frames, AI inference and content generation, and their latency model.

Arrivals are Poisson per UE and kind in each step (XR frames only while the UE's
XR session runs). An XR frame's output is one encoded frame at the UE's current
bitrate and frame rate (``bitrate / fps``), so an ``xr_bitrate`` decision changes
the downlink time of later frames.

Latency of a demand placed on ``target`` (all in ms)::

    decision  time waiting for the placement decision (live mode)
    uplink    air latency + input_bytes over the UE's uplink rate      (edge, cloud)
    queue     work already queued ahead / capacity serving it
    compute   gcycles / capacity (device, the cell's MEC slice, or the cloud)
    backhaul  2 x one-way edge-cloud latency + (input+output) bytes over the backhaul (cloud)
    downlink  air latency + output_bytes over the UE's downlink rate    (edge, cloud)

>>> float(transfer_ms(125_000, 100.0))   # 1 Mbit at 100 Mbit/s
10.0
>>> backhaul_ms(1_000, 24_000, one_way_ms=10.0, gbps=10.0)
20.02
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tiertwin.connectors.simulator.scenarios import DemandConfig, DemandKindConfig

KINDS = ("xr_frame", "ai_inference", "content_generation")
MIN_RATE_MBPS = 1e-3  # a UE with no PRBs still has a trickle, so latencies stay finite


def transfer_ms(n_bytes, rate_mbps):
    """Time to move ``n_bytes`` at ``rate_mbps`` Mbit/s."""
    return np.asarray(n_bytes) * 8.0 / (np.maximum(rate_mbps, MIN_RATE_MBPS) * 1e3)


def backhaul_ms(input_bytes: float, output_bytes: float, one_way_ms: float, gbps: float) -> float:
    """Round trip over the edge-cloud backhaul: two one-way latencies plus serialisation."""
    return 2.0 * one_way_ms + (input_bytes + output_bytes) * 8.0 / (gbps * 1e6)


@dataclass(frozen=True)
class NewDemands:
    """Demands issued in one step, as parallel arrays (one row per demand)."""

    ue: np.ndarray
    kind: np.ndarray          # index into KINDS
    gcycles: np.ndarray
    input_bytes: np.ndarray
    output_bytes: np.ndarray
    deadline_ms: np.ndarray
    priority: np.ndarray

    def __len__(self) -> int:
        return len(self.ue)


def _kind_configs(config: DemandConfig) -> list[DemandKindConfig]:
    return [getattr(config, k) for k in KINDS]


def draw_demands(config: DemandConfig, rng: np.random.Generator, dt_s: float, xr_active: np.ndarray,
                 xr_bitrate_mbps: np.ndarray, frame_rate: np.ndarray) -> NewDemands:
    """Poisson arrivals for every UE and kind over ``dt_s``."""
    kinds = _kind_configs(config)
    n = len(xr_active)
    rates = np.array([k.per_second for k in kinds])[:, None] * dt_s * np.ones((1, n))
    rates[0] *= xr_active
    counts = rng.poisson(rates)
    kind_idx, ue = np.nonzero(counts)
    reps = counts[kind_idx, ue]
    kind_idx, ue = np.repeat(kind_idx, reps), np.repeat(ue, reps)
    m = len(ue)
    lo = lambda f: np.array([f(k)[0] for k in kinds], dtype=float)[kind_idx]
    hi = lambda f: np.array([f(k)[1] for k in kinds], dtype=float)[kind_idx]
    u = rng.random((3, m))
    gcycles = lo(lambda k: k.gcycles) + (hi(lambda k: k.gcycles) - lo(lambda k: k.gcycles)) * u[0]
    inp = np.floor(lo(lambda k: k.input_bytes) + (hi(lambda k: k.input_bytes) - lo(lambda k: k.input_bytes)) * u[1])
    out_range = lambda k: k.output_bytes or (0, 0)
    out = np.floor(lo(out_range) + (hi(out_range) - lo(out_range)) * u[2])
    frame = np.array([k.output_bytes is None for k in kinds])[kind_idx]
    frame_bytes = xr_bitrate_mbps[ue] * 1e6 / 8.0 / np.maximum(frame_rate[ue], 1)
    out = np.where(frame, np.floor(frame_bytes), out)
    return NewDemands(ue=ue, kind=kind_idx, gcycles=gcycles, input_bytes=inp.astype(np.int64),
                      output_bytes=out.astype(np.int64),
                      deadline_ms=np.array([k.deadline_ms for k in kinds])[kind_idx],
                      priority=np.array([k.priority for k in kinds])[kind_idx])
