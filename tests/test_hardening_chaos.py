"""Fault suite: agents SIGKILLed repeatedly and the broker restarted mid-stream (private broker).

Run on its own with ``pytest -m fault``; `tiertwin chaos` runs the same scenario with a report.
"""

import pytest

from tiertwin.jobs.bench.chaos import run_chaos

pytestmark = [pytest.mark.broker, pytest.mark.fault]


def test_kills_and_a_broker_restart_lose_nothing_and_keep_decision_ids_idempotent(broker, tmp_path):
    report = run_chaos(tmp_path, seconds=24, local_kills=3, edge_kills=2, broker_restarts=1,
                       on_progress=lambda line: None)
    assert dict(report.kills) == {"local": 3, "edge": 2} and report.broker_restarts == 1
    assert report.telemetry_sent > 500 and report.demands_sent > 100
    assert report.unaccounted_ues == {}
    assert report.telemetry_accounted == report.telemetry_sent
    assert report.demands_decided == report.demands_sent
    assert report.local_decisions >= report.demands_sent
    assert report.conflicting_local_ids == 0 and report.conflicting_edge_ids == 0
    assert report.edge_decisions > 0
    assert report.dead_lettered_malformed == report.malformed_sent > 0
    assert report.ok
