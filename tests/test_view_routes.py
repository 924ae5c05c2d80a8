"""The live view's endpoints: page, layout, compact state frames, state stream, consumer lag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from kafka import KafkaConsumer

from tiertwin.connectors.kafka import KafkaSink
from tiertwin.jobs.api.twin_api import TwinView, create_app
from tiertwin.jobs.api.twin_view_routes import LagMeter, StateFeed, layout_from_scenario, mount_twin_view
from tiertwin.schemas.examples import example

from tests.agent_support import wait_until_or_fail
from tiertwin.settings import Settings
from tiertwin.procs import free_ports

SCENARIO = "dense-urban-xr"



def _decision(decision_id: str, tier: str, latency_ms: float, ue: str, kind: str = "placement") -> dict:
    decided = time.time_ns()
    return example("Decision", decision_id=decision_id, tier=tier, kind=kind, ue_id=ue,
                   source_emitted_ns=decided - int(latency_ms * 1e6), received_ns=decided - 1000, decided_ns=decided)



@pytest.mark.broker
def test_page_layout_and_state_frame_follow_the_topics(view_topics, settings):
    view = TwinView(view_topics, settings, from_beginning=True).start()
    try:
        positions = {"ue-a": (10.0, 20.0, 3, True), "ue-b": (30.0, 40.0, 3, False), "ue-c": (-50.0, 5.0, 4, True)}
        with KafkaSink(settings) as sink:
            for ue, (x, y, cell, xr) in positions.items():
                sink.send(view_topics.summaries, "LocalSummary",
                          example("LocalSummary", ue_id=ue, x_m=x, y_m=y, serving_cell=cell, xr_active=xr))
            sink.send(view_topics.edge_state, "EdgeState", example("EdgeState", cell_id=3, site_id=1, prb_utilization=0.75))
            sink.send(view_topics.cell_reports, "EdgeState", example("EdgeState", cell_id=4, site_id=1))
            for i, latency in enumerate([1.0, 2.0, 3.0]):
                sink.send(view_topics.decisions[0], "Decision", _decision(f"l{i}", "local", latency, "ue-a"))
            sink.send(view_topics.decisions[1], "Decision", _decision("e0", "edge", 10.0, "ue-b", "handover"))
            for i, met in enumerate([True, True, True, False]):
                sink.send(view_topics.outcomes, "Outcome",
                          example("Outcome", outcome_id=f"o{i}", deadline_met=met, placement="edge"))
        wait_until_or_fail(lambda: len(view.ues) == 3 and len(view.decisions) == 4 and len(view.outcomes) == 4
              and len(view.cell_reports) == 1 and len(view.cells) == 1)

        layout = layout_from_scenario(SCENARIO)
        client = TestClient(create_app(view, layout=layout))
        page = client.get("/")
        assert page.status_code == 200 and '<canvas id="map"' in page.text and "/view/app.js" in page.text
        assert "requestAnimationFrame" in client.get("/view/app.js").text
        assert client.get("/view/style.css").status_code == 200
        assert client.get("/layout").json() == layout and len(layout["cells"]) == 21

        state = client.get("/state").json()
        ids = state["ue_ids"]
        assert sorted(ids) == sorted(positions) and state["ue_count"] == 3 and state["xr_count"] == 2
        for i, ue in enumerate(ids):
            x, y, cell, xr = positions[ue]
            assert (state["ues"]["x"][i], state["ues"]["y"][i], state["ues"]["cell"][i], state["ues"]["xr"][i]) == \
                (x, y, cell, int(xr))
        assert [(c["id"], c["prb"]) for c in state["cells"]] == [(3, 0.75), (4, 0.5)]
        [edge] = state["edges"]
        assert edge["site"] == 1 and edge["cells"] == [3, 4]
        by_id = {d["id"]: d for d in state["decisions"]}
        assert set(by_id) == {"l0", "l1", "l2", "e0"}
        assert [(m["tier"], m["model"], m["version"]) for m in state["models"]] == [
            ("edge", "demand-latency", 3), ("local", "demand-latency", 3)], "the live version per tier"
        assert by_id["e0"]["latency_ms"] == pytest.approx(10.0, abs=1e-3) and by_id["e0"]["kind"] == "handover"
        stats = state["stats"]
        assert stats["latency_ms"]["local"]["p50"] == pytest.approx(2.0, abs=1e-3)
        assert stats["latency_ms"]["local"]["n"] == 3 and stats["latency_ms"]["cloud"]["n"] == 0
        assert stats["miss_rate"] == 0.25 and stats["miss_rate_by_placement"] == {"edge": 0.25}
        assert client.get("/stats/history").json()[-1]["miss_rate"] == 0.25
    finally:
        view.stop()


def test_layout_is_derived_from_the_twins_unless_a_simulator_job_runs(tmp_path):
    view = TwinView(settings=Settings(home=tmp_path))
    for ue, x, y, cell in [("a", 10.0, 20.0, 3), ("b", 30.0, 40.0, 3), ("c", -50.0, 5.0, 4)]:
        view.apply(view.topics.summaries, "tiertwin.LocalSummary",
                   example("LocalSummary", ue_id=ue, x_m=x, y_m=y, serving_cell=cell))
    for cell in (3, 4):
        view.apply(view.topics.edge_state, "tiertwin.EdgeState", example("EdgeState", cell_id=cell, site_id=1))
    client = TestClient(create_app(view))
    derived = client.get("/layout").json()
    cells = {c["cell_id"]: c for c in derived["cells"]}
    assert derived["source"] == "derived" and set(cells) == {3, 4}
    assert (cells[3]["x_m"], cells[3]["y_m"], cells[3]["site_id"]) == (20.0, 30.0, 1)
    assert derived["sites"] == [{"site_id": 1, "x_m": -15.0, "y_m": 17.5}]

    # a deployed simulator job (as `tiertwin deploy` records it) that is running: its scenario's layout
    job = tmp_path / "jobs" / "simulator"
    job.mkdir(parents=True)
    state = {"name": "simulator", "tier": "simulator", "started_at": time.time(),
             "instances": [{"instance": 0, "pid": os.getpid(), "log": "x"}],
             "spec": {"name": "simulator", "tier": "simulator", "args": ["--scenario", "stadium-event", "--realtime"]}}
    (job / "state.json").write_text(json.dumps(state))
    from_sim = client.get("/layout").json()
    assert from_sim == layout_from_scenario("stadium-event") and from_sim["source"] == "scenario"

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    state["instances"][0]["pid"] = finished.pid
    (job / "state.json").write_text(json.dumps(state))
    assert client.get("/layout").json()["source"] == "derived"


def test_frames_carry_ue_ids_only_when_they_change_and_each_decision_once():
    view = TwinView()
    feed = StateFeed(view, min_period_s=0.0)
    view.apply("s", "tiertwin.LocalSummary", example("LocalSummary", ue_id="ue-1"))
    view.apply("d", "tiertwin.Decision", example("Decision", decision_id="first"))
    frame, seq = feed.frame(None, -1)
    assert frame["ue_ids"] == ["ue-1"] and [d["id"] for d in frame["decisions"]] == ["first"]
    frame, seq = feed.frame(seq, frame["ue_count"])
    assert "ue_ids" not in frame and frame["decisions"] == []
    view.apply("s", "tiertwin.LocalSummary", example("LocalSummary", ue_id="ue-2"))
    view.apply("d", "tiertwin.Decision", example("Decision", decision_id="second"))
    frame, seq = feed.frame(seq, 1)
    assert frame["ue_ids"] == ["ue-1", "ue-2"] and [d["id"] for d in frame["decisions"]] == ["second"]


def test_state_stream_sends_frames_as_server_sent_events():
    view = TwinView()
    view.apply("s", "tiertwin.LocalSummary", example("LocalSummary", ue_id="ue-1", x_m=5.0))
    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(create_app(view), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until_or_fail(lambda: server.started)
        frames = []
        with httpx.stream("GET", f"http://127.0.0.1:{port}/stream/state", params={"period_ms": 100},
                          timeout=10) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    frames.append(json.loads(line[6:]))
                    if len(frames) == 1:
                        view.apply("d", "tiertwin.Decision", example("Decision", decision_id="live"))
                    if len(frames) == 3:
                        break
        assert frames[0]["ue_ids"] == ["ue-1"] and frames[0]["ues"]["x"] == [5.0]
        assert all("ue_ids" not in f for f in frames[1:])
        assert [d["id"] for f in frames for d in f["decisions"]] == ["live"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.broker
def test_lag_endpoint_reports_committed_against_end_offsets(new_topic, group_id, settings):
    topic = new_topic(1)
    with KafkaSink(settings) as sink:
        for i in range(10):
            sink.send(topic, "Decision", example("Decision", decision_id=f"d{i}"))
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.bootstrap, group_id=group_id,
                             auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=4)
    taken = 0
    while taken < 4:
        taken += sum(len(batch) for batch in consumer.poll(timeout_ms=1000, max_records=4 - taken).values())
    consumer.commit()
    consumer.close()

    app = FastAPI()
    mount_twin_view(app, TwinView(settings=settings), lag_groups={group_id: [topic], "nobody-yet": [topic]})
    rows = {r["group"]: r for r in TestClient(app).get("/metrics/lag").json()["groups"]}
    assert (rows[group_id]["committed"], rows[group_id]["lag"], rows[group_id]["active"]) == (4, 6, True)
    assert (rows["nobody-yet"]["committed"], rows["nobody-yet"]["lag"], rows["nobody-yet"]["active"]) == (0, 10, False)

    meter = LagMeter({group_id: [topic]}, settings, ttl_s=600)
    first = meter.read()
    with KafkaSink(settings) as sink:
        sink.send(topic, "Decision", example("Decision", decision_id="late"))
    assert meter.read() is first  # cached: the broker is asked at most once per ttl
    assert LagMeter({group_id: [topic]}, settings).read()["groups"][0]["lag"] == 7
