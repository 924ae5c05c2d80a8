// tiertwin live twin view: plain JS + canvas, fed by /stream/state (Server-Sent Events).
// Map and charts are drawn with requestAnimationFrame; DOM (feed, KPIs, twin panel) is
// refreshed on timers so thousands of UEs and decisions never block the page.
"use strict";
(() => {
  const TIERS = ["local", "edge", "cloud"];
  const TIER_COLOUR = { local: "#38bdf8", edge: "#a78bfa", cloud: "#fb923c" };
  const PLACEMENT_COLOUR = { local: "#38bdf8", edge: "#a78bfa", cloud: "#fb923c" };
  const TOPIC_COLOURS = ["#38bdf8", "#a78bfa", "#fb923c", "#4ade80", "#f472b6", "#facc15", "#94a3b8", "#2dd4bf"];
  const PERIOD_MS = 400;        // state frames from the server
  const FEED_ROWS = 80;         // rows rendered in the decision feed
  const FEED_KEEP = 3000;       // decisions kept in the browser
  const HISTORY_MS = 180_000;   // chart window
  const DOM_EVERY_MS = 500;     // feed / KPI refresh
  const TWIN_EVERY_MS = 1500;   // selected twin refresh

  const $ = (id) => document.getElementById(id);
  const esc = (v) => String(v ?? "").replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const fmt = (v, digits = 1) => (v === null || v === undefined || Number.isNaN(v)) ? "–" : Number(v).toFixed(digits);
  const short = (topic) => topic.replace(/^tiertwin\./, "");
  const clock = (ms) => { const d = new Date(ms); return d.toTimeString().slice(0, 8) + "." + String(d.getMilliseconds()).padStart(3, "0"); };

  // ------------------------------------------------------------------------------ state
  const S = {
    layout: null,
    cellGeom: new Map(),   // cell id -> {x, y, site, az}   (metres)
    sites: new Map(),      // site id -> {x, y}
    ueIds: [], ueIndex: new Map(),
    prev: null, cur: null, // {x: Float32Array, y: Float32Array, cell: Int32Array, xr: Uint8Array, at: ms}
    cells: new Map(), edges: new Map(), cloud: {}, stats: {}, frame: null,
    decisions: [], decisionIds: new Set(), feedDirty: true, paused: false,
    selected: null,        // {type: "ue"|"cell"|"edge", id}
    hoverUe: -1,
    history: { points: [], lag: [] },
    lag: null,
    connected: false, lastFrameAt: 0,
    drawn: { cells: 0, ues: 0, sites: 0 },
    screen: { x: new Float32Array(0), y: new Float32Array(0) },
    cellPolys: [], edgeBoxes: [],
    bounds: { x0: -300, x1: 300, y0: -300, y1: 300 },
    perf: { frames: 0, frameBytes: 0, frameMs: null, drawMs: null, draws: 0 },  // EWMA ms: parse+merge, map draw
  };
  const ewma = (old, v) => old === null ? v : old + 0.1 * (v - old);

  // ------------------------------------------------------------------------------ layout
  async function loadLayout() {
    try {
      const layout = await (await fetch("/layout")).json();
      S.layout = layout;
      S.cellGeom.clear(); S.sites.clear();
      for (const s of layout.sites) S.sites.set(s.site_id, { x: s.x_m, y: s.y_m });
      for (const c of layout.cells) {
        if (c.x_m === null) continue;
        S.cellGeom.set(c.cell_id, { x: c.x_m, y: c.y_m, site: c.site_id, az: c.azimuth_deg });
      }
      $("scenario").textContent = layout.scenario ? `scenario: ${layout.scenario}` : "layout: derived from twins";
      if (layout.source === "scenario") {
        const hex = layout.isd_m / Math.sqrt(3), a = layout.area_radius_m;
        const b = { x0: -a, x1: a, y0: -a, y1: a };
        for (const s of layout.sites) {
          b.x0 = Math.min(b.x0, s.x_m - hex); b.x1 = Math.max(b.x1, s.x_m + hex);
          b.y0 = Math.min(b.y0, s.y_m - hex); b.y1 = Math.max(b.y1, s.y_m + hex);
        }
        S.bounds = b;
      }
    } catch (e) { /* retried below */ }
  }

  // ------------------------------------------------------------------------------ stream
  function connect() {
    const source = new EventSource(`/stream/state?period_ms=${PERIOD_MS}`);
    source.onopen = () => setConnected(true);
    source.onerror = () => setConnected(false);
    source.onmessage = (ev) => {
      const t0 = performance.now();
      try { onFrame(JSON.parse(ev.data)); } catch (e) { console.error(e); }
      S.perf.frames++; S.perf.frameBytes = ev.data.length;
      S.perf.frameMs = ewma(S.perf.frameMs, performance.now() - t0);
    };
  }

  function setConnected(on) {
    S.connected = on;
    $("conn-dot").className = "dot " + (on ? "live" : "down");
    $("conn-text").textContent = on ? "live" : "reconnecting…";
  }

  function onFrame(f) {
    if (f.ue_ids) {
      S.ueIds = f.ue_ids;
      S.ueIndex = new Map(f.ue_ids.map((id, i) => [id, i]));
    }
    const n = f.ues.x.length;
    const now = performance.now();
    // start the next glide where the dots are drawn now
    S.prev = S.cur && S.cur.x.length <= n ? interpolated(now) : null;
    S.cur = {
      x: Float32Array.from(f.ues.x), y: Float32Array.from(f.ues.y),
      cell: Int32Array.from(f.ues.cell), xr: Uint8Array.from(f.ues.xr), at: now,
    };
    S.cells = new Map(f.cells.map((c) => [c.id, c]));
    S.edges = new Map(f.edges.map((e) => [e.site, e]));
    S.cloud = f.cloud; S.stats = f.stats; S.frame = f; S.lastFrameAt = Date.now(); S.needsDraw = true;
    for (const d of f.decisions) addDecision(d);
    if (S.decisions.length > FEED_KEEP) {
      for (const d of S.decisions.splice(0, S.decisions.length - FEED_KEEP)) S.decisionIds.delete(d.id);
    }
    const last = S.history.points[S.history.points.length - 1];
    if (!last || f.t_ms - last.t_ms >= 1000) {
      S.history.points.push({ t_ms: f.t_ms, latency_ms: f.stats.latency_ms, miss_rate: f.stats.miss_rate,
                              miss_by: f.stats.miss_rate_by_placement, records_per_s: f.stats.records_per_s });
      trim(S.history.points);
      chartsDirty = true;
    }
  }

  function addDecision(d) {
    if (S.decisionIds.has(d.id)) return;
    S.decisionIds.add(d.id); S.decisions.push(d); S.feedDirty = true;
  }

  function trim(points) {
    const horizon = Date.now() - HISTORY_MS - 5000;
    while (points.length && points[0].t_ms < horizon) points.shift();
  }

  // positions glide from the previous frame to the current one over one period
  function interpolated(now) {
    const cur = S.cur, prev = S.prev;
    if (!prev) return cur;
    const k = S.glide ? Math.min(1, (now - cur.at) / PERIOD_MS) : 1;
    const n = cur.x.length, x = new Float32Array(n), y = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      if (i < prev.x.length) { x[i] = prev.x[i] + (cur.x[i] - prev.x[i]) * k; y[i] = prev.y[i] + (cur.y[i] - prev.y[i]) * k; }
      else { x[i] = cur.x[i]; y[i] = cur.y[i]; }
    }
    return { x, y, cell: cur.cell, xr: cur.xr, at: cur.at };
  }

  // ------------------------------------------------------------------------------ colours
  function prbColour(u, alpha) {
    if (u === null || u === undefined) return `rgba(100,116,139,${alpha * 0.6})`;
    const stops = [[0, [21, 128, 61]], [0.55, [202, 138, 4]], [1, [220, 38, 38]]];
    u = Math.max(0, Math.min(1, u));
    let i = 0; while (i < stops.length - 2 && u > stops[i + 1][0]) i++;
    const [u0, c0] = stops[i], [u1, c1] = stops[i + 1], k = (u - u0) / (u1 - u0);
    const c = c0.map((v, j) => Math.round(v + (c1[j] - v) * k));
    return `rgba(${c[0]},${c[1]},${c[2]},${alpha})`;
  }
  const cellHue = (cell) => (cell * 137.508 + 190) % 360;
  const ueColour = (cell) => `hsl(${cellHue(cell)}, 85%, 64%)`;

  // ------------------------------------------------------------------------------ map
  const map = $("map");
  const mctx = map.getContext("2d");
  const T = { scale: 1, cx: 0, cy: 0, w: 0, h: 0 };
  const sx = (x) => T.cx + x * T.scale;
  const sy = (y) => T.cy - y * T.scale;

  // canvas sizes come from a ResizeObserver: reading clientWidth while drawing would force a layout
  const sizes = new WeakMap();
  const observer = new ResizeObserver((entries) => {
    for (const e of entries) sizes.set(e.target, { w: e.contentRect.width, h: e.contentRect.height });
    chartsDirty = true; S.needsDraw = true;
  });
  function resizeCanvas(canvas, ctx) {
    const dpr = window.devicePixelRatio || 1;
    let size = sizes.get(canvas);
    if (!size) { observer.observe(canvas); size = { w: canvas.clientWidth, h: canvas.clientHeight }; sizes.set(canvas, size); }
    const { w, h } = size;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return { w, h };
  }

  function fit(w, h) {
    if (!S.layout || S.layout.source !== "scenario") {
      // derived layout: grow to the outermost UE or cell at once, shrink slowly so the map does not jump
      const t = { x0: -50, x1: 50, y0: -50, y1: 50 };
      const grow = (x, y) => { t.x0 = Math.min(t.x0, x); t.x1 = Math.max(t.x1, x); t.y0 = Math.min(t.y0, y); t.y1 = Math.max(t.y1, y); };
      const cur = S.cur;
      if (cur) for (let i = 0; i < cur.x.length; i++) grow(cur.x[i], cur.y[i]);
      for (const c of S.cellGeom.values()) grow(c.x, c.y);
      const m = 0.06 * Math.max(t.x1 - t.x0, t.y1 - t.y0), b = S.bounds;
      for (const [k, v] of [["x0", t.x0 - m], ["y0", t.y0 - m], ["x1", t.x1 + m], ["y1", t.y1 + m]]) {
        const outward = k.endsWith("0") ? v < b[k] : v > b[k];
        b[k] = outward ? v : b[k] + (v - b[k]) * 0.02;
      }
    }
    const b = S.bounds, top = 60, pad = 16, bottom = 44;
    T.w = w; T.h = h;
    T.scale = Math.min((w - 2 * pad) / (b.x1 - b.x0), (h - top - bottom) / (b.y1 - b.y0));
    T.cx = w / 2 - (b.x0 + b.x1) / 2 * T.scale;
    T.cy = top + (h - top - bottom) / 2 + (b.y0 + b.y1) / 2 * T.scale;
  }

  function drawMap(now) {
    const { w, h } = resizeCanvas(map, mctx);
    fit(w, h);
    const g = mctx;
    g.clearRect(0, 0, w, h);
    g.drawImage(background(w, h), 0, 0, w, h);
    drawCells(g);
    drawBackhaul(g);
    drawUes(g, now);
    drawCellLabels(g);
    drawSites(g);
    drawCloud(g, w);
    drawSelection(g);
    drawScaleBar(g, w, h);
  }

  // gradient and grid change only with the size or the scale: paint them once into an offscreen canvas
  let bgCache = null;
  function background(w, h) {
    const key = `${w}x${h}@${T.scale.toFixed(4)},${T.cx.toFixed(1)},${T.cy.toFixed(1)}`;
    if (bgCache && bgCache.key === key) return bgCache.canvas;
    const dpr = window.devicePixelRatio || 1;
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    const bg = g.createRadialGradient(w / 2, h / 2, 10, w / 2, h / 2, Math.max(w, h) * 0.7);
    bg.addColorStop(0, "#13203a"); bg.addColorStop(1, "#0c1424");
    g.fillStyle = bg; g.fillRect(0, 0, w, h);
    drawGrid(g, w, h);
    bgCache = { key, canvas };
    return canvas;
  }

  function drawGrid(g, w, h) {
    const step = niceStep(80 / T.scale);
    g.strokeStyle = "rgba(148,163,184,0.06)"; g.lineWidth = 1;
    g.beginPath();
    const x0 = Math.floor((0 - T.cx) / T.scale / step) * step, x1 = (w - T.cx) / T.scale;
    for (let x = x0; x <= x1; x += step) { g.moveTo(sx(x), 0); g.lineTo(sx(x), h); }
    const y0 = Math.floor((T.cy - h) / T.scale / step) * step, y1 = T.cy / T.scale;
    for (let y = y0; y <= y1; y += step) { g.moveTo(0, sy(y)); g.lineTo(w, sy(y)); }
    g.stroke();
  }

  function niceStep(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v))), m = v / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
  }

  function niceCeil(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v))), m = v / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }

  function hexVertex(site, deg, r) {
    const a = deg * Math.PI / 180;
    return [sx(site.x + r * Math.cos(a)), sy(site.y + r * Math.sin(a))];
  }

  function drawCells(g) {
    S.cellPolys = [];
    const layout = S.layout;
    const sectored = layout && layout.source === "scenario" && layout.isd_m;
    const r = sectored ? layout.isd_m / Math.sqrt(3) : 0;
    let drawn = 0;
    const ids = new Set([...S.cellGeom.keys()]);
    for (const id of ids) {
      const geom = S.cellGeom.get(id);
      const state = S.cells.get(id);
      const prb = state ? state.prb : null;
      let poly;
      if (sectored) {
        const site = S.sites.get(geom.site);
        if (geom.az === null) poly = [0, 60, 120, 180, 240, 300].map((d) => hexVertex(site, d + 30, r));
        else poly = [[sx(site.x), sy(site.y)], hexVertex(site, geom.az - 60, r), hexVertex(site, geom.az, r), hexVertex(site, geom.az + 60, r)];
      } else {
        const rr = Math.max(14, 26 * Math.sqrt((state ? state.ues : 1) || 1) / 3);
        poly = []; for (let k = 0; k < 16; k++) { const a = k / 16 * 2 * Math.PI; poly.push([sx(geom.x) + rr * Math.cos(a), sy(geom.y) + rr * Math.sin(a)]); }
      }
      g.beginPath(); g.moveTo(poly[0][0], poly[0][1]);
      for (let k = 1; k < poly.length; k++) g.lineTo(poly[k][0], poly[k][1]);
      g.closePath();
      g.fillStyle = prbColour(prb, 0.30); g.fill();
      g.strokeStyle = "rgba(148,163,184,0.28)"; g.lineWidth = 1; g.stroke();
      S.cellPolys.push({ id, poly, label: [sx(geom.x), sy(geom.y)], state });
      drawn++;
    }
    S.drawn.cells = drawn;
  }

  function drawCellLabels(g) {
    g.textAlign = "center"; g.textBaseline = "middle"; g.lineJoin = "round";
    for (const { id, label: [x, y], state } of S.cellPolys) {
      const lines = [[`cell ${id}`, "600 11px system-ui, sans-serif", "#f1f5f9", -6],
                     [state ? `${Math.round(state.prb * 100)}% · ${state.ues} UE` : "no report", "10px system-ui, sans-serif", "#cbd5e1", 7]];
      for (const [text, font, colour, dy] of lines) {
        g.font = font; g.strokeStyle = "rgba(8,13,24,0.85)"; g.lineWidth = 3.5; g.strokeText(text, x, y + dy);
        g.fillStyle = colour; g.fillText(text, x, y + dy);
      }
    }
  }

  function siteScreen(siteId) {
    const s = S.sites.get(siteId);
    return s ? [sx(s.x), sy(s.y)] : null;
  }

  function cloudAnchor(w) { return [w / 2, 30]; }

  function drawBackhaul(g) {
    const [cx, cy] = cloudAnchor(T.w);
    g.save(); g.setLineDash([3, 5]); g.strokeStyle = "rgba(251,146,60,0.22)"; g.lineWidth = 1;
    g.beginPath();
    for (const siteId of S.sites.keys()) { const p = siteScreen(siteId); if (p) { g.moveTo(cx, cy + 14); g.lineTo(p[0], p[1]); } }
    g.stroke(); g.restore();
  }

  function drawUes(g, now) {
    const cur = S.cur;
    if (!cur) { S.drawn.ues = 0; return; }
    const pos = interpolated(now);
    const n = pos.x.length;
    if (S.screen.x.length !== n) S.screen = { x: new Float32Array(n), y: new Float32Array(n) };
    const byCell = new Map();
    for (let i = 0; i < n; i++) {
      const px = sx(pos.x[i]), py = sy(pos.y[i]);
      S.screen.x[i] = px; S.screen.y[i] = py;
      let list = byCell.get(pos.cell[i]); if (!list) byCell.set(pos.cell[i], list = []);
      list.push(i);
    }
    if (n > 1200) { drawUeSquares(g, byCell, pos.xr); S.drawn.ues = n; return; }
    const small = n > 400 ? 2.0 : 2.8, big = n > 400 ? 2.8 : 3.6;
    for (const [cell, list] of byCell) {
      g.fillStyle = ueColour(cell);
      g.beginPath();
      for (const i of list) { const r = pos.xr[i] ? big : small; g.moveTo(S.screen.x[i] + r, S.screen.y[i]); g.arc(S.screen.x[i], S.screen.y[i], r, 0, 2 * Math.PI); }
      g.fill();
    }
    g.strokeStyle = "rgba(255,255,255,0.85)"; g.lineWidth = 1;
    g.beginPath();
    for (let i = 0; i < n; i++) if (pos.xr[i]) { const r = big + 1.2; g.moveTo(S.screen.x[i] + r, S.screen.y[i]); g.arc(S.screen.x[i], S.screen.y[i], r, 0, 2 * Math.PI); }
    g.stroke();
    S.drawn.ues = n;
  }

  // thousands of UEs: squares fill far faster than arcs, and at that density look the same
  function drawUeSquares(g, byCell, xr) {
    const X = S.screen.x, Y = S.screen.y;
    g.fillStyle = "rgba(255,255,255,0.9)";
    g.beginPath();
    for (let i = 0; i < X.length; i++) if (xr[i]) g.rect(X[i] - 2.5, Y[i] - 2.5, 5, 5);
    g.fill();
    for (const [cell, list] of byCell) {
      g.fillStyle = ueColour(cell);
      g.beginPath();
      for (const i of list) { if (xr[i]) g.rect(X[i] - 1.5, Y[i] - 1.5, 3, 3); else g.rect(X[i] - 1.25, Y[i] - 1.25, 2.5, 2.5); }
      g.fill();
    }
  }

  function drawSites(g) {
    S.edgeBoxes = [];
    let drawn = 0;
    for (const [siteId] of S.sites) {
      const [x, y] = siteScreen(siteId);
      // the gNB mast
      g.fillStyle = "#e2e8f0"; g.strokeStyle = "#0b1220"; g.lineWidth = 1.5;
      g.beginPath(); g.moveTo(x, y - 7); g.lineTo(x - 5, y + 4); g.lineTo(x + 5, y + 4); g.closePath(); g.fill(); g.stroke();
      // its MEC server: busy share as a bar, queue as text
      const e = S.edges.get(siteId);
      const bx = x + 8, by = y + 6, bw = 30, bh = 9;
      g.fillStyle = "rgba(11,18,32,0.9)"; g.fillRect(bx - 2, by - 2, bw + 4, bh + 16);
      g.strokeStyle = "#cbd5e1"; g.lineWidth = 1; g.strokeRect(bx, by, bw, bh);
      if (e) { g.fillStyle = prbColour(e.util, 0.95); g.fillRect(bx + 1, by + 1, Math.max(0, (bw - 2) * Math.min(1, e.util)), bh - 2); }
      g.font = "9.5px system-ui, sans-serif"; g.textAlign = "left"; g.textBaseline = "top"; g.fillStyle = "#cbd5e1";
      g.fillText(e ? `q ${fmt(e.queue_gcycles, 1)}` : "MEC –", bx, by + bh + 2);
      S.edgeBoxes.push({ site: siteId, x: bx - 2, y: by - 2, w: bw + 4, h: bh + 16 });
      drawn++;
    }
    S.drawn.sites = drawn;
  }

  function drawCloud(g, w) {
    const [cx, cy] = cloudAnchor(w);
    const c = S.cloud || {};
    const text = `cloud  ·  ${c.snapshots ?? 0} cell snapshots  ·  ${fmt(c.decisions_per_s, 0)} decisions/s  ·  ${fmt(c.rate_in, 0)} rec/s in`;
    g.font = "600 12px system-ui, sans-serif";
    const tw = g.measureText(text).width + 44;
    g.fillStyle = "rgba(30,41,59,0.95)"; g.strokeStyle = "rgba(251,146,60,0.7)"; g.lineWidth = 1.2;
    roundRect(g, cx - tw / 2, cy - 14, tw, 28, 14); g.fill(); g.stroke();
    // a small cloud glyph
    g.fillStyle = "#fb923c";
    const gx = cx - tw / 2 + 18, gy = cy + 2;
    g.beginPath(); g.arc(gx - 5, gy, 4, 0, 7); g.arc(gx, gy - 3, 5.5, 0, 7); g.arc(gx + 5, gy, 4, 0, 7); g.fill();
    g.fillRect(gx - 5, gy, 10, 4);
    g.fillStyle = "#f1f5f9"; g.textAlign = "left"; g.textBaseline = "middle";
    g.fillText(text, gx + 13, cy);
  }

  function roundRect(g, x, y, w, h, r) {
    g.beginPath(); g.moveTo(x + r, y); g.arcTo(x + w, y, x + w, y + h, r); g.arcTo(x + w, y + h, x, y + h, r);
    g.arcTo(x, y + h, x, y, r); g.arcTo(x, y, x + w, y, r); g.closePath();
  }

  function drawSelection(g) {
    const sel = S.selected;
    if (sel && sel.type === "ue") {
      const i = S.ueIndex.get(sel.id);
      if (i !== undefined && i < S.screen.x.length) {
        const x = S.screen.x[i], y = S.screen.y[i];
        const geom = S.cellGeom.get(S.cur.cell[i]);
        if (geom) { g.strokeStyle = "rgba(255,255,255,0.55)"; g.setLineDash([4, 3]); g.beginPath(); g.moveTo(x, y); g.lineTo(sx(geom.x), sy(geom.y)); g.stroke(); g.setLineDash([]); }
        g.strokeStyle = "#fff"; g.lineWidth = 2; g.beginPath(); g.arc(x, y, 9, 0, 2 * Math.PI); g.stroke();
      }
    }
    if (sel && sel.type === "cell") {
      const p = S.cellPolys.find((c) => c.id === sel.id);
      if (p) { g.strokeStyle = "#fff"; g.lineWidth = 2.5; g.beginPath(); g.moveTo(p.poly[0][0], p.poly[0][1]); for (const q of p.poly.slice(1)) g.lineTo(q[0], q[1]); g.closePath(); g.stroke(); }
    }
    if (sel && sel.type === "edge") {
      const b = S.edgeBoxes.find((e) => e.site === sel.id);
      if (b) { g.strokeStyle = "#fff"; g.lineWidth = 2; g.strokeRect(b.x - 2, b.y - 2, b.w + 4, b.h + 4); }
    }
    if (S.hoverUe >= 0 && S.hoverUe < S.screen.x.length) {
      g.strokeStyle = "rgba(255,255,255,0.8)"; g.lineWidth = 1.5;
      g.beginPath(); g.arc(S.screen.x[S.hoverUe], S.screen.y[S.hoverUe], 6, 0, 2 * Math.PI); g.stroke();
    }
  }

  function drawScaleBar(g, w, h) {
    const metres = niceStep(120 / T.scale), px = metres * T.scale;
    const x = w - px - 18, y = h - 16;
    g.strokeStyle = "#cbd5e1"; g.lineWidth = 1.5;
    g.beginPath(); g.moveTo(x, y - 4); g.lineTo(x, y); g.lineTo(x + px, y); g.lineTo(x + px, y - 4); g.stroke();
    g.fillStyle = "#cbd5e1"; g.font = "10px system-ui, sans-serif"; g.textAlign = "center"; g.textBaseline = "bottom";
    g.fillText(metres >= 1000 ? `${metres / 1000} km` : `${metres} m`, x + px / 2, y - 3);
  }

  // ------------------------------------------------------------------------------ picking
  function nearestUe(px, py, radius) {
    let best = -1, bestD = radius * radius;
    const X = S.screen.x, Y = S.screen.y;
    for (let i = 0; i < X.length; i++) {
      const dx = X[i] - px, dy = Y[i] - py, d = dx * dx + dy * dy;
      if (d < bestD) { bestD = d; best = i; }
    }
    return best;
  }

  function inPoly(px, py, poly) {
    let inside = false;
    for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      const [xi, yi] = poly[i], [xj, yj] = poly[j];
      if ((yi > py) !== (yj > py) && px < (xj - xi) * (py - yi) / (yj - yi) + xi) inside = !inside;
    }
    return inside;
  }

  function pick(px, py) {
    const ue = nearestUe(px, py, 8);
    if (ue >= 0) return { type: "ue", id: S.ueIds[ue] };
    const box = S.edgeBoxes.find((b) => px >= b.x && px <= b.x + b.w && py >= b.y && py <= b.y + b.h);
    if (box) return { type: "edge", id: box.site };
    const cell = S.cellPolys.find((c) => inPoly(px, py, c.poly));
    if (cell) return { type: "cell", id: cell.id };
    return null;
  }

  map.addEventListener("click", (ev) => {
    const r = map.getBoundingClientRect();
    const hit = pick(ev.clientX - r.left, ev.clientY - r.top);
    if (hit) select(hit.type, hit.id);
  });

  map.addEventListener("mousemove", (ev) => {
    const r = map.getBoundingClientRect();
    const px = ev.clientX - r.left, py = ev.clientY - r.top;
    const hover = nearestUe(px, py, 8);
    if (hover !== S.hoverUe) S.needsDraw = true;
    S.hoverUe = hover;
    const tip = $("tooltip");
    if (S.hoverUe >= 0) {
      const i = S.hoverUe;
      tip.textContent = `${S.ueIds[i]} · cell ${S.cur.cell[i]}${S.cur.xr[i] ? " · XR" : ""}`;
      tip.style.left = `${px + 12}px`; tip.style.top = `${py + 10}px`; tip.hidden = false;
    } else tip.hidden = true;
  });
  map.addEventListener("mouseleave", () => { S.hoverUe = -1; $("tooltip").hidden = true; });

  // ------------------------------------------------------------------------------ twin panel
  let twinTimer = null;
  function select(type, id) {
    S.selected = { type, id }; S.needsDraw = true;
    if (twinTimer) clearInterval(twinTimer);
    refreshTwin();
    twinTimer = setInterval(refreshTwin, TWIN_EVERY_MS);
  }

  async function refreshTwin() {
    const sel = S.selected;
    if (!sel) return;
    const url = sel.type === "ue" ? `/ues/${encodeURIComponent(sel.id)}` : sel.type === "cell" ? `/cells/${sel.id}` : `/edges/${sel.id}`;
    let body;
    try {
      const res = await fetch(url);
      body = res.ok ? await res.json() : { missing: (await res.json()).detail };
    } catch (e) { return; }
    if (S.selected !== sel) return;
    const panel = $("twin-panel");
    panel.dataset.type = sel.type; panel.dataset.id = sel.id;
    if (body.missing) { $("twin-title").textContent = `${sel.type} ${sel.id}`; $("twin-body").innerHTML = `<span class="muted">${esc(body.missing)}</span>`; return; }
    if (sel.type === "ue") renderUe(sel.id, body);
    else if (sel.type === "cell") renderCell(sel.id, body);
    else renderEdge(sel.id, body);
  }

  const kv = (pairs) => `<div class="kv">${pairs.map(([k, v, field]) =>
    `<div${field ? ` data-field="${field}"` : ""}><span class="k">${esc(k)}</span><span class="val">${esc(v)}</span></div>`).join("")}</div>`;

  function decisionRows(list) {
    if (!list.length) return `<div class="muted small">none recent</div>`;
    return `<table><tbody>${list.slice(-8).reverse().map((d) => {
      const c = compact(d);
      return `<tr><td>${clock(c.decided_ms)}</td><td><span class="tier ${c.tier}">${c.tier}</span></td><td>${esc(c.kind)}</td><td>${esc(c.target)}</td><td>${esc(c.model)}@${c.version}</td><td class="num">${fmt(c.latency_ms, 2)}</td></tr>`;
    }).join("")}</tbody></table>`;
  }

  function renderUe(id, body) {
    const t = body.twin;
    $("twin-title").innerHTML = `UE <span data-field="ue_id">${esc(id)}</span> ${t.xr_active ? '<span class="tier cloud">XR session</span>' : '<span class="muted small">no XR</span>'}`;
    const outcomes = body.recent_outcomes.slice(-6).reverse().map((o) =>
      `<tr><td>${esc(o.kind)}</td><td>${esc(o.placement ?? "")}</td><td class="num">${fmt(o.latency_ms, 1)} / ${fmt(o.deadline_ms, 0)} ms</td><td class="${o.deadline_met === false ? "missed" : "met"}">${o.deadline_met === null ? "" : o.deadline_met ? "met" : "missed"}</td></tr>`).join("");
    $("twin-body").innerHTML = kv([
      ["serving cell", t.serving_cell, "serving_cell"], ["SINR dB", fmt(t.sinr_db, 1), "sinr_db"], ["trend dB/s", fmt(t.sinr_trend_db_per_s, 2)],
      ["RSRP dBm", fmt(t.rsrp_dbm, 1)], ["DL Mbit/s", fmt(t.throughput_dl_mbps, 1)], ["RTT ms", fmt(t.rtt_ms, 1)],
      ["best neighbour", t.best_neighbour_cell === null ? "–" : `${t.best_neighbour_cell} (${fmt(t.best_neighbour_sinr_db, 1)} dB)`],
      ["position m", `${fmt(t.x_m, 0)}, ${fmt(t.y_m, 0)}`], ["speed m/s", fmt(t.speed_mps, 1)],
      ["battery %", fmt(t.battery_pct, 0)], ["CPU", `${fmt(t.cpu_util * 100, 0)} %`], ["samples", t.samples],
      ["placed local/edge/cloud", `${t.placed_local} / ${t.placed_edge} / ${t.placed_cloud}`], ["demands", t.demands],
      ["summary at", clock(t.window_end_ms)],
    ]) + `<div class="sub-h">recent decisions</div>${decisionRows(body.recent_decisions)}`
      + `<div class="sub-h">recent outcomes</div>${outcomes ? `<table><tbody>${outcomes}</tbody></table>` : '<div class="muted small">none recent</div>'}`;
  }

  function renderCell(id, body) {
    const t = body.twin;
    $("twin-title").innerHTML = `Cell <span data-field="cell_id">${id}</span> <span class="muted small">site ${t.site_id} · from ${esc(body.source)}</span>`;
    const snap = body.snapshot;
    $("twin-body").innerHTML = kv([
      ["PRB use", `${fmt(t.prb_utilization * 100, 0)} %`, "prb"], ["load Mbit/s", fmt(t.cell_load_mbps, 0)], ["attached UEs", t.attached_ues, "attached"],
      ["mean SINR dB", fmt(t.mean_sinr_db, 1)], ["handovers", t.handovers], ["MEC queue Gc", fmt(t.mec_queue_gcycles, 2)],
      ["MEC busy", `${fmt(t.mec_utilization * 100, 0)} %`], ["MEC Gcycles/s", fmt(t.mec_capacity_gcps, 0)], ["state at", clock(t.ts_ms)],
    ]) + (snap ? `<div class="sub-h">cloud snapshot</div>` + kv([
      ["mean latency ms", fmt(snap.mean_latency_ms, 1)], ["p95 ms", fmt(snap.p95_latency_ms, 1)], ["miss rate", `${fmt((snap.deadline_miss_rate ?? 0) * 100, 1)} %`]]) : "")
      + `<div class="sub-h">UEs served (${body.ues.length})</div><div class="chips">${body.ues.slice(0, 40).map((u) => `<span class="chip" data-ue="${esc(u)}">${esc(u)}</span>`).join("")}${body.ues.length > 40 ? `<span class="muted small">+${body.ues.length - 40}</span>` : ""}</div>`
      + `<div class="sub-h">recent decisions</div>${decisionRows(body.recent_decisions)}`;
  }

  function renderEdge(id, e) {
    $("twin-title").innerHTML = `Edge site <span data-field="site_id">${id}</span> <span class="muted small">MEC server</span>`;
    $("twin-body").innerHTML = kv([
      ["cells", e.cells.join(", ")], ["attached UEs", e.attached_ues], ["queue Gcycles", fmt(e.mec_queue_gcycles, 2)],
      ["busy", `${fmt(e.mec_utilization * 100, 0)} %`], ["capacity Gc/s", fmt(e.mec_capacity_gcps, 0)],
    ]) + `<div class="chips">${e.cells.map((c) => `<span class="chip" data-cell="${c}">cell ${c}</span>`).join("")}</div>`;
  }

  $("twin-body").addEventListener("click", (ev) => {
    const t = ev.target.closest("[data-ue],[data-cell]");
    if (t && t.dataset.ue) select("ue", t.dataset.ue);
    else if (t && t.dataset.cell) select("cell", Number(t.dataset.cell));
  });

  // ------------------------------------------------------------------------------ feed
  function compact(d) {
    if (d.seq !== undefined) return d;
    const latency = d.source_emitted_ns > 0 ? (d.decided_ns - d.source_emitted_ns) / 1e6 : null;
    return { id: d.decision_id, tier: d.tier, kind: d.kind, ue: d.ue_id, cell: d.cell_id, target: d.target,
             model: d.model_name, version: d.model_version, latency_ms: latency, decided_ms: Math.floor(d.decided_ns / 1e6), site: d.twin_site || "edge" };
  }

  const filters = () => ({ tier: $("f-tier").value, kind: $("f-kind").value, ue: $("f-ue").value.trim() });
  const matches = (d, f) => (!f.tier || d.tier === f.tier) && (!f.kind || d.kind === f.kind) && (!f.ue || (d.ue || "").includes(f.ue));
  let renderedTop = null;

  function renderFeed() {
    if (!S.feedDirty || S.paused) return;
    S.feedDirty = false;
    const f = filters(), rows = [];
    for (let i = S.decisions.length - 1; i >= 0 && rows.length < FEED_ROWS; i--) if (matches(S.decisions[i], f)) rows.push(S.decisions[i]);
    const seenTop = renderedTop;
    $("feed-body").innerHTML = rows.map((d) => {
      const fresh = seenTop !== null && d.seq > seenTop ? ' class="decision fresh"' : ' class="decision"';
      const subject = d.ue ? `<span class="link" data-ue="${esc(d.ue)}">${esc(d.ue)}</span>` : d.cell !== null && d.cell !== undefined ? `<span class="link" data-cell="${d.cell}">cell ${d.cell}</span>` : "";
      const slow = d.latency_ms !== null && d.latency_ms > 50 ? " slow" : "";
      return `<tr${fresh} data-tier="${d.tier}"><td title="${clock(d.decided_ms)}">${clock(d.decided_ms).slice(0, 8)}</td><td><span class="tier ${d.tier}" title="twin ran on: ${esc(d.site || "edge")}">${d.tier}${d.site && d.site !== d.tier ? "@" + esc(d.site) : ""}</span></td><td>${esc(d.kind)}</td><td>${subject}</td><td title="${esc(d.target)}">${esc(d.target)}</td><td title="${esc(d.model)}">${esc(d.model)}@${d.version}</td><td class="num${slow}">${fmt(d.latency_ms, 2)}</td></tr>`;
    }).join("");
    renderedTop = rows.length ? Math.max(renderedTop ?? 0, rows[0].seq ?? 0) : renderedTop;
    const total = S.frame ? S.frame.decisions_total : 0;
    $("feed-count").textContent = `${rows.length} shown · ${total.toLocaleString()} seen by the API`;
  }

  $("feed-body").addEventListener("click", (ev) => {
    const t = ev.target.closest("[data-ue],[data-cell]");
    if (t && t.dataset.ue) select("ue", t.dataset.ue);
    else if (t && t.dataset.cell) select("cell", Number(t.dataset.cell));
  });

  async function backfill() {
    // the stream carries at most a sample of a busy second: fetch what the API holds for this filter
    const f = filters(), q = new URLSearchParams({ limit: "500" });
    if (f.tier) q.set("tier", f.tier);
    if (f.kind) q.set("kind", f.kind);
    if (f.ue && S.ueIndex.has(f.ue)) q.set("ue", f.ue);
    try {
      const list = await (await fetch(`/decisions?${q}`)).json();
      const have = S.decisionIds;
      const extra = list.map(compact).filter((d) => !have.has(d.id));
      if (extra.length) {
        for (const d of extra) { d.seq = -1; have.add(d.id); }
        S.decisions = extra.concat(S.decisions).sort((a, b) => a.decided_ms - b.decided_ms);
      }
    } catch (e) { /* keep the live feed */ }
    S.feedDirty = true; renderFeed();
  }
  for (const id of ["f-tier", "f-kind"]) $(id).addEventListener("change", backfill);
  let ueTyping = null;
  $("f-ue").addEventListener("input", () => { clearTimeout(ueTyping); ueTyping = setTimeout(backfill, 250); });
  $("f-pause").addEventListener("click", () => {
    S.paused = !S.paused; $("f-pause").textContent = S.paused ? "resume" : "pause"; $("f-pause").classList.toggle("on", S.paused);
    S.feedDirty = true; renderFeed();
  });

  // ------------------------------------------------------------------------------ KPIs
  function renderKpis() {
    const f = S.frame;
    if (!f) return;
    const configured = S.layout && S.layout.source === "scenario" ? S.layout.cells.length : Math.max(S.cellGeom.size, S.cells.size);
    $("kpi-ues").textContent = f.ue_count.toLocaleString();
    $("kpi-xr").textContent = f.xr_count.toLocaleString();
    $("cell-count").textContent = configured;
    $("kpi-sites").textContent = S.layout && S.layout.source === "scenario" ? S.layout.sites.length : S.edges.size;
    $("kpi-dps").textContent = fmt(f.stats.decisions_per_s, 0);
    $("kpi-p95").textContent = TIERS.map((t) => { const v = f.stats.latency_ms[t].p95; return v === null ? "–" : fmt(v, v < 10 ? 1 : 0); }).join(" · ");
    $("kpi-miss").textContent = f.stats.miss_rate === null ? "–" : `${fmt(f.stats.miss_rate * 100, 1)} %`;
    // the live version per tier: the one that made the newest decision there (docs/twins/model-lifecycle.md)
    $("kpi-models").textContent = (f.models || []).filter((m) => m.model === "demand-latency" || m.tier === "edge")
      .map((m) => `${m.tier} ${m.model} v${m.version}`).join(" · ") || "–";
    // the honesty meter: per tier, the rolling MAE of the latency forecasts beside the physics baseline's
    $("kpi-fidelity").textContent = (f.fidelity || []).map((r) => `${r.tier} ${fmt(r.model_ms, 1)} / ${fmt(r.baseline_ms, 1)}`)
      .join(" · ") || "–";
    $("kpi-sinr").textContent = (f.sinr_fidelity || []).map((r) => `${r.target} ${fmt(r.model_db, 2)} / ${fmt(r.baseline_db, 2)}`)
      .join(" · ") || "–";
    if (S.connected && Date.now() - S.lastFrameAt > 3 * PERIOD_MS + 1000) $("conn-text").textContent = "stalled";
    else if (S.connected) $("conn-text").textContent = "live";
  }

  // ------------------------------------------------------------------------------ charts
  let chartsDirty = true;

  function lineChart(canvas, series, opts) {
    const ctx = canvas.getContext("2d");
    const { w, h } = resizeCanvas(canvas, ctx);
    ctx.clearRect(0, 0, w, h);
    const padL = 40, padR = 6, padT = 16, padB = 14;
    // the window grows with the history (30 s at first, then up to HISTORY_MS) so a new page is not a sliver
    const now = Date.now();
    let first = now;
    for (const s of series) if (s.points.length) first = Math.min(first, s.points[0][0]);
    const span = Math.max(30_000, Math.min(HISTORY_MS, now - first)), t0 = now - span;
    let ymax = opts.minMax || 1, ymin = Infinity;
    for (const s of series) for (const [t, v] of s.points) if (t >= t0 && v !== null && v !== undefined) { ymax = Math.max(ymax, v); if (v > 0) ymin = Math.min(ymin, v); }
    const X = (t) => padL + (t - t0) / span * (w - padL - padR);
    let Y, ticks;
    if (opts.log) {
      // decades from below the smallest to above the largest value: local (~1 ms) and cloud (~100 ms) both readable
      const lo = Math.floor(Math.log10(Math.min(ymin === Infinity ? 1 : ymin, ymax))), hi = Math.max(lo + 1, Math.ceil(Math.log10(ymax)));
      Y = (v) => h - padB - (Math.log10(Math.max(v, Math.pow(10, lo))) - lo) / (hi - lo) * (h - padT - padB);
      ticks = []; for (let e = lo; e <= hi; e++) ticks.push(Math.pow(10, e));
    } else {
      if (opts.maxMax) ymax = Math.min(ymax, opts.maxMax);
      const step = niceCeil(ymax * 1.05 / 4);
      ymax = step * Math.ceil(ymax * 1.05 / step);
      Y = (v) => h - padB - v / ymax * (h - padT - padB);
      ticks = []; for (let v = 0; v <= ymax + step / 2; v += step) ticks.push(v);
    }
    ctx.font = "10px system-ui, sans-serif"; ctx.textBaseline = "middle";
    for (const v of ticks) {
      const y = Y(v);
      ctx.strokeStyle = "rgba(148,163,184,0.12)"; ctx.beginPath(); ctx.moveTo(padL, y); ctx.lineTo(w - padR, y); ctx.stroke();
      ctx.fillStyle = "#8394b3"; ctx.textAlign = "right"; ctx.fillText(opts.fmt(v), padL - 4, y);
    }
    ctx.textAlign = "center"; ctx.textBaseline = "alphabetic";
    const tick = ([5, 10, 15, 30, 60, 120].find((step) => step * 1000 >= span / 4) || 120) * 1000;
    for (let back = 0; back <= span; back += tick) {
      const label = back === 0 ? "now" : back % 60000 === 0 ? `-${back / 60000}m` : `-${Math.round(back / 1000)}s`;
      ctx.fillText(label, Math.max(padL + 8, Math.min(w - padR - 10, X(now - back))), h - 2);
    }
    let any = false;
    for (const s of series) {
      ctx.strokeStyle = s.colour; ctx.lineWidth = s.width || 1.6; ctx.setLineDash(s.dash || []);
      ctx.beginPath(); let pen = false;
      for (const [t, v] of s.points) {
        if (t < t0 || v === null || v === undefined) { pen = false; continue; }
        if (pen) ctx.lineTo(X(t), Y(v)); else { ctx.moveTo(X(t), Y(v)); pen = true; }
        any = true;
      }
      ctx.stroke();
    }
    ctx.setLineDash([]);
    // legend, one entry per distinct name
    let lx = padL + 2;
    ctx.textAlign = "left"; ctx.textBaseline = "middle";
    for (const s of series.filter((s) => !s.noLegend)) {
      const label = s.name, tw = ctx.measureText(label).width;
      if (lx + tw + 18 > w) break;
      ctx.fillStyle = s.colour; ctx.fillRect(lx, 5, 9, 3); ctx.fillStyle = "#cbd5e1"; ctx.fillText(label, lx + 12, 7);
      lx += tw + 22;
    }
    if (!any) { ctx.fillStyle = "#64748b"; ctx.textAlign = "center"; ctx.fillText(opts.empty || "waiting for data…", (w + padL) / 2, h / 2); }
  }

  function drawCharts() {
    const pts = S.history.points;
    const lat = [];
    for (const tier of TIERS) {
      lat.push({ name: tier, colour: TIER_COLOUR[tier], points: pts.map((p) => [p.t_ms, p.latency_ms[tier] ? p.latency_ms[tier].p50 : null]) });
      lat.push({ name: `${tier} p99`, noLegend: true, colour: TIER_COLOUR[tier], dash: [4, 3], width: 1.1, points: pts.map((p) => [p.t_ms, p.latency_ms[tier] ? p.latency_ms[tier].p99 : null]) });
    }
    lineChart($("chart-latency"), lat, { log: true, fmt: (v) => v < 1 ? String(v) : fmt(v, 0), empty: "no decisions yet" });

    const miss = [{ name: "all", colour: "#f87171", width: 2, points: pts.map((p) => [p.t_ms, p.miss_rate === null ? null : p.miss_rate * 100]) }];
    for (const where of ["local", "edge", "cloud"]) {
      if (pts.some((p) => p.miss_by && p.miss_by[where] !== undefined))
        miss.push({ name: where, colour: PLACEMENT_COLOUR[where], width: 1, dash: [3, 2], points: pts.map((p) => [p.t_ms, p.miss_by && p.miss_by[where] !== undefined ? p.miss_by[where] * 100 : null]) });
    }
    lineChart($("chart-miss"), miss, { fmt: (v) => `${fmt(v, 0)}%`, minMax: 5, maxMax: 100, empty: "no demand outcomes yet" });

    const topics = new Map();
    for (const p of pts) for (const [topic, r] of Object.entries(p.records_per_s || {})) topics.set(topic, Math.max(topics.get(topic) || 0, r));
    const top = [...topics.entries()].sort((a, b) => b[1] - a[1]).slice(0, TOPIC_COLOURS.length).map(([t]) => t).sort();
    lineChart($("chart-rates"), top.map((topic, k) => ({ name: short(topic), colour: TOPIC_COLOURS[k], points: pts.map((p) => [p.t_ms, (p.records_per_s || {})[topic] ?? null]) })),
      { log: true, fmt: (v) => v >= 1000 ? `${fmt(v / 1000, 0)}k` : v < 1 ? String(v) : fmt(v, 0), empty: "no records yet" });

    const groups = new Set(); for (const p of S.history.lag) for (const g of Object.keys(p.groups)) groups.add(g);
    lineChart($("chart-lag"), [...groups].sort().map((g, k) => ({ name: g.replace(/^tiertwin-/, ""), colour: TOPIC_COLOURS[k], points: S.history.lag.map((p) => [p.t_ms, p.groups[g] ?? null]) })),
      { fmt: (v) => v >= 1000 ? `${fmt(v / 1000, 1)}k` : fmt(v, 0), empty: "no consumer groups" });

    const last = pts[pts.length - 1];
    if (last) {
      $("now-latency").textContent = TIERS.map((t) => { const l = last.latency_ms[t]; return l && l.n ? `${t} ${fmt(l.p50, 1)}/${fmt(l.p95, 1)}/${fmt(l.p99, 1)}` : `${t} –`; }).join(" · ") + "  (p50/p95/p99)";
      $("now-miss").textContent = last.miss_rate === null ? "no demand outcomes in the last 10 s" : `${fmt(last.miss_rate * 100, 2)} % of ${S.stats.outcomes_judged} demands in the last 10 s`;
      const rates = Object.entries(last.records_per_s || {}).filter(([, r]) => r > 0).sort((a, b) => b[1] - a[1]);
      $("now-rates").textContent = rates.length ? rates.slice(0, 3).map(([t, r]) => `${short(t)} ${fmt(r, 0)}/s`).join(" · ") : "idle";
    }
    if (S.lag) $("now-lag").textContent = S.lag.groups.map((g) => `${g.group.replace(/^tiertwin-/, "")} ${g.lag === null ? "?" : g.lag.toLocaleString()}${g.active ? "" : " (no commits)"}`).join(" · ");
  }

  async function pollLag() {
    try {
      const lag = await (await fetch("/metrics/lag")).json();
      S.lag = lag;
      const groups = {}; for (const g of lag.groups) if (g.lag !== null) groups[g.group] = g.lag;
      S.history.lag.push({ t_ms: lag.t_ms, groups }); trim(S.history.lag);
      chartsDirty = true;
    } catch (e) { /* next time */ }
  }

  async function loadHistory() {
    try {
      const hist = await (await fetch("/stats/history")).json();
      S.history.points = hist.map((p) => ({ t_ms: p.t_ms, latency_ms: p.latency_ms, miss_rate: p.miss_rate, miss_by: p.miss_rate_by_placement, records_per_s: p.records_per_s })).concat(S.history.points);
      chartsDirty = true;
    } catch (e) { /* charts start empty */ }
  }

  // ------------------------------------------------------------------------------ loops
  let lastDraw = 0, lastCharts = 0;
  function tick(now) {
    // glide the dots between frames while a draw is cheap; otherwise draw once per frame or interaction
    S.glide = S.perf.drawMs === null || S.perf.drawMs < 20;
    const wanted = S.glide ? now - (S.cur ? S.cur.at : 0) < PERIOD_MS * 1.5 || S.needsDraw : S.needsDraw;
    if (wanted && now - lastDraw >= 30) {
      S.needsDraw = false;
      const t0 = performance.now();
      drawMap(now);
      S.perf.drawMs = ewma(S.perf.drawMs, performance.now() - t0); S.perf.draws++;
      lastDraw = now;
    }
    if (chartsDirty && now - lastCharts > 1000) { drawCharts(); chartsDirty = false; lastCharts = now; }
    requestAnimationFrame(tick);
  }

  window.addEventListener("resize", () => { chartsDirty = true; S.needsDraw = true; });

  // for tests and the console: where a UE is drawn (CSS pixels in the map canvas), what was drawn
  window.tiertwinView = {
    state: S,
    uePoint(id) { const i = S.ueIndex.get(id); return i === undefined || i >= S.screen.x.length ? null : { x: S.screen.x[i], y: S.screen.y[i] }; },
    select,
  };

  (async () => {
    await loadLayout();
    if (!S.layout || S.layout.source !== "scenario") setInterval(loadLayout, 3000);
    await loadHistory();
    connect();
    setInterval(() => { renderFeed(); renderKpis(); }, DOM_EVERY_MS);
    setInterval(() => { chartsDirty = true; }, 1000);
    pollLag(); setInterval(pollLag, 2000);
    requestAnimationFrame(tick);
  })();
})();
