"""``tiertwin bench scale``: the edge tier's cost per summary as the network grows.

The edge tier scales out by partitions: summaries and cell reports are keyed by cell, so an
instance sees only the cells of its partitions. The benchmark grows the network (1k → 10k UEs,
cells with it at ``ues_per_cell``) and the instances with it (one per ``ues_per_instance``), and
runs the instance under test, a pure :class:`~tiertwin.pipelines.edge_twin.EdgeTwin`, on exactly
the records its partitions would deliver: the summaries of its cells' UEs (one per UE every
``summary_ms``) and its cells' reports (one per cell every ``report_ms``), in event-time order.
It reports the CPU per summary and the per-record decision time (p50/p99) at each size, and their
ratio between the sizes (target ≤ 1.2×: a flat cost as the network grows). Beside them, in the
same run, one instance holding every cell of the larger network shows what scaling out saves.

No Kafka: an instance's Kafka cost per record is the same at any network size (``bench throughput``
measures it); what could grow with the network is the twin's state, which is what this measures.
Records are generated before the clock starts.
"""

from __future__ import annotations

import gc
import os
import random
import time

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from tiertwin.jobs.bench import write_results
from tiertwin.jobs.cli.common import one_line_errors
from tiertwin.stats import percentiles

EPOCH_MS = 1_767_225_600_000
TARGET_RATIO = 1.2

console = Console()
bench_commands = typer.Typer()


def network_records(ues: int, cells: int, seconds: float, *, served: set[int] | None = None,
                    summary_ms: int = 200, report_ms: int = 1_000, seed: int = 0) -> list[tuple[str, dict]]:
    """``("summary" | "report", record)`` of a synthetic network in event-time order: every UE sends a
    LocalSummary every ``summary_ms`` with a drifting serving SINR and a best neighbour (the next cell),
    and moves to that neighbour when it wins by 3 dB; every cell reports every ``report_ms``.
    Only the records of ``served`` cells are kept (None: all), as an instance's partitions deliver them.

    >>> recs = network_records(ues=4, cells=2, seconds=1.0)
    >>> sorted({kind for kind, _ in recs}), sum(kind == "summary" for kind, _ in recs)
    (['report', 'summary'], 20)
    """
    rng = random.Random(seed)
    serving = [i % cells for i in range(ues)]
    sinr = [rng.uniform(5, 20) for _ in range(ues)]
    neighbour_sinr = [rng.uniform(0, 15) for _ in range(ues)]
    phase = [rng.randrange(summary_ms) for _ in range(ues)]
    out: list[tuple[int, str, dict]] = []
    steps = int(seconds * 1000 // summary_ms)
    for step in range(steps):
        for ue in range(ues):
            t_ms = EPOCH_MS + step * summary_ms + phase[ue]
            trend = rng.gauss(0.0, 2.0)
            sinr[ue] = min(max(sinr[ue] + trend * summary_ms / 1000, -5.0), 30.0)
            neighbour_sinr[ue] = min(max(neighbour_sinr[ue] + rng.gauss(0.0, 0.4), -5.0), 30.0)
            cell, nb = serving[ue], (serving[ue] + 1) % cells
            if neighbour_sinr[ue] > sinr[ue] + 3.0:     # the network's A3 handover
                serving[ue], cell, nb = nb, nb, (nb + 1) % cells
                sinr[ue], neighbour_sinr[ue] = neighbour_sinr[ue], sinr[ue]
            if served is None or cell in served:
                out.append((t_ms, "summary", {
                    "ue_id": f"ue-{ue:06d}", "serving_cell": cell, "window_start_ms": t_ms - summary_ms,
                    "window_end_ms": t_ms, "samples": 2, "rsrp_dbm": -90.0, "sinr_db": sinr[ue],
                    "sinr_trend_db_per_s": trend, "throughput_dl_mbps": 100.0, "rtt_ms": 8.0,
                    "best_neighbour_cell": nb, "best_neighbour_sinr_db": neighbour_sinr[ue], "x_m": 0.0, "y_m": 0.0,
                    "speed_mps": 1.5, "battery_pct": 80.0, "cpu_util": 0.5, "xr_active": False, "demands": 0,
                    "placed_local": 0, "placed_edge": 0, "placed_cloud": 0, "emitted_ns": 0}))
    for t in range(0, int(seconds * 1000), report_ms):
        for cell in range(cells):
            if served is None or cell in served:
                out.append((EPOCH_MS + t + report_ms - 1, "report", {
                    "cell_id": cell, "site_id": cell // 3, "ts_ms": EPOCH_MS + t + report_ms - 1,
                    "attached_ues": ues // cells, "prb_utilization": rng.uniform(0.2, 0.9), "cell_load_mbps": 500.0,
                    "mean_sinr_db": 12.0, "mec_queue_gcycles": rng.uniform(0, 5), "mec_utilization": rng.uniform(0.2, 0.9),
                    "mec_capacity_gcps": 400.0, "handovers": 0, "emitted_ns": 0}))
    out.sort(key=lambda r: r[0])
    return [(kind, record) for _, kind, record in out]


def run_instance(ues: int, instances: int, *, ues_per_cell: int, seconds: float, warmup_s: float = 2.0,
                 seed: int = 0) -> dict:
    """One edge instance of ``instances`` in a network of ``ues`` UEs, on its cells' records."""
    from tiertwin.pipelines.edge_twin import EdgeTwin, EdgeTwinConfig

    cells = max(1, ues // ues_per_cell)
    served = {c for c in range(cells) if c % instances == 0}
    records = network_records(ues, cells, warmup_s + seconds, served=served, seed=seed)
    warm_until = EPOCH_MS + int(warmup_s * 1000)
    twin = EdgeTwin(EdgeTwinConfig(cells=sorted(served)))
    wall_ns, cpu_ns, decisions, summaries = [], [], 0, 0
    gc.collect()
    cpu = None
    for kind, record in records:
        ts = record["window_end_ms"] if kind == "summary" else record["ts_ms"]
        if cpu is None and ts >= warm_until:
            cpu = time.process_time()
        started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
        out = twin.observe_summary(record) if kind == "summary" else twin.observe_cell_report(record)
        took, took_cpu = time.perf_counter_ns() - started, time.thread_time_ns() - started_cpu
        if cpu is not None:
            decisions += len(out.decisions)
            if kind == "summary":
                summaries += 1
                wall_ns.append(took)
                cpu_ns.append(took_cpu)
    cpu_s = time.process_time() - (cpu or time.process_time())
    # Wall time includes being descheduled on a loaded machine; the thread's CPU time does not.
    p50, p99 = percentiles(np.asarray(wall_ns, dtype=np.float64) / 1000, [50, 99])
    cpu_p50, cpu_p99 = percentiles(np.asarray(cpu_ns, dtype=np.float64) / 1000, [50, 99])
    return {"ues": ues, "cells": cells, "instances": instances, "cells_held": len(served),
            "ues_held": len(twin.ue_cell), "summaries": summaries, "decisions": decisions,
            "cpu_us_per_summary": round(cpu_s / max(summaries, 1) * 1e6, 2),
            "summary_p50_us": round(p50, 1), "summary_p99_us": round(p99, 1),
            "summary_cpu_p50_us": round(cpu_p50, 1), "summary_cpu_p99_us": round(cpu_p99, 1)}


def bench_scale(sizes: tuple[int, int] = (1_000, 10_000), *, ues_per_cell: int = 50, ues_per_instance: int = 1_000,
                seconds: float = 10.0, seed: int = 0) -> dict:
    small, large = (run_instance(n, max(1, n // ues_per_instance), ues_per_cell=ues_per_cell, seconds=seconds,
                                 seed=seed) for n in sizes)
    one_instance = run_instance(sizes[1], 1, ues_per_cell=ues_per_cell, seconds=seconds, seed=seed)
    ratios = {"cpu_per_summary": round(large["cpu_us_per_summary"] / small["cpu_us_per_summary"], 3),
              "summary_cpu_p99": round(large["summary_cpu_p99_us"] / small["summary_cpu_p99_us"], 3),
              "summary_wall_p99": round(large["summary_p99_us"] / small["summary_p99_us"], 3)}
    judged = ("cpu_per_summary", "summary_cpu_p99")
    return {"scaled": [small, large], "one_instance_at_large": one_instance, "ratio_large_to_small": ratios,
            "target_ratio": TARGET_RATIO, "met": all(ratios[k] <= TARGET_RATIO for k in judged),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "ues_per_cell": ues_per_cell, "ues_per_instance": ues_per_instance, "seconds": seconds}


@bench_commands.command("scale")
@one_line_errors
def scale(small: int = typer.Option(1_000, help="UEs in the smaller network."),
          large: int = typer.Option(10_000, help="UEs in the larger network."),
          ues_per_cell: int = typer.Option(50, help="Cells grow with the network: one per this many UEs."),
          ues_per_instance: int = typer.Option(1_000, help="Edge instances grow with it: one per this many UEs."),
          seconds: float = typer.Option(10.0, help="Simulated seconds measured (after 2 s of warm-up)."),
          seed: int = typer.Option(0)):
    """The edge tier at two network sizes with partitions and instances scaled together: CPU per summary
    and per-summary decision time of one instance (target: ≤ 1.2× between the sizes)."""
    results = bench_scale((small, large), ues_per_cell=ues_per_cell, ues_per_instance=ues_per_instance,
                          seconds=seconds, seed=seed)
    table = Table(title="edge tier: one instance as the network grows (per summary, µs)")
    for column in ("UEs", "inst.", "cells", "UEs held", "summaries", "CPU", "CPU p50", "CPU p99", "wall p99"):
        table.add_column(column, justify="right")
    for row in [*results["scaled"], results["one_instance_at_large"]]:
        table.add_row(f"{row['ues']:,}", str(row["instances"]), str(row["cells_held"]), f"{row['ues_held']:,}",
                      f"{row['summaries']:,}", f"{row['cpu_us_per_summary']:.1f}", f"{row['summary_cpu_p50_us']:.1f}",
                      f"{row['summary_cpu_p99_us']:.1f}", f"{row['summary_p99_us']:.1f}")
    console.print(table)
    r = results["ratio_large_to_small"]
    console.print(f"scaled together, {large:,} vs {small:,} UEs: CPU per summary {r['cpu_per_summary']:.2f}×, "
                  f"CPU p99 {r['summary_cpu_p99']:.2f}× (target ≤ {TARGET_RATIO}×: "
                  f"{'met' if results['met'] else 'NOT met'}); wall p99 {r['summary_wall_p99']:.2f}× "
                  f"(load {results['load_average_1m']})")
    console.print(f"results: {write_results('scale', results)}")
