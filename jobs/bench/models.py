"""``tiertwin bench models``: the model lifecycle measured on a running local twin.

The local side: a :class:`~tiertwin.pipelines.local_twin.LocalTwin` (the twin a device runtime or the local agent hosts)
places the demands of a :class:`~tiertwin.pipelines.pretrain.SyntheticFleet` and learns from their outcomes
(the fleet's ground-truth latency at the placed tier, :func:`~tiertwin.pipelines.pretrain.true_latency_ms`,
reported right after each placement). It starts from the shipped model (version 1) and is offered, in turn:

* a **worse** candidate: the shipped model trained further on the fleet's examples with *shuffled* targets;
  measured: the decisions it made (target 0) and the outcomes until it was rejected;
* a **better** candidate: the shipped model trained further on the fleet's examples; measured: the outcomes
  until it was promoted;
* the worse candidate **promoted by hand** (a signed ``promote`` command); measured: the outcomes, the wall
  time and the decisions until the slot rolled it back by itself;
* **shadow cost**: two copies of the same twin place the same demands, interleaved, one with a candidate in
  shadow and one without; ``place()`` p99 of each (target: with / without <= 1.3) and ``learn()`` p99 of each
  (the shadow is scored and trained at the outcome, not at the decision).

The edge side (``edge_prb_share``): an :class:`~tiertwin.pipelines.edge_twin.EdgeTwin` allocating PRB shares every
100 ms per cell in a world harder than the shipped allocator learned, rewarded from 10 demand outcomes per
allocation; its ``prb-share`` slot gets the same three scenarios (candidates: the shipped allocator trained on
this world's rewards, shuffled or true), scored on reward-prediction error.

Every candidate is a genuine signed ModelUpdate (the deployment key). Percentiles: :mod:`tiertwin.stats`.
"""

from __future__ import annotations

import copy
import random
import time
from typing import Any, Callable, Iterator

import numpy as np
import typer

from tiertwin.jobs.bench import write_results
from tiertwin.jobs.cli.common import console, one_line_errors
from tiertwin.stats import percentiles

TARGETS = {"decisions_by_worse_candidate": 0, "place_p99_shadow_to_without": 1.3}


def _stream(seed: int, n_ues: int) -> Iterator[tuple[str, dict]]:
    from tiertwin.pipelines.pretrain import SyntheticFleet

    fleet = SyntheticFleet(n_ues=n_ues, n_cells=4, seed=seed, demand_every=2, load=0.6)
    tick = 0
    while True:
        yield from fleet.step(tick * 10)
        tick += 1


class _Feeder:
    """Feeds one fleet stream to twins: telemetry and edge state observed, demands placed, outcomes learned."""

    def __init__(self, seed: int, n_ues: int = 50):
        self.events = _stream(seed, n_ues)
        self.radio: dict[str, dict] = {}
        self.edge: dict[int, dict] = {}
        self.rng = random.Random(seed + 1)

    def next_demand(self, twins) -> dict:
        for kind, record in self.events:
            if kind == "telemetry":
                self.radio[record["ue_id"]] = record
                for twin in twins:
                    twin.observe(record)
            elif kind == "cell-report":
                self.edge[record["cell_id"]] = record
                for twin in twins:
                    twin.update_edge_state(record)
            else:
                return record
        raise RuntimeError("the fleet stream ended")

    def outcome(self, demand: dict, decision: dict) -> dict:
        from tiertwin.pipelines.pretrain import true_latency_ms

        latency = true_latency_ms(demand, self.radio[demand["ue_id"]], self.edge.get(demand["serving_cell"], {}),
                                  decision["target"], self.rng)
        return {"kind": "demand", "decision_id": decision["decision_id"], "demand_id": demand["demand_id"],
                "placement": decision["target"], "latency_ms": latency}


def _examples(seed: int, n: int) -> list[tuple[dict, float]]:
    """``n`` (features with tier, true latency) examples of the fleet, every tier of each demand."""
    from tiertwin.pipelines.features import TIERS, demand_features
    from tiertwin.pipelines.pretrain import true_latency_ms

    feeder, out = _Feeder(seed), []
    while len(out) < n:
        demand = feeder.next_demand(())
        radio, edge = feeder.radio[demand["ue_id"]], feeder.edge.get(demand["serving_cell"], {})
        x = demand_features(demand, radio, edge or None)
        for tier in TIERS:
            out.append(({**x, "tier": tier}, true_latency_ms(demand, radio, edge, tier, feeder.rng)))
    return out[:n]


def candidates(seed: int, n: int = 20_000) -> tuple[Any, Any]:
    """``(worse, better)``: the shipped model trained on ``n`` fleet examples with shuffled / true targets."""
    from tiertwin.pipelines.learners import DEMAND_LATENCY
    from tiertwin.pipelines.pretrain import load_pretrained

    shipped, _ = load_pretrained(DEMAND_LATENCY)
    examples = _examples(seed, n)
    targets = [y for _, y in examples]
    random.Random(seed).shuffle(targets)
    worse, better = copy.deepcopy(shipped), copy.deepcopy(shipped)
    for (x, y), shuffled in zip(examples, targets):
        worse.learn_one(x, shuffled)
        better.learn_one(x, y)
    return worse, better


# -- the edge twin: the prb-share allocation bandit -------------------------------------------------------
def _met_rate(share: float, context: dict) -> float:
    """This world's deadline-met rate of a cell: harder than the one the shipped allocator learned (need +0.2)."""
    import math

    need = 0.4 + 0.8 * max(context["prb_utilization"], context["mec_utilization"])
    return 1.0 / (1.0 + math.exp(-8.0 * (share - need)))


class _EdgeWorld:
    """Cell reports every 100 ms per cell (the edge twin allocates at each), then 10 demand outcomes per cell."""

    def __init__(self, seed: int, cells: int = 4):
        from tiertwin.pipelines.pretrain import SyntheticFleet

        self.fleet, self.rng, self.cells, self.t_ms = SyntheticFleet(n_ues=0, n_cells=cells, seed=seed), \
            random.Random(seed), cells, 0

    def step(self, twin) -> list[int]:
        """One allocation round; the prb-share versions that decided in it."""
        from tiertwin.pipelines.features import cell_context

        self.t_ms += 100
        versions = []
        for cell in range(self.cells):
            report = self.fleet.cell_report(cell, self.t_ms, load=self.rng.random())
            shares = {d["kind"]: d for d in twin.observe_cell_report(report).decisions}
            prb = shares.get("prb_share")
            if prb is None:
                continue
            versions.append(prb["model_version"])
            rate = _met_rate(prb["parameters"]["share"], cell_context(report))
            for i in range(10):
                twin.learn({"kind": "demand", "cell_id": cell, "deadline_met": self.rng.random() < rate,
                            "decision_id": None, "effect": {}, "ts_ms": report["ts_ms"] + 10 * i})
        return versions


def edge_candidates(seed: int, n: int = 4_000) -> tuple[Any, Any]:
    """``(worse, better)`` prb-share allocators: the shipped one trained on this world's rewards, shuffled / true."""
    from tiertwin.pipelines.features import cell_context
    from tiertwin.pipelines.learners import PRB_SHARE, allocation_reward
    from tiertwin.pipelines.pretrain import load_pretrained, sample_edge

    shipped, _ = load_pretrained(PRB_SHARE)
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        context = cell_context(sample_edge(rng, rng.random()))
        share = rng.choice(shipped.shares)
        met = sum(rng.random() < _met_rate(share, context) for _ in range(10)) / 10
        examples.append(({**context, "share": share}, allocation_reward(met, share)))
    rewards = [y for _, y in examples]
    rng.shuffle(rewards)
    worse, better = copy.deepcopy(shipped), copy.deepcopy(shipped)
    for (x, y), shuffled in zip(examples, rewards):
        worse.learn_one(x, shuffled)
        better.learn_one(x, y)
    return worse, better


def bench_edge(seed: int, limit_rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    from tiertwin.pipelines.edge_twin import EdgeTwin, EdgeTwinConfig
    from tiertwin.pipelines.learners import PRB_SHARE
    from tiertwin.pipelines.models import command_update, model_update

    worse, better = edge_candidates(seed)
    config = EdgeTwinConfig(allocation_interval_ms=100)
    results: dict[str, Any] = {}
    for name, candidate, forced in (("worse", worse, False), ("better", better, False),
                                    ("forced_bad_promotion", worse, True)):
        twin = EdgeTwin(config)
        slot = twin.slots[PRB_SHARE]
        twin.swap_model(model_update(PRB_SHARE, candidate, 2))
        if forced:
            twin.swap_model(command_update("promote", PRB_SHARE, 2))
        world, versions, started = _EdgeWorld(seed + 50), [], time.perf_counter()
        for _ in range(limit_rounds):
            versions += world.step(twin)
            if (slot.version != 2) if forced else (slot.shadow is None):
                break
        results[name] = {"allocations": len(versions), "decisions_by_candidate": versions.count(2),
                         "outcome": slot.events[-1]["event"], "figures": slot.events[-1],
                         "seconds": time.perf_counter() - started}
        log(f"edge prb-share {name}: {slot.events[-1]['event']} after {slot.events[-1].get('outcomes', 0):.0f} "
            f"rewards; {versions.count(2)} of {len(versions)} allocations by v2")
    return results


def _run_until(twin, feeder: _Feeder, done: Callable[[], bool], limit: int) -> tuple[int, list[int]]:
    """Place and learn until ``done()`` (or ``limit`` demands); (demands, version of each decision)."""
    versions = []
    for n in range(1, limit + 1):
        demand = feeder.next_demand((twin,))
        decision = twin.place(demand)
        versions.append(decision["model_version"])
        twin.learn(feeder.outcome(demand, decision))
        if done():
            return n, versions
    return limit, versions


def _events(slot) -> list[str]:
    return [e["event"] for e in slot.events]


def bench_models(seed: int = 7, limit: int = 20_000, latency_demands: int = 20_000,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    from tiertwin.pipelines.learners import DEMAND_LATENCY
    from tiertwin.pipelines.lifecycle import PromotionPolicy
    from tiertwin.pipelines.local_twin import LocalTwin
    from tiertwin.pipelines.models import command_update, model_update

    worse, better = candidates(seed)
    results: dict[str, Any] = {"policy": {}, "limit_demands": limit}

    # -- a worse candidate ------------------------------------------------------------------------------
    twin = LocalTwin()
    results["policy"] = vars(twin.slot.policy) if twin.slot.policy else None
    twin.swap_model(model_update(DEMAND_LATENCY, worse, 2))
    n, versions = _run_until(twin, _Feeder(seed + 10), lambda: twin.slot.shadow is None, limit)
    results["worse"] = {"demands": n, "decisions_by_candidate": versions.count(2), "events": _events(twin.slot),
                        "verdict_figures": twin.slot.events[-1]}
    log(f"worse candidate: {versions.count(2)} decisions; {_events(twin.slot)[-1]} after {n} outcomes")

    # -- a better candidate -----------------------------------------------------------------------------
    twin = LocalTwin()
    twin.swap_model(model_update(DEMAND_LATENCY, better, 2))
    n, versions = _run_until(twin, _Feeder(seed + 20), lambda: twin.slot.shadow is None, limit)
    results["better"] = {"outcomes_until_verdict": n, "verdict": _events(twin.slot)[-1],
                         "verdict_figures": twin.slot.events[-1], "live_version": twin.model_version}
    log(f"better candidate: {_events(twin.slot)[-1]} after {n} outcomes")

    # -- a bad promotion forced by hand -----------------------------------------------------------------
    twin = LocalTwin()
    twin.swap_model(model_update(DEMAND_LATENCY, worse, 2))
    twin.swap_model(command_update("promote", DEMAND_LATENCY, 2))
    started = time.perf_counter()
    n, versions = _run_until(twin, _Feeder(seed + 30), lambda: twin.model_version != 2, limit)
    seconds = time.perf_counter() - started
    results["forced_bad_promotion"] = {"outcomes_until_rollback": n, "seconds_until_rollback": seconds,
                                       "decisions_by_bad_model": versions.count(2), "events": _events(twin.slot),
                                       "live_version_after": twin.model_version,
                                       "rollback_figures": twin.slot.events[-1]}
    log(f"forced bad promotion: {_events(twin.slot)[-1]} after {n} outcomes ({seconds:.2f} s in-process)")

    # -- place() with a shadow against without, same run ----------------------------------------------------
    plain = LocalTwin()
    shadowed = copy.deepcopy(plain)
    shadowed.slot.policy = PromotionPolicy(min_outcomes=10**9, max_outcomes=10**9)  # it stays a shadow throughout
    shadowed.swap_model(model_update(DEMAND_LATENCY, better, 2))
    feeder = _Feeder(seed + 40)
    timings = {"without": ([], []), "with_shadow": ([], [])}
    order = (("without", plain), ("with_shadow", shadowed))
    for i in range(latency_demands):
        demand = feeder.next_demand((plain, shadowed))
        outcome = None      # the same outcome for both: the shadow does not decide, so both decide alike
        for name, twin in (order if i % 2 == 0 else order[::-1]):
            place_ns, learn_ns = timings[name]
            t0 = time.perf_counter_ns()
            decision = twin.place(demand)
            t1 = time.perf_counter_ns()
            if outcome is None:
                outcome = feeder.outcome(demand, decision)
            t2 = time.perf_counter_ns()
            twin.learn(outcome)
            t3 = time.perf_counter_ns()
            place_ns.append(t1 - t0)
            learn_ns.append(t3 - t2)
    latency = {}
    for name, (place_ns, learn_ns) in timings.items():
        p50, p99 = percentiles(np.asarray(place_ns[1000:], dtype=np.float64) / 1e3, [50, 99])
        l50, l99 = percentiles(np.asarray(learn_ns[1000:], dtype=np.float64) / 1e3, [50, 99])
        latency[name] = {"place_p50_us": p50, "place_p99_us": p99, "learn_p50_us": l50, "learn_p99_us": l99,
                         "count": len(place_ns) - 1000}
    ratio = latency["with_shadow"]["place_p99_us"] / latency["without"]["place_p99_us"]
    latency["place_p99_shadow_to_without"] = ratio
    latency["learn_p99_shadow_to_without"] = latency["with_shadow"]["learn_p99_us"] / latency["without"]["learn_p99_us"]
    results["shadow_cost"] = latency
    log(f"place() p99 {latency['without']['place_p99_us']:.1f} us without, "
        f"{latency['with_shadow']['place_p99_us']:.1f} us with a shadow ({ratio:.2f}x); learn() p99 "
        f"{latency['without']['learn_p99_us']:.1f} vs {latency['with_shadow']['learn_p99_us']:.1f} us")

    results["edge_prb_share"] = bench_edge(seed, limit, log)
    by_worse = results["worse"]["decisions_by_candidate"] + results["edge_prb_share"]["worse"]["decisions_by_candidate"]
    results["targets"] = {
        "decisions_by_worse_candidate": {"value": by_worse, "target": 0, "met": by_worse == 0},
        "place_p99_shadow_to_without": {"value": ratio, "target": TARGETS["place_p99_shadow_to_without"],
                                        "met": ratio <= TARGETS["place_p99_shadow_to_without"]},
    }
    results["notes"] = ("in-process LocalTwin, outcomes reported right after each placement; outcomes counts do not "
                        "depend on the outcome rate, seconds do (a deployment's time is outcomes / outcome rate); "
                        "2 shared cores: latency numbers taken while other work runs are noisy")
    return results


# -- commands (added to the `tiertwin` tree in jobs/cli/main.py) ---------------------------------
bench_commands = typer.Typer()


@bench_commands.command("models")
@one_line_errors
def models(seed: int = typer.Option(7),
           limit: int = typer.Option(20_000, help="Demands at most per lifecycle scenario."),
           latency_demands: int = typer.Option(20_000, help="Demands placed by each twin for the shadow-cost figure.")):
    """The model lifecycle on a running local twin: decisions by a worse candidate, outcomes until a better one is
    promoted, outcomes and time until a forced bad promotion rolls back, place() p99 with a shadow vs without."""
    results = bench_models(seed, limit, latency_demands, log=console.print)
    path = write_results("models", results)
    for name, check in results["targets"].items():
        console.print(f"{name}: {check['value']:.3g} (target <= {check['target']}) {'met' if check['met'] else 'NOT met'}")
    console.print(f"results: {path}")
