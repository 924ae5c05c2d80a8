"""``tiertwin bench view``: the live twin view with thousands of UEs.

Measures, in one run, what a state frame costs the server (build + JSON) beside the least
any frame must do (JSON of the bare position arrays), and what the page costs headless
Chromium (parse + merge a frame, draw the map) with N UEs beside the same page with a
small network. The UEs move in-process (``TwinView.apply``), so Kafka is not measured here.

>>> view = synthetic_view(50, layout_from_scenario("dense-urban-xr"), decisions=10)
>>> len(view.ues), len(view.cells), len(view.decisions)
(50, 21, 10)
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from tiertwin.errors import TiertwinError
from tiertwin.jobs.bench import write_results
from tiertwin.jobs.cli.common import one_line_errors
from tiertwin.jobs.api.twin_api import TwinView, create_app, served
from tiertwin.jobs.api.twin_view_routes import StateFeed, layout_from_scenario
from tiertwin.schemas.examples import example

CHROMIUM = Path("/usr/bin/chromium")


class BrowserUnavailable(TiertwinError):
    """Headless Chromium or its WebDriver is not installed (callers skip the browser part)."""


def headless_chromium(width: int = 1600, height: int = 1000):
    """A Selenium driver for Debian's ``chromium`` + ``chromium-driver`` (no browser download)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise BrowserUnavailable("selenium is not installed (pip install -e '.[test]')") from None
    driver_path = shutil.which("chromedriver")
    if not CHROMIUM.exists() or driver_path is None:
        raise BrowserUnavailable("headless Chromium is not installed: apt-get install -y chromium chromium-driver "
                                 "(scripts/setup does it when run as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


@contextmanager
def browsing(app, width: int = 1600, height: int = 1000):
    """``app`` served on a free local port and a headless Chromium driver pointed at it; both stop on exit."""
    with served(app) as server:
        driver = headless_chromium(width, height)
        try:
            driver.get(f"http://127.0.0.1:{server.config.port}/")
            yield driver
        finally:
            driver.quit()


class MovingNetwork:
    """UE twins walking in the layout's area, applied straight to a TwinView every ``period_s``."""

    def __init__(self, view: TwinView, layout: dict, ues: int, seed: int = 0):
        self.view, self.layout = view, layout
        self.rng = np.random.default_rng(seed)
        radius = layout["area_radius_m"] * 0.9
        self.xy = self.rng.uniform(-radius, radius, (ues, 2)) * 0.75
        self.cells = np.array([[c["x_m"], c["y_m"]] for c in layout["cells"]])
        self.template = example("LocalSummary")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def move(self) -> None:
        self.xy += self.rng.normal(0.0, 2.0, self.xy.shape)
        serving = ((self.xy[:, None, :] - self.cells[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
        for i, (x, y) in enumerate(self.xy.tolist()):
            self.view.apply(self.view.topics.summaries, "tiertwin.LocalSummary",
                            {**self.template, "ue_id": f"ue-{i:05d}", "x_m": x, "y_m": y,
                             "serving_cell": int(serving[i]), "xr_active": i % 2 == 0})

    def start(self, period_s: float = 0.4) -> "MovingNetwork":
        def run():
            while not self._stop.wait(period_s):
                self.move()

        self._thread = threading.Thread(target=run, name="moving-network", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)


def synthetic_view(ues: int, layout: dict, decisions: int = 2000) -> TwinView:
    """A TwinView holding ``ues`` moving UE twins, every cell's state and some decisions (no Kafka)."""
    view = TwinView()
    MovingNetwork(view, layout, ues).move()
    for c in layout["cells"]:
        view.apply(view.topics.edge_state, "tiertwin.EdgeState",
                   example("EdgeState", cell_id=c["cell_id"], site_id=c["site_id"]))
    now = time.time_ns()
    for k in range(decisions):
        view.apply(view.topics.decisions[0], "tiertwin.Decision",
                   example("Decision", decision_id=f"bench-{k}", ue_id=f"ue-{k % max(ues, 1):05d}",
                           decided_ns=now, source_emitted_ns=now - 2_000_000))
    return view


def server_frame_costs(view: TwinView, reps: int = 20) -> dict:
    """ms to rebuild and serialise the shared frame (once per 200 ms, whatever the number of viewers),
    ms per viewer per frame (splicing its new decisions), beside JSON of the bare position arrays."""
    rebuilt = StateFeed(view, min_period_s=0.0)
    cached = StateFeed(view, min_period_s=3600.0)

    def timed(fn) -> tuple[float, int]:
        size = 0
        start = time.perf_counter()
        for _ in range(reps):
            size = len(fn())
        return (time.perf_counter() - start) / reps * 1000, size

    build_ms, full_bytes = timed(lambda: rebuilt.frame_json(None, -1)[0])
    cached.frame_json(None, -1)
    viewer_ms, steady_bytes = timed(lambda: cached.frame_json(view._seq, len(view.ues))[0])
    with view._lock:
        twins = list(view.ues.values())

    def bare() -> str:
        return json.dumps({"x": [t["x_m"] for t in twins], "y": [t["y_m"] for t in twins],
                           "cell": [t["serving_cell"] for t in twins]}, separators=(",", ":"))

    floor_ms, _ = timed(bare)
    return {"build_and_serialise_ms": round(build_ms, 2), "first_frame_kib": round(full_bytes / 1024, 1),
            "per_viewer_frame_ms": round(viewer_ms, 3), "steady_frame_kib": round(steady_bytes / 1024, 1),
            "bare_arrays_json_ms": round(floor_ms, 2), "build_over_bare": round(build_ms / floor_ms, 2)}


def browser_costs(ues: int, layout: dict, seconds: float = 8.0) -> dict:
    """Serve a moving ``ues``-UE network and read the page's own counters over ``seconds``."""
    view = synthetic_view(ues, layout, decisions=200)
    network = MovingNetwork(view, layout, ues, seed=1).start()
    try:
        with browsing(create_app(view, layout=layout)) as driver:
            read = ("return {...window.tiertwinView.state.perf, drawn: window.tiertwinView.state.drawn.ues, "
                    "t: performance.now()}")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and driver.execute_script(read)["drawn"] != ues:
                time.sleep(0.2)
            time.sleep(2.0)  # let the running averages settle
            first = driver.execute_script(read)
            time.sleep(seconds)
            last = driver.execute_script(read)
    finally:
        network.stop()
    elapsed = (last["t"] - first["t"]) / 1000
    return {"ues_drawn": last["drawn"], "frames_per_s": round((last["frames"] - first["frames"]) / elapsed, 2),
            "draws_per_s": round((last["draws"] - first["draws"]) / elapsed, 2),
            "parse_merge_ms": round(last["frameMs"], 2), "map_draw_ms": round(last["drawMs"], 2),
            "frame_kib": round(last["frameBytes"] / 1024, 1)}


def bench_view(ues: int = 5000, baseline_ues: int = 100, scenario: str = "dense-urban-xr",
               seconds: float = 8.0) -> dict:
    layout = layout_from_scenario(scenario)
    results: dict = {"ues": ues, "baseline_ues": baseline_ues, "scenario": scenario,
                     "load_average_1m_at_start": round(os.getloadavg()[0], 2),
                     "server": server_frame_costs(synthetic_view(ues, layout)),
                     "server_baseline": server_frame_costs(synthetic_view(baseline_ues, layout))}
    results["server"]["build_share_of_200ms"] = round(results["server"]["build_and_serialise_ms"] / 200, 3)
    try:
        big = browser_costs(ues, layout, seconds)
        small = browser_costs(baseline_ues, layout, seconds)
    except BrowserUnavailable as exc:
        results["browser"] = {"skipped": str(exc)}
        return results
    results["browser"] = big
    results["browser_baseline"] = small
    results["browser"]["draw_over_baseline"] = round(big["map_draw_ms"] / max(small["map_draw_ms"], 1e-3), 2)
    results["browser"]["draw_share_of_60fps_frame"] = round(big["map_draw_ms"] / (1000 / 60), 2)
    return results


# -- commands (added to the `tiertwin` tree in jobs/cli/main.py) ---------------------------------
bench_commands = typer.Typer()


@bench_commands.command("view")
@one_line_errors
def bench_view_cmd(ues: int = typer.Option(5000, help="UEs on the map."),
                   baseline_ues: int = typer.Option(100, help="The small network measured beside it."),
                   scenario: str = typer.Option("dense-urban-xr", help="Layout (simulator scenario)."),
                   seconds: float = typer.Option(8.0, help="Browser measurement window per run.")):
    """Live view with thousands of UEs: server frame cost and headless-Chromium parse/draw cost."""
    results = bench_view(ues, baseline_ues, scenario, seconds)
    table = Table("part", f"{ues} UEs", f"{baseline_ues} UEs")
    for part in ("server", "browser"):
        big, small = results.get(part, {}), results.get(f"{part}_baseline", {})
        for key, value in big.items():
            table.add_row(f"{part}: {key}", str(value), str(small.get(key, "")))
    Console().print(table)
    print(f"results: {write_results('view', results)}")
