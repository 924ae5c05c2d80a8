"""Where should the local twin run? ``tiertwin bench tiers``: device, edge or cloud, against fixed policies.

Each round runs every mode on one simulator seed (round ``r`` uses ``seed + r`` unless the seed
is fixed), so the modes of a round see the same network and the same demands:

* the **local twin placed three ways**, with the real agents, a real broker and emulated distance:

  - ``device`` - the seed's hierarchy: the local twin runs in the simulator process (the device),
    ``SimulatorLoop(..., local_twin="device")`` hosting a ``DeviceRuntime``; placements are decided
    in-process, and Kafka carries only what leaves the device. The broker and the edge twin are one
    local<->edge link away.
  - ``edge`` - the local twin as a service (``tiertwin run local``) at the edge beside the edge twin
    and the broker; the network is one local<->edge link away, so every demand crosses the link and
    its placement comes back across it.
  - ``cloud`` - everything centralized: broker, local and edge twins in the cloud, the network
    local<->edge + edge<->cloud away.

* **baselines** with no twin at all, decided at once by the simulator's fixed policy (offline and
  fast, no broker): ``no-control`` (every demand to the cloud, where the network places it by
  default, as :func:`tiertwin.connectors.simulator.no_control` does), ``always-edge`` and ``always-local``.

Distance is emulated for each tier's Kafka clients by :mod:`tiertwin.connectors.linkemu`:
a private broker (own ``TIERTWIN_HOME`` in a temp folder, own ports, the main broker's jars)
runs extra listeners ``LOCAL_EDGE`` and ``LOCAL_CLOUD`` whose advertised addresses are delay
proxies, so every request of a client bootstrapped there pays the path's delay both ways.
The shared broker is never touched. The broker stands with the twins it serves (at the edge
for ``device`` and ``edge``, in the cloud for ``cloud``), so only the crossings that the
placement implies pay a link.

Measured per mode and round (after a warm-up): per demand, end-to-end latency (decision wait +
uplink + queue + compute + backhaul + downlink, as the simulator measures it) and deadline misses,
per demand kind; per decision and tier, *decision latency* (input produced -> decision made),
*loop latency* (input observed -> decision applied by the network) and *twin staleness*. The
report pools the rounds and gives each figure's spread across them (min / max / stdev), and
checks the device mode's targets against the same round's baselines and cloud mode.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import statistics
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
from tiertwin.errors import ConfigError, TiertwinError
from tiertwin.settings import Settings
from tiertwin.stats import percentile, summary_ms
from tiertwin.topics import ACTIONS_CLOUD, ACTIONS_EDGE, ACTIONS_LOCAL, DEMANDS, OUTCOMES, TELEMETRY

PAPER_CLAIM_REDUCTION = 0.42
MODES = ("device", "edge", "cloud")                             # where the local twin runs (agents, broker, links)
BASELINES = ("no-control", "always-edge", "always-local")       # fixed policies, no twin (offline)
ALL_MODES = BASELINES + MODES
BASELINE_POLICY = {"no-control": "cloud", "always-edge": "edge", "always-local": "local"}  # as the network places by default
# The targets for the device mode (issue 14, "Performance").
TARGET_MISS_RATIO = 0.5          # device deadline misses <= 50 % of no control on the same seed
TARGET_MEAN_REDUCTION = 0.7      # device mean end-to-end latency >= 70 % lower than the cloud placement
ACTION_TOPICS = (ACTIONS_LOCAL, ACTIONS_EDGE, ACTIONS_CLOUD)
RESULTS_DIR = Path("bench-results") / "tiers"
ARCHIVED = (TELEMETRY, DEMANDS, ACTIONS_LOCAL, OUTCOMES)

# Defaults and their sources (README "Evaluation"): local<->edge is the radio access plus the
# metro hop to a MEC host - ITU-R M.2410 asks 1-4 ms one-way user-plane latency of IMT-2020;
# edge<->cloud is a regional data-centre path, tens of ms (O-RAN: near-RT loops 10 ms - 1 s,
# non-RT > 1 s, REFERENCE section 5).
LOCAL_EDGE = Link(one_way_ms=2.0, jitter_ms=0.5, loss=0.0)
EDGE_CLOUD = Link(one_way_ms=20.0, jitter_ms=3.0, loss=1e-4)

# Where each process sits: its path to the broker, by link name. "local" is the local twin
# service; in device mode the local twin lives inside the simulator process (no entry).
PLACEMENT: dict[str, dict[str, tuple[str, ...]]] = {
    "device": {"simulator": ("local_edge",), "edge": ()},
    "edge": {"simulator": ("local_edge",), "local": (), "edge": ()},
    "cloud": {"simulator": ("local_edge", "edge_cloud"), "local": (), "edge": ()},
}
LISTENERS = {("local_edge",): "LOCAL_EDGE", ("local_edge", "edge_cloud"): "LOCAL_CLOUD"}


class EvaluationError(TiertwinError):
    """A run of the evaluation failed (a job exited, the broker did not start, no decisions came)."""


@dataclass(frozen=True)
class EvalConfig:
    scenario: str = "dense-urban-xr"
    seconds: float = 20.0
    ues: int = 10
    seed: int = 7
    warmup_s: float = 5.0    # the first seconds of a run are start-up transients (first fetches, caches, metadata)
    decision_timeout_ms: float = 1000.0
    rounds: int = 3
    fixed_seed: bool = False  # True: every round on ``seed``; else round r on ``seed + r``
    local_edge: Link = LOCAL_EDGE
    edge_cloud: Link = EDGE_CLOUD
    modes: tuple[str, ...] = ALL_MODES

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in ALL_MODES]
        if unknown:
            raise ConfigError(f"mode {unknown[0]!r}: choose from {', '.join(ALL_MODES)}")
        if self.warmup_s >= self.seconds:
            raise ConfigError(f"warm-up {self.warmup_s:g} s leaves nothing of a {self.seconds:g} s run to measure")

    def links(self) -> dict[str, Link]:
        return {"local_edge": self.local_edge, "edge_cloud": self.edge_cloud}

    def round_seed(self, round_index: int) -> int:
        """The seed every mode of round ``round_index`` runs on.

        >>> EvalConfig(seed=7).round_seed(2), EvalConfig(seed=7, fixed_seed=True).round_seed(2)
        (9, 7)
        """
        return self.seed if self.fixed_seed else self.seed + round_index

    def scenario_spec(self, default_placement: str | None = None):
        """The scenario with this run's UEs, a decision timeout long enough to measure every decision,
        the data-plane backhaul equal to the emulated edge<->cloud link (one consistent world), and
        ``default_placement`` (a baseline's fixed policy) when given."""
        from tiertwin.connectors.simulator import load_scenario

        spec = load_scenario(self.scenario).with_overrides(ues=self.ues)
        data = spec.model_dump()
        data["compute"] = {**data["compute"], "decision_timeout_ms": self.decision_timeout_ms,
                           "backhaul_latency_ms": self.edge_cloud.one_way_ms}
        if default_placement is not None:
            data["compute"]["default_placement"] = default_placement
        return type(spec).model_validate(data)


# =============================================================================================
# The private broker with per-tier listeners behind link emulators
# =============================================================================================
class EvalBroker:
    """A private managed broker whose ``LOCAL_EDGE`` / ``LOCAL_CLOUD`` listeners are reached through
    link emulators (one process each). ``settings_for(path)`` gives a tier's client settings."""

    def __init__(self, links: dict[str, Link], home: Path | None = None, main: Settings | None = None):
        from tiertwin.connectors.broker import ManagedBroker

        self.links = links
        self.own_home = home is None
        self.home = Path(home or tempfile.mkdtemp(prefix="tiertwin-eval-"))
        # bootstrap_servers is always explicit (ManagedBroker.private): child processes must never fall
        # back to the shared broker.
        self.broker = ManagedBroker.private(self.home, main=main, listeners=list(LISTENERS.values()),
                                            broker_heap_mb=384, connect_timeout_s=15)
        self.settings = self.broker.settings
        self.routes = {path: self.broker.extra_listeners[name] for path, name in LISTENERS.items()}  # bind, proxy
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

    def flush(self, timeout_s: float | None = 60.0) -> None:
        self.sink.flush(timeout_s)


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

    def commit(self, offsets=None) -> bool:
        return self.source.commit(offsets)

    def close(self) -> None:
        self.source.close()


@dataclass
class ModeRun:
    """What one mode produced in one round: the records the network saw, and the run's bounds."""

    mode: str
    demands: list[dict]
    outcomes: list[dict]
    decisions: list[tuple[dict, int]]    # (Decision, wall ns when the network had it)
    published: dict
    start_ms: int
    measured_s: float
    wall_s: float
    steps_behind: int = 0
    round: int = 0
    seed: int = 0


def run_baseline(mode: str, config: EvalConfig, round_index: int = 0) -> ModeRun:
    """A fixed policy places every demand at once (no twin, no Kafka): the simulator as fast as it goes.

    Event times are what count, not the wall clock, so an offline run of ``seconds`` issues the same
    demands as a wall-clock run of the same seed.
    """
    from tiertwin.connectors.simulator import MemorySink, SimulatorLoop, World

    seed = config.round_seed(round_index)
    sink = RecordingSink(MemorySink(keep=False))
    world = World(config.scenario_spec(BASELINE_POLICY[mode]), seed=seed)
    started = time.monotonic()
    summary = SimulatorLoop(world, sink).run(config.seconds)
    return ModeRun(mode, sink.demands, sink.outcomes, [], dict(sink.published), world.start_ms,
                   config.seconds - config.warmup_s, time.monotonic() - started, summary.steps_behind,
                   round_index, seed)


def _agent_specs(mode: str, tag: str):
    """The agents a mode deploys: the local twin service (not in device mode) and the edge twin."""
    from tiertwin.jobs.ops.launcher import JobSpec
    from tiertwin.pipelines.local_twin import LocalAgentConfig

    specs = []
    for tier in PLACEMENT[mode]:
        if tier == "simulator":
            continue
        config: dict[str, Any] = {"from_beginning": True, "instance_id": f"eval-{mode}-{tier}"}
        if tier == "local" and "site" in LocalAgentConfig.model_fields:
            config["site"] = mode      # stamped on its Decisions: where this twin ran
        specs.append(JobSpec(name=f"eval-{mode}-{tier}", tier=tier, group_id=f"eval-{tag}-{tier}", config=config))
    return specs


def _wait_for_groups(settings: Settings, groups: list[str], jobs: list[str], timeout_s: float = 60.0) -> None:
    """Until every agent's consumer group is Stable with its partitions assigned (else fail with the job log)."""
    from kafka.errors import KafkaError

    from tiertwin.connectors.kafka import admin_client
    from tiertwin.jobs.ops.launcher import status_of

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




def device_mode_available() -> bool:
    """Whether this simulator can host the local twin in its own process (``local_twin="device"``)."""
    from tiertwin.connectors.simulator import SimulatorLoop

    return "local_twin" in inspect.signature(SimulatorLoop.__init__).parameters


def run_controlled(mode: str, config: EvalConfig, broker: EvalBroker, round_index: int = 0,
                   on_progress: Callable[[str], None] = lambda _: None) -> ModeRun:
    """Run the agents placed as ``mode`` says and the simulator on the wall clock; record what happens.

    In device mode the simulator hosts the UEs' local twins (a device runtime in its process, its
    Kafka clients where the network is); it reads only the edge's and cloud's decisions.
    """
    from tiertwin.connectors.kafka import KafkaSink, KafkaSource
    from tiertwin.connectors.simulator import SimulatorLoop, SimulatorTopics, World
    from tiertwin.jobs.ops.launcher import deploy, stop
    from tiertwin.schemas import SchemaRegistry

    if mode == "device" and not device_mode_available():
        raise EvaluationError("device mode needs a simulator that hosts the local twin "
                              "(SimulatorLoop(..., local_twin='device')); this one does not")
    placement = PLACEMENT[mode]
    seed = config.round_seed(round_index)
    broker.reset_topics()
    tag = f"{mode}-{uuid.uuid4().hex[:8]}"
    specs = _agent_specs(mode, tag)
    topics = SimulatorTopics()
    started: list[str] = []
    sink = source = runtime = None
    try:
        for spec in specs:
            deploy(spec, broker.settings_for(placement[spec.tier]))
            started.append(spec.name)
        _wait_for_groups(broker.settings, [s.group_id for s in specs], started)
        where = ", ".join(f"{tier} {'+'.join(path) or 'beside the broker'}" for tier, path in placement.items())
        on_progress(f"round {round_index + 1} {mode}: agents ready ({where})")
        sim_settings = broker.settings_for(placement["simulator"])
        registry = SchemaRegistry.default()
        sink = RecordingSink(KafkaSink(sim_settings, registry, profile="low-latency", client_id=f"eval-{mode}-simulator"))
        # A long poll: a fetch waits at the broker for the next decision instead of returning empty
        # every few ms, so a remote client pays one one-way delay per decision, not a polling cycle.
        decision_topics = topics.decision_topics("device") if mode == "device" else ACTION_TOPICS
        source = RecordingSource(KafkaSource(decision_topics, f"eval-{tag}-simulator", sim_settings, registry,
                                             on_undecodable="raise", from_beginning=True,
                                             client_id=f"eval-{mode}-simulator", fetch_max_wait_ms=200))
        device: dict[str, Any] = {}
        if mode == "device":
            runtime = _recording_runtime(sim_settings, f"eval-{tag}", topics)
            device = {"local_twin": "device", "runtime": runtime}
        world = World(config.scenario_spec(), seed=seed)
        # Commits and flushes are bookkeeping for restarts; inside a run they would block the
        # wall-clock loop for a round trip, an artefact of this loop rather than of the distance.
        # SimulatorLoop applies the decisions that have arrived once per step, also when it runs behind the
        # wall clock, so a loaded machine's lag is not charged to every demand's decision wait.
        loop = SimulatorLoop(world, sink, source, topics, realtime=True, commit_interval_s=3600.0, **device)
        wall = time.monotonic()
        with _frozen_heap():
            summary = loop.run(config.seconds)
        wall = time.monotonic() - wall
    finally:
        if runtime is not None:
            runtime.close()      # its uplink sends what the device twins decided, summarised and learnt
        for name in reversed(started):
            stop(name, broker.settings, timeout_s=15)
        if source is not None:
            source.close()
        if sink is not None:
            sink.sink.close()
    decisions, outcomes = source.decisions, sink.outcomes
    if runtime is not None:   # decided and told in the simulator process: applied the moment they were made
        decisions, outcomes = decisions + runtime.decisions, outcomes + runtime.outcomes
    if not decisions:
        raise EvaluationError(f"{mode}: the network received no decisions; agent logs under {broker.home}/jobs")
    return ModeRun(mode, sink.demands, outcomes, decisions, dict(sink.published), world.start_ms,
                   config.seconds - config.warmup_s, wall, summary.steps_behind, round_index, seed)


@contextlib.contextmanager
def _frozen_heap():
    """The heap frozen for a live run, as ``tiertwin sim`` freezes it (full collections walking everything the
    process loaded, and here every record of the earlier runs, would pause the simulator and the device twins'
    placements for tens of ms); unfrozen after it, since this process goes on."""
    import gc

    from tiertwin.procs import freeze_heap

    freeze_heap()
    try:
        yield
    finally:
        gc.unfreeze()


def _recording_runtime(settings: Settings, device_id: str, topics: Any) -> Any:
    """The device runtime the simulator hosts in device mode, keeping what its twins decided and were told."""
    from tiertwin.pipelines.device import DeviceConfig, DeviceRuntime

    class RecordingRuntime(DeviceRuntime):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.decisions: list[tuple[dict, int]] = []
            self.outcomes: list[dict] = []

        def place(self, demand: dict, *args: Any, **kwargs: Any) -> dict:
            decision = super().place(demand, *args, **kwargs)
            self.decisions.append((decision, decision["decided_ns"]))
            return decision

        def report(self, outcome: dict, *args: Any, **kwargs: Any) -> Any:
            self.outcomes.append(outcome)
            return super().report(outcome, *args, **kwargs)

    return RecordingRuntime(DeviceConfig(device_id=device_id, topics=topics.device_topics()), settings, connect=True)


# =============================================================================================
# Metrics
# =============================================================================================
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
            "demand_latency_ms": summary_ms(self.demand_latency_ms), "by_kind": self.by_kind,
            "placements": self.placements, "by_placement": self.by_placement, "decided": self.decided, "defaulted": self.defaulted,
            "decisions_by_kind": self.decisions_by_kind,
            "decisions_per_s": {t: len(v) / self.measured_s for t, v in self.decision_ms.items()} if self.measured_s else {},
            "decision_latency_ms": {t: summary_ms(v) for t, v in self.decision_ms.items()},
            "loop_latency_ms": {t: summary_ms(v) for t, v in self.loop_ms.items()},
            "staleness_ms": {t: summary_ms(v) for t, v in self.staleness_ms.items()},
            "steps_behind": self.steps_behind, "measured_s": self.measured_s, "wall_s": self.wall_s,
        }


def measure(runs: list[ModeRun], warmup_s: float) -> ModeMetrics:
    """Metrics of one mode's runs (pooled), counting only inputs that came after each run's warm-up.

    Every demand has its Outcome: at the end the loop gives pending demands their timeout and runs
    the devices' queued work to completion.
    """
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
    m.by_kind = {k: {"demands": len(v), "misses": sum(not met for _, met in v),
                     "mean_ms": float(np.mean([x for x, _ in v])), "p99_ms": percentile([x for x, _ in v], 99),
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


def reduction(value: float, reference: float) -> float:
    """Relative reduction of ``value`` against ``reference`` (0.42 = 42 % lower).

    >>> round(reduction(58.0, 100.0), 2)
    0.42
    """
    return 1.0 - value / reference if reference else float("nan")


def ratio(value: float, reference: float) -> float:
    """``value / reference``, NaN when the reference is 0 or either is NaN.

    >>> ratio(0.2, 0.8), ratio(0.1, 0.0) != ratio(0.1, 0.0)
    (0.25, True)
    """
    return value / reference if reference and reference == reference else float("nan")


def spread(values: list[float]) -> dict[str, Any]:
    """Min, max and sample standard deviation of one figure across rounds (NaNs left out), and the values.

    >>> s = spread([10.0, 14.0, 12.0])
    >>> s["min"], s["max"], s["stdev"]
    (10.0, 14.0, 2.0)
    >>> spread([float("nan")])["min"] != spread([float("nan")])["min"]
    True
    """
    finite = [v for v in values if v == v]
    nan = float("nan")
    return {"min": min(finite) if finite else nan, "max": max(finite) if finite else nan,
            "stdev": statistics.stdev(finite) if len(finite) > 1 else (0.0 if finite else nan),
            "values": list(values)}


def round_figures(m: ModeMetrics) -> dict[str, Any]:
    """The figures of one run whose spread across rounds the report gives."""
    d = summary_ms(m.demand_latency_ms)
    return {"demands": m.demands, "mean_ms": d["mean"], "p99_ms": d["p99"],
            "deadline_miss_rate": m.deadline_misses / m.demands if m.demands else float("nan"),
            "by_kind_miss_rate": {k: v["deadline_miss_rate"] for k, v in m.by_kind.items()},
            "by_kind_mean_ms": {k: v["mean_ms"] for k, v in m.by_kind.items()},
            "decision_p50_ms": {t: summary_ms(v)["p50"] for t, v in m.decision_ms.items()},
            "decision_p99_ms": {t: summary_ms(v)["p99"] for t, v in m.decision_ms.items()}}


def mode_summary(runs: list[ModeRun], warmup_s: float) -> tuple[ModeMetrics, dict[str, Any]]:
    """One mode over its rounds: pooled metrics, each round's figures, and their spread."""
    pooled = measure(runs, warmup_s)
    per_round = [round_figures(measure([run], warmup_s)) for run in runs]
    summary = pooled.summary()
    summary["rounds"] = [{"round": run.round, "seed": run.seed, **figures} for run, figures in zip(runs, per_round)]
    summary["spread"] = {
        name: spread([r[name] for r in per_round]) for name in ("mean_ms", "p99_ms", "deadline_miss_rate")}
    for name in ("by_kind_miss_rate", "by_kind_mean_ms", "decision_p50_ms", "decision_p99_ms"):
        keys = sorted({k for r in per_round for k in r[name]})
        summary["spread"][name] = {k: spread([r[name].get(k, float("nan")) for r in per_round]) for k in keys}
    return pooled, summary


# =============================================================================================
# The whole evaluation: rounds of every mode on one seed each, compared within each round
# =============================================================================================
def run_evaluation(config: EvalConfig, out_dir: Path = RESULTS_DIR, on_progress: Callable[[str], None] = print,
                   broker: EvalBroker | None = None, archive: bool = True) -> dict[str, Any]:
    """Run every mode of ``config`` for ``config.rounds`` rounds; write the report; return the results.

    ``broker``: an already started :class:`EvalBroker` with ``config``'s links (else one is started
    and stopped here, and only if a mode needs agents: baselines alone run without Kafka).
    """
    from tiertwin.jobs.experiments.evaluation_report import write_report

    skipped: dict[str, str] = {}
    if "device" in config.modes and not device_mode_available():
        skipped["device"] = "this simulator cannot host the local twin in its process (SimulatorLoop local_twin)"
        on_progress(f"device mode skipped: {skipped['device']}")
    modes = [m for m in config.modes if m not in skipped]
    runs: dict[str, list[ModeRun]] = {m: [] for m in modes}
    load: dict[str, list[list[float]]] = {}
    baselines = [m for m in modes if m in BASELINES]
    controlled = [m for m in modes if m in PLACEMENT]
    if controlled and broker is None:
        on_progress("starting the evaluation broker and link emulators")
    with contextlib.ExitStack() as stack:
        running = None
        if controlled:
            running = broker if broker is not None else stack.enter_context(EvalBroker(config.links()))
        for r in range(config.rounds):
            for mode in baselines:
                run = run_baseline(mode, config, r)
                runs[mode].append(run)
                on_progress(f"round {r + 1} {mode}: {len(run.outcomes)} outcomes (seed {run.seed}, fixed policy, "
                            f"{run.wall_s:.1f} s offline)")
            # The order of the live modes alternates between rounds, so drifting load on a shared machine hits all alike.
            for mode in controlled if r % 2 == 0 else controlled[::-1]:
                before = os.getloadavg()[0]
                run = run_controlled(mode, config, running, r, on_progress)
                runs[mode].append(run)
                load.setdefault(mode, []).append([round(before, 2), round(os.getloadavg()[0], 2)])
                if archive and mode == _archived_mode(controlled) and r == 0:
                    _archive_run(mode, config, running, out_dir, on_progress)
                on_progress(f"round {r + 1} {mode}: {len(run.decisions)} decisions, {len(run.outcomes)} outcomes "
                            f"in {run.wall_s:.0f} s (seed {run.seed})")
    metrics, summaries = {}, {}
    for mode, mode_runs in runs.items():
        metrics[mode], summaries[mode] = mode_summary(mode_runs, config.warmup_s)
    results = {"config": _config_dict(config), "modes": summaries,
               "machine": {"cpus": os.cpu_count(), "load_average_before_after": load}, "skipped": skipped}
    results["comparison"] = compare(metrics, runs, config.warmup_s)
    results["targets"] = targets(results["comparison"])
    write_report(results, metrics, out_dir)
    return results


def _archived_mode(controlled: list[str]) -> str | None:
    """The live mode whose first run is archived for ``tiertwin whatif``: the twin closest to the device."""
    return next((m for m in ("device", "edge", "cloud") if m in controlled), None)


def _archive_run(mode: str, config: EvalConfig, broker: EvalBroker, out_dir: Path,
                 on_progress: Callable[[str], None]) -> None:
    from tiertwin.connectors.archive import archive_topics

    log = out_dir / f"log-{mode}"
    shutil.rmtree(log, ignore_errors=True)
    archive_topics(ARCHIVED, log, broker.settings)
    scenario_file = out_dir / "scenario.yaml"
    scenario_file.write_text(yaml.safe_dump(config.scenario_spec().model_dump(mode="json"), sort_keys=False))
    on_progress(f"{mode} run archived to {log} (try `tiertwin whatif {log} --scenario {scenario_file} "
                "--a logged --b agent`)")


def _config_dict(config: EvalConfig) -> dict[str, Any]:
    d = asdict(config)
    d["local_edge"], d["edge_cloud"] = asdict(config.local_edge), asdict(config.edge_cloud)
    d["seeds"] = [config.round_seed(r) for r in range(config.rounds)]
    d["placement"] = {m: {t: "+".join(p) or "beside the broker" for t, p in pl.items()} for m, pl in PLACEMENT.items()}
    d["baseline_policy"] = dict(BASELINE_POLICY)
    return d


# Pairs compared, (mode, reference): each figure per round (same seed) and pooled over the rounds.
PAIRS = (("device", "no-control"), ("device", "cloud"), ("device", "edge"), ("device", "always-edge"),
         ("device", "always-local"), ("edge", "cloud"), ("edge", "no-control"))


def compare(metrics: dict[str, ModeMetrics], runs: dict[str, list[ModeRun]], warmup_s: float) -> dict[str, Any]:
    """Each pair of :data:`PAIRS` present: mean / p99 end-to-end reduction and deadline-miss ratio, pooled
    and per round (the rounds a pair shares, so both sides ran on the same seed)."""
    out: dict[str, Any] = {"paper_claim_reduction": PAPER_CLAIM_REDUCTION}
    per_run = {m: {r.round: measure([r], warmup_s) for r in mode_runs} for m, mode_runs in runs.items()}
    for mode, ref in PAIRS:
        if mode not in metrics or ref not in metrics or not metrics[mode].demands or not metrics[ref].demands:
            continue
        pooled = _pair_figures(metrics[mode], metrics[ref])
        rounds = sorted(set(per_run[mode]) & set(per_run[ref]))
        each = [_pair_figures(per_run[mode][r], per_run[ref][r]) for r in rounds]
        out[f"{mode}_vs_{ref}"] = {**pooled, "rounds": each,
                                    "spread": {k: spread([e[k] for e in each]) for k in pooled}}
    e, c = metrics.get("edge"), metrics.get("cloud")
    if e is not None and c is not None and e.loop_ms.get("local") and c.loop_ms.get("local"):
        el, cl = summary_ms(e.loop_ms["local"]), summary_ms(c.loop_ms["local"])
        out["edge_local_loop_faster_than_cloud"] = bool(el["mean"] < cl["mean"] and el["p50"] < cl["p50"])
    return out


def _pair_figures(m: ModeMetrics, ref: ModeMetrics) -> dict[str, float]:
    ms, rs = summary_ms(m.demand_latency_ms), summary_ms(ref.demand_latency_ms)
    miss = m.deadline_misses / m.demands if m.demands else float("nan")
    ref_miss = ref.deadline_misses / ref.demands if ref.demands else float("nan")
    return {"mean_reduction": reduction(ms["mean"], rs["mean"]), "p99_reduction": reduction(ms["p99"], rs["p99"]),
            "miss_ratio": ratio(miss, ref_miss)}


def targets(comparison: dict[str, Any]) -> dict[str, Any]:
    """The device mode's targets (issue 14), judged pooled and in every round.

    "The cloud placement" is read as the ``cloud`` mode (the local twin placed in the cloud); the
    reduction against no control (every demand run in the cloud) is given beside it.
    """
    out: dict[str, Any] = {}
    checks = (("misses_vs_no_control", "device_vs_no-control", "miss_ratio", lambda v: v <= TARGET_MISS_RATIO,
               f"device deadline misses <= {TARGET_MISS_RATIO:.0%} of no control"),
              ("mean_vs_cloud", "device_vs_cloud", "mean_reduction", lambda v: v >= TARGET_MEAN_REDUCTION,
               f"device mean end-to-end latency >= {TARGET_MEAN_REDUCTION:.0%} lower than the cloud mode"),
              ("mean_vs_no_control", "device_vs_no-control", "mean_reduction", lambda v: v >= TARGET_MEAN_REDUCTION,
               f"device mean end-to-end latency >= {TARGET_MEAN_REDUCTION:.0%} lower than no control (all in the cloud)"))
    for name, pair, figure, ok, text in checks:
        if pair not in comparison:
            continue
        value, each = comparison[pair][figure], [r[figure] for r in comparison[pair]["rounds"]]
        out[name] = {"target": text, "value": value, "met": bool(value == value and ok(value)),
                     "rounds_met": sum(bool(v == v and ok(v)) for v in each), "rounds": len(each)}
    return out
