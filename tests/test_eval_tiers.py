"""`bench tiers` live modes on a private broker with per-tier listeners behind link emulators."""

import json
import statistics
import time

import pytest

from tiertwin.connectors.kafka import KafkaSink
from tiertwin.connectors.linkemu import Link
from tiertwin.jobs.experiments.evaluation import EvalBroker, EvalConfig, run_evaluation
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


def test_live_modes_produce_a_report_where_the_edge_twin_places_faster_than_the_cloud(eval_broker, tmp_path):
    from tiertwin.jobs.experiments.evaluation import device_mode_available

    live = ("device", "edge", "cloud") if device_mode_available() else ("edge", "cloud")
    config = EvalConfig(seconds=10.0, ues=8, seed=3, warmup_s=2.0, rounds=1, local_edge=LINKS["local_edge"],
                        edge_cloud=LINKS["edge_cloud"], modes=("no-control", *live))
    results = run_evaluation(config, tmp_path, on_progress=lambda _: None, broker=eval_broker)
    modes = results["modes"]
    assert set(modes) == {"no-control", *live}
    for mode in live:
        assert modes[mode]["demands"] > 20 and modes[mode]["decided"] > 0.5 * modes[mode]["demands"]
        assert {"local", "edge"} <= set(modes[mode]["decision_latency_ms"])
        assert {"xr_frame", "ai_inference"} <= set(modes[mode]["by_kind"])
        # Every mode of the round ran on the same seed: the same demands were issued.
        assert modes[mode]["rounds"][0]["seed"] == modes["no-control"]["rounds"][0]["seed"]
    assert modes["no-control"]["decided"] == 0 and modes["no-control"]["demands"] > 20
    edge, cloud = modes["edge"]["loop_latency_ms"]["local"], modes["cloud"]["loop_latency_ms"]["local"]
    # The edge service is one link away (a round trip per placement), the cloud two links each way.
    assert edge["p50"] >= 2 * LINKS["local_edge"].one_way_ms
    assert cloud["p50"] >= 2 * (LINKS["local_edge"].one_way_ms + LINKS["edge_cloud"].one_way_ms)
    assert edge["p50"] < cloud["p50"] and edge["mean"] < cloud["mean"]
    assert results["comparison"]["edge_local_loop_faster_than_cloud"]
    assert "edge_vs_cloud" in results["comparison"] and "edge_vs_no-control" in results["comparison"]
    if "device" in live:
        device = modes["device"]["loop_latency_ms"]["local"]
        assert device["p50"] < edge["p50"]            # decided in the simulator process, no link crossed
        assert {"misses_vs_no_control", "mean_vs_cloud"} <= set(results["targets"])
    report = (tmp_path / "report.md").read_text()
    assert "| edge |" in report and "| cloud |" in report and "42.0 %" in report
    for png in ("decision_latency_cdf.png", "demand_latency_cdf.png", "deadlines_staleness.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    assert json.loads((tmp_path / "results.json").read_text())["comparison"] == results["comparison"]
    # The run of the twin nearest the device is archived: replay what it decided live vs no control.
    from tiertwin.jobs.experiments.whatif import run_whatif

    archived = live[0]
    whatif = run_whatif(tmp_path / f"log-{archived}", "logged", "default:cloud", out_dir=tmp_path / "whatif")
    logged = whatif["policies"]["a"]
    assert logged["demands"] >= modes[archived]["demands"]
    assert logged["without_logged_decision"] < 0.5 * logged["demands"]
