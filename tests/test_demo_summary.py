"""The demo's machine-checkable summary (`tiertwin demo --summary-json`, checked by .ci/run), without a broker."""

import json

from tiertwin.jobs.ops.demo import DemoSummary
from tiertwin.schemas.examples import example


def test_summary_json_counts_decisions_per_tier_and_per_topic_and_snapshots():
    summary = DemoSummary()
    local, edge = example("Decision"), {**example("Decision"), "tier": "edge", "kind": "handover"}
    for _ in range(3):
        summary.add("tiertwin.actions.local", "tiertwin.Decision", local)
    summary.add("tiertwin.actions.edge", "tiertwin.Decision", edge)
    summary.add("tiertwin.cloud.snapshots", "tiertwin.TwinSnapshot", example("TwinSnapshot"))
    data = json.loads(json.dumps(summary.as_dict(), allow_nan=False))
    assert data["decisions"] == {"local": 3, "edge": 1, "cloud": 0}
    assert data["decisions_by_topic"] == {"tiertwin.actions.edge": {"edge": 1}, "tiertwin.actions.local": {"local": 3}}
    assert data["decisions_by_kind"] == {"edge/handover": 1, "local/placement": 3}
    assert data["snapshots"] == 1 and data["records"]["tiertwin.cloud.snapshots"] == 1
    assert data["decision_latency_ms"]["local"]["p50"] == 1.2
