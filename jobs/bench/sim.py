"""``tiertwin bench sim``: UE-steps/s of the simulator's physics step and records/s it publishes to Kafka."""

from __future__ import annotations

import time
import uuid

import typer

from tiertwin.jobs.cli.common import console, one_line_errors


bench_commands = typer.Typer()


@bench_commands.command("sim")
@one_line_errors
def bench_sim(
    scenario: str = typer.Option("dense-urban-xr", help="Preset name or YAML file."),
    ues: int = typer.Option(10_000, help="UEs for the physics-step measurement."),
    steps: int = typer.Option(50, help="Steps timed for the physics measurement."),
    kafka_ues: int = typer.Option(1000, help="UEs for the Kafka publishing measurement."),
    kafka_seconds: float = typer.Option(1.0, help="Simulated seconds published to Kafka."),
):
    """UE-steps/s of the physics step (target >= 200k on one core) and records/s published to Kafka."""
    from tiertwin.jobs.bench import write_results

    results = {"physics": bench_physics(scenario, ues, steps),
               "kafka": bench_kafka(scenario, kafka_ues, kafka_seconds)}
    path = write_results("sim", results)
    p, k = results["physics"], results["kafka"]
    console.print(f"physics step, {ues} UEs: {p['ue_steps_per_cpu_s']:,.0f} UE-steps per CPU-second "
                  f"({p['cpu_ratio_to_target']:.2f}x the 200k one-core target); {p['ue_steps_per_s']:,.0f} per "
                  f"wall second with {p['core_share']:.0%} of a core ({p['ms_per_step']:.2f} ms/step)")
    console.print(f"kafka: {k['sim_records_per_s']:,.0f} records/s from the simulator loop vs "
                  f"{k['raw_records_per_s']:,.0f} records/s sending the same pre-encoded records "
                  f"(ratio {k['ratio_to_raw']:.2f}; per CPU-second {k['sim_records_per_cpu_s']:,.0f} vs "
                  f"{k['raw_records_per_cpu_s']:,.0f}, ratio {k['cpu_ratio_to_raw']:.2f}); {k['records']} records; physics "
                  f"{k['physics_share_of_wall']:.0%} of the loop's wall time; build+encode without Kafka "
                  f"{k['encode_only_records_per_s']:,.0f} records/s")
    console.print(f"results: {path}")


def bench_physics(scenario: str, ues: int, steps: int) -> dict:
    """Time ``World.step()`` alone (radio, mobility, handover, allocation, devices, compute, arrivals)."""
    from tiertwin.connectors.simulator import World, load_scenario

    world = World(load_scenario(scenario).with_overrides(ues=ues), seed=1)
    world.step()  # warm up allocations
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(steps):
        world.step()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    rate = ues * steps / elapsed
    # CPU time is what one core spends; wall time also counts waiting for a core on a shared machine
    return {"ues": ues, "steps": steps, "cells": world.layout.n_cells, "seconds": elapsed, "cpu_seconds": cpu,
            "ms_per_step": elapsed / steps * 1000, "ue_steps_per_s": rate, "ue_steps_per_cpu_s": ues * steps / cpu,
            "target_ue_steps_per_s": 200_000, "ratio_to_target": rate / 200_000,
            "cpu_ratio_to_target": ues * steps / cpu / 200_000, "core_share": cpu / elapsed}


def bench_kafka(scenario: str, ues: int, seconds: float) -> dict:
    """Records/s the simulator loop publishes, beside sending the same pre-encoded bytes raw (the ceiling)."""
    from tiertwin.connectors.kafka import KafkaSink, admin_client
    from tiertwin.connectors.simulator import MemorySink, SimulatorLoop, SimulatorTopics, World, load_scenario

    from tiertwin.schemas import SchemaRegistry

    spec = load_scenario(scenario).with_overrides(ues=ues)
    registry = SchemaRegistry.default()
    prefix = f"bench.sim.{uuid.uuid4().hex[:8]}"
    topics = SimulatorTopics(telemetry=f"{prefix}.telemetry", demands=f"{prefix}.demands",
                             cell_reports=f"{prefix}.cell-reports", outcomes=f"{prefix}.outcomes",
                             deadletters=f"{prefix}.deadletters")
    names = [topics.telemetry, topics.demands, topics.cell_reports, topics.outcomes, topics.deadletters]
    admin = admin_client(client_id="tiertwin-bench-sim")
    admin.create_topics({n: {"num_partitions": 6, "replication_factor": 1} for n in names}, timeout_ms=30_000)
    try:
        with KafkaSink(registry=registry, profile="throughput", client_id="tiertwin-bench-sim") as sink:
            memory = MemorySink(registry)
            encode_only = SimulatorLoop(World(spec, seed=1), memory, topics=topics).run(seconds)
            # ceiling first (it also warms the producer's metadata for these topics): the same bytes, sent raw
            started, cpu_started = time.perf_counter(), time.process_time()
            for topic, _schema, key, data in memory.records:
                sink.send_raw(topic, data, key=key)
            sink.flush()
            raw_s, raw_cpu = time.perf_counter() - started, time.process_time() - cpu_started
            cpu_started = time.process_time()
            summary = SimulatorLoop(World(spec, seed=1), sink, topics=topics).run(seconds)
            sink.flush()
            loop_cpu = time.process_time() - cpu_started
    finally:
        admin.delete_topics(names)
        admin.close()
    records = sum(summary.published.values())
    raw_rate = len(memory.records) / raw_s
    return {"ues": ues, "sim_seconds": seconds, "records": records, "wall_seconds": summary.wall_seconds,
            "physics_seconds": summary.physics_seconds,
            "physics_share_of_wall": summary.physics_seconds / summary.wall_seconds,
            "sim_records_per_s": summary.records_per_s, "raw_records_per_s": raw_rate,
            "ratio_to_raw": summary.records_per_s / raw_rate,
            "encode_only_records_per_s": encode_only.records_per_s,
            # CPU time of this process (the producer's I/O thread included): steadier on a shared machine
            "sim_records_per_cpu_s": records / loop_cpu, "raw_records_per_cpu_s": len(memory.records) / raw_cpu,
            "cpu_ratio_to_raw": (records / loop_cpu) / (len(memory.records) / raw_cpu), "published": summary.published}
