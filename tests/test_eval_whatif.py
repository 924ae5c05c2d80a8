"""What-if replay: one archived simulator log through two policies gives two comparable result sets.

The agent policy (a LocalTwin) is tested without a broker in tests/test_eval_whatif_policies.py.
"""


import polars as pl
import pytest

from tiertwin.connectors.archive import archive_topics
from tiertwin.connectors.kafka import KafkaSink
from tiertwin.connectors.simulator import SimulatorLoop, SimulatorTopics, World, load_scenario
from tiertwin.errors import ConfigError
from tiertwin.jobs.experiments.whatif import LogTopics, parse_policy, run_whatif

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def log(tmp_path_factory, broker, settings):
    """A 4 s simulator run (8 UEs, default policy) archived with `archive_topics`, like `tiertwin archive`."""
    from tiertwin.connectors.kafka import admin_client

    import uuid

    prefix = f"test.whatif.{uuid.uuid4().hex[:10]}"
    topics = SimulatorTopics(telemetry=f"{prefix}.telemetry", demands=f"{prefix}.demands",
                             cell_reports=f"{prefix}.cells", outcomes=f"{prefix}.outcomes",
                             deadletters=f"{prefix}.deadletters")
    names = [topics.telemetry, topics.demands, topics.cell_reports, topics.outcomes, topics.deadletters]
    admin = admin_client(settings)
    admin.create_topics({n: {"num_partitions": 3, "replication_factor": 1} for n in names}, timeout_ms=30_000)
    out = tmp_path_factory.mktemp("whatif-log")
    try:
        with KafkaSink(settings, profile="throughput") as sink:
            SimulatorLoop(World(load_scenario("dense-urban-xr").with_overrides(ues=8), seed=5), sink,
                          topics=topics).run(4.0)
        archive_topics([topics.telemetry, topics.demands], out, settings)
    finally:
        admin.delete_topics(names)
        admin.close()
    return out, LogTopics(demands=topics.demands, telemetry=topics.telemetry, actions=f"{prefix}.none")


def test_two_fixed_policies_replay_the_same_demands_with_the_backhaul_between_them(log, tmp_path):
    log_dir, topics = log
    result = run_whatif(log_dir, "default:edge", "default:cloud", out_dir=tmp_path, topics=topics)
    a, b = result["policies"]["a"], result["policies"]["b"]
    assert a["demands"] == b["demands"] > 20
    assert a["placements"] == {"edge": a["demands"]} and b["placements"] == {"cloud": b["demands"]}
    rows = pl.read_parquet(tmp_path / "demands.parquet")
    assert rows.height == a["demands"] and rows["demand_id"].n_unique() == rows.height
    xr = rows.filter(pl.col("kind") == "xr_frame")
    # The same frames, run in the cloud instead of the edge, pay the backhaul both ways (10 ms each in
    # this scenario) and win back only a few ms of MEC compute.
    assert (xr["latency_ms_b"] - xr["latency_ms"]).mean() > 10.0
    assert "| A | `default:edge`" in (tmp_path / "report.md").read_text()


def test_bad_policies_and_logs_are_named(log, tmp_path):
    log_dir, topics = log
    with pytest.raises(ConfigError, match="default:cloud"):
        parse_policy("default:moon")
    with pytest.raises(ConfigError, match="unknown option 'speed'"):
        run_whatif(log_dir, "agent:speed=2", "default:cloud", out_dir=tmp_path, topics=topics)
    with pytest.raises(ConfigError, match="logged"):
        run_whatif(log_dir, "logged", "default:cloud", out_dir=tmp_path, topics=topics)
    with pytest.raises(ConfigError, match="no archived"):
        run_whatif(tmp_path, "default:edge", "default:cloud", out_dir=tmp_path / "x", topics=topics)
