"""The cloud job with several SDK worker processes (#17): on the same input, two workers (each reading and
aggregating half the partitions, in a process of its own) give the same snapshots as one."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
import yaml

from tiertwin.connectors.kafka import KafkaSink, read_topic
from tiertwin.jobs.bench.cloud import STREAMS, produce, tier_traffic
from tiertwin.pipelines.parquet_log import event_time_ms
from tests.cloud_support import sdk_worker_processes, start_job, stop_job

pytestmark = pytest.mark.broker

WINDOW_MS = 2_000
T0 = 1_767_225_600_000
CELL = {"LocalSummary": "serving_cell", "EdgeState": "cell_id", "Decision": "cell_id", "Outcome": "cell_id"}
COUNT = {"LocalSummary": "summaries", "EdgeState": "edge_states", "Decision": "decisions", "Outcome": "outcomes"}


def _run(tiers: dict, snapshots: str, workers: int, expected: set, settings, tmp_path) -> tuple[list, int]:
    config = tmp_path / f"cloud-{workers}.yaml"
    config.write_text(yaml.safe_dump({
        "input_topics": list(tiers.values()), "snapshots_topic": snapshots, "dead_letter_topic": None,
        "models_topic": None, "train": False, "start": "earliest", "window_s": WINDOW_MS / 1000,
        "early_firing_s": None, "allowed_lateness_s": 0, "consumer_group": None, "sdk_workers": workers}))
    log = tmp_path / f"cloud-{workers}.log"
    job = start_job(config, log)
    try:
        got = read_topic(snapshots, settings, timeout_s=90, until=lambda recs: {
            (r.value["cell_id"], r.value["window_start_ms"]) for r in recs} >= expected)
        processes = len(sdk_worker_processes(job))
    finally:
        stop_job(job)
    assert {(r.value["cell_id"], r.value["window_start_ms"]) for r in got} >= expected, log.read_text()[-3000:]
    return [r.value for r in got], processes


def test_two_sdk_workers_give_the_snapshots_one_gives(new_topic, settings, tmp_path):
    tiers = {schema: new_topic(2, prefix=f"test.workers.{schema.lower()}") for schema in STREAMS}
    records = list(tier_traffic(T0, 6_000, rate_per_s=500, cells=3, ues=12, seed=5))  # 12 s: 6 windows a cell
    with KafkaSink(settings) as sink:
        produce(sink, records, tiers)
    counts: dict = defaultdict(Counter)
    for schema, r in records:
        counts[(r[CELL[schema]], event_time_ms(schema, r) // WINDOW_MS * WINDOW_MS)][COUNT[schema]] += 1

    one, one_processes = _run(tiers, new_topic(2), 1, set(counts), settings, tmp_path)
    two, two_processes = _run(tiers, new_topic(2), 2, set(counts), settings, tmp_path)
    assert (one_processes, two_processes) == (0, 2), "one worker runs in the job's process (LOOPBACK), two in two"

    def by_window(snaps: list) -> dict:
        out = {}
        for s in snaps:  # on-time panes only (no early firing, no lateness): one per window
            key = (s["cell_id"], s["window_start_ms"])
            assert key not in out, f"{key} emitted twice"
            out[key] = {k: v for k, v in s.items() if k != "emitted_ns"}
        return out

    assert by_window(one) == by_window(two)
    assert {k: {f: s[f] for f in COUNT.values()} for k, s in by_window(two).items()} == \
        {k: {f: c.get(f, 0) for f in COUNT.values()} for k, c in counts.items()}


def test_each_shard_of_the_read_runs_in_an_environment_of_its_own_and_the_windows_in_the_default_one():
    import apache_beam as beam

    from tiertwin.pipelines.cloud.config import CloudTwinConfig
    from tiertwin.pipelines.cloud.job import build_streaming
    from tiertwin.settings import Settings

    config = CloudTwinConfig(sdk_workers=3, consumer_group=None, train_in_own_process=False)  # trains in the job
    pipeline = beam.Pipeline()
    build_streaming(pipeline, config, Settings())
    proto = pipeline.to_runner_api()
    env_of = {t.unique_name: t.environment_id for t in proto.components.transforms.values() if t.environment_id}

    def envs(prefix: str) -> set:
        return {env for name, env in env_of.items() if name.startswith(prefix)}

    reads = [envs(f"Worker {i}/Read/") for i in range(3)]
    assert all(len(e) == 1 for e in reads) and len(set.union(*reads)) == 3
    default = reads[0]  # shard 0 stays in the default environment, with the windows, training and sinks
    assert envs("Fuse/") == default and envs("Train/") == default and envs("Worker 1/Partials/") == reads[1]
