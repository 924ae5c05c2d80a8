"""The twin API over a TwinView that follows (fresh) tier topics on the real broker."""

import json
import threading

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from kafka import KafkaConsumer

from tiertwin.connectors.kafka import KafkaSink
from tiertwin.jobs.api.twin_api import TwinView, create_app
from tiertwin.schemas import SchemaRegistry
from tiertwin.schemas.examples import example

from tests.agent_support import wait_until_or_fail
from tiertwin.procs import free_ports

pytestmark = pytest.mark.broker




def test_api_serves_ue_cell_edge_twins_and_decisions(view_topics, settings, monkeypatch):
    view = TwinView(view_topics, settings, from_beginning=True).start()
    try:
        with KafkaSink(settings) as sink:
            for i in range(3):
                sink.send(view_topics.summaries, "LocalSummary",
                          example("LocalSummary", ue_id=f"ue-{i}", serving_cell=7 if i < 2 else 8, samples=i + 1))
            sink.send(view_topics.edge_state, "EdgeState", example("EdgeState", cell_id=7, site_id=2))
            sink.send(view_topics.cell_reports, "EdgeState", example("EdgeState", cell_id=8, site_id=2,
                                                                      mec_queue_gcycles=9.0))
            sink.send(view_topics.decisions[0], "Decision", example("Decision", ue_id="ue-1", decision_id="a"))
            sink.send(view_topics.decisions[1], "Decision",
                      example("Decision", tier="edge", kind="handover", ue_id="ue-1", target="cell:8",
                              decision_id="b"))
        wait_until_or_fail(lambda: len(view.ues) == 3 and len(view.decisions) == 2 and len(view.cell_reports) == 1)
        client = TestClient(create_app(view))

        ue = client.get("/ues/ue-1").json()
        assert ue["twin"]["samples"] == 2 and ue["twin"]["serving_cell"] == 7
        assert [d["decision_id"] for d in ue["recent_decisions"]] == ["a", "b"]
        assert client.get("/ues/nobody").status_code == 404

        cell = client.get("/cells/7").json()
        assert cell["source"] == "edge" and cell["ues"] == ["ue-0", "ue-1"]
        assert client.get("/cells/8").json()["source"] == "cell-report"
        [edge] = client.get("/edges").json()
        assert edge["site_id"] == 2 and edge["cells"] == [7, 8] and edge["mec_queue_gcycles"] == 9.0

        assert [d["decision_id"] for d in client.get("/decisions", params={"tier": "edge"}).json()] == ["b"]
        assert [(m["tier"], m["model_name"], m["model_version"], m["model_revision"])
                for m in client.get("/models").json()] == [("edge", "demand-latency", 3, 12),
                                                           ("local", "demand-latency", 3, 12)]
        assert "/ues/{ue_id}" in client.get("/openapi.json").json()["paths"]

        manual = {"kind": "handover", "target": "cell:8", "ue_id": "ue-0"}
        monkeypatch.delenv("TIERTWIN_API_TOKEN", raising=False)
        assert client.post("/decisions", json=manual).status_code == 403
        monkeypatch.setenv("TIERTWIN_API_TOKEN", "s3cret")
        assert client.post("/decisions", json=manual).status_code == 401
        assert client.post("/decisions", json=manual, headers={"Authorization": "Bearer nope"}).status_code == 401
        accepted = client.post("/decisions", json=manual, headers={"Authorization": "Bearer s3cret"})
        assert accepted.status_code == 202
        consumer = KafkaConsumer(view_topics.cloud_actions, bootstrap_servers=settings.bootstrap,
                                 auto_offset_reset="earliest", consumer_timeout_ms=5000)
        [message] = list(consumer)
        consumer.close()
        _, decision = SchemaRegistry.default().decode(message.value)
        assert decision["decision_id"] == accepted.json()["decision_id"] and decision["target"] == "cell:8"
        assert decision["twin_site"] == "cloud"
    finally:
        view.stop()


def test_decision_stream_delivers_new_decisions_as_server_sent_events(view_topics, settings):
    view = TwinView(view_topics, settings, from_beginning=True).start()
    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(create_app(view), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until_or_fail(lambda: server.started and view.ready.is_set())
        received, connected = [], threading.Event()

        def read_stream():
            with httpx.stream("GET", f"http://127.0.0.1:{port}/stream/decisions", timeout=20) as response:
                for line in response.iter_lines():
                    if line.startswith(": connected"):
                        connected.set()
                    if line.startswith("data: "):
                        received.append(json.loads(line[6:]))
                        if len(received) == 3:
                            return

        reader = threading.Thread(target=read_stream, daemon=True)
        reader.start()
        assert connected.wait(20)
        with KafkaSink(settings) as sink:
            for i in range(3):
                sink.send(view_topics.decisions[0], "Decision", example("Decision", decision_id=f"live-{i}"))
        reader.join(timeout=20)
        assert [d["decision_id"] for d in received] == ["live-0", "live-1", "live-2"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        view.stop()
