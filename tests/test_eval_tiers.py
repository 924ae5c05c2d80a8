"""Hierarchical vs centralized on a private broker with per-tier listeners behind link emulators."""

import json
import statistics
import time

import pytest

from tiertwin.connectors.kafka import KafkaSink
from tiertwin.connectors.linkemu import Link
from tiertwin.jobs.evaluation import EvalBroker, EvalConfig, run_evaluation
from tiertwin.schemas.examples import example

pytestmark = pytest.mark.broker

# A long edge<->cloud link, so the two modes differ by more than a loaded machine's noise between runs.
LINKS = {"local_edge": Link(2.0, 0.2), "edge_cloud": Link(40.0, 2.0)}


@pytest.fixture(scope="module")
def eval_broker(broker, tmp_path_factory):
    # `broker` first: the private broker reuses the jars the session broker resolved.
    with EvalBroker(LINKS, home=tmp_path_factory.mktemp("eval-home")) as private:
        yield private


def _ack_times_ms(settings, n=8):
    times = []
    with KafkaSink(settings, client_id="test-eval-ack") as sink:
        sink.send("tiertwin.deadletters", "DeadLetter", example("DeadLetter"), key="warm-up")
        sink.flush(30)
        for i in range(n):
            started = time.perf_counter()
            sink.send("tiertwin.deadletters", "DeadLetter", example("DeadLetter"), key=f"k{i}")
            sink.flush(30)
            times.append((time.perf_counter() - started) * 1000)
    return times


def test_every_request_of_a_tier_client_pays_its_path(eval_broker):
    path_ms = LINKS["local_edge"].one_way_ms + LINKS["edge_cloud"].one_way_ms
    far = _ack_times_ms(eval_broker.settings_for(("local_edge", "edge_cloud")))
    near = _ack_times_ms(eval_broker.settings_for(()))
    # After bootstrap the client reconnects to the advertised address: if that bypassed the
    # proxy, later produce round trips would be as fast as the direct ones. A round trip crosses
    # each link twice, each crossing jittered (normal, per-link sigma): allow 4 sigma below.
    round_trip_sigma = (2 * sum(link.jitter_ms ** 2 for link in LINKS.values())) ** 0.5
    assert min(far) >= 2 * path_ms - 4 * round_trip_sigma
    assert statistics.median(far) < 2 * path_ms + statistics.median(near) + 60.0   # loaded 2-core machine
    assert statistics.median(near) < statistics.median(far) - path_ms


def test_two_modes_produce_a_report_where_hierarchical_local_decisions_are_faster(eval_broker, tmp_path):
    config = EvalConfig(seconds=10.0, ues=8, seed=3, warmup_s=2.0, local_edge=LINKS["local_edge"],
                        edge_cloud=LINKS["edge_cloud"])
    results = run_evaluation(config, tmp_path, on_progress=lambda _: None, broker=eval_broker)
    modes = results["modes"]
    assert set(modes) == {"baseline", "hierarchical", "centralized"}
    for mode in ("hierarchical", "centralized"):
        assert modes[mode]["demands"] > 20 and modes[mode]["decided"] > 0.5 * modes[mode]["demands"]
        assert {"local", "edge"} <= set(modes[mode]["decision_latency_ms"])
    assert modes["baseline"]["decided"] == 0 and modes["baseline"]["demands"] > 20
    hier, central = modes["hierarchical"]["loop_latency_ms"]["local"], modes["centralized"]["loop_latency_ms"]["local"]
    round_trip = 2 * (LINKS["local_edge"].one_way_ms + LINKS["edge_cloud"].one_way_ms)
    assert central["p50"] >= round_trip                       # every centralized placement crossed both links twice
    assert hier["p50"] < central["p50"] and hier["mean"] < central["mean"]
    assert results["comparison"]["hierarchical_local_faster"]
    report = (tmp_path / "report.md").read_text()
    assert "| hierarchical |" in report and "| centralized |" in report and "42.0 %" in report
    for png in ("decision_latency_cdf.png", "demand_latency_cdf.png", "deadlines_staleness.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    assert json.loads((tmp_path / "results.json").read_text())["comparison"] == results["comparison"]
    # The hierarchical run is archived: replay it through what the twin decided live vs the agent's code.
    from tiertwin.jobs.whatif import run_whatif

    whatif = run_whatif(tmp_path / "log-hierarchical", "logged", "default:cloud", out_dir=tmp_path / "whatif")
    logged = whatif["policies"]["a"]
    assert logged["demands"] >= modes["hierarchical"]["demands"]
    assert logged["without_logged_decision"] < 0.5 * logged["demands"]
