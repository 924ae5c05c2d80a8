"""The live twin view: a page served by the twin API, and the endpoints it reads.

``mount_twin_view(app, view, layout)`` adds to the FastAPI app of
:func:`tiertwin.jobs.api.twin_api.create_app`:

- ``GET /`` the page (``jobs/api/twin_view/``: plain JS + canvas, no build step) and
  ``GET /view/*`` its assets;
- ``GET /layout`` where the sites and cells are: from the simulator's hexagonal
  layout when the API runs with ``--scenario``, otherwise derived from the twins
  (a cell sits at the mean position of the UEs it serves);
- ``GET /state`` one compact frame of the whole network (UE positions as parallel
  arrays, cell and edge states, chart statistics) and ``GET /stream/state`` the
  same as Server-Sent Events every ``period_ms``, each frame carrying only the
  decisions that are new for that client;
- ``GET /metrics/lag`` committed-versus-end offsets of the agents' consumer groups,
  cached for a couple of seconds because each reading asks the broker.

Statistics are computed here from what :class:`~tiertwin.jobs.api.twin_api.TwinView`
holds: decision latency is ``decided_ns - source_emitted_ns`` per tier over a
sliding window, the deadline-miss rate comes from demand outcomes, records/s from
``TwinView.records_seen`` sampled over time.

>>> layout = layout_from_scenario("dense-urban-xr")
>>> layout["source"], len(layout["sites"]), len(layout["cells"])
('scenario', 7, 21)
>>> layout["cells"][1]["site_id"], layout["cells"][1]["azimuth_deg"]
(0, 150.0)
>>> percentiles([4.0, 1.0, 3.0, 2.0])
{'p50': 2.5, 'p95': 3.85, 'p99': 3.97, 'n': 4}
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from tiertwin import stats
from tiertwin.errors import TiertwinError
from tiertwin.settings import Settings

if TYPE_CHECKING:
    from tiertwin.jobs.api.twin_api import TwinView

STATIC_DIR = Path(__file__).resolve().parent / "twin_view"
TIERS = ("local", "edge", "cloud")
# The job specs whose consumer groups the view shows when nothing is deployed (their inputs are the
# agents' own group_topics(): tests/test_topic_names.py).
LAG_SPECS = ("local", "edge")


def default_lag_groups() -> dict[str, list[str]]:
    """The shipped agent specs' consumer groups and what they consume (``jobs/ops/specs``).

    >>> default_lag_groups()["tiertwin-local"]
    ['tiertwin.local.telemetry', 'tiertwin.local.demands', 'tiertwin.outcomes']
    """
    from tiertwin.jobs.ops.launcher import SPECS_DIR, load_spec

    specs = [load_spec(SPECS_DIR / f"{name}.yaml") for name in LAG_SPECS]
    return {spec.group_id: list(spec.inputs) for spec in specs if spec.group_id and spec.inputs}


# =============================================================================================
# Layout: where sites and cells are
# =============================================================================================
def layout_from_scenario(name_or_path: str | Path) -> dict:
    """Sites and cells of a simulator scenario (preset name or YAML path), positions in metres.

    A sectored cell is placed at the centre of its 120-degree sector so it can be drawn
    and clicked; ``azimuth_deg`` is its boresight (None for omni cells).
    """
    from tiertwin.connectors.simulator.layout import Layout
    from tiertwin.connectors.simulator.scenarios import load_scenario

    scenario = load_scenario(name_or_path)
    layout = Layout.hexagonal(scenario.layout)
    isd = scenario.layout.isd_m
    sector_offset = isd / (2 * math.sqrt(3))  # centroid of a sector's rhombus
    cells = []
    for cell_id, (site, azimuth) in enumerate(zip(layout.cell_site.tolist(), layout.cell_azimuth_rad.tolist())):
        sx, sy = layout.site_xy[site]
        omni = math.isnan(azimuth)
        x = sx if omni else sx + sector_offset * math.cos(azimuth)
        y = sy if omni else sy + sector_offset * math.sin(azimuth)
        cells.append({"cell_id": cell_id, "site_id": site, "x_m": round(float(x), 2), "y_m": round(float(y), 2),
                      "azimuth_deg": None if omni else round(math.degrees(azimuth), 3)})
    sites = [{"site_id": s, "x_m": round(float(x), 2), "y_m": round(float(y), 2)}
             for s, (x, y) in enumerate(layout.site_xy.tolist())]
    return {"source": "scenario", "scenario": scenario.name, "isd_m": isd, "sectored": scenario.layout.sectored,
            "area_radius_m": float(layout.area_radius_m), "ues_configured": scenario.ues,
            "sites": sites, "cells": cells}


def derived_layout(view: "TwinView") -> dict:
    """Sites and cells as the twins show them: a cell at the mean position of its UEs,
    a site at the mean of its placed cells; cells nobody is served by stay unplaced (None).

    >>> from tiertwin.jobs.api.twin_api import TwinView
    >>> view = TwinView()
    >>> for ue, cell, x in [("a", 1, 0.0), ("b", 1, 10.0), ("c", 2, 50.0)]:
    ...     view.apply("s", "tiertwin.LocalSummary", {"ue_id": ue, "serving_cell": cell, "x_m": x, "y_m": 0.0})
    >>> [(c["cell_id"], c["x_m"]) for c in derived_layout(view)["cells"]]
    [(1, 5.0), (2, 50.0)]
    """
    with view.consistent():
        states = view.merged_cell_states()
        positions = [(s["serving_cell"], s["x_m"], s["y_m"]) for s in view.ues.values()]
    sums: dict[int, list[float]] = {}
    for cell, x, y in positions:
        acc = sums.setdefault(cell, [0.0, 0.0, 0])
        acc[0] += x
        acc[1] += y
        acc[2] += 1
    cell_ids = sorted(set(states) | set(sums))
    cells, site_points = [], {}
    for cell_id in cell_ids:
        site = states[cell_id]["site_id"] if cell_id in states else None
        x = y = None
        if cell_id in sums:
            sx, sy, n = sums[cell_id]
            x, y = round(sx / n, 2), round(sy / n, 2)
            if site is not None:
                site_points.setdefault(site, []).append((x, y))
        cells.append({"cell_id": cell_id, "site_id": site, "x_m": x, "y_m": y, "azimuth_deg": None})
    sites = [{"site_id": s, "x_m": round(sum(p[0] for p in pts) / len(pts), 2),
              "y_m": round(sum(p[1] for p in pts) / len(pts), 2)} for s, pts in sorted(site_points.items())]
    extent = max((math.hypot(x, y) for _, x, y in positions), default=100.0)
    return {"source": "derived", "scenario": None, "isd_m": None, "sectored": False,
            "area_radius_m": float(extent), "ues_configured": None, "sites": sites, "cells": cells}


def running_simulator_scenario(settings: Settings | None = None) -> str | None:
    """The ``--scenario`` of a running deployed simulator job (``tiertwin deploy`` / ``tiertwin demo``), if any.

    >>> import tempfile
    >>> running_simulator_scenario(Settings(home=Path(tempfile.mkdtemp()))) is None
    True
    """
    from tiertwin.jobs.ops.launcher import deployed, status_of

    for state in deployed(settings):
        spec = state.get("spec") or {}
        args = list(spec.get("args") or [])
        if spec.get("tier") != "simulator" or status_of(state["name"], settings)["running"] == 0:
            continue
        for flag in ("--scenario", "-s"):
            if flag in args[:-1]:
                return args[args.index(flag) + 1]
    return None


class LayoutSource:
    """``GET /layout``: the configured layout, else a running simulator job's scenario, else derived."""

    def __init__(self, view: "TwinView", layout: dict | None = None):
        self.view, self.layout = view, layout
        self._scenario_layouts: dict[str, dict | None] = {}

    def get(self) -> dict:
        if self.layout is not None:
            return self.layout
        scenario = running_simulator_scenario(self.view.settings)
        if scenario is not None and scenario not in self._scenario_layouts:
            try:
                self._scenario_layouts[scenario] = layout_from_scenario(scenario)
            except TiertwinError:  # a spec naming a file this process cannot read: fall back to derived
                self._scenario_layouts[scenario] = None
        return self._scenario_layouts.get(scenario) or derived_layout(self.view)


# =============================================================================================
# Live statistics and frames
# =============================================================================================
def percentiles(values: list[float]) -> dict:
    """p50 / p95 / p99 (:mod:`tiertwin.stats`, linear interpolation) and the count; None values when empty."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "n": 0}
    p50, p95, p99 = stats.percentiles(values, [50, 95, 99])
    return {"p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3), "n": len(values)}


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def compact_decision(seq: int, d: dict) -> dict:
    """The fields the feed shows, latency in ms (None when the source time is unknown)."""
    emitted = d.get("source_emitted_ns") or 0
    latency = (d["decided_ns"] - emitted) / 1e6 if emitted > 0 else None
    return {"seq": seq, "id": d["decision_id"], "tier": d["tier"], "kind": d["kind"], "ue": d.get("ue_id"),
            "cell": d.get("cell_id"), "target": d["target"], "model": d["model_name"],
            "version": d["model_version"], "latency_ms": None if latency is None else round(latency, 3),
            "decided_ms": d["decided_ns"] // 1_000_000, "site": d.get("twin_site", "edge")}


class LiveStats:
    """Sliding-window statistics over what the view has seen, sampled when frames are built.

    ``update()`` is cheap to call often: it reads only what arrived since the last call.
    """

    def __init__(self, view: "TwinView", window_s: float = 10.0, history: int = 300, history_every_s: float = 1.0):
        self.view = view
        self.window_s = window_s
        self.history_every_s = history_every_s
        self.history: deque[dict] = deque(maxlen=history)
        self._latency = {tier: deque(maxlen=20_000) for tier in TIERS}
        self._met: deque[tuple[float, bool, str]] = deque(maxlen=20_000)
        self._counts: deque[tuple[float, dict[str, int], int]] = deque(maxlen=64)
        self._seq = 0
        self._outcomes_seen = 0
        self._last_history = 0.0
        self.current: dict = {}

    def update(self, now: float | None = None) -> dict:
        now = time.monotonic() if now is None else now
        view = self.view
        with view.consistent():
            new = [(s, d) for s, d in view.decisions if s > self._seq]
            outcomes_total = view.records_seen.get(view.topics.outcomes, 0)
            fresh = outcomes_total - self._outcomes_seen
            new_outcomes = list(view.outcomes)[-fresh:] if fresh > 0 else []
            counts = dict(view.records_seen)
            decision_seq = view.decision_seq
        self._outcomes_seen = outcomes_total
        if new:
            self._seq = new[-1][0]
        for _, d in new:
            emitted = d.get("source_emitted_ns") or 0
            if emitted > 0 and d["tier"] in self._latency:
                self._latency[d["tier"]].append((now, (d["decided_ns"] - emitted) / 1e6))
        for o in new_outcomes:
            if o.get("deadline_met") is not None:
                self._met.append((now, bool(o["deadline_met"]), o.get("placement") or "?"))
        self._counts.append((now, counts, decision_seq))

        horizon = now - self.window_s
        latency = {tier: percentiles([v for t, v in q if t >= horizon]) for tier, q in self._latency.items()}
        recent = [(met, where) for t, met, where in self._met if t >= horizon]
        misses = sum(1 for met, _ in recent if not met)
        by_placement = {}
        for where in sorted({w for _, w in recent}):
            judged = [met for met, w in recent if w == where]
            by_placement[where] = round(sum(1 for m in judged if not m) / len(judged), 4)
        rates, decisions_per_s = self._rates(now)
        self.current = {"latency_ms": latency, "miss_rate": round(misses / len(recent), 4) if recent else None,
                        "miss_rate_by_placement": by_placement, "outcomes_judged": len(recent),
                        "records_per_s": rates, "decisions_per_s": decisions_per_s, "records_seen": counts}
        if now - self._last_history >= self.history_every_s:
            self._last_history = now
            self.history.append(self.history_point())
        return self.current

    def _rates(self, now: float) -> tuple[dict[str, float], float]:
        # Compare with the oldest sample at least a second old, so rates do not flicker.
        newest_t, newest, newest_seq = self._counts[-1]
        base = next(((t, c, s) for t, c, s in reversed(self._counts) if now - t >= 1.0), self._counts[0])
        dt = newest_t - base[0]
        if dt <= 0:
            return {}, 0.0
        rates = {topic: round((n - base[1].get(topic, 0)) / dt, 2) for topic, n in newest.items()}
        return rates, round((newest_seq - base[2]) / dt, 2)

    def history_point(self) -> dict:
        c = self.current
        return {"t_ms": int(time.time() * 1000), "latency_ms": c["latency_ms"], "miss_rate": c["miss_rate"],
                "miss_rate_by_placement": c["miss_rate_by_placement"], "records_per_s": c["records_per_s"]}


class StateFeed:
    """Builds the compact frames of ``/state`` and ``/stream/state``, shared by all clients.

    The network part of a frame is rebuilt at most once per ``min_period_s`` whatever
    the number of clients; each client then adds the decisions new to it.
    """

    def __init__(self, view: "TwinView", min_period_s: float = 0.2, decisions_per_frame: int = 150):
        self.view = view
        self.stats = LiveStats(view)
        self.min_period_s = min_period_s
        self.decisions_per_frame = decisions_per_frame
        self._lock = threading.Lock()
        self._built_at = -math.inf
        self._cache: tuple[dict, list[str], str, str] = ({}, [], "{}", "[]")  # network, ids, both as JSON
        self._frame_no = 0

    def network(self) -> tuple[dict, list[str], str, str]:
        """The shared part of a frame and the UE ids, as objects and as JSON (serialised once per build)."""
        with self._lock:
            now = time.monotonic()
            if now - self._built_at >= self.min_period_s:
                network, ue_ids = self._build(now)
                self._cache = (network, ue_ids, _dumps(network), _dumps(ue_ids))
                self._built_at = now
            return self._cache

    def _build(self, now: float) -> tuple[dict, list[str]]:
        view = self.view
        with view.consistent():
            ue_ids = list(view.ues)  # insertion order: TwinView only ever adds UEs
            twins = [view.ues[u] for u in ue_ids]
            states = view.merged_cell_states()
            snapshots = len(view.snapshots)
            models = [{"tier": m["tier"], "site": m["twin_site"], "model": m["model_name"], "version": m["model_version"],
                       "revision": m["model_revision"]} for m in sorted(view.models.values(), key=lambda m: (
                           m["tier"], m["twin_site"], m["model_name"]))]
            # the honesty meter: rolling latency MAE of the local twins' forecasts beside physics + queue's
            fidelity = [{"tier": r["tier"], "n": r["n"], "model_ms": round(r["model_mae_ms"], 2),
                         "baseline_ms": round(r["baseline_mae_ms"], 2)} for r in view.honesty.summary()]
            # and the edge's SINR forecast at its horizon beside persistence's
            sinr_fidelity = [{"target": r["target"].split()[-1], "n": r["n"], "model_db": round(r["model_mae_db"], 2),
                              "baseline_db": round(r["baseline_mae_db"], 2)} for r in view.sinr_meter.rows()]
        stats = self.stats.update(now)
        self._frame_no += 1
        ues = {"x": [round(t["x_m"], 1) for t in twins], "y": [round(t["y_m"], 1) for t in twins],
               "cell": [t["serving_cell"] for t in twins], "xr": [1 if t["xr_active"] else 0 for t in twins]}
        cells = [{"id": c, "site": s["site_id"], "prb": round(s["prb_utilization"], 4),
                  "load_mbps": round(s["cell_load_mbps"], 1), "ues": s["attached_ues"],
                  "sinr": round(s["mean_sinr_db"], 2), "handovers": s["handovers"]}
                 for c, s in sorted(states.items())]
        edges = [{"site": e["site_id"], "cells": e["cells"], "queue_gcycles": round(e["mec_queue_gcycles"], 3),
                  "util": round(e["mec_utilization"], 4), "capacity_gcps": e["mec_capacity_gcps"],
                  "ues": e["attached_ues"]} for e in view.edges().values()]
        cloud = {"snapshots": snapshots, "decisions_per_s": stats["decisions_per_s"],
                 "rate_in": round(sum(stats["records_per_s"].values()), 1)}
        network = {"frame": self._frame_no, "t_ms": int(time.time() * 1000), "ue_count": len(ue_ids),
                   "xr_count": sum(ues["xr"]), "ues": ues, "cells": cells, "edges": edges, "cloud": cloud,
                   "models": models, "fidelity": fidelity, "sinr_fidelity": sinr_fidelity,
                   "stats": {k: v for k, v in stats.items() if k != "records_seen"}}
        return network, ue_ids

    def frame(self, after_seq: int | None, known_ues: int) -> tuple[dict, int]:
        """A frame for a client that has seen decisions up to ``after_seq`` and ``known_ues`` UE ids.

        UE ids are included only when the client's list is out of date (they only grow).
        """
        network, ue_ids, _, _ = self.network()
        frame = dict(network)
        if len(ue_ids) != known_ues:
            frame["ue_ids"] = ue_ids
        frame["decisions_total"], frame["decisions"], seq = self._new_decisions(after_seq)
        return frame, seq

    def frame_json(self, after_seq: int | None, known_ues: int) -> tuple[str, int, int]:
        """:meth:`frame` as JSON, splicing the once-serialised shared part: ``(json, seq, ue_count)``.

        >>> from tiertwin.jobs.api.twin_api import TwinView
        >>> feed = StateFeed(TwinView())
        >>> text, seq, count = feed.frame_json(None, -1)
        >>> json.loads(text) == feed.frame(None, -1)[0]
        True
        """
        network, ue_ids, network_json, ids_json = self.network()
        total, decisions, seq = self._new_decisions(after_seq)
        ids = f',"ue_ids":{ids_json}' if len(ue_ids) != known_ues else ""
        text = f'{network_json[:-1]}{ids},"decisions_total":{total},"decisions":{_dumps(decisions)}}}'
        return text, seq, network["ue_count"] if network else 0

    def _new_decisions(self, after_seq: int | None) -> tuple[int, list[dict], int]:
        seq = after_seq if after_seq is not None else max(0, self.view.decision_seq - self.decisions_per_frame)
        new = self.view.decisions_after(seq, limit=10**9)
        compact = [compact_decision(s, d) for s, d in new[-self.decisions_per_frame:]]
        return self.view.decision_seq, compact, (new[-1][0] if new else seq)


# =============================================================================================
# Consumer lag
# =============================================================================================
class LagMeter:
    """Lag of the agents' consumer groups, read from the broker at most every ``ttl_s``."""

    def __init__(self, groups: dict[str, list[str]] | None = None, settings: Settings | None = None,
                 ttl_s: float = 2.0):
        self.groups = groups
        self.settings = settings
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._at = -math.inf
        self._value: dict = {}

    def _groups(self) -> dict[str, list[str]]:
        if self.groups is not None:
            return self.groups
        from tiertwin.jobs.ops.launcher import deployed

        groups = {s["spec"]["group_id"]: s["spec"]["inputs"] for s in deployed(self.settings)
                  if s.get("spec", {}).get("group_id") and s["spec"].get("inputs")}
        return groups or default_lag_groups()

    def read(self) -> dict:
        with self._lock:
            if time.monotonic() - self._at < self.ttl_s:
                return self._value
            from tiertwin.jobs.ops.launcher import consumer_progress

            rows = []
            for group, topics in sorted(self._groups().items()):
                try:
                    committed, lag = consumer_progress(group, topics, self.settings)
                    rows.append({"group": group, "topics": topics, "committed": committed, "lag": lag,
                                 "active": committed > 0})
                except Exception as exc:  # a missing topic or an unreachable broker: show it, keep serving
                    rows.append({"group": group, "topics": topics, "committed": None, "lag": None,
                                 "active": False, "error": f"{type(exc).__name__}: {exc}"[:200]})
            self._value = {"t_ms": int(time.time() * 1000), "groups": rows}
            self._at = time.monotonic()
            return self._value


# =============================================================================================
# Mounting
# =============================================================================================
def mount_twin_view(app: FastAPI, view: "TwinView", layout: dict | None = None,
                    lag_groups: dict[str, list[str]] | None = None) -> StateFeed:
    """Add the page and its endpoints to ``app``; returns the shared :class:`StateFeed`."""
    feed = StateFeed(view)
    lag = LagMeter(lag_groups, view.settings)
    layouts = LayoutSource(view, layout)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/view", StaticFiles(directory=STATIC_DIR), name="twin-view")

    @app.get("/layout")
    def get_layout() -> dict:
        """Sites and cells in metres: from ``--scenario``, else from a running simulator job's
        scenario, else derived from the twins."""
        return layouts.get()

    @app.get("/state")
    def get_state() -> dict:
        """One compact frame: UE positions as arrays, cells, edges, cloud, statistics, recent decisions."""
        frame, _ = feed.frame(None, -1)
        return frame

    @app.get("/metrics/lag")
    def get_lag() -> dict:
        """Committed-versus-end offsets of the agents' consumer groups (cached ~2 s)."""
        return lag.read()

    @app.get("/stats/history")
    def get_history() -> list[dict]:
        """Chart points (one per second, last five minutes) so a new page starts with a past.

        Points are sampled while frames are built, i.e. while some page or client is reading."""
        feed.network()
        return list(feed.stats.history)

    @app.get("/stream/state")
    async def stream_state(period_ms: int = Query(400, ge=100, le=5000)) -> StreamingResponse:
        """Server-Sent Events: one ``data:`` frame (as ``/state``, ids only when they changed) per period."""

        async def events():
            seq, known = None, -1
            yield "retry: 2000\n\n"
            while True:
                began = time.monotonic()
                text, seq, known = await run_in_threadpool(feed.frame_json, seq, known)
                yield f"data: {text}\n\n"
                await asyncio.sleep(max(0.0, period_ms / 1000 - (time.monotonic() - began)))

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return feed

