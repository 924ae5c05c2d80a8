"""``tiertwin bench replay``: records/s from a Parquet archive into Kafka, beside Kafka's ProducerPerformance."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from tiertwin.jobs.bench import write_results
from tiertwin.jobs.cli.common import console, one_line_errors


bench_commands = typer.Typer()


def bench_replay(records: int = 100_000, workers: int = 2, repeats: int = 3, settings=None) -> dict:
    """Replay ``records`` archived Telemetry records at max speed, with one producer process and with
    ``workers``, beside Kafka's ProducerPerformance (same broker, same record size and acks), ``repeats``
    times in turn; the ratio is of the medians (single runs on a shared 2-CPU machine vary by 1.5x)."""
    import statistics
    import tempfile
    import time
    import uuid

    from tiertwin.connectors.archive import archive_topics, read_archive, replay, replay_parallel
    from tiertwin.connectors.kafka import KafkaSink, admin_client
    from tiertwin.connectors.kafka_tools import producer_performance
    from tiertwin.schemas import SchemaRegistry
    from tiertwin.schemas.examples import example
    from tiertwin.settings import Settings

    settings = settings or Settings.from_env()
    registry = SchemaRegistry.default()
    source = f"bench.replay.source.{uuid.uuid4().hex[:8]}"
    targets = [f"bench.replay.{kind}{r}.{uuid.uuid4().hex[:8]}" for r in range(repeats) for kind in ("one", "many", "ceiling")]
    admin = admin_client(settings)
    admin.create_topics({n: {"num_partitions": 6, "replication_factor": 1} for n in [source, *targets]}, timeout_ms=30_000)
    one_rps, many_rps, java_rps = [], [], []
    try:
        value = registry.encode("Telemetry", example("Telemetry"))
        with KafkaSink(settings, profile="throughput") as sink:
            for i in range(records):
                sink.send_raw(source, value, key=f"ue-{i % 1000:04d}", timestamp_ms=1_767_225_600_000 + i)
        with tempfile.TemporaryDirectory() as tmp:
            archive_topics([source], Path(tmp), settings)
            log = list(read_archive(Path(tmp), source))
            for r in range(repeats):
                one, many, ceiling = targets[3 * r: 3 * r + 3]
                with KafkaSink(settings, profile="throughput", client_id="bench-replay") as sink:
                    started = time.perf_counter()
                    replay(log, sink, one, speed=None)
                    one_rps.append(records / (time.perf_counter() - started))
                began = [0.0]
                replay_parallel(Path(tmp), [source], many, None, workers, settings,
                                on_start=lambda: began.__setitem__(0, time.perf_counter()))
                many_rps.append(records / (time.perf_counter() - began[0]))
                java_rps.append(producer_performance(ceiling, records, len(value), settings)["records_per_s"])
    finally:
        admin.delete_topics([source, *targets])
        admin.close()
    one, many, java = (statistics.median(v) for v in (one_rps, many_rps, java_rps))
    return {"records": records, "record_bytes": len(value), "acks": "all", "workers": workers, "repeats": repeats,
            "replay_records_per_s": round(many), "replay_one_process_records_per_s": round(one),
            "producer_performance_records_per_s": round(java),
            "ratio_replay_to_producer_performance": round(many / java, 3),
            "ratio_one_process_to_producer_performance": round(one / java, 3),
            "runs": {"replay": [round(v) for v in many_rps], "replay_one_process": [round(v) for v in one_rps],
                     "producer_performance": [round(v) for v in java_rps],
                     "ratio": [round(m / j, 3) for m, j in zip(many_rps, java_rps)]},
            "target_ratio": 0.5, "cpus": os.cpu_count(), "load_average_1m_at_end": os.getloadavg()[0]}


@bench_commands.command("replay")
@one_line_errors
def bench_replay_cmd(records: int = typer.Option(100_000, help="Records to replay."),
                     workers: int = typer.Option(min(4, os.cpu_count() or 1), min=2, max=64,
                                                 help="Producer processes of the parallel replay."),
                     repeats: int = typer.Option(3, min=1, max=20, help="Rounds of (replay, ProducerPerformance); medians are reported.")):
    """Records/s from a Parquet archive into Kafka (one process, and `--workers`), beside Kafka's
    ProducerPerformance (same broker, same run, `--repeats` rounds in turn, medians)."""
    results = bench_replay(records, workers, repeats)
    path = write_results("replay", results)
    for key, value in results.items():
        console.print(f"{key:40} {value}")
    console.print(f"wrote {path}")
