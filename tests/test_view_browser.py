"""End to end in headless Chromium: the live twin view over a running twin API on the real broker.

A :class:`tests.view_feed.NetworkFeed` publishes a moving network (UE and cell twins,
decisions of all tiers, outcomes) to fresh topics; the API follows them and serves the
page; Selenium drives the Debian ``chromium`` + ``chromium-driver`` packages
(``scripts/setup`` installs them). The page must show the configured cells, receive
decisions in its feed and show a UE's twin when the UE is clicked on the map.
A screenshot is saved to ``test-artifacts/twin_view.png``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.view_feed import NetworkFeed
from tiertwin.jobs.bench.view import BrowserUnavailable, MovingNetwork, browsing, synthetic_view
from tiertwin.jobs.api.twin_api import TwinView, ViewTopics, create_app
from tiertwin.jobs.api.twin_view_routes import layout_from_scenario

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SCENARIO = "dense-urban-xr"
UES = 400


@contextmanager
def _browsing(app):
    """The app served and a headless Chromium on it; the test is skipped where no browser is installed."""
    try:
        with browsing(app) as driver:
            yield driver
    except BrowserUnavailable as exc:
        pytest.skip(str(exc))


def _wait(predicate, timeout_s=20.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# Pick a UE with decisions in the feed, drawn at least 14 px from every other UE so the click
# cannot land on a neighbour.
ISOLATED_UE_JS = """
const v = window.tiertwinView, X = v.state.screen.x, Y = v.state.screen.y, canvas = document.getElementById('map');
const decided = new Set(v.state.decisions.map((d) => d.ue));
for (let i = 0; i < X.length; i++) {
  if (!decided.has(v.state.ueIds[i])) continue;
  if (X[i] < 40 || Y[i] < 90 || X[i] > canvas.clientWidth - 40 || Y[i] > canvas.clientHeight - 70) continue;
  let alone = true;
  for (let j = 0; j < X.length && alone; j++) if (j !== i && Math.hypot(X[i] - X[j], Y[i] - Y[j]) < 14) alone = false;
  if (alone) return {id: v.state.ueIds[i], x: X[i], y: Y[i], w: canvas.clientWidth, h: canvas.clientHeight};
}
return null;
"""


# A point inside some cell's sector, at least 16 px from every UE and away from masts and labels.
EMPTY_CELL_SPOT_JS = """
const v = window.tiertwinView, X = v.state.screen.x, Y = v.state.screen.y;
for (const c of v.state.cellPolys) {
  const [cx, cy] = c.label;
  for (const [vx, vy] of c.poly) for (const f of [0.3, 0.45, 0.6]) {
    const x = cx + (vx - cx) * f, y = cy + (vy - cy) * f;
    let free = Math.hypot(x - cx, y - cy) > 25;
    for (let i = 0; i < X.length && free; i++) if (Math.hypot(X[i] - x, Y[i] - y) < 16) free = false;
    for (const b of v.state.edgeBoxes) if (x > b.x - 10 && x < b.x + b.w + 10 && y > b.y - 20 && y < b.y + b.h + 10) free = false;
    if (free) return {cell: c.id, x, y};
  }
}
return null;
"""


@pytest.mark.broker
def test_live_view_in_headless_chromium(new_topic, settings):
    topics = ViewTopics(summaries=new_topic(1), edge_state=new_topic(1), cell_reports=new_topic(1),
                        snapshots=new_topic(1), outcomes=new_topic(1), decisions=(new_topic(1),),
                        cloud_actions=new_topic(1))
    layout = layout_from_scenario(SCENARIO)
    view = TwinView(topics, settings, from_beginning=True).start()
    feed = NetworkFeed(layout, UES, topics, settings, period_s=0.5)
    try:
        feed.start()
        _wait(lambda: len(view.ues) == UES, 30, "the API to hold every UE twin")
        with _browsing(create_app(view, layout=layout)) as driver:
            base = driver.current_url.rstrip("/")
            from selenium.webdriver.common.action_chains import ActionChains
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import Select

            text = lambda element_id: driver.find_element(By.ID, element_id).text  # noqa: E731
            # the configured cells: in the header and drawn on the map
            _wait(lambda: text("cell-count") == str(len(layout["cells"])), 15, "the cell count")
            assert len(layout["cells"]) == 21
            _wait(lambda: driver.execute_script("return window.tiertwinView.state.drawn.cells") == 21, 10, "21 cells drawn")
            _wait(lambda: driver.execute_script("return window.tiertwinView.state.drawn.ues") == UES, 10, "every UE drawn")
            assert text("kpi-ues") == str(UES)

            # the decision feed fills from the stream, every tier shows up, and the tier filter filters
            # (the feed is re-rendered twice a second: read it in one script call, not element by element)
            feed_tiers = lambda: driver.execute_script(  # noqa: E731
                "return [...document.querySelectorAll('#feed-body tr.decision')].map(r => r.dataset.tier)")
            _wait(lambda: len(feed_tiers()) >= 10, 15, "decisions in the feed")
            assert set(feed_tiers()) <= {"local", "edge", "cloud"} and "local" in feed_tiers()
            Select(driver.find_element(By.ID, "f-tier")).select_by_visible_text("edge")
            _wait(lambda: (tiers := feed_tiers()) and set(tiers) == {"edge"}, 10, "only edge decisions")
            Select(driver.find_element(By.ID, "f-tier")).select_by_visible_text("all tiers")

            # click a UE on the map: its twin (as the API holds it) appears in the panel
            # (dots move while the test aims: a click that lands on a neighbour is aimed again)
            canvas = driver.find_element(By.ID, "map")
            shown = lambda field: driver.execute_script(  # noqa: E731
                f"const e = document.querySelector('#twin-title [data-field={field}]'); return e && e.textContent")

            def click_at(x: float, y: float) -> None:
                size = canvas.size
                ActionChains(driver).move_to_element_with_offset(
                    canvas, int(x - size["width"] / 2), int(y - size["height"] / 2)).click().perform()

            def click_a_ue():
                target = _wait(lambda: driver.execute_script(ISOLATED_UE_JS), 10, "an isolated UE")
                point = driver.execute_script("return window.tiertwinView.uePoint(arguments[0])", target["id"])
                click_at(point["x"], point["y"])
                try:
                    _wait(lambda: shown("ue_id") == target["id"], 3)
                    return target
                except AssertionError:
                    return None

            target = _wait(click_a_ue, 20, "a click on a UE to show its twin")

            def panel_matches_api():
                serving = driver.execute_script(  # one call: the panel is re-rendered every 1.5 s
                    "const e = document.querySelector('#twin-body [data-field=serving_cell] .val'); return e && e.textContent")
                return serving == str(httpx.get(f"{base}/ues/{target['id']}").json()["twin"]["serving_cell"])

            _wait(panel_matches_api, 10, "the panel to show the API's serving cell")
            assert driver.find_element(By.ID, "twin-panel").get_attribute("data-id") == target["id"]
            api_decisions = httpx.get(f"{base}/ues/{target['id']}").json()["recent_decisions"]
            assert api_decisions, "the UE was picked for having decisions"
            assert driver.execute_script("return document.querySelectorAll('#twin-body table tr').length"), \
                "its recent decisions are listed"

            # the UE filter narrows the feed to that UE (back-filled from /decisions)
            driver.find_element(By.ID, "f-ue").send_keys(target["id"])
            feed_subjects = lambda: driver.execute_script(  # noqa: E731
                "return [...document.querySelectorAll('#feed-body tr.decision [data-ue]')].map(e => e.dataset.ue)")
            _wait(lambda: (ues := feed_subjects()) and set(ues) == {target["id"]}, 10, "only that UE's decisions")
            driver.find_element(By.ID, "f-ue").clear()

            # click a cell where no UE is drawn: the cell twin with its served UEs appears
            def click_a_cell():
                spot = _wait(lambda: driver.execute_script(EMPTY_CELL_SPOT_JS), 10, "a cell area without UEs")
                click_at(spot["x"], spot["y"])
                try:
                    _wait(lambda: shown("cell_id") == str(spot["cell"]), 3)
                    return spot
                except AssertionError:
                    return None

            _wait(click_a_cell, 20, "a click on a cell to show its twin")
            _wait(lambda: driver.execute_script("return document.querySelectorAll('#twin-body .chip').length"), 10,
                  "the cell's UEs")

            # charts get data (latency per tier, records/s) before the screenshot
            _wait(lambda: driver.execute_script("return window.tiertwinView.state.history.points.length") >= 3, 15,
                  "chart history")
            time.sleep(1.5)
            ARTIFACTS.mkdir(exist_ok=True)
            assert driver.save_screenshot(str(ARTIFACTS / "twin_view.png"))
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
    finally:
        feed.stop()
        view.stop()


def test_page_keeps_drawing_and_answering_with_thousands_of_ues():
    """3 000 moving UEs (applied in-process, no broker): every one drawn, frames keep coming,
    the render loop keeps running and a click still selects a UE (not a speed test: see bench view)."""
    ues = 3000
    layout = layout_from_scenario(SCENARIO)
    view = synthetic_view(ues, layout, decisions=500)
    network = MovingNetwork(view, layout, ues).start()
    try:
        with _browsing(create_app(view, layout=layout)) as driver:
            perf = lambda: driver.execute_script("return window.tiertwinView.state.perf")  # noqa: E731
            _wait(lambda: driver.execute_script("return window.tiertwinView.state.drawn.ues") == ues, 20, "3000 UEs drawn")
            before = perf()
            _wait(lambda: perf()["frames"] >= before["frames"] + 3 and perf()["draws"] >= before["draws"] + 3, 15,
                  "more frames and draws")
            ue = "ue-01234"
            driver.execute_script("window.tiertwinView.select('ue', arguments[0])", ue)
            _wait(lambda: driver.execute_script(
                "const e = document.querySelector('#twin-title [data-field=ue_id]'); return e && e.textContent") == ue,
                10, "the selected twin")
            assert driver.find_element("id", "kpi-ues").text == "3,000"
    finally:
        network.stop()
