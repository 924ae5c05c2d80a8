"""``tiertwin bench local``: demand arises -> placement returned, in a device runtime, beside its model floor.

For each fleet size (100, 1,000, 10,000 UEs by default) one :class:`DeviceRuntime`
hosts every UE's local twin, with its uplink publishing to the real broker (fresh
topics) and its downlink reading. The simulator's :class:`World` runs offline and
produces the records (telemetry at the scenario's 10 Hz per UE, demands at its
rates); each 10 ms step's telemetry is observed, then its demands are placed,
as fast as the runtime goes (not paced to the wall clock). Measured:

* ``place()`` wall time per demand (``time.perf_counter_ns`` around the call);
* the **floor**: the bare River ``predict_one`` calls one placement needs (the
  demand-latency model's regressor of each tier, on the same features the run's
  decisions were made from, selected beforehand), timed the same way, after the
  uplink has drained;
* the same run with ``connect=False`` first (no uplink, same world): what the uplink's threads
  cost the decision path (they share the GIL with it);
* CPU: the caller thread's CPU while observing and placing (``time.thread_time``
  around each step's two phases; generating the world is not counted) plus every
  other Python thread of the process (uplink, downlink, kafka-python's IO threads;
  from ``/proc/self/task``) from the start until the uplink has sent everything.
  ``cpu_s_per_simulated_s`` is their sum over the simulated seconds: below 1.0 the
  runtime keeps up on one core.

Garbage collection is part of the decision path: the command freezes the heap after each
runtime's warm-up and sets the young-generation threshold (``--gc-gen0-threshold``, 20 000),
as a process hosting a device runtime should; the pauses while feeding are reported.

Percentiles: :mod:`tiertwin.stats` (linear interpolation, as every benchmark).
"""

from __future__ import annotations

import collections
import os
import time
import uuid
from typing import Any, Callable

import numpy as np
import typer

from tiertwin.jobs.bench import write_results
from tiertwin.jobs.cli.common import console, one_line_errors
from tiertwin.stats import percentiles

TARGETS = {"p99_ms_at_1000": 0.45, "p99_ms_at_10000": 1.0, "p99_to_floor_p99": 3.0, "cpu_s_per_simulated_s_at_10000": 1.0}


def percentiles_ms(values_ns) -> dict[str, float]:
    """p50/p99/p99.9/max/mean in ms (:func:`tiertwin.stats.percentiles`)."""
    a = np.asarray(values_ns, dtype=np.float64) / 1e6
    if not a.size:
        return {"count": 0}
    p50, p99, p999 = percentiles(a, [50, 99, 99.9])
    return {"count": int(a.size), "p50_ms": p50, "p99_ms": p99, "p999_ms": p999, "max_ms": float(a.max()),
            "mean_ms": float(a.mean())}


def _thread_cpu_s() -> dict[int, float]:
    """CPU seconds (user + system) of every thread of this process, by native thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


class GcPauses:
    """Garbage-collector pauses while installed (``gc.callbacks``): count, total and longest per generation."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)

    def __enter__(self) -> "GcPauses":
        import gc

        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        import gc

        gc.callbacks.remove(self)

    def summary(self) -> dict[str, dict[str, float]]:
        return {f"gen{g}": {"count": len(p), "total_ms": 1e3 * sum(p), "max_ms": 1e3 * max(p, default=0.0)}
                for g, p in self.pauses.items()}


def _floor(model: Any, xs: list[dict]) -> list[int]:
    """perf_counter_ns of the bare per-tier predict_one calls one placement needs, per example."""
    from tiertwin.pipelines.learners import DemandLatencyModel

    if isinstance(model, DemandLatencyModel):
        per_tier = list(model._per_tier.items())
        prepared = [[(reg, model._select(x, tier)) for tier, reg in per_tier] for x in xs]
    else:   # any other River regressor: one predict_one per tier on the whole dict
        prepared = [[(model, {**x, "tier": tier}) for tier in ("local", "edge", "cloud")] for x in xs]
    clock = time.perf_counter_ns
    durations = []
    for calls in prepared:
        started = clock()
        for reg, features in calls:
            reg.predict_one(features)
        durations.append(clock() - started)
    return durations


def run_size(ues: int, simulated_s: float, scenario: str, seed: int, settings, warmup_s: float = 0.2,
             drain_timeout_s: float = 180.0, floor_samples: int = 20_000, log: Callable[[str], None] = print,
             device: dict | None = None, connect: bool = True, freeze_after_warmup: bool = True) -> dict:
    from tiertwin.connectors.simulator.scenarios import load_scenario
    from tiertwin.connectors.simulator.world import World
    from tiertwin.jobs.bench.agents import create_topics, delete_topics
    from tiertwin.pipelines.device import DeviceConfig, DeviceRuntime, DeviceTopics, stats_dict
    from tiertwin.pipelines.models import parameters_to_features

    tag = uuid.uuid4().hex[:8]
    topics = DeviceTopics(**{field: f"bench.local.{field}.{tag}" for field in DeviceTopics.model_fields})
    if connect:
        create_topics(settings, {name: 1 if field in ("models", "edge_state") else 3
                                 for field, name in topics.model_dump().items()})
    world = World(load_scenario(scenario).with_overrides(ues=ues), seed=seed)
    config = DeviceConfig(device_id=f"bench-local-{ues}-{tag}", topics=topics,
                          spill_dir=settings.home / "device" / f"bench-local-{tag}", **(device or {}))
    device = DeviceRuntime(config, settings, connect=connect).start()
    try:
        observe, place = device.observe, device.place
        clock, cpu = time.perf_counter_ns, time.thread_time
        steps = lambda seconds: range(int(round(seconds * 1000 / world.scenario.step_ms)))  # noqa: E731
        for _ in steps(warmup_s):   # first calls, model caches, topic metadata: not measured
            world.step()
            for t in world.telemetry_records():
                observe(t)
            for d in world.demand_records():
                place(d)
            world.outcome_records()
        device.drain(60)
        if freeze_after_warmup:   # the bench is a command: it may set process-wide GC policy, as `tiertwin run` does
            from tiertwin.procs import freeze_heap

            freeze_heap()
        durations: list[int] = []
        # Only the last decisions are kept (for the floor's features): holding them all would grow the heap
        # the garbage collector walks, and its pauses would land in place().
        decisions: collections.deque = collections.deque(maxlen=floor_samples)
        decided = 0
        observe_cpu = place_cpu = 0.0
        telemetry = 0
        main_tid = __import__("threading").get_native_id()
        before = _thread_cpu_s()
        wall_started = time.perf_counter()
        gc_pauses = GcPauses().__enter__()
        for _ in steps(simulated_s):
            world.step()
            records = world.telemetry_records()
            demands = world.demand_records()
            world.outcome_records()
            t0 = cpu()
            for t in records:
                observe(t)
            t1 = cpu()
            for d in demands:
                started = clock()
                decision = place(d)
                durations.append(clock() - started)
                decisions.append(decision)
            decided += len(demands)
            place_cpu += cpu() - t1
            observe_cpu += t1 - t0
            telemetry += len(records)
        fed_wall_s = time.perf_counter() - wall_started
        gc_pauses.__exit__()
        drain_started = time.perf_counter()
        drained = device.drain(drain_timeout_s)
        drain_s = time.perf_counter() - drain_started
        after = _thread_cpu_s()
        background = sum(after[tid] - before.get(tid, 0.0) for tid in after if tid != main_tid)
        xs = [parameters_to_features(d["parameters"]) for d in decisions]
        floor = _floor(device.twin.model, xs)
        stats = stats_dict(device.stats)
    finally:
        device.close(timeout_s=30)
        if connect:
            delete_topics(settings, list(topics.model_dump().values()))
    runtime_cpu = observe_cpu + place_cpu + background
    ours, floor_pct = percentiles_ms(durations), percentiles_ms(floor)
    result = {
        "ues": ues, "simulated_s": simulated_s, "telemetry": telemetry, "decisions": decided,
        "summaries": stats["summaries"], "place": ours, "floor": floor_pct,
        "p99_to_floor_p99": ours["p99_ms"] / floor_pct["p99_ms"] if floor_pct.get("p99_ms") else None,
        "p50_to_floor_p50": ours["p50_ms"] / floor_pct["p50_ms"] if floor_pct.get("p50_ms") else None,
        "cpu": {"observe_s": observe_cpu, "place_s": place_cpu, "background_threads_s": background,
                "runtime_total_s": runtime_cpu},
        "decisions_per_place_cpu_s": decided / place_cpu if place_cpu else None,
        "decisions_per_runtime_cpu_s": decided / runtime_cpu if runtime_cpu else None,
        "cpu_s_per_simulated_s": runtime_cpu / simulated_s,
        "gc_pauses_while_fed": gc_pauses.summary(), "fed_wall_s": fed_wall_s, "uplink_drained": drained, "uplink_drain_s": drain_s, "device_stats": stats,
    }
    log(f"{ues:>6} UEs{'' if connect else ' (no uplink)'}: {decided} decisions, place p50 {ours['p50_ms']:.3f} ms, p99 {ours['p99_ms']:.3f} ms, "
        f"p99.9 {ours['p999_ms']:.3f} ms | floor p50 {floor_pct['p50_ms']:.3f} ms ({result['p50_to_floor_p50']:.1f}x), "
        f"p99 {floor_pct['p99_ms']:.3f} ms ({result['p99_to_floor_p99']:.1f}x) | {result['decisions_per_place_cpu_s']:.0f} decisions per place CPU-s, "
        f"{result['decisions_per_runtime_cpu_s']:.0f} per runtime CPU-s | {result['cpu_s_per_simulated_s']:.2f} "
        f"CPU-s per simulated s (observe {observe_cpu:.1f}, place {place_cpu:.1f}, uplink/downlink/kafka "
        f"{background:.1f}) | uplink sent {stats['sent']}, spilled {stats['spilled']}, drained {drained} in {drain_s:.1f} s")
    return result


def bench_local(ue_counts: list[int], simulated_s: dict[int, float] | float, scenario: str = "dense-urban-xr",
                seed: int = 7, settings=None, log: Callable[[str], None] = print,
                device: dict | None = None, freeze_after_warmup: bool = True) -> dict[str, Any]:
    """Run every fleet size in turn (one runtime each); the results with the targets checked."""
    from tiertwin.settings import Settings

    settings = settings or Settings.from_env()
    sizes = {}
    for ues in ue_counts:
        seconds = simulated_s[ues] if isinstance(simulated_s, dict) else simulated_s
        common = dict(log=log, device=device, freeze_after_warmup=freeze_after_warmup)
        offline = run_size(ues, seconds, scenario, seed, settings, connect=False, **common)
        sizes[str(ues)] = run_size(ues, seconds, scenario, seed, settings, **common)
        sizes[str(ues)]["without_uplink"] = {k: offline[k] for k in (
            "place", "floor", "p99_to_floor_p99", "p50_to_floor_p50", "cpu", "decisions_per_place_cpu_s",
            "cpu_s_per_simulated_s")}
    load_1m = os.getloadavg()[0]
    checks: dict[str, Any] = {}
    if "1000" in sizes:
        checks["p99_ms_at_1000"] = {"value": sizes["1000"]["place"]["p99_ms"], "target": TARGETS["p99_ms_at_1000"]}
    if "10000" in sizes:
        checks["p99_ms_at_10000"] = {"value": sizes["10000"]["place"]["p99_ms"], "target": TARGETS["p99_ms_at_10000"]}
        checks["cpu_s_per_simulated_s_at_10000"] = {"value": sizes["10000"]["cpu_s_per_simulated_s"],
                                                    "target": TARGETS["cpu_s_per_simulated_s_at_10000"]}
    checks["p99_to_floor_p99"] = {"value": max(s["p99_to_floor_p99"] or 0.0 for s in sizes.values()),
                                  "target": TARGETS["p99_to_floor_p99"]}
    for check in checks.values():
        check["met"] = check["value"] <= check["target"]
    return {"scenario": scenario, "seed": seed, "sizes": sizes, "targets": checks,
            "percentile": "tiertwin.stats (numpy.percentile, linear interpolation)", "load_average_1m_at_end": load_1m,
            "caveat": "2 shared cores; numbers taken while other work runs are noisy"}


# -- commands (added to the `tiertwin` tree in jobs/cli/main.py) ---------------------------------
bench_commands = typer.Typer()


@bench_commands.command("local")
@one_line_errors
def local(ues: list[int] = typer.Option([100, 1_000, 10_000], "--ues", help="Fleet sizes, one runtime each (repeatable)."),
          seconds: float = typer.Option(None, help="Simulated seconds per size (default: 20 / 10 / 3 s at 100 / 1k / 10k UEs)."),
          scenario: str = typer.Option("dense-urban-xr", help="Simulator scenario (preset name or YAML path)."),
          seed: int = typer.Option(7),
          freeze_gc: bool = typer.Option(True, help=(
              "gc.freeze after each runtime's warm-up (its twins, model and world loaded), as `tiertwin run` "
              "freezes after start-up: later full collections walk only what the run allocates")),
          gc_gen0_threshold: int = typer.Option(20_000, help=(
              "gc.set_threshold(N, ...) for the run; Python's 700 runs a young collection every ~100 "
              "placements, and those pauses were the p99 (1.43 ms vs 0.30 ms at 1k UEs, 2026-12-02)")),
          gil_switch_interval_ms: float = typer.Option(5.0, help=(
              "Python's GIL switch interval in this process (5 = Python's default): how long a decision "
              "may wait for the GIL while the uplink or kafka-python's IO thread holds it")),
          yield_every: int = typer.Option(None, help="DeviceConfig.uplink_yield_every (default: the config's)")):
    """Demand arises -> placement returned in a device runtime (uplink publishing to the broker), beside the
    bare River predictions one placement needs; decisions per CPU-second and CPU per simulated second."""
    import sys

    sys.setswitchinterval(gil_switch_interval_ms / 1000)   # process-wide: a command's choice, not the library's
    import gc

    gc.set_threshold(gc_gen0_threshold, *gc.get_threshold()[1:])
    default = {100: 20.0, 1_000: 10.0, 10_000: 3.0}
    seconds_by_size = {n: seconds if seconds is not None else default.get(n, 5.0) for n in ues}
    device = {} if yield_every is None else {"uplink_yield_every": yield_every}
    results = bench_local(list(ues), seconds_by_size, scenario, seed, log=console.print, device=device,
                          freeze_after_warmup=freeze_gc)
    results.update(freeze_gc=freeze_gc, gc_threshold=__import__("gc").get_threshold(), gil_switch_interval_ms=gil_switch_interval_ms, device_overrides=device)
    path = write_results("local", results)
    for name, check in results["targets"].items():
        console.print(f"{name}: {check['value']:.3f} (target <= {check['target']}) "
                      f"{'met' if check['met'] else 'NOT met'}")
    if "10000" in results["sizes"]:
        console.print(f"CPU seconds per simulated second at 10,000 UEs: "
                      f"{results['sizes']['10000']['cpu_s_per_simulated_s']:.2f}")
    console.print(f"load average (1 min) at the end: {results['load_average_1m_at_end']:.1f} on {os.cpu_count()} CPUs")
    console.print(f"results: {path}")
