"""Cloud twin end to end on Prism: tier topics in, snapshots and a better model out, a local agent hot-swaps it.

One streaming job (``tiertwin run cloud`` in its own process, on fresh topics), so Prism
starts once; the job is stopped with SIGTERM and the test checks no Prism process is left.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import yaml

from tiertwin.connectors.kafka import KafkaSink
from tiertwin.connectors.kafka import read_topic
from tiertwin.jobs.bench.cloud import STREAMS, produce, tier_traffic
from tiertwin.pipelines.learners import DEMAND_LATENCY
from tiertwin.pipelines.local_twin import LocalAgentConfig, LocalTwinAgent
from tiertwin.pipelines.models import publish_command
from tiertwin.pipelines import parquet_log
from tiertwin.pipelines.parquet_log import event_time_ms
from tiertwin.pipelines.pretrain import SyntheticFleet, load_pretrained

from tests.cloud_support import alive, descendants

pytestmark = pytest.mark.broker

WINDOW_MS = 2_000
CELL = {"LocalSummary": "serving_cell", "EdgeState": "cell_id", "Decision": "cell_id", "Outcome": "cell_id"}
COUNT = {"LocalSummary": "summaries", "EdgeState": "edge_states", "Decision": "decisions", "Outcome": "outcomes"}


def _produce_live(settings, topics: dict, seconds: float, rate: float) -> list[tuple[str, dict]]:
    """Tier traffic with event time = now, paced in real time (the job reads it as a stream)."""
    start = (int(time.time() * 1000) // WINDOW_MS + 1) * WINDOW_MS
    records = list(tier_traffic(start, int(seconds * rate), rate, cells=4, ues=16, seed=11))
    with KafkaSink(settings) as sink:
        for i in range(0, len(records), 20):
            chunk = records[i:i + 20]
            wait = event_time_ms(*chunk[-1]) / 1000 - time.time()
            if wait > 0:
                time.sleep(wait)
            produce(sink, chunk, topics)
        sink.send_raw(topics["Outcome"], b"\x00not avro", key="bad")
    return records


def test_prism_fuses_tier_topics_into_snapshots_and_pushes_a_better_model_to_a_local_agent(
        new_topic, group_id, settings, tmp_path):
    tiers = {schema: new_topic(2, prefix=f"test.cloud.{schema.lower()}") for schema in STREAMS}
    snapshots, dead, models = new_topic(2), new_topic(1), new_topic(1)
    agent_topics = {name: new_topic(1, prefix=f"test.cloud.local.{name}") for name in
                    ("telemetry", "demands", "outcomes", "edge_state", "summaries", "actions", "changelog", "dead")}
    # A fresh install: the models topic is empty; everyone starts from the shipped pre-trained model (version 1),
    # which the trainer registers on the topic, so its first version (2) is judged against the shipped one.
    _, live_version = load_pretrained(DEMAND_LATENCY)

    config = tmp_path / "cloud.yaml"
    config.write_text(yaml.safe_dump({
        "input_topics": list(tiers.values()), "snapshots_topic": snapshots, "dead_letter_topic": dead,
        "models_topic": models, "start": "earliest", "window_s": WINDOW_MS / 1000, "early_firing_s": None,
        "allowed_lateness_s": 20, "train_window_s": WINDOW_MS / 1000, "min_examples": 30,
        "snapshots_dir": str(tmp_path / "snapshots")}))
    log = (tmp_path / "cloud.log").open("w")
    job = subprocess.Popen([sys.executable, "-m", "tiertwin.jobs.cli", "run", "cloud", "--config", str(config),
                            "--runner", "prism"], stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())
    agent = LocalTwinAgent(LocalAgentConfig(
        instance_id=f"test-{group_id}", group_id=group_id, telemetry_topic=agent_topics["telemetry"],
        demands_topic=agent_topics["demands"], outcomes_topic=agent_topics["outcomes"],
        edge_state_topic=agent_topics["edge_state"], summaries_topic=agent_topics["summaries"],
        actions_topic=agent_topics["actions"], models_topic=models, changelog_topic=agent_topics["changelog"],
        dead_letter_topic=agent_topics["dead"], commit_interval_ms=200, session_timeout_ms=6000), settings)
    stop_agent = threading.Event()
    agent_thread = threading.Thread(target=agent.run, args=(stop_agent,), daemon=True)
    agent_thread.start()
    prism_pids: list[int] = []
    try:
        assert agent.started.wait(30)
        deadline = time.monotonic() + 120  # both jobs started (records produced before are read as backlog anyway)
        while "cloud twin running" not in (tmp_path / "cloud.log").read_text() and time.monotonic() < deadline:
            assert job.poll() is None, (tmp_path / "cloud.log").read_text()[-2000:]
            time.sleep(0.5)
        prism_pids = descendants(job.pid)
        # Training runs as its own job in a child process (its own SDK worker), beside the fusing job.
        started = re.search(r"training job pid (\d+)", (tmp_path / "cloud.log").read_text())
        assert started and int(started.group(1)) in prism_pids, (tmp_path / "cloud.log").read_text()[-2000:]
        records = _produce_live(settings, tiers, seconds=6, rate=300)

        expected: Counter = Counter()
        for schema, r in records:
            expected[(r[CELL[schema]], event_time_ms(schema, r) // WINDOW_MS * WINDOW_MS, COUNT[schema])] += 1

        def fused(recs) -> Counter:
            latest: Counter = Counter()  # panes accumulate: the largest count seen is the window's total
            for rec in recs:
                s = rec.value
                for field in COUNT.values():
                    key = (s["cell_id"], s["window_start_ms"], field)
                    latest[key] = max(latest[key], s[field])
            return latest

        got = read_topic(snapshots, settings, timeout_s=120, until=lambda recs: fused(recs) == expected)
        assert fused(got) == expected, f"job log: {(tmp_path / 'cloud.log').read_text()[-2000:]}"
        assert {r.value["pane"] for r in got} <= {"on_time", "late"} and any(r.value["pane"] == "on_time" for r in got)
        windows = {(r.value["cell_id"], r.value["window_start_ms"]) for r in got}
        deadline = time.monotonic() + 20  # the Parquet writer finishes its bundle independently of the Kafka one
        while time.monotonic() < deadline:
            archived = {(s["cell_id"], s["window_start_ms"])
                        for s in parquet_log.read_records(tmp_path / "snapshots", "TwinSnapshot")}
            if archived >= windows:
                break
            time.sleep(0.5)
        assert archived >= windows

        updates = read_topic(models, settings, timeout_s=60,
                             until=lambda recs: any(r.value["model_name"] == DEMAND_LATENCY
                                                    and r.value["version"] > live_version for r in recs))
        newer = [r.value for r in updates if r.value["model_name"] == DEMAND_LATENCY and r.value["version"] > live_version]
        assert newer, "the cloud trainer published no model better than the live one"
        first = min(newer, key=lambda u: u["version"])
        assert first["version"] == live_version + 1 and first["producer"] == "cloud-twin"
        assert first["metrics"]["mae_ms"] < first["metrics"]["live_mae_ms"]
        assert first["metrics"]["live_version"] == live_version, "judged against the shipped model"
        registered = [r.value for r in updates if r.value["model_name"] == DEMAND_LATENCY
                      and r.value["version"] == live_version]
        assert registered and registered[0]["digest"], "the shipped model was registered as version 1"

        # The running local agent shadows the new model (no outcomes reach it here to promote it by itself:
        # tests/test_model_lifecycle.py has that); an operator's signed promote makes it live, and its decisions say so.
        deadline = time.monotonic() + 30
        while agent.latency_slot.version <= live_version and time.monotonic() < deadline:
            shadow = agent.latency_slot.shadow
            if shadow is not None:
                with KafkaSink(settings) as sink:
                    publish_command(sink, "promote", DEMAND_LATENCY, shadow.version, topic=models)
            time.sleep(0.5)
        swapped = agent.latency_slot.version
        assert swapped > live_version
        fleet = SyntheticFleet(n_ues=3, n_cells=2, seed=4)
        demands = [r for tick in range(3) for kind, r in fleet.step(tick * 10) if kind == "demand"]
        with KafkaSink(settings) as sink:
            for d in demands:
                sink.send(agent_topics["demands"], "Demand", d, key=d["ue_id"])
        decisions = read_topic(agent_topics["actions"], settings, expect=len(demands), timeout_s=30)
        assert decisions and {d.value["model_version"] for d in decisions} >= {swapped}
        assert min(d.value["model_version"] for d in decisions) > live_version

        letters = read_topic(dead, settings, expect=1, timeout_s=30)
        assert [(d.value["topic"], d.value["original"]) for d in letters] == [(tiers["Outcome"], b"\x00not avro")]
    finally:
        stop_agent.set()
        agent_thread.join(30)
        prism_pids = prism_pids or descendants(job.pid)
        job.send_signal(signal.SIGTERM)
        try:
            job.wait(60)
        except subprocess.TimeoutExpired:
            job.kill()
        log.close()
        # Some descendants end only once they see the job's process gone (multiprocessing's resource tracker).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(pid) for pid in prism_pids):
            time.sleep(0.2)
        leaked = [pid for pid in prism_pids if alive(pid)]
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
    assert job.returncode == 0, (tmp_path / "cloud.log").read_text()[-2000:]
    # SIGTERM drains the job (the read finishes, the job ends by itself) instead of cancelling bundles mid-flight.
    assert "cloud twin drained" in (tmp_path / "cloud.log").read_text()
    assert prism_pids and not leaked, f"processes left running: {leaked}"
