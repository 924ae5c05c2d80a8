"""Hierarchical vs centralized twin under emulated network distance: ``tiertwin bench tiers``.

The same simulator seed runs three times:

* **baseline** - no control: the simulator's default policy places every demand (no agents).
* **hierarchical** - the twin as built: the broker sits at the local site with the network,
  the local agent beside it (no link), the edge agent one local<->edge link away.
* **centralized** - the same agents and models, all at the cloud: the broker and every agent
  sit in the cloud, and the network (the simulator) is local<->edge + edge<->cloud away, so
  every telemetry record and demand crosses both links and every decision comes back.

Distance is emulated for each tier's Kafka clients by :mod:`tiertwin.connectors.linkemu`:
a private broker (own ``TIERTWIN_HOME`` in a temp folder, own ports, the main broker's jars)
runs extra listeners ``LOCAL_EDGE`` and ``LOCAL_CLOUD`` whose advertised addresses are delay
proxies, so every request of a client bootstrapped there pays the path's delay both ways.
The shared broker is never touched.

Placing the broker with the deciding tier (the network side for hierarchical, the cloud for
centralized) keeps agent-to-agent traffic local in both modes, as it would be in a real
deployment; only the crossings the architecture implies pay a link.

Measured per mode (after a warm-up): per decision, *decision latency* (input produced ->
decision made), *loop latency* (input observed -> decision applied by the network), *twin
staleness* (age of the newest observation behind the decision when it is made); per demand,
end-to-end latency (decision wait + uplink + queue + compute + backhaul + downlink, as the
simulator measures it) and deadline misses; throughput (demands and decisions per second).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from tiertwin.connectors.linkemu import Link, wait_listening
from tiertwin.errors import TiertwinError
from tiertwin.settings import Settings

PAPER_CLAIM_REDUCTION = 0.42
MODES = ("baseline", "hierarchical", "centralized")
ACTION_TOPICS = ("tiertwin.actions.local", "tiertwin.actions.edge", "tiertwin.actions.cloud")
RESULTS_DIR = Path("bench-results") / "tiers"
ARCHIVED = ("tiertwin.local.telemetry", "tiertwin.local.demands", "tiertwin.actions.local", "tiertwin.outcomes")

# Defaults and their sources (README "Evaluation"): local<->edge is the radio access plus the
# metro hop to a MEC host - ITU-R M.2410 asks 1-4 ms one-way user-plane latency of IMT-2020;
# edge<->cloud is a regional data-centre path, tens of ms (O-RAN: near-RT loops 10 ms - 1 s,
# non-RT > 1 s, REFERENCE section 5).
LOCAL_EDGE = Link(one_way_ms=2.0, jitter_ms=0.5, loss=0.0)
EDGE_CLOUD = Link(one_way_ms=20.0, jitter_ms=3.0, loss=1e-4)

# Where each process sits: its path to the broker, by link name.
PLACEMENT: dict[str, dict[str, tuple[str, ...]]] = {
    "hierarchical": {"simulator": (), "local": (), "edge": ("local_edge",)},
    "centralized": {"simulator": ("local_edge", "edge_cloud"), "local": (), "edge": ()},
}
LISTENERS = {("local_edge",): "LOCAL_EDGE", ("local_edge", "edge_cloud"): "LOCAL_CLOUD"}


class EvaluationError(TiertwinError):
    """A run of the evaluation failed (a job exited, the broker did not start, no decisions came)."""


@dataclass(frozen=True)
class EvalConfig:
    scenario: str = "dense-urban-xr"
    seconds: float = 25.0
    ues: int = 10
    seed: int = 7
    warmup_s: float = 6.0    # the first seconds of a run are start-up transients (first fetches, caches, metadata)
    decision_timeout_ms: float = 1000.0
    rounds: int = 1
    local_edge: Link = LOCAL_EDGE
    edge_cloud: Link = EDGE_CLOUD
    modes: tuple[str, ...] = MODES

    def links(self) -> dict[str, Link]:
        return {"local_edge": self.local_edge, "edge_cloud": self.edge_cloud}

    def scenario_spec(self):
        """The scenario with this run's UEs, a decision timeout long enough to measure every decision,
        and the data-plane backhaul equal to the emulated edge<->cloud link (one consistent world)."""
        from tiertwin.connectors.simulator import load_scenario

        spec = load_scenario(self.scenario).with_overrides(ues=self.ues)
        data = spec.model_dump()
        data["compute"] = {**data["compute"], "decision_timeout_ms": self.decision_timeout_ms,
                           "backhaul_latency_ms": self.edge_cloud.one_way_ms}
        return type(spec).model_validate(data)


# =============================================================================================
# The private broker with per-tier listeners behind link emulators
# =============================================================================================
def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class EvalBroker:
    """A private managed broker whose ``LOCAL_EDGE`` / ``LOCAL_CLOUD`` listeners are reached through
    link emulators (one process each). ``settings_for(path)`` gives a tier's client settings."""

    def __init__(self, links: dict[str, Link], home: Path | None = None, main: Settings | None = None):
        from tiertwin.connectors.broker import ManagedBroker

        self.links = links
        self.own_home = home is None
        self.home = Path(home or tempfile.mkdtemp(prefix="tiertwin-eval-"))
        broker_port, controller, *ports = free_ports(2 + 2 * len(LISTENERS))
        self.routes = {path: (ports[2 * i], ports[2 * i + 1]) for i, path in enumerate(LISTENERS)}  # bind, proxy
        # bootstrap_servers is always explicit: child processes must never fall back to the shared broker.
        self.settings = Settings(home=self.home, broker_port=broker_port, controller_port=controller,
                                 bootstrap_servers=f"127.0.0.1:{broker_port}", broker_heap_mb=384,
                                 connect_timeout_s=15)
        main_libs = ManagedBroker(main or Settings.from_env()).paths.libs
        libs = self.home / "kafka" / "libs"
        if not libs.exists() and (main_libs / ".pom-sha256").exists():
            libs.parent.mkdir(parents=True, exist_ok=True)
            libs.symlink_to(main_libs.resolve())   # reuse the jars the main broker resolved
        self.broker = ManagedBroker(self.settings, extra_listeners={
            LISTENERS[path]: route for path, route in self.routes.items()})
        self.proxies: list[subprocess.Popen] = []

    def start(self) -> "EvalBroker":
        from tiertwin.connectors.topics import apply_topology, load_topology

        self.broker.start()
        log = open(self.home / "linkemu.log", "ab")
        for path, (bind, proxy) in self.routes.items():
            cmd = [sys.executable, "-m", "tiertwin.connectors.linkemu", "--listen", str(proxy),
                   "--upstream", f"127.0.0.1:{bind}"]
            for name in path:
                cmd += ["--link", self.links[name].spec()]
            self.proxies.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                 start_new_session=True))
        for path, (_, proxy) in self.routes.items():
            if not wait_listening("127.0.0.1", proxy, 20.0):
                raise EvaluationError(f"link emulator for {'+'.join(path)} did not listen; see {self.home}/linkemu.log")
        apply_topology(load_topology(), self.settings)
        return self

    def settings_for(self, path: tuple[str, ...]) -> Settings:
        """Client settings of a process ``path`` links away from the broker (``()``: beside it)."""
        if not path:
            return self.settings
        return self.settings.model_copy(update={"bootstrap_servers": f"127.0.0.1:{self.routes[tuple(path)][1]}"})

    def reset_topics(self) -> None:
        """Delete and recreate every topic of the topology, so a mode starts from empty topics and changelogs."""
        from tiertwin.connectors.kafka import admin_client
        from tiertwin.connectors.topics import apply_topology, load_topology

        topology = load_topology()
        names = [t.name for t in topology.topics]
        admin = admin_client(self.settings, "tiertwin-eval-admin")
        try:
            admin.delete_topics(names)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and set(names) & set(admin.list_topics()):
                time.sleep(0.2)
        finally:
            admin.close()
        for attempt in range(20):  # a just-deleted name can be refused for a moment
            try:
                apply_topology(topology, self.settings)
                return
            except Exception:  # noqa: BLE001 - retried, then raised
                if attempt == 19:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        for proc in self.proxies:
            proc.terminate()
        for proc in self.proxies:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.proxies.clear()
        self.broker.stop()
        if self.own_home:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> "EvalBroker":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


# =============================================================================================
# One mode: agents placed by the mode, the simulator on the wall clock, everything recorded
# =============================================================================================
class RecordingSink:
    """The simulator's sink, keeping the Demand and Outcome records it publishes (the ground truth)."""

    def __init__(self, sink: Any):
        self.sink = sink
        self.demands: list[dict] = []
        self.outcomes: list[dict] = []
        self.published: Counter = Counter()

    def send(self, topic: str, schema: str, record: dict, key: Any = None, timestamp_ms: int | None = None) -> None:
        self.sink.send(topic, schema, record, key=key, timestamp_ms=timestamp_ms)
        self.published[schema] += 1
        if schema == "Outcome":
            self.outcomes.append(record)
        elif schema == "Demand":
            self.demands.append(record)

    def flush(self) -> None:
        self.sink.flush()


class RecordingSource:
    """The simulator's decision source, noting when each Decision reached the network."""

    def __init__(self, source: Any):
        self.source = source
        self.decisions: list[tuple[dict, int]] = []

    @property
    def consumer(self):
        return self.source.consumer

    def poll(self, timeout_ms: int = 100):
        batch = self.source.poll(timeout_ms)
        now = time.time_ns()
        self.decisions += [(r.value, now) for r in batch if r.schema == "tiertwin.Decision"]
        return batch

    def commit(self) -> None:
        self.source.commit()

    def close(self) -> None:
        self.source.close()


def _polling_loop_class():
    from tiertwin.connectors.simulator import SimulatorLoop

    class PromptDecisionLoop(SimulatorLoop):
        """The wall-clock loop, applying the decisions that have arrived once per step even when behind.

        ``SimulatorLoop`` polls decisions only while waiting for the next step, so a loop that has
        fallen behind the wall clock (a loaded machine) would leave arrived decisions unapplied and
        charge its own lag to the decision wait of every demand, in both modes.
        """

        def _wait_until(self, due: float) -> None:
            if due - time.monotonic() <= 0.001:
                self._poll_decisions(0)
                self._publish(self.topics.outcomes, "Outcome", self.world.outcome_records())
                return
            super()._wait_until(due)

    return PromptDecisionLoop


@dataclass
class ModeRun:
    """What one mode produced: the records the network saw, and the run's bounds."""

    mode: str
    demands: list[dict]
    outcomes: list[dict]
    decisions: list[tuple[dict, int]]
    published: dict
    start_ms: int
    measured_s: float
    wall_s: float
    steps_behind: int = 0


def run_baseline(config: EvalConfig) -> ModeRun:
    """No control: the default policy places every demand at once (no agents, no Kafka needed)."""
    from tiertwin.connectors.simulator import MemorySink, SimulatorLoop, World

    sink = RecordingSink(MemorySink(keep=False))
    world = World(config.scenario_spec(), seed=config.seed)
    started = time.monotonic()
    summary = SimulatorLoop(world, sink).run(config.seconds)
    return ModeRun("baseline", sink.demands, sink.outcomes, [], dict(sink.published), world.start_ms,
                   config.seconds - config.warmup_s, time.monotonic() - started, summary.steps_behind)


def _agent_specs(mode: str, tag: str):
    from tiertwin.jobs.launcher import JobSpec

    return [JobSpec(name=f"eval-{mode}-{tier}", tier=tier, group_id=f"eval-{tag}-{tier}",
                    config={"from_beginning": True, "instance_id": f"eval-{mode}-{tier}"})
            for tier in ("local", "edge")]


def _wait_for_groups(settings: Settings, groups: list[str], jobs: list[str], timeout_s: float = 60.0) -> None:
    """Until every agent's consumer group is Stable with its partitions assigned (else fail with the job log)."""
    from kafka.errors import KafkaError

    from tiertwin.connectors.kafka import admin_client
    from tiertwin.jobs.launcher import status_of

    admin = admin_client(settings, "tiertwin-eval-admin")
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for job in jobs:
                state = status_of(job, settings)
                if state["running"] == 0:
                    raise EvaluationError(f"agent {job} exited; see {state['instances'][0]['log']}:\n"
                                          f"{_tail(Path(state['instances'][0]['log']))}")
            try:
                described = admin.describe_groups(groups)
            except KafkaError:   # the group coordinator is still being elected
                described = {}
            if all(_group_ready(described.get(g)) for g in groups):
                return
            time.sleep(0.3)
    finally:
        admin.close()
    raise EvaluationError(f"agent groups {groups} not ready within {timeout_s:.0f}s")


def _group_ready(group: dict | None) -> bool:
    if not group:
        return False
    state = group.get("group_state") or group.get("state")
    members = group.get("members") or []
    return state == "Stable" and bool(members)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_controlled(mode: str, config: EvalConfig, broker: EvalBroker,
                   on_progress: Callable[[str], None] = lambda _: None) -> ModeRun:
    """Run the agents placed as ``mode`` says and the simulator on the wall clock; record what happens."""
    from tiertwin.connectors.kafka import KafkaSink, KafkaSource
    from tiertwin.connectors.simulator import SimulatorTopics, World
    from tiertwin.jobs.launcher import deploy, stop
    from tiertwin.schemas import SchemaRegistry

    placement = PLACEMENT[mode]
    broker.reset_topics()
    tag = f"{mode}-{uuid.uuid4().hex[:8]}"
    specs = _agent_specs(mode, tag)
    started: list[str] = []
    sink = source = None
    try:
        for spec in specs:
            deploy(spec, broker.settings_for(placement[spec.tier]))
            started.append(spec.name)
        _wait_for_groups(broker.settings, [s.group_id for s in specs], started)
        where = ", ".join(f"{tier} {'+'.join(path) or 'beside the broker'}" for tier, path in placement.items())
        on_progress(f"{mode}: agents ready ({where})")
        sim_settings = broker.settings_for(placement["simulator"])
        registry = SchemaRegistry.default()
        sink = RecordingSink(KafkaSink(sim_settings, registry, profile="low-latency", client_id=f"eval-{mode}-simulator"))
        # A long poll: a fetch waits at the broker for the next decision instead of returning empty
        # every few ms, so a remote client pays one one-way delay per decision, not a polling cycle.
        source = RecordingSource(KafkaSource(ACTION_TOPICS, f"eval-{tag}-simulator", sim_settings, registry,
                                             from_beginning=True, client_id=f"eval-{mode}-simulator",
                                             fetch_max_wait_ms=200))
        world = World(config.scenario_spec(), seed=config.seed)
        # Commits and flushes are bookkeeping for restarts; inside a run they would block the
        # wall-clock loop for a round trip, an artefact of this loop rather than of the distance.
        loop = _polling_loop_class()(world, sink, source, SimulatorTopics(), realtime=True, commit_interval_s=3600.0)
        wall = time.monotonic()
        summary = loop.run(config.seconds)
        wall = time.monotonic() - wall
    finally:
        for name in reversed(started):
            stop(name, broker.settings, timeout_s=15)
        if source is not None:
            source.close()
        if sink is not None:
            sink.sink.close()
    if not source.decisions:
        raise EvaluationError(f"{mode}: the network received no decisions; agent logs under {broker.home}/jobs")
    return ModeRun(mode, sink.demands, sink.outcomes, source.decisions, dict(sink.published), world.start_ms,
                   config.seconds - config.warmup_s, wall, summary.steps_behind)


# =============================================================================================
# Metrics
# =============================================================================================
def stats_ms(values: list[float] | np.ndarray) -> dict[str, float]:
    """n, mean, p50, p90, p99, max of a latency sample (NaN when empty).

    >>> stats_ms([1.0, 2.0, 3.0, 4.0])["mean"]
    2.5
    """
    a = np.asarray(values, dtype=float)
    if not a.size:
        return {"n": 0, "mean": float("nan"), "p50": float("nan"), "p90": float("nan"), "p99": float("nan"),
                "max": float("nan")}
    return {"n": int(a.size), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


@dataclass
class ModeMetrics:
    mode: str
    demand_latency_ms: list[float] = field(default_factory=list)
    deadline_misses: int = 0
    demands: int = 0
    by_kind: dict[str, dict[str, float]] = field(default_factory=dict)
    placements: dict[str, int] = field(default_factory=dict)
    by_placement: dict[str, dict[str, float]] = field(default_factory=dict)
    decided: int = 0
    defaulted: int = 0
    decision_ms: dict[str, list[float]] = field(default_factory=dict)   # tier -> input produced -> decided
    loop_ms: dict[str, list[float]] = field(default_factory=dict)       # tier -> observed -> applied
    staleness_ms: dict[str, list[float]] = field(default_factory=dict)  # tier -> age of the newest observation
    decisions_by_kind: dict[str, int] = field(default_factory=dict)
    measured_s: float = 0.0
    steps_behind: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "demands": self.demands, "demands_per_s": self.demands / self.measured_s if self.measured_s else 0.0,
            "deadline_miss_rate": self.deadline_misses / self.demands if self.demands else float("nan"),
            "demand_latency_ms": stats_ms(self.demand_latency_ms), "by_kind": self.by_kind,
            "placements": self.placements, "by_placement": self.by_placement, "decided": self.decided, "defaulted": self.defaulted,
            "decisions_by_kind": self.decisions_by_kind,
            "decisions_per_s": {t: len(v) / self.measured_s for t, v in self.decision_ms.items()} if self.measured_s else {},
            "decision_latency_ms": {t: stats_ms(v) for t, v in self.decision_ms.items()},
            "loop_latency_ms": {t: stats_ms(v) for t, v in self.loop_ms.items()},
            "staleness_ms": {t: stats_ms(v) for t, v in self.staleness_ms.items()},
            "steps_behind": self.steps_behind, "measured_s": self.measured_s, "wall_s": self.wall_s,
        }


def measure(runs: list[ModeRun], warmup_s: float) -> ModeMetrics:
    """Metrics of one mode's runs (pooled), counting only inputs that came after each run's warm-up."""
    m = ModeMetrics(runs[0].mode, measured_s=sum(r.measured_s for r in runs),
                    steps_behind=sum(r.steps_behind for r in runs), wall_s=sum(r.wall_s for r in runs))
    per_kind: dict[str, list[tuple[float, bool]]] = {}
    waits: dict[str, list[tuple[float, float]]] = {}
    placements: Counter = Counter()
    kinds: Counter = Counter()
    for run in runs:
        from_ms = run.start_ms + warmup_s * 1000.0
        kind_of = {d["demand_id"]: d["kind"] for d in run.demands if d["ts_ms"] >= from_ms}
        for o in run.outcomes:
            if o["kind"] != "demand" or o["demand_id"] not in kind_of or o["latency_ms"] is None:
                continue
            m.demand_latency_ms.append(o["latency_ms"])
            m.demands += 1
            m.deadline_misses += not o["deadline_met"]
            placements[o["placement"]] += 1
            if o["decision_id"]:
                m.decided += 1
                m.loop_ms.setdefault("local", []).append(o["components_ms"]["decision"])
            else:
                m.defaulted += 1
            per_kind.setdefault(kind_of[o["demand_id"]], []).append((o["latency_ms"], o["deadline_met"]))
            waits.setdefault(o["placement"], []).append((o["components_ms"]["decision"], o["latency_ms"]))
        wall_ms = event_to_wall(run.demands)
        for decision, applied_ns in run.decisions:
            if decision["source_ts_ms"] < from_ms:
                continue
            tier = decision["tier"]
            kinds[f"{tier}/{decision['kind']}"] += 1
            observed_ms = wall_ms(decision["source_ts_ms"])
            m.decision_ms.setdefault(tier, []).append((decision["decided_ns"] - decision["source_emitted_ns"]) / 1e6)
            m.staleness_ms.setdefault(tier, []).append(decision["decided_ns"] / 1e6 - observed_ms)
            if tier != "local":   # placements: the simulator's own measure of the wait (above)
                m.loop_ms.setdefault(tier, []).append(applied_ns / 1e6 - observed_ms)
    m.placements = dict(placements)
    m.by_placement = {p: {"demands": len(v), "decision_wait_mean_ms": float(np.mean([w for w, _ in v])),
                          "execution_mean_ms": float(np.mean([x - w for w, x in v]))} for p, v in sorted(waits.items())}
    m.by_kind = {k: {"demands": len(v), "mean_ms": float(np.mean([x for x, _ in v])),
                     "p99_ms": float(np.percentile([x for x, _ in v], 99)),
                     "deadline_miss_rate": 1.0 - float(np.mean([met for _, met in v]))} for k, v in sorted(per_kind.items())}
    m.decisions_by_kind = dict(sorted(kinds.items()))
    return m


def event_to_wall(demands: list[dict]) -> Callable[[float], float]:
    """Event time (ms) -> the wall-clock ms at which the simulator emitted records of that time.

    A wall-clock simulator that falls behind stamps event times earlier than the wall clock;
    ages are measured against when an observation was really made, not its stamp.

    >>> to_wall = event_to_wall([{"ts_ms": 1000, "emitted_ns": 1_005_000_000}, {"ts_ms": 2000, "emitted_ns": 2_050_000_000}])
    >>> to_wall(1000), to_wall(1500)
    (1005.0, 1527.5)
    """
    pairs = sorted({(d["ts_ms"], d["emitted_ns"] / 1e6) for d in demands})
    if not pairs:
        return float
    ts, wall = np.array([p[0] for p in pairs], dtype=float), np.array([p[1] for p in pairs])
    return lambda t: float(np.interp(t, ts, wall))


def reduction(hier: float, central: float) -> float:
    """Relative reduction of ``hier`` against ``central`` (0.42 = 42 % lower).

    >>> round(reduction(58.0, 100.0), 2)
    0.42
    """
    return 1.0 - hier / central if central else float("nan")


# =============================================================================================
# The whole evaluation and its report
# =============================================================================================
def run_evaluation(config: EvalConfig, out_dir: Path = RESULTS_DIR, on_progress: Callable[[str], None] = print,
                   broker: EvalBroker | None = None, archive: bool = True) -> dict[str, Any]:
    """Run every mode of ``config`` on the same seed; write the report; return the results.

    ``broker``: an already started :class:`EvalBroker` with ``config``'s links (else one is
    started and stopped here).
    """
    runs: dict[str, list[ModeRun]] = {}
    if "baseline" in config.modes:
        runs["baseline"] = [run_baseline(config)]
        on_progress(f"baseline: {len(runs['baseline'][0].outcomes)} outcomes (default policy, no agents)")
    controlled = [m for m in config.modes if m in PLACEMENT]
    load: dict[str, list[list[float]]] = {}
    if controlled:
        if broker is None:
            on_progress("starting the evaluation broker and link emulators")
        with (EvalBroker(config.links()) if broker is None else _kept(broker)) as running:
            # Rounds alternate the order of the modes, so drifting load on a shared machine hits both alike.
            schedule = [m for r in range(config.rounds) for m in (controlled if r % 2 == 0 else controlled[::-1])]
            for mode in schedule:
                before = os.getloadavg()[0]
                run = run_controlled(mode, config, running, on_progress)
                runs.setdefault(mode, []).append(run)
                if mode == "hierarchical" and archive and len(runs[mode]) == 1:
                    from tiertwin.connectors.archive import archive_topics

                    log = out_dir / "log-hierarchical"
                    shutil.rmtree(log, ignore_errors=True)
                    archive_topics(ARCHIVED, log, running.settings)
                    scenario_file = out_dir / "scenario.yaml"
                    scenario_file.write_text(yaml.safe_dump(config.scenario_spec().model_dump(mode="json"), sort_keys=False))
                    on_progress(f"hierarchical run archived to {log} (try `tiertwin whatif {log} --scenario "
                                f"{scenario_file} --a logged --b agent`)")
                load.setdefault(mode, []).append([round(before, 2), round(os.getloadavg()[0], 2)])
                on_progress(f"{mode}: {len(run.decisions)} decisions, {len(run.outcomes)} outcomes in {run.wall_s:.0f}s")
    metrics = {mode: measure(mode_runs, config.warmup_s) for mode, mode_runs in runs.items()}
    results = {"config": _config_dict(config), "modes": {m: x.summary() for m, x in metrics.items()},
               "machine": {"cpus": os.cpu_count(), "load_average_before_after": load}}
    results["comparison"] = compare(metrics)
    write_report(results, metrics, out_dir)
    return results


@contextlib.contextmanager
def _kept(broker: EvalBroker):
    yield broker


def _config_dict(config: EvalConfig) -> dict[str, Any]:
    d = asdict(config)
    d["local_edge"], d["edge_cloud"] = asdict(config.local_edge), asdict(config.edge_cloud)
    d["placement"] = {m: {t: "+".join(p) or "beside the broker" for t, p in pl.items()} for m, pl in PLACEMENT.items()}
    return d


def compare(metrics: dict[str, ModeMetrics]) -> dict[str, Any]:
    out: dict[str, Any] = {"paper_claim_reduction": PAPER_CLAIM_REDUCTION}
    h, c = metrics.get("hierarchical"), metrics.get("centralized")
    if h is not None and c is not None and h.demands and c.demands:
        hs, cs = stats_ms(h.demand_latency_ms), stats_ms(c.demand_latency_ms)
        out["end_to_end_mean_reduction"] = reduction(hs["mean"], cs["mean"])
        out["end_to_end_p99_reduction"] = reduction(hs["p99"], cs["p99"])
        hl, cl = stats_ms(h.loop_ms.get("local", [])), stats_ms(c.loop_ms.get("local", []))
        out["local_loop_mean_reduction"] = reduction(hl["mean"], cl["mean"])
        out["local_loop_p99_reduction"] = reduction(hl["p99"], cl["p99"])
        out["hierarchical_local_faster"] = bool(hl["mean"] < cl["mean"] and hl["p50"] < cl["p50"])
    b = metrics.get("baseline")
    if b is not None and h is not None and b.demands and h.demands:
        out["hierarchical_vs_baseline_mean_reduction"] = reduction(stats_ms(h.demand_latency_ms)["mean"],
                                                                   stats_ms(b.demand_latency_ms)["mean"])
    return out


COLOURS = {"baseline": "#888888", "hierarchical": "#2a7ab0", "centralized": "#d0672a"}


def write_report(results: dict[str, Any], metrics: dict[str, ModeMetrics], out_dir: Path) -> Path:
    """``report.md`` plus PNG plots in ``out_dir``; returns the markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, attr, title in ((axes[0], "loop_ms", "loop latency: observed -> applied in the network"),
                            (axes[1], "decision_ms", "decision latency: input produced -> decided")):
        for mode, m in metrics.items():
            for tier, values in sorted(getattr(m, attr).items()):
                _cdf(ax, values, f"{mode} / {tier}", COLOURS[mode], "-" if tier == "local" else "--")
        ax.set_xscale("log")
        ax.set_xlabel("ms")
        ax.set_ylabel("CDF")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    plots.append(_save(fig, out_dir / "decision_latency_cdf.png"))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for mode, m in metrics.items():
        _cdf(ax, m.demand_latency_ms, mode, COLOURS[mode], "-")
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end demand latency (ms, decision wait + execution)")
    ax.set_ylabel("CDF")
    ax.set_title("Demands: end-to-end latency per mode")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plots.append(_save(fig, out_dir / "demand_latency_cdf.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    kinds = sorted({k for m in metrics.values() for k in m.by_kind})
    width = 0.8 / max(len(metrics), 1)
    for i, (mode, m) in enumerate(metrics.items()):
        axes[0].bar([j + i * width for j in range(len(kinds))],
                    [m.by_kind.get(k, {}).get("deadline_miss_rate", 0.0) for k in kinds], width, label=mode,
                    color=COLOURS[mode])
    axes[0].set_xticks([j + width * (len(metrics) - 1) / 2 for j in range(len(kinds))], kinds)
    axes[0].set_ylabel("deadline-miss rate")
    axes[0].set_title("Deadline misses per demand kind")
    axes[0].legend()
    for mode, m in metrics.items():
        for tier, values in sorted(m.staleness_ms.items()):
            _cdf(axes[1], values, f"{mode} / {tier}", COLOURS[mode], "-" if tier == "local" else "--")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("twin staleness at decision time (ms)")
    axes[1].set_ylabel("CDF")
    axes[1].set_title("Age of the newest observation behind a decision")
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    plots.append(_save(fig, out_dir / "deadlines_staleness.png"))

    path = out_dir / "report.md"
    path.write_text(report_markdown(results, [p.name for p in plots]))
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return path


def _cdf(ax, values, label: str, colour: str, style: str) -> None:
    a = np.sort(np.asarray(values, dtype=float))
    if a.size:
        # A log axis: the few values at or below 0.5 ms (clock resolution of event times) sit at its left edge.
        ax.plot(np.maximum(a, 0.5), np.arange(1, a.size + 1) / a.size, style, color=colour, label=f"{label} (n={a.size})")
        ax.set_xlim(left=0.5)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _f(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.{digits}f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value * 100:.1f} %"


def _change(value: float | None) -> str:
    """A reduction as words: 0.4 -> '40.0 % lower', -0.1 -> '10.0 % higher'."""
    if value is None or value != value:
        return "-"
    return f"{value * 100:.1f} % lower" if value >= 0 else f"{-value * 100:.1f} % higher"


def report_markdown(results: dict[str, Any], plots: list[str]) -> str:
    c, modes, cmp = results["config"], results["modes"], results["comparison"]
    le, ec = c["local_edge"], c["edge_cloud"]
    lines = [
        "# Hierarchical vs centralized twin", "",
        f"Scenario `{c['scenario']}`, {c['ues']} UEs, seed {c['seed']}, {c['rounds']} round(s) of {c['seconds']:g} s "
        "per mode on the wall clock, the order of the modes alternating between rounds "
        f"(first {c['warmup_s']:g} s not counted); decision timeout {c['decision_timeout_ms']:g} ms.",
        f"Links (one way): local<->edge {le['one_way_ms']:g} ms +- {le['jitter_ms']:g} ms, loss {le['loss']:g}; "
        f"edge<->cloud {ec['one_way_ms']:g} ms +- {ec['jitter_ms']:g} ms, loss {ec['loss']:g} "
        f"(a lost segment costs a {le['rto_ms']:g} ms retransmission timeout).", "",
        "| mode | simulator (network) | local agent | edge agent |", "|---|---|---|---|",
    ]
    for mode, placement in c["placement"].items():
        lines.append(f"| {mode} | {placement['simulator']} | {placement['local']} | {placement['edge']} |")
    lines.append("| baseline | no agents: default placement policy | - | - |")
    load = results.get("machine", {}).get("load_average_before_after", {})
    if load:
        lines += ["", f"Machine: {results['machine']['cpus']} CPUs shared with other work; 1-minute load average "
                      "before / after each run: " + ", ".join(f"{m} {a} / {b}" for m, pairs in load.items()
                                                              for a, b in pairs)
                  + " (a loaded machine stretches every latency here, in both modes)."]
    lines += ["", "## End-to-end demand latency", "",
              "| mode | demands | demands/s | mean ms | p50 ms | p99 ms | deadline misses | decided / default |",
              "|---|---|---|---|---|---|---|---|"]
    for mode, s in modes.items():
        d = s["demand_latency_ms"]
        lines.append(f"| {mode} | {s['demands']} | {_f(s['demands_per_s'])} | {_f(d['mean'])} | {_f(d['p50'])} | "
                     f"{_f(d['p99'])} | {_pct(s['deadline_miss_rate'])} | {s['decided']} / {s['defaulted']} |")
    if "end_to_end_mean_reduction" in cmp:
        lines += ["", f"**Hierarchical vs centralized: mean end-to-end latency {_change(cmp['end_to_end_mean_reduction'])}, "
                      f"p99 {_change(cmp['end_to_end_p99_reduction'])}** (the paper's summary claims "
                      f"{_pct(cmp['paper_claim_reduction'])} lower). Local decision loop: mean "
                      f"{_change(cmp['local_loop_mean_reduction'])}, p99 {_change(cmp['local_loop_p99_reduction'])}."]
    if "hierarchical_vs_baseline_mean_reduction" in cmp:
        lines.append(f"Hierarchical vs no control (baseline, which waits for no decision): mean "
                     f"{_change(cmp['hierarchical_vs_baseline_mean_reduction'])}.")
    lines += ["", "## Decisions per tier", "",
              "| mode | tier | decisions/s | decision p50 / p99 ms | loop p50 / p99 ms | staleness p50 / p99 ms |",
              "|---|---|---|---|---|---|"]
    for mode, s in modes.items():
        for tier, dl in s["decision_latency_ms"].items():
            loop, st = s["loop_latency_ms"].get(tier, stats_ms([])), s["staleness_ms"].get(tier, stats_ms([]))
            lines.append(f"| {mode} | {tier} | {_f(s['decisions_per_s'].get(tier, 0.0))} | {_f(dl['p50'])} / {_f(dl['p99'])} | "
                         f"{_f(loop['p50'])} / {_f(loop['p99'])} | {_f(st['p50'])} / {_f(st['p99'])} |")
    lines += ["", "Decision latency = input record produced -> decision made; loop latency = input observed -> "
              "decision applied by the network (for placements, the demand's wait for its decision); staleness = "
              "age of the newest observation behind the decision when it is made (when the simulator emitted "
              "it -> decided; for placements that observation is the demand itself, for edge decisions the "
              "newest telemetry in the local twin's summary).", "",
              "## Deadline misses per demand kind", "", "| mode | kind | demands | mean ms | p99 ms | misses |",
              "|---|---|---|---|---|---|"]
    for mode, s in modes.items():
        for kind, k in s["by_kind"].items():
            lines.append(f"| {mode} | {kind} | {k['demands']} | {_f(k['mean_ms'])} | {_f(k['p99_ms'])} | "
                         f"{_pct(k['deadline_miss_rate'])} |")
    lines += ["", "## Where demands ran: decision wait vs execution", "",
              "| mode | placement | demands | mean decision wait ms | mean execution ms |", "|---|---|---|---|---|"]
    for mode, s in modes.items():
        for placement, p in s["by_placement"].items():
            lines.append(f"| {mode} | {placement} | {p['demands']} | {_f(p['decision_wait_mean_ms'])} | "
                         f"{_f(p['execution_mean_ms'])} |")
    lines += ["", "## Placements and decisions", ""]
    for mode, s in modes.items():
        lines.append(f"- {mode}: placements {s['placements']}; decisions {s['decisions_by_kind'] or '-'}; "
                     f"simulator steps more than one step behind the wall clock: {s['steps_behind']} "
                     f"(the run took {s['wall_s']:.1f} s of wall clock)")
    lines += [""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)
