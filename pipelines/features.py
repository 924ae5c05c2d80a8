"""Feature extraction shared by the local and edge agents and the cloud trainer.

Latency is mostly physics: bytes over a link and cycles over a processor. The
engineered features below are those estimates in milliseconds, so a *linear*
online model only has to learn how far reality is from them (congestion,
protocol overhead, backhaul) rather than the division itself.

>>> x = demand_features(
...     {"compute_gcycles": 0.5, "input_bytes": 125_000, "output_bytes": 250_000,
...      "deadline_ms": 20.0, "priority": 6},
...     {"sinr_db": 15.0, "throughput_ul_mbps": 100.0, "throughput_dl_mbps": 200.0,
...      "rtt_ms": 8.0, "cpu_util": 0.5},
...     {"mec_capacity_gcps": 100.0, "mec_queue_gcycles": 1.0, "prb_utilization": 0.5,
...      "mec_utilization": 0.25})
>>> x["uplink_ms"], x["downlink_ms"], x["edge_compute_ms"], x["edge_queue_ms"], x["local_compute_ms"]
(10.0, 10.0, 5.0, 10.0, 25.0)
"""

from __future__ import annotations

from typing import Mapping

# Nominal capacities used only to turn cycles into milliseconds; the learners
# correct for the real ones (a phone SoC, a cloud region behind a backhaul).
DEVICE_CAPACITY_GCPS = 20.0
CLOUD_CAPACITY_GCPS = 1000.0
DEFAULT_MEC_CAPACITY_GCPS = 200.0
MIN_LINK_MBPS = 0.1

# The radio state a demand is placed with when the UE has not reported telemetry yet.
DEFAULT_RADIO = {"sinr_db": 10.0, "rsrp_dbm": -100.0, "throughput_ul_mbps": 20.0,
                 "throughput_dl_mbps": 100.0, "rtt_ms": 10.0, "cpu_util": 0.3, "battery_pct": 80.0}
# The edge state assumed before the first EdgeState arrives: idle MEC, half-used cell.
DEFAULT_EDGE = {"mec_capacity_gcps": DEFAULT_MEC_CAPACITY_GCPS, "mec_queue_gcycles": 0.0,
                "prb_utilization": 0.5, "mec_utilization": 0.0}

TIERS = ("local", "edge", "cloud")


def transfer_ms(nbytes: float, mbps: float) -> float:
    """Milliseconds to move ``nbytes`` over a ``mbps`` link: bytes * 8 / (Mbit/s * 1000)."""
    return nbytes * 8.0 / (max(mbps, MIN_LINK_MBPS) * 1000.0)


def demand_features(demand: Mapping, radio: Mapping | None, edge: Mapping | None,
                    local_queue_ms: float = 0.0, local_backlog_ms: float | None = None) -> dict[str, float]:
    """Features of one demand given the UE's denoised radio state and its cell's edge state.

    The same dict (plus ``tier``) is what :class:`~tiertwin.pipelines.learners.DemandLatencyModel`
    learns from, and it travels in the Decision's ``x_`` parameters to the cloud.
    """
    radio = radio or DEFAULT_RADIO
    edge = edge or DEFAULT_EDGE
    gcycles = float(demand["compute_gcycles"])
    mec_capacity = max(float(edge.get("mec_capacity_gcps") or DEFAULT_MEC_CAPACITY_GCPS), 1e-3)
    # transfer_ms inlined (this runs per demand, on the device): the same expression, operand for operand.
    ul_mbps, dl_mbps = radio.get("throughput_ul_mbps", 20.0), radio.get("throughput_dl_mbps", 100.0)
    uplink_ms = demand["input_bytes"] * 8.0 / ((MIN_LINK_MBPS if MIN_LINK_MBPS > ul_mbps else ul_mbps) * 1000.0)
    downlink_ms = demand["output_bytes"] * 8.0 / ((MIN_LINK_MBPS if MIN_LINK_MBPS > dl_mbps else dl_mbps) * 1000.0)
    prb_utilization = float(edge.get("prb_utilization", 0.5))
    edge_queue_ms = float(edge.get("mec_queue_gcycles", 0.0)) / mec_capacity * 1000.0
    local_queue_ms = float(local_queue_ms)
    return {
        "uplink_ms": uplink_ms,
        "downlink_ms": downlink_ms,
        # A busy cell stretches every transfer; the product keeps the model linear.
        "congested_transfer_ms": (uplink_ms + downlink_ms) * prb_utilization,
        "rtt_ms": float(radio.get("rtt_ms", 10.0)),
        "local_compute_ms": gcycles / DEVICE_CAPACITY_GCPS * 1000.0,
        "local_queue_ms": local_queue_ms,      # device work ahead of it under EDF
        "local_backlog_ms": local_queue_ms if local_backlog_ms is None else float(local_backlog_ms),  # all device work
        "edge_compute_ms": gcycles / mec_capacity * 1000.0,
        "edge_queue_ms": edge_queue_ms,
        # MEC servers serve urgent work first: the queue delays low-priority demands most.
        "edge_queue_low_priority_ms": edge_queue_ms * (7 - int(demand.get("priority", 0))) / 7.0,
        "cloud_compute_ms": gcycles / CLOUD_CAPACITY_GCPS * 1000.0,
        "sinr_db": float(radio.get("sinr_db", 10.0)),
        "prb_utilization": prb_utilization,
        "mec_utilization": float(edge.get("mec_utilization", 0.0)),
        "cpu_util": float(radio.get("cpu_util", 0.3)),
        "compute_gcycles": gcycles,
        "input_kb": demand["input_bytes"] / 1000.0,
        "output_kb": demand["output_bytes"] / 1000.0,
    }


# The keys of demand_features, in its order (the Decision's ``x_`` parameters follow it).
DEMAND_FEATURES = ("uplink_ms", "downlink_ms", "congested_transfer_ms", "rtt_ms", "local_compute_ms", "local_queue_ms",
                   "local_backlog_ms", "edge_compute_ms", "edge_queue_ms", "edge_queue_low_priority_ms",
                   "cloud_compute_ms", "sinr_db", "prb_utilization", "mec_utilization", "cpu_util", "compute_gcycles",
                   "input_kb", "output_kb")


def radio_terms(radio: Mapping | None) -> tuple[float, float, float, float, float]:
    """What :func:`placement_features` needs of a UE's denoised radio state, computed once per telemetry update:
    ``(uplink kbit/ms, downlink kbit/ms, rtt_ms, sinr_db, cpu_util)`` (links clamped at ``MIN_LINK_MBPS``).

    >>> radio_terms(None)
    (20000.0, 100000.0, 10.0, 10.0, 0.3)
    """
    radio = radio or DEFAULT_RADIO
    ul_mbps, dl_mbps = radio.get("throughput_ul_mbps", 20.0), radio.get("throughput_dl_mbps", 100.0)
    return ((MIN_LINK_MBPS if MIN_LINK_MBPS > ul_mbps else ul_mbps) * 1000.0,
            (MIN_LINK_MBPS if MIN_LINK_MBPS > dl_mbps else dl_mbps) * 1000.0,
            float(radio.get("rtt_ms", 10.0)), float(radio.get("sinr_db", 10.0)), float(radio.get("cpu_util", 0.3)))


def edge_terms(edge: Mapping | None) -> tuple[float, float, float, float]:
    """What :func:`placement_features` needs of a cell's EdgeState, computed once per EdgeState:
    ``(MEC capacity Gcycles/s, edge_queue_ms, prb_utilization, mec_utilization)``.

    >>> edge_terms(None)
    (200.0, 0.0, 0.5, 0.0)
    """
    edge = edge or DEFAULT_EDGE
    mec_capacity = max(float(edge.get("mec_capacity_gcps") or DEFAULT_MEC_CAPACITY_GCPS), 1e-3)
    return (mec_capacity, float(edge.get("mec_queue_gcycles", 0.0)) / mec_capacity * 1000.0,
            float(edge.get("prb_utilization", 0.5)), float(edge.get("mec_utilization", 0.0)))


DEFAULT_RADIO_TERMS = radio_terms(None)
DEFAULT_EDGE_TERMS = edge_terms(None)


def placement_features(demand: Mapping, radio: tuple, edge: tuple, local_queue_ms: float,
                       local_backlog_ms: float) -> dict[str, float]:
    """:func:`demand_features`, the same numbers operand for operand, from :func:`radio_terms` and
    :func:`edge_terms` (cached per UE and per cell): what the local twin computes per demand, on the device.

    >>> d = {"compute_gcycles": 0.5, "input_bytes": 125_000, "output_bytes": 250_000, "priority": 6}
    >>> r = {"throughput_ul_mbps": 100.0, "throughput_dl_mbps": 200.0, "rtt_ms": 8.0, "cpu_util": 0.5, "sinr_db": 15.0}
    >>> e = {"mec_capacity_gcps": 100.0, "mec_queue_gcycles": 1.0, "prb_utilization": 0.5, "mec_utilization": 0.25}
    >>> placement_features(d, radio_terms(r), edge_terms(e), 2.0, 3.0) == demand_features(d, r, e, 2.0, 3.0)
    True
    """
    ul, dl, rtt, sinr, cpu = radio
    mec_capacity, edge_queue_ms, prb_utilization, mec_utilization = edge
    gcycles = float(demand["compute_gcycles"])
    input_bytes, output_bytes = demand["input_bytes"], demand["output_bytes"]
    uplink_ms = input_bytes * 8.0 / ul
    downlink_ms = output_bytes * 8.0 / dl
    return {
        "uplink_ms": uplink_ms,
        "downlink_ms": downlink_ms,
        "congested_transfer_ms": (uplink_ms + downlink_ms) * prb_utilization,
        "rtt_ms": rtt,
        "local_compute_ms": gcycles / DEVICE_CAPACITY_GCPS * 1000.0,
        "local_queue_ms": local_queue_ms,
        "local_backlog_ms": local_backlog_ms,
        "edge_compute_ms": gcycles / mec_capacity * 1000.0,
        "edge_queue_ms": edge_queue_ms,
        "edge_queue_low_priority_ms": edge_queue_ms * (7 - int(demand.get("priority", 0))) / 7.0,
        "cloud_compute_ms": gcycles / CLOUD_CAPACITY_GCPS * 1000.0,
        "sinr_db": sinr,
        "prb_utilization": prb_utilization,
        "mec_utilization": mec_utilization,
        "cpu_util": cpu,
        "compute_gcycles": gcycles,
        "input_kb": input_bytes / 1000.0,
        "output_kb": output_bytes / 1000.0,
    }


def sinr_forecast_features(sinr_db: float, trend_db_per_s: float, speed_mps: float,
                           horizon_s: float, other_sinr_db: float | None = None,
                           neighbour: bool = False) -> dict[str, float]:
    """Features for forecasting the change of one cell's SINR over ``horizon_s``.

    Physics-shaped: the trend carried over the horizon; the distance moved (path-loss change and
    shadowing decorrelation both grow with it); the trend itself (the summary's SINR is smoothed,
    so it lags the present by a fraction of a second); and the level times the distance moved
    (shadowing reverts to its mean in proportion to the distance moved, ``1 - exp(-d / d_corr)``);
    with ``other_sinr_db`` (the serving cell's SINR for a neighbour's forecast, the best neighbour's for
    the serving one), how far the other cell is ahead, times the distance moved (a UE at a cell's
    edge is usually leaving it). ``neighbour`` marks a best neighbour's forecast: the best of several
    cells is, on average, about to be less good than it looks (it was picked for being high).

    >>> sinr_forecast_features(10.0, -2.0, 5.0, 0.5)
    {'trend_x_h': -1.0, 'speed_x_h': 2.5, 'horizon_s': 0.5, 'sinr_db': 10.0, 'trend_db_per_s': -2.0, 'sinr_x_speed_h': 2.5, 'gap_x_speed_h': 0.0, 'neighbour': 0.0}
    >>> sinr_forecast_features(10.0, -2.0, 5.0, 0.5, other_sinr_db=14.0)["gap_x_speed_h"]
    1.0
    """
    speed_x_h = speed_mps * horizon_s
    gap = 0.0 if other_sinr_db is None else other_sinr_db - sinr_db
    return {"trend_x_h": trend_db_per_s * horizon_s, "speed_x_h": speed_x_h,
            "horizon_s": horizon_s, "sinr_db": sinr_db, "trend_db_per_s": trend_db_per_s,
            "sinr_x_speed_h": sinr_db * speed_x_h / 10.0, "gap_x_speed_h": gap * speed_x_h / 10.0,
            "neighbour": 1.0 if neighbour else 0.0}


def cell_context(edge: Mapping) -> dict[str, float]:
    """Context of the allocation bandits: the cell's load, normalised to about [0, 1].

    >>> cell_context({"prb_utilization": 0.5, "mec_utilization": 0.25, "attached_ues": 50,
    ...               "mean_sinr_db": 20.0, "mec_queue_gcycles": 10.0, "mec_capacity_gcps": 100.0})
    {'bias': 1.0, 'prb_utilization': 0.5, 'mec_utilization': 0.25, 'ues': 0.5, 'sinr': 0.5, 'mec_backlog_s': 0.1}
    """
    capacity = max(float(edge.get("mec_capacity_gcps") or DEFAULT_MEC_CAPACITY_GCPS), 1e-3)
    return {
        "bias": 1.0,
        "prb_utilization": float(edge.get("prb_utilization", 0.0)),
        "mec_utilization": float(edge.get("mec_utilization", 0.0)),
        "ues": min(float(edge.get("attached_ues", 0)) / 100.0, 10.0),
        "sinr": float(edge.get("mean_sinr_db", 0.0)) / 40.0,
        "mec_backlog_s": min(float(edge.get("mec_queue_gcycles", 0.0)) / capacity, 10.0),
    }
