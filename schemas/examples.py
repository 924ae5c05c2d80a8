"""A valid example record of every contract, for demos, tests and documentation.

>>> from tiertwin.schemas import SchemaRegistry
>>> registry = SchemaRegistry.default()
>>> all(registry.decode(registry.encode(n, example(n)))[1] == example(n) for n in EXAMPLE_NAMES)
True
"""

from __future__ import annotations

import copy

_EXAMPLES: dict[str, dict] = {
    "Telemetry": {
        "ue_id": "ue-0001", "ts_ms": 1_767_225_600_000, "seq": 42, "serving_cell": 7,
        "rsrp_dbm": -92.5, "sinr_db": 14.25, "cqi": 11, "throughput_dl_mbps": 310.5,
        "throughput_ul_mbps": 42.0, "rtt_ms": 8.5,
        "neighbours": [{"cell_id": 8, "rsrp_dbm": -99.0, "sinr_db": 6.5},
                       {"cell_id": 3, "rsrp_dbm": -104.0, "sinr_db": 1.25}],
        "cpu_util": 0.5, "memory_util": 0.25, "battery_pct": 80.0, "x_m": 120.5, "y_m": -40.25,
        "latitude": None, "longitude": None, "speed_mps": 1.5, "heading_deg": 90.0,
        "xr_active": True, "frame_rate_fps": 90, "xr_bitrate_mbps": 50.0, "emitted_ns": 1_767_225_600_000_000_000,
    },
    "Demand": {
        "demand_id": "ue-0001/d/42", "ue_id": "ue-0001", "ts_ms": 1_767_225_600_000, "kind": "xr_frame",
        "compute_gcycles": 0.75, "input_bytes": 20_000, "output_bytes": 150_000, "deadline_ms": 20.0,
        "priority": 6, "serving_cell": 7, "emitted_ns": 1_767_225_600_000_000_000,
    },
    "LocalSummary": {
        "ue_id": "ue-0001", "serving_cell": 7, "window_start_ms": 1_767_225_600_000,
        "window_end_ms": 1_767_225_600_100, "samples": 10, "rsrp_dbm": -92.5, "sinr_db": 14.25,
        "sinr_trend_db_per_s": -0.5, "throughput_dl_mbps": 300.0, "rtt_ms": 8.5, "best_neighbour_cell": 8,
        "best_neighbour_sinr_db": 6.5, "sinr_last_db": None, "best_neighbour_sinr_last_db": None,
        "x_m": 120.5, "y_m": -40.25, "speed_mps": 1.5, "battery_pct": 80.0,
        "cpu_util": 0.5, "xr_active": True, "demands": 9, "placed_local": 2, "placed_edge": 6,
        "placed_cloud": 1, "emitted_ns": 1_767_225_600_100_000_000,
    },
    "EdgeState": {
        "cell_id": 7, "site_id": 2, "ts_ms": 1_767_225_600_100, "attached_ues": 25, "prb_utilization": 0.5,
        "cell_load_mbps": 850.0, "mean_sinr_db": 12.5, "mec_queue_gcycles": 3.5, "mec_utilization": 0.75,
        "mec_capacity_gcps": 400.0, "handovers": 1, "emitted_ns": 1_767_225_600_100_000_000,
    },
    "TwinMigration": {
        "ue_id": "ue-0001", "from_cell": 7, "from_site": 2, "to_cell": 11, "reason": "handover-decided",
        "ts_ms": 1_767_225_600_100, "sinr_db": 4.5, "sinr_trend_db_per_s": -2.5, "speed_mps": 15.0,
        "neighbour_cell": 11, "neighbour_sinr_db": 9.25, "neighbour_trend_db_per_s": 1.5,
        "last_handover_ms": 1_767_225_590_000, "summaries": 42, "emitted_ns": 1_767_225_600_100_000_000,
    },
    "TwinSnapshot": {
        "cell_id": 7, "window_start_ms": 1_767_225_600_000, "window_end_ms": 1_767_225_601_000,
        "pane": "on_time", "ues": 25, "summaries": 250, "edge_states": 10, "decisions": 400, "outcomes": 380,
        "mean_sinr_db": 12.5, "mean_prb_utilization": 0.5, "mean_mec_queue_gcycles": 3.5,
        "mean_latency_ms": 14.5, "p95_latency_ms": 19.5, "deadline_miss_rate": 0.03125,
        "decisions_by_tier": {"local": 380, "edge": 20}, "emitted_ns": 1_767_225_601_050_000_000,
    },
    "Decision": {
        "decision_id": "local/placement/tiertwin.local.demands/3/1200", "tier": "local", "kind": "placement",
        "ue_id": "ue-0001", "cell_id": 7, "subject_id": "ue-0001/d/42", "target": "edge",
        "parameters": {"predicted_latency_ms": 12.5}, "model_name": "demand-latency", "model_version": 3,
        "confidence": 0.875, "source_topic": "tiertwin.local.demands", "source_partition": 3,
        "source_offset": 1200, "source_ts_ms": 1_767_225_600_000, "source_emitted_ns": 1_767_225_600_000_000_000,
        "received_ns": 1_767_225_600_001_000_000, "decided_ns": 1_767_225_600_001_200_000,
        "twin_site": "edge", "model_revision": 12,
    },
    "Outcome": {
        "outcome_id": "ue-0001/d/42/outcome", "ts_ms": 1_767_225_600_014, "kind": "demand", "ue_id": "ue-0001",
        "cell_id": 7, "demand_id": "ue-0001/d/42", "decision_id": "local/placement/tiertwin.local.demands/3/1200",
        "placement": "edge", "latency_ms": 13.25, "deadline_ms": 20.0, "deadline_met": True,
        "components_ms": {"uplink": 1.5, "queue": 2.0, "compute": 7.5, "backhaul": 0.0, "downlink": 2.25},
        "effect": {}, "emitted_ns": 1_767_225_600_014_000_000,
    },
    "ModelUpdate": {
        "model_name": "example-model", "version": 4, "created_ms": 1_767_225_660_000, "format": "river-pickle",
        "payload": b"\x80\x04N.", "metrics": {"mae_ms": 1.25, "live_mae_ms": 1.75},
        "training_window_start_ms": 1_767_225_600_000, "training_window_end_ms": 1_767_225_660_000,
        "trained_on": 12_000, "producer": "cloud-training",
        "digest": "6a0e2b3b9fd67e94ea8c1e3fd34f0c1b8a4a1c5d8b6f5e0a3d5a2e1f0c9b8a7d", "signature": "", "action": "publish",
    },
    "ModelStatus": {
        "model_name": "demand-latency", "tier": "local", "instance": "local-0", "event": "promoted", "version": 3,
        "live_version": 3, "revision": 240, "shadow_version": None,
        "figures": {"outcomes": 200.0, "live_mae": 9.5, "other_mae": 6.25, "t": 4.5}, "at_ms": 1_767_225_660_000,
    },
    "DeadLetter": {
        "original": b"\x00\x01garbage", "original_key": b"ue-0001", "topic": "tiertwin.local.telemetry",
        "partition": 2, "offset": 77, "reason": "bad-magic", "detail": "magic 0001 is not c301",
        "stage": "local-agent/decode", "failed_at_ms": 1_767_225_600_000,
    },
}

EXAMPLE_NAMES = tuple(_EXAMPLES)


def example(name: str, **overrides) -> dict:
    """A fresh copy of the example record of ``name`` (short name), with ``overrides`` applied."""
    record = copy.deepcopy(_EXAMPLES[name.rsplit(".", 1)[-1]])
    record.update(overrides)
    return record
