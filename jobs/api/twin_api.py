"""The twin API for metaverse applications: the current twin of a UE, a cell and an edge site,
recent decisions, and a Server-Sent-Events stream of decisions.

The API holds no state of its own: :class:`TwinView` follows the topics the tier
agents write (UE twins from ``tiertwin.edge.summaries``, cell twins from
``tiertwin.cloud.edge-state``, decisions from ``tiertwin.actions.*``, outcomes,
cloud snapshots), so it serves exactly what the running agents hold and publish.

Reads are open. Writes (``POST /decisions``: an operator's manual cloud decision)
require ``Authorization: Bearer <token>`` where the token comes from
``TIERTWIN_API_TOKEN`` (or ``TIERTWIN_API_TOKEN_FILE``); with no token configured,
writes are refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import typer
from fastapi import Depends, FastAPI, Header, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from tiertwin.connectors.kafka import KafkaSink, TopicReader
from tiertwin.errors import TiertwinError
from tiertwin.jobs.api.honesty import HonestyMeter, SinrMeter
from tiertwin.jobs.cli.common import one_line_errors
from tiertwin.settings import Settings
from tiertwin.topics import (
    ACTIONS_CLOUD, ACTIONS_EDGE, ACTIONS_LOCAL, CELL_REPORTS, EDGE_STATE, OUTCOMES, SNAPSHOTS, SUMMARIES)


@dataclass(frozen=True)
class ViewTopics:
    summaries: str = SUMMARIES
    edge_state: str = EDGE_STATE
    cell_reports: str = CELL_REPORTS
    snapshots: str = SNAPSHOTS
    outcomes: str = OUTCOMES
    decisions: tuple[str, ...] = (ACTIONS_LOCAL, ACTIONS_EDGE, ACTIONS_CLOUD)
    cloud_actions: str = ACTIONS_CLOUD

    def all(self) -> list[str]:
        return [self.summaries, self.edge_state, self.cell_reports, self.snapshots, self.outcomes, *self.decisions]


@dataclass
class TwinView:
    """The latest twin state, rebuilt from the agents' output topics by a background consumer."""

    topics: ViewTopics = field(default_factory=ViewTopics)
    settings: Settings | None = None
    recent: int = 2000
    from_beginning: bool = False
    scenario: str | None = None     # the network's scenario, if known: the SINR meter forecasts with its geometry

    def __post_init__(self) -> None:
        self.ues: dict[str, dict] = {}
        self.cells: dict[int, dict] = {}
        self.cell_reports: dict[int, dict] = {}
        self.snapshots: dict[int, dict] = {}
        self.decisions: deque[tuple[int, dict]] = deque(maxlen=self.recent)
        self.outcomes: deque[dict] = deque(maxlen=self.recent)
        self.records_seen: dict[str, int] = {}
        self.models: dict[tuple[str, str, str], dict] = {}   # (tier, twin_site, model) -> newest version that decided
        self.honesty = HonestyMeter()   # per tier: rolling MAE of the latency forecasts beside the physics baseline's
        self.sinr_meter = self._sinr_meter()   # the edge's SINR forecast at its horizon beside persistence's
        self._seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()

    def _sinr_meter(self) -> SinrMeter:
        from tiertwin.pipelines.edge_twin import EdgeTwinConfig
        from tiertwin.pipelines.geometry import RadioGeometry

        geometry = RadioGeometry.from_scenario(self.scenario) if self.scenario else None
        return SinrMeter(horizon_s=EdgeTwinConfig().handover_horizon_s, geometry=geometry)

    def fidelity(self) -> list[dict]:
        """The honesty meters' rows: latency per tier (ms) beside physics + queue, SINR at the edge's horizon (dB)
        beside persistence."""
        return [{**r, "target": f"latency {r['tier']}"} for r in self.honesty.summary()] + self.sinr_meter.rows()

    # -- feeding -------------------------------------------------------------------------------
    def apply(self, topic: str, schema: str, value: dict) -> None:
        with self._lock:
            self.records_seen[topic] = self.records_seen.get(topic, 0) + 1
            if schema == "tiertwin.LocalSummary":
                self.ues[value["ue_id"]] = value
                self.sinr_meter.summary(value)
            elif schema == "tiertwin.EdgeState":
                (self.cells if topic == self.topics.edge_state else self.cell_reports)[value["cell_id"]] = value
            elif schema == "tiertwin.TwinSnapshot":
                self.snapshots[value["cell_id"]] = value
            elif schema == "tiertwin.Decision":
                self._seq += 1
                self.decisions.append((self._seq, value))
                self.honesty.decision(value)
                key = (value["tier"], value.get("twin_site", "edge"), value["model_name"])
                known = self.models.get(key)
                if known is None or known["decided_ns"] <= value["decided_ns"]:
                    self.models[key] = {"tier": key[0], "twin_site": key[1], "model_name": key[2],
                                        "model_version": value["model_version"],
                                        "model_revision": value.get("model_revision", 0),
                                        "decided_ns": value["decided_ns"]}
            elif schema == "tiertwin.Outcome":
                self.outcomes.append(value)
                self.honesty.outcome(value)

    def start(self) -> "TwinView":
        self._thread = threading.Thread(target=self._follow, name="twin-view", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _follow(self) -> None:
        # No consumer group: every API instance sees every partition. A record that does not decode is
        # skipped (the agents dead-letter it), not raised: the rest of its batch counts.
        reader = TopicReader(self.topics.all(), self.settings, on_undecodable="skip", client_id="tiertwin-twin-api",
                             start="beginning" if self.from_beginning else "end", require=False)
        try:
            self.ready.set()
            while not self._stop.is_set():
                try:
                    batch = reader.poll(100)
                except Exception:  # whatever else a poll raises: keep serving (the reader skips rejected records)
                    continue
                for rec in batch:
                    self.apply(rec.topic, rec.schema, rec.value)
        finally:
            reader.close()

    # -- reading -------------------------------------------------------------------------------
    def consistent(self) -> threading.Lock:
        """Hold the view still while several of its fields are read together::

            with view.consistent():
                states, ues = view.merged_cell_states(), list(view.ues.values())
        """
        return self._lock

    @property
    def decision_seq(self) -> int:
        """The sequence number of the newest decision held (0 before the first)."""
        return self._seq

    def ue(self, ue_id: str) -> dict | None:
        with self._lock:
            twin = self.ues.get(ue_id)
            if twin is None:
                return None
            decisions = [d for _, d in self.decisions if d.get("ue_id") == ue_id][-20:]
            outcomes = [o for o in self.outcomes if o.get("ue_id") == ue_id][-20:]
        return {"twin": twin, "recent_decisions": decisions, "recent_outcomes": outcomes}

    def cell(self, cell_id: int) -> dict | None:
        with self._lock:
            state = self.cells.get(cell_id) or self.cell_reports.get(cell_id)
            if state is None:
                return None
            ues = sorted(u for u, s in self.ues.items() if s["serving_cell"] == cell_id)
            decisions = [d for _, d in self.decisions if d.get("cell_id") == cell_id][-20:]
            return {"twin": state, "source": "edge" if cell_id in self.cells else "cell-report",
                    "ues": ues, "snapshot": self.snapshots.get(cell_id), "recent_decisions": decisions}

    def merged_cell_states(self) -> dict[int, dict]:
        """Every cell's latest state: the edge twin's where it has one, else the gNB's report.

        The caller holds :meth:`consistent` (so it can read other state in the same moment).
        """
        return {**self.cell_reports, **self.cells}

    def cell_states(self) -> dict[int, dict]:
        with self._lock:
            return self.merged_cell_states()

    def edges(self) -> dict[int, dict]:
        states = self.cell_states()
        sites: dict[int, dict] = {}
        for cell_id, s in sorted(states.items()):
            site = sites.setdefault(s["site_id"], {"site_id": s["site_id"], "cells": [], "attached_ues": 0,
                                                    "mec_queue_gcycles": 0.0, "mec_utilization": 0.0,
                                                    "mec_capacity_gcps": s["mec_capacity_gcps"]})
            site["cells"].append(cell_id)
            site["attached_ues"] += s["attached_ues"]
            site["mec_queue_gcycles"] = max(site["mec_queue_gcycles"], s["mec_queue_gcycles"])
            site["mec_utilization"] = max(site["mec_utilization"], s["mec_utilization"])
        return sites

    def decisions_after(self, seq: int, limit: int = 500) -> list[tuple[int, dict]]:
        with self._lock:
            return [(s, d) for s, d in self.decisions if s > seq][:limit]


class ManualDecision(BaseModel):
    """An operator's decision, published to the cloud action topic."""

    kind: str = Field(pattern="^(placement|handover|prb_share|mec_share|xr_bitrate|migration)$")
    target: str = Field(max_length=200)
    ue_id: str | None = Field(None, max_length=200)
    cell_id: int | None = Field(None, ge=0, le=1_000_000)
    parameters: dict[str, float] = {}


def _configured_token() -> str | None:
    token = os.environ.get("TIERTWIN_API_TOKEN")
    path = os.environ.get("TIERTWIN_API_TOKEN_FILE")
    if not token and path:
        token = Path(path).read_text().strip()
    return token or None


def create_app(view: TwinView, sink_factory=None, layout: dict | None = None) -> FastAPI:
    """The FastAPI app over ``view``. ``sink_factory`` makes the producer for authenticated writes;
    ``layout`` (sites and cells, see :mod:`tiertwin.jobs.api.twin_view_routes`) positions the live view's map."""
    app = FastAPI(title="tiertwin twin API", version="1",
                  description="Read-only views of the three-tier network twin; writes need a bearer token.")

    def require_token(authorization: str | None = Header(None)) -> None:
        expected = _configured_token()
        if expected is None:
            raise HTTPException(403, "writes are disabled: no TIERTWIN_API_TOKEN configured")
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "following": view.ready.is_set(), "records_seen": view.records_seen}

    @app.get("/ues")
    def list_ues() -> list[str]:
        return sorted(view.ues)

    @app.get("/ues/{ue_id}")
    def get_ue(ue_id: str) -> dict:
        twin = view.ue(ue_id)
        if twin is None:
            raise HTTPException(404, f"no twin for UE {ue_id!r} yet")
        return twin

    @app.get("/cells")
    def list_cells() -> list[dict]:
        states = view.cell_states()
        return [states[c] for c in sorted(states)]

    @app.get("/cells/{cell_id}")
    def get_cell(cell_id: int) -> dict:
        twin = view.cell(cell_id)
        if twin is None:
            raise HTTPException(404, f"no twin for cell {cell_id} yet")
        return twin

    @app.get("/edges")
    def list_edges() -> list[dict]:
        return list(view.edges().values())

    @app.get("/edges/{site_id}")
    def get_edge(site_id: int) -> dict:
        site = view.edges().get(site_id)
        if site is None:
            raise HTTPException(404, f"no twin for edge site {site_id} yet")
        return site

    @app.get("/models")
    def live_models() -> list[dict]:
        """Per tier, site and model: the version (and revision) that made the newest decision seen: what is live
        there (docs/twins/model-lifecycle.md; ``tiertwin models list`` has each instance's shadow and verdicts)."""
        with view.consistent():
            return sorted(view.models.values(), key=lambda m: (m["tier"], m["twin_site"], m["model_name"]))

    @app.get("/fidelity")
    def fidelity() -> list[dict]:
        """The honesty meters: per tier, the rolling MAE (last 500 outcomes) of the local twins' latency forecasts
        beside the physics baseline's on the same demands; and for the serving cell and the best neighbour, the rolling
        MAE (last 500 labels) of the edge's SINR forecast at its horizon beside persistence's, from a replica of the
        forecaster run on the same summaries (docs/evaluation/fidelity.md)."""
        with view.consistent():
            return view.fidelity()

    @app.get("/decisions")
    def recent_decisions(tier: str | None = None, kind: str | None = None, ue: str | None = None,
                         limit: int = Query(100, ge=1, le=2000)) -> list[dict]:
        with view.consistent():
            items = [d for _, d in view.decisions]
        items = [d for d in items if (tier is None or d["tier"] == tier) and (kind is None or d["kind"] == kind)
                 and (ue is None or d.get("ue_id") == ue)]
        return items[-limit:]

    @app.get("/stream/decisions")
    async def stream_decisions(tier: str | None = None) -> StreamingResponse:
        """Server-Sent Events: one ``data:`` line (JSON decision) per new decision."""

        async def events():
            seq = view.decision_seq
            yield ": connected\n\n"
            while True:
                for seq, d in view.decisions_after(seq):
                    if tier is None or d["tier"] == tier:
                        yield f"id: {seq}\ndata: {json.dumps(d)}\n\n"
                await asyncio.sleep(0.1)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/decisions", status_code=202, dependencies=[Depends(require_token)])
    def post_decision(decision: ManualDecision) -> dict:
        now = time.time_ns()
        digest = hashlib.sha256(f"{now}{decision.model_dump_json()}".encode()).hexdigest()[:16]
        record = {"decision_id": f"cloud/manual/{digest}", "tier": "cloud", "kind": decision.kind,
                  "ue_id": decision.ue_id, "cell_id": decision.cell_id, "subject_id": None,
                  "target": decision.target, "parameters": decision.parameters, "model_name": "operator",
                  "model_version": 0, "confidence": 1.0, "source_topic": "api", "source_partition": -1,
                  "source_offset": -1, "source_ts_ms": now // 1_000_000, "source_emitted_ns": now,
                  "received_ns": now, "decided_ns": now, "twin_site": "cloud"}
        sink = (sink_factory or (lambda: KafkaSink(view.settings, client_id="tiertwin-api")))()
        try:
            sink.send(view.topics.cloud_actions, "Decision", record,
                      key=decision.ue_id or (str(decision.cell_id) if decision.cell_id is not None else None))
        finally:
            sink.close()
        return {"decision_id": record["decision_id"], "topic": view.topics.cloud_actions}

    from tiertwin.jobs.api.twin_view_routes import mount_twin_view

    mount_twin_view(app, view, layout)
    return app


@contextmanager
def served(app, host: str = "127.0.0.1", timeout_s: float = 20.0):
    """Serve ``app`` from a background thread on a free port; yields the uvicorn server (its
    ``config.port`` says where) once it accepts connections, and stops it on exit.
    Benchmarks and browser tests use it to put the view in front of a real browser."""
    import uvicorn

    from tiertwin.procs import free_ports

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=free_ports(1, host)[0], log_level="warning"))
    thread = threading.Thread(target=server.run, name="twin-api-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise TiertwinError(f"the twin API did not start on {host}:{server.config.port} within {timeout_s:.0f} s")
        time.sleep(0.05)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve(host: str = "127.0.0.1", port: int = 8080, from_beginning: bool = False, scenario: str | None = None) -> None:
    import uvicorn

    from tiertwin.jobs.api.twin_view_routes import layout_from_scenario

    layout = layout_from_scenario(scenario) if scenario else None
    view = TwinView(settings=Settings.from_env(), from_beginning=from_beginning, scenario=scenario).start()
    try:
        uvicorn.run(create_app(view, layout=layout), host=host, port=port, log_level="warning")
    finally:
        view.stop()


# -- commands (added to the `tiertwin` tree in jobs/cli/main.py) ---------------------------------
commands = typer.Typer()


@commands.command("api")
@one_line_errors
def api_cmd(host: str = typer.Option("127.0.0.1", help="Address to bind."),
            port: int = typer.Option(8080, help="Port to bind."),
            from_beginning: bool = typer.Option(False, help="Rebuild the view from the start of the topics."),
            scenario: str = typer.Option(None, help="Simulator scenario (preset or YAML) whose site/cell layout the live map "
                                                    "draws and whose geometry the SINR meter forecasts with.")):
    """Serve the twin API and the live view at / (OpenAPI at /docs); read-only unless TIERTWIN_API_TOKEN is set."""
    serve(host, port, from_beginning, scenario)
