"""What-if's agent policy is a LocalTwin: replayed on a simulator log made offline, no broker needed.

(The archive -> replay -> report path on the real broker is tests/test_eval_whatif.py.)
"""

from __future__ import annotations

import pickle

import pytest

from tiertwin.connectors.kafka import KafkaRecord
from tiertwin.connectors.simulator import World, load_scenario
from tiertwin.errors import ConfigError
from tiertwin.jobs.experiments.whatif import AgentPolicy, FixedPolicy, make_policy, replay, summarize
from tiertwin.pipelines.pretrain import PRETRAINED_DIR, PRETRAINED_VERSION

SCENARIO = load_scenario("dense-urban-xr").with_overrides(ues=8)


@pytest.fixture(scope="module")
def events() -> list[tuple[str, KafkaRecord]]:
    """4 s of telemetry and demands of 8 UEs, in the order ``load_log`` gives an archive's."""
    world = World(SCENARIO, seed=5)
    logged = []
    for _ in range(int(4000 / SCENARIO.step_ms)):
        world.step()
        for kind, records in (("telemetry", world.telemetry_records()), ("demand", world.demand_records())):
            logged += [(r["ts_ms"], 0 if kind == "telemetry" else 1, kind, r) for r in records]
        world.cell_reports()
        world.outcome_records()
    logged.sort(key=lambda e: (e[0], e[1]))
    return [(kind, KafkaRecord(kind, 0, i, ts, None, f"tiertwin.{kind.title()}", r, b""))
            for i, (ts, _, kind, r) in enumerate(logged)]


def test_the_local_twin_beats_everything_to_the_cloud(events):
    cloud = summarize(replay(events, FixedPolicy("cloud"), SCENARIO, seed=5), "default:cloud", "-")
    policy = AgentPolicy({"learn": "1"})
    learned_before = policy.twin.model.n_learned
    twin = summarize(replay(events, policy, SCENARIO, seed=5), "agent:learn=1", policy.model)
    assert cloud["demands"] == twin["demands"] > 50
    assert twin["deadline_miss_rate"] < cloud["deadline_miss_rate"]
    assert policy.twin.model.n_learned - learned_before == twin["demands"], "every replayed outcome was learned"
    assert policy.model == f"demand-latency v{PRETRAINED_VERSION} +online learning"
    assert twin["prediction_mae_ms"] is not None


def test_cost_weights_change_the_twins_placements(events):
    default = summarize(replay(events, make_policy("agent", None), SCENARIO), "agent", "-")
    local_cheap = summarize(replay(events, make_policy("agent:cost_local=0.1,cost_edge=5,cost_cloud=5", None),
                                   SCENARIO), "agent:cost_local=0.1", "-")
    assert local_cheap["placements"].get("local", 0) > default["placements"].get("local", 0)


def test_a_model_file_is_taken_with_its_version_and_a_wrong_one_is_named(tmp_path):
    policy = AgentPolicy({"model": str(PRETRAINED_DIR / "demand-latency.pkl")})
    assert policy.model == f"demand-latency v{PRETRAINED_VERSION} (demand-latency.pkl)"
    not_a_model = tmp_path / "handover.pkl"
    not_a_model.write_bytes(pickle.dumps({"name": "x", "version": 3, "model": {"weights": [1.0]}}))
    with pytest.raises(ConfigError, match="not a demand-latency model"):
        AgentPolicy({"model": str(not_a_model)})
    with pytest.raises(ConfigError, match="agent policy: model"):
        AgentPolicy({"model": str(tmp_path / "missing.pkl")})
    with pytest.raises(ConfigError, match="unknown option 'speed'"):
        AgentPolicy({"speed": "2"})


def test_refused_telemetry_is_counted_by_reason(events):
    policy = AgentPolicy({})
    telemetry = next(rec.value for kind, rec in events if kind == "telemetry")
    policy.observe({**telemetry, "neighbours": [{"cell_id": telemetry["serving_cell"], "rsrp_dbm": -90.0, "sinr_db": 1.0}]})
    assert dict(policy.rejected) == {"serving-cell-in-neighbours": 1}
