"""The cloud job resumes (#17): SIGKILLed in the middle of a window (Prism and all), then restarted, it
emits every window's snapshot complete; a window emitted twice is identical; windows emitted well before
the kill are not emitted again (it resumed from its committed offsets instead of starting over). With 1 or 2 SDK
workers, on batches or records, folding in the read or not (the fold's lost records were late before the kill:
tests/test_fold_watermarks.py)."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

import pytest
import yaml

from tiertwin.connectors.beam_resume import resume_boundary
from tiertwin.connectors.kafka import KafkaSink, read_topic
from tiertwin.jobs.bench.cloud import STREAMS, produce, tier_traffic
from tiertwin.pipelines.parquet_log import event_time_ms
from tests.cloud_support import kill_job, start_job, stop_job

pytestmark = pytest.mark.broker

WINDOW_MS = 2_000
CELL = {"LocalSummary": "serving_cell", "EdgeState": "cell_id", "Decision": "cell_id", "Outcome": "cell_id"}
COUNT = {"LocalSummary": "summaries", "EdgeState": "edge_states", "Decision": "decisions", "Outcome": "outcomes"}


class Traffic(threading.Thread):
    """Tier records with event time = now, produced paced in real time for ``seconds``."""

    def __init__(self, settings, topics: dict, seconds: float, rate: float):
        super().__init__(daemon=True)
        start = (int(time.time() * 1000) // WINDOW_MS + 1) * WINDOW_MS
        self.records = list(tier_traffic(start, int(seconds * rate), rate, cells=3, ues=12, seed=17))
        self.settings, self.topics = settings, topics

    def run(self):
        with KafkaSink(self.settings) as sink:
            for i in range(0, len(self.records), 20):
                chunk = self.records[i:i + 20]
                wait = event_time_ms(*chunk[-1]) / 1000 - time.time()
                if wait > 0:
                    time.sleep(wait)
                produce(sink, chunk, self.topics)

    def expected(self) -> dict:
        counts: dict = defaultdict(Counter)
        for schema, r in self.records:
            counts[(r[CELL[schema]], event_time_ms(schema, r) // WINDOW_MS * WINDOW_MS)][COUNT[schema]] += 1
        return {window: {field: n.get(field, 0) for field in COUNT.values()} for window, n in counts.items()}


def _counts(snapshot: dict) -> dict:
    return {field: snapshot[field] for field in COUNT.values()}


def _comparable(snapshot: dict) -> dict:
    return {k: v for k, v in snapshot.items() if k != "emitted_ns"}  # the only emission-time field


@pytest.mark.parametrize("workers, batches, fold", [(1, True, False), (2, True, False), (1, False, False),
                                                   (1, True, True), (2, True, True)],
                         ids=["1-worker", "2-workers", "1-worker-records", "1-worker-fold", "2-workers-fold"])
def test_a_cloud_job_killed_mid_window_resumes_and_emits_every_window_once_complete(
        new_topic, group_id, settings, tmp_path, workers, batches, fold):
    tiers = {schema: new_topic(2, prefix=f"test.resume.{schema.lower()}") for schema in STREAMS}
    snapshots = new_topic(2)
    config = tmp_path / "cloud.yaml"
    config.write_text(yaml.safe_dump({
        "input_topics": list(tiers.values()), "snapshots_topic": snapshots, "dead_letter_topic": None,
        "models_topic": None, "train": False, "start": "earliest", "window_s": WINDOW_MS / 1000,
        "early_firing_s": None, "allowed_lateness_s": 0, "resume_margin_s": 2, "consumer_group": group_id,
        "sdk_workers": workers, "batches": batches, "fold_in_read": fold,
        # Records are read live, at most a few hundred ms after their event time; but a producer or reader starved
        # of CPU for 0.5 s (the default) would let a partition go idle and its next records be late (and dropped:
        # no lateness here).
        "idle_after_s": 2}))
    log = tmp_path / "cloud.log"
    traffic = Traffic(settings, tiers, seconds=20, rate=200)
    expected = traffic.expected()
    traffic.start()  # before the job: it starts on a backlog, not on idle partitions whose watermark runs ahead
    job = start_job(config, log)
    try:
        # Run until a few windows are out and the job has committed a resume point, then SIGKILL it in the
        # middle of a window.
        first = read_topic(snapshots, settings, timeout_s=60, until=lambda recs: len(
            {r.value["window_start_ms"] for r in recs}) >= 4)
        assert len({r.value["window_start_ms"] for r in first}) >= 4, log.read_text()[-3000:]
        deadline = time.monotonic() + 20
        while resume_boundary(settings, group_id, list(tiers.values())) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        while abs(time.time() * 1000 % WINDOW_MS - WINDOW_MS / 2) > 150:
            time.sleep(0.02)
        kill_job(job)
        killed_at_ms = int(time.time() * 1000)
        before = read_topic(snapshots, settings, timeout_s=10)
        boundary = resume_boundary(settings, group_id, list(tiers.values()))
        assert boundary is not None, f"nothing was committed\n{log.read_text()[-3000:]}"

        job = start_job(config, log)  # the rest is produced while it is down and after it restarted
        traffic.join(60)
        got = read_topic(snapshots, settings, timeout_s=90, until=lambda recs: {
            (r.value["cell_id"], r.value["window_start_ms"]) for r in recs} >= set(expected))
    finally:
        stop_job(job)

    emitted: dict = defaultdict(list)
    for r in got:
        emitted[(r.value["cell_id"], r.value["window_start_ms"])].append(r.value)
    missing = sorted(set(expected) - set(emitted))
    assert not missing, f"windows with no snapshot: {missing}\n{log.read_text()[-3000:]}"
    emitted_ns_before = {r.value["emitted_ns"] for r in before}
    for window, snaps in emitted.items():
        for s in snaps:  # on-time panes only (no early firing, no lateness): each is the whole window
            assert _counts(s) == expected[window], (
                window, "emitted before the kill" if s["emitted_ns"] in emitted_ns_before else "after the restart",
                boundary, killed_at_ms, s)
        assert all(_comparable(s) == _comparable(snaps[0]) for s in snaps), (window, snaps)
    # It resumed rather than starting over: the windows emitted before the kill that start before the resume
    # boundary are not emitted again, and those are most of them.
    twice = {w for w, snaps in emitted.items() if len(snaps) > 1}
    emitted_before = {(r.value["cell_id"], r.value["window_start_ms"]) for r in before}
    assert not {w for w in twice if w[1] < boundary}, (boundary, sorted(twice))
    assert len(emitted_before - twice) >= len(emitted_before) / 2, (boundary, killed_at_ms, sorted(twice))
