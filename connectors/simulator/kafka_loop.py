"""The closed loop: publish the world's records to Kafka, apply the Decisions that come back.

:class:`SimulatorLoop` steps a :class:`~tiertwin.connectors.simulator.world.World` and
after every step sends

* Telemetry -> ``topics.telemetry`` (key ue_id), Demand -> ``topics.demands`` (key ue_id),
* EdgeState -> ``topics.cell_reports`` (key cell_id), Outcome -> ``topics.outcomes`` (key ue_id,
  or the cell id for cell-level decisions),

and, when it has a ``source`` (a :class:`~tiertwin.connectors.kafka.KafkaSource` on the
action topics), applies every Decision it receives. With a source, demands wait for
their placement decision up to ``compute.decision_timeout_ms`` (the wait is measured and
reported as ``components_ms["decision"]``); then the default placement applies. A
decision the world cannot apply (unknown UE or cell, bad share, wrong record type)
goes to the dead-letter topic with reason ``inapplicable-decision``.

Where the UEs' local twins run (``local_twin``):

* ``"service"``: as a Kafka service (``tiertwin run local``): demands go out on
  ``topics.demands`` and wait for their placement on the action topics, as above.
* ``"device"``: on the device, in this process. A :class:`~tiertwin.pipelines.device.DeviceRuntime`
  hosts the twins of all the UEs; each demand is placed the moment it arises by
  ``runtime.place(demand)`` in the loop's thread, and its decision wait is the measured wall
  time of that call, so no placement is ever late. Telemetry also goes to ``runtime.observe``,
  demand Outcomes to ``runtime.report`` (the twin learns; its uplink publishes them, with the
  decisions and the LocalSummary records); Telemetry, Demands, cell reports and the Outcomes of
  applied decisions still go to Kafka. Edge and cloud decisions still arrive on the action
  topics and are applied.

Modes: ``realtime=True`` paces steps on the wall clock (event times and ``emitted_ns`` are
wall-clock times; live demos, latency benchmarks); ``realtime=False`` runs as fast as
possible on the simulated clock (training data, tests; identical seeds give identical bytes).
As fast as possible *with* a source is lockstep: after each step the simulated clock waits
until every new demand has its decision or its (wall-clock) timeout, so agents in the loop
are never outrun; ``emitted_ns`` are then wall-clock times for the agents' latency measurements.

``run(seconds)`` returns a :class:`SimSummary`; ``stop()`` (any thread, or SIGTERM/SIGINT after
:meth:`SimulatorLoop.install_signal_handlers`) ends the run after the current step, flushes and
commits. Offline, a :class:`MemorySink` encodes and keeps (or just counts) the records:

>>> from tiertwin.connectors.simulator.scenarios import Scenario
>>> from tiertwin.connectors.simulator.world import World
>>> sink = MemorySink()
>>> summary = SimulatorLoop(World(Scenario(ues=10), seed=1), sink).run(seconds=1.0)
>>> summary.steps, summary.published["Telemetry"]
(100, 100)
>>> sink.records[0][:2]
('tiertwin.local.telemetry', 'Telemetry')
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from tiertwin.connectors.kafka import DEAD_LETTER_TOPIC, DeadLetterSink, KafkaRecord, KafkaSink, KafkaSource
from tiertwin.connectors.simulator.world import World
from tiertwin.errors import DecodeError, NotYetAcknowledged, RecordRejected
from tiertwin.schemas import SchemaRegistry
from tiertwin.settings import Settings
from tiertwin.stats import percentile, percentiles
from tiertwin.topics import (
    ACTIONS_CLOUD, ACTIONS_EDGE, ACTIONS_LOCAL, CELL_REPORTS, DEMANDS, EDGE_STATE, MODELS, OUTCOMES,
    SUMMARIES, TELEMETRY)

ASSIGNMENT_TIMEOUT_S = 30.0
DRAIN_LIMIT_S = 2.0  # at the end, wait at most this long for decisions of pending demands
# How long the running loop waits for its records' acknowledgements before committing the decisions it
# applied. While a dead leader is being replaced that takes seconds, and the world, with the device twins
# deciding in it, must not stop for the broker (it did: 8 s in the demo on a cluster); the commit waits
# for a later interval instead, and the end of the run waits for everything.
COMMIT_ACK_WAIT_S = 0.05
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulatorTopics:
    """Where the simulator writes and reads; tests pass fresh names."""

    telemetry: str = TELEMETRY
    demands: str = DEMANDS
    cell_reports: str = CELL_REPORTS
    outcomes: str = OUTCOMES
    actions: tuple[str, ...] = (ACTIONS_LOCAL, ACTIONS_EDGE, ACTIONS_CLOUD)
    deadletters: str = DEAD_LETTER_TOPIC
    # device mode: what the device twins publish and read (the local actions are theirs, not read back)
    local_actions: str = ACTIONS_LOCAL
    summaries: str = SUMMARIES
    models: str = MODELS
    edge_state: str = EDGE_STATE

    def device_topics(self) -> Any:
        """The device runtime's topics (:class:`~tiertwin.pipelines.device.DeviceTopics`) for these names."""
        from tiertwin.pipelines.device import DeviceTopics

        return DeviceTopics(actions=self.local_actions, summaries=self.summaries, outcomes=self.outcomes,
                            models=self.models, edge_state=self.edge_state, dead_letters=self.deadletters)

    def decision_topics(self, local_twin: str) -> tuple[str, ...]:
        """The action topics the simulator applies: in device mode the device decided the placements itself."""
        return self.actions if local_twin == "service" else tuple(a for a in self.actions if a != self.local_actions)


class RecordSink(Protocol):
    def send(self, topic: str, schema: str, record: dict, key: Any = None, timestamp_ms: int | None = None) -> None: ...

    def flush(self, timeout_s: float | None = 60.0) -> None:
        """Wait until what was sent is acknowledged, or raise NotYetAcknowledged after ``timeout_s``."""


class MemorySink:
    """Encodes (and so validates) every record like KafkaSink; keeps ``(topic, schema, key, bytes)`` if ``keep``."""

    def __init__(self, registry: SchemaRegistry | None = None, keep: bool = True):
        self.registry = registry or SchemaRegistry.default()
        self.keep = keep
        self.records: list[tuple[str, str, str, bytes]] = []
        self.count = 0

    def send(self, topic: str, schema: str, record: dict, key: Any = None, timestamp_ms: int | None = None) -> None:
        data = self.registry.encode(schema, record)
        self.count += 1
        if self.keep:
            self.records.append((topic, schema, str(key), data))

    def flush(self, timeout_s: float | None = None) -> None:
        return None


@dataclass
class SimSummary:
    """What a run did; printed by ``tiertwin sim`` and returned by :meth:`SimulatorLoop.run`."""

    scenario: str
    seed: int
    ues: int
    realtime: bool
    steps: int = 0
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0
    published: dict = field(default_factory=dict)
    records_per_s: float = 0.0
    decisions_applied: dict = field(default_factory=dict)
    decisions_rejected: int = 0
    commits_deferred: int = 0      # periodic offset commits left to a later interval: outputs not yet acknowledged
    late_decisions: int = 0
    unknown_decisions: int = 0
    duplicate_decisions: int = 0
    demands_by_placement: dict = field(default_factory=dict)
    demands_decided: int = 0
    demands_defaulted: int = 0
    deadline_miss_rate: float = 0.0
    latency_mean_ms: float = 0.0
    latency_p99_ms: float = 0.0
    handovers_a3: int = 0
    handovers_decided: int = 0
    migrations: int = 0
    steps_behind: int = 0
    physics_seconds: float = 0.0   # wall time inside World.step() (the rest is records, Kafka, waiting)
    local_twin: str = "service"
    device: dict = field(default_factory=dict)   # device mode: place() wall time and the runtime's counters

    def as_dict(self) -> dict:
        return asdict(self)


class DecisionInbox:
    """The decisions a real-time loop applies, polled in a thread of their own so that the world never
    waits for the broker: kafka-python's ``poll`` and ``commit`` block while the group's coordinator is
    being found again (5.5 s seen at a start, more while a dead node's leadership moves), and the device
    twins decide in the world's thread. The loop takes what has arrived (:meth:`take`) and, once its
    outputs are acknowledged, hands over the offsets of what it applied (:meth:`commit`); this thread
    commits them, so the consumer is only ever used from here until :meth:`close`."""

    def __init__(self, source: KafkaSource, poll_ms: int = 100):
        self.source, self.poll_ms = source, poll_ms
        self._arrived: queue.SimpleQueue = queue.SimpleQueue()
        self._offsets: dict[tuple[str, int], int] | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tiertwin-sim-decisions", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._closing.is_set():
                for record in self.source.poll(self.poll_ms):
                    self._arrived.put(record)
                with self._lock:
                    offsets, self._offsets = self._offsets, None
                if offsets:
                    self.source.commit(offsets)
        except BaseException as exc:    # handed to the loop's thread by the next take()
            self._failure = exc

    def take(self, timeout_ms: int = 0) -> list[KafkaRecord]:
        """What has arrived; waits up to ``timeout_ms`` for the first record if nothing has."""
        if self._failure is not None:
            raise self._failure
        taken = []
        try:
            taken.append(self._arrived.get(timeout=timeout_ms / 1000) if timeout_ms > 0 else self._arrived.get_nowait())
            while True:
                taken.append(self._arrived.get_nowait())
        except queue.Empty:
            return taken

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit these next offsets at the thread's next turn (the newest request wins)."""
        with self._lock:
            self._offsets = dict(offsets)

    def close(self) -> list[KafkaRecord]:
        """Stop polling; what arrived but was not taken, for the caller to apply. The source is the
        caller's again (its position is past every record this inbox took or returns)."""
        self._closing.set()
        self._thread.join()
        if self._failure is not None:
            raise self._failure
        return self.take()


class SimulatorLoop:
    """Runs a World against Kafka (or any sink), in real time or as fast as possible."""

    def __init__(self, world: World, sink: RecordSink | None = None, source: KafkaSource | None = None,
                 topics: SimulatorTopics = SimulatorTopics(), realtime: bool = False,
                 dead_letters: DeadLetterSink | None = None, commit_interval_s: float = 0.2, *,
                 local_twin: Literal["device", "service"] = "service", runtime: Any = None):
        if local_twin not in ("device", "service"):
            raise ValueError(f"local_twin must be 'device' or 'service', not {local_twin!r}")
        self.world = world
        self.local_twin = local_twin
        self.sink = sink if sink is not None else MemorySink(keep=False)
        self.source = source
        self.topics = topics
        self.realtime = realtime
        if dead_letters is None and isinstance(self.sink, KafkaSink):
            dead_letters = DeadLetterSink(self.sink, stage="simulator/apply-decision", topic=topics.deadletters)
        self.dead_letters = dead_letters
        self.commit_interval_s = commit_interval_s
        self.published: Counter = Counter()
        self.rejected = 0
        self.commits_deferred = 0    # periodic commits left to a later interval: records not yet acknowledged
        self._inbox: DecisionInbox | None = None   # real time: decisions polled off the world's thread
        self._applied: dict[tuple[str, int], int] = {}   # the next offset per partition of what was applied
        self.rejected_telemetry = 0
        self.reported = 0
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._steps = 0
        self._behind = 0
        self._physics_s = 0.0
        self.runtime, self._owns_runtime = runtime, False
        self._place_ns = array("q")
        if local_twin == "device":
            if runtime is None:   # the twins of every UE of this world, publishing where the topics say
                from tiertwin.pipelines.device import DeviceConfig, DeviceRuntime

                config = DeviceConfig(device_id=f"simulator-{os.getpid()}", topics=topics.device_topics())
                self.runtime, self._owns_runtime = DeviceRuntime(config, connect=isinstance(self.sink, KafkaSink)), True
            world.placer = self._place
            world.await_decisions = False
        else:
            world.await_decisions = source is not None

    # -- control ------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish the current step, flush, commit and return (thread- and signal-safe)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT -> :meth:`stop` (call from the main thread)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    # -- the loop -----------------------------------------------------------------------------
    def run(self, seconds: float | None = None) -> SimSummary:
        """Simulate ``seconds`` of network time (``None``: until :meth:`stop`); return the summary."""
        world, step_s = self.world, self.world.scenario.step_ms / 1000.0
        self._await_assignment()
        if self.realtime and self.source is not None:
            self._inbox = DecisionInbox(self.source)
            self._inbox.start()
        if self.realtime:
            world.start_ms = int(time.time() * 1000) - int(round(world.t_ms))
            world.wall_clock_ns = time.time_ns
        elif self.source is not None:  # lockstep: agents measure and answer on the wall clock
            world.wall_clock_ns = time.time_ns
        if self.runtime is not None:
            self.runtime.start()
        self.ready.set()
        wall_start, sim_start = time.monotonic(), world.t_ms
        end_ms = None if seconds is None else world.t_ms + seconds * 1000.0
        last_commit = time.monotonic()
        try:
            while not self._stop.is_set() and (end_ms is None or world.t_ms < end_ms - 1e-9):
                if self.realtime:
                    due = wall_start + (world.t_ms - sim_start) / 1000.0 + step_s
                    self._wait_until(due)
                    if time.monotonic() - due > step_s:
                        self._behind += 1
                started = time.perf_counter()
                world.step()
                self._physics_s += time.perf_counter() - started
                self._steps += 1
                self._publish_step()
                if self.realtime:
                    self._poll_decisions(0)  # also when behind schedule, so decisions never starve
                else:
                    self._lockstep()
                self._outcomes(world.outcome_records())
                if self.runtime is not None:   # the step's uplink records are encoded here, between steps, not
                    self.runtime.pump()        # on the uplink thread while a place() needs the GIL
                if self.source is not None and time.monotonic() - last_commit >= self.commit_interval_s:
                    # without a source, the sink bounds in-flight work
                    self._flush_and_commit(wait_s=COMMIT_ACK_WAIT_S)
                    last_commit = time.monotonic()
            self._close_inbox()
            self._drain_pending()
        finally:
            failed_inbox, self._inbox = self._inbox, None
            if failed_inbox is not None:   # the run failed: the source is this thread's again
                try:
                    failed_inbox.close()
                except Exception:          # its failure, if any, was raised by take() already
                    pass
            # after a failure the source's position is past decisions the inbox polled but the world
            # never applied: commit what was applied only, so those are redelivered
            self._flush_and_commit(only_applied=failed_inbox is not None)
            if self._owns_runtime:
                self.runtime.close()   # sends what is queued; the rest waits in its spill file
        return self._summary(time.monotonic() - wall_start, (world.t_ms - sim_start) / 1000.0)

    def _await_assignment(self) -> None:
        """A consumer-group member gets its partitions only after joining; decisions before that are unseen."""
        if self.source is None:
            return
        consumer = self.source.consumer
        deadline = time.monotonic() + ASSIGNMENT_TIMEOUT_S
        while not consumer.assignment() and time.monotonic() < deadline and not self._stop.is_set():
            for topic in self.topics.actions:  # a group joined before a fresh topic's metadata arrived waits for it
                consumer.partitions_for_topic(topic)
            self._poll_decisions(100)
        if not consumer.assignment():
            log.warning("no partition of %s assigned after %.0f s; running, decisions are applied once assigned",
                        ", ".join(self.topics.actions), ASSIGNMENT_TIMEOUT_S)

    def _wait_until(self, due: float) -> None:
        while not self._stop.is_set():
            left = due - time.monotonic()
            if left <= 0:
                return
            if self.source is None:
                time.sleep(left)
                return
            self._poll_decisions(max(int(left * 1000), 1) if left > 0.001 else 0)
            self._outcomes(self.world.outcome_records())

    def _lockstep(self) -> None:
        """As fast as possible with agents: the simulated clock waits until every demand of the step
        has its decision or its timeout (wall clock) has passed."""
        if self.source is None:
            return
        world = self.world
        if world.pending:
            self.sink.flush()  # the agents must see the demands before we wait for their answers
        timeout_ns = world.scenario.compute.decision_timeout_ms * 1e6
        while world.pending and not self._stop.is_set():
            oldest = next(iter(world.pending.values())).record["emitted_ns"]
            left_ms = (oldest + timeout_ns - time.time_ns()) / 1e6
            self._poll_decisions(max(int(left_ms), 1) if left_ms > 1 else 0)
            world.expire_pending()
        self._poll_decisions(0)  # resource decisions that need no demand

    def _drain_pending(self) -> None:
        """At the end, give pending demands their decision timeout (at most DRAIN_LIMIT_S), then the default."""
        world = self.world
        deadline = time.monotonic() + min(world.scenario.compute.decision_timeout_ms / 1000.0, DRAIN_LIMIT_S)
        while world.pending and time.monotonic() < deadline and self.source is not None:
            self._poll_decisions(5)
        world.expire_pending()
        world.resolve_pending()
        world.finish_local_work()   # the devices' queued work completes: every demand gets its Outcome
        self._outcomes(world.outcome_records())

    # -- records ------------------------------------------------------------------------------
    def _publish_step(self) -> None:
        world, t = self.world, self.topics
        telemetry = world.telemetry_records()
        self._publish(t.telemetry, "Telemetry", telemetry)
        if self.runtime is not None:   # the device twins see the step's telemetry before its demands
            self._observe(telemetry)
        self._publish(t.demands, "Demand", world.demand_records())   # device mode: placed in there (World.placer)
        self._publish(t.cell_reports, "EdgeState", world.cell_reports(), key_field="cell_id")

    # -- device mode ----------------------------------------------------------------------------
    def _observe(self, telemetry: list[dict]) -> None:
        # the step's telemetry in one call; the runtime counts and dead-letters what it rejects
        self.rejected_telemetry += self.runtime.observe_many(telemetry)

    def _place(self, demand: dict) -> tuple[str, str, float]:
        """World.placer in device mode: the device twin decides now; the wait is that call's wall time."""
        started = time.perf_counter_ns()
        decision = self.runtime.place(demand)
        took = time.perf_counter_ns() - started
        self._place_ns.append(took)
        self.world.remember_applied(decision["decision_id"])   # a copy read back from Kafka is a duplicate
        return decision["target"], decision["decision_id"], took / 1e6

    def _outcomes(self, outcomes: list[dict]) -> None:
        """Outcomes go to Kafka; in device mode a demand's goes to its device twin (learn + uplink) instead."""
        if self.runtime is None:
            self._publish(self.topics.outcomes, "Outcome", outcomes)
            return
        others = []
        for outcome in outcomes:
            if outcome["kind"] == "demand" and outcome["latency_ms"] is not None:
                self.runtime.report(outcome)
                self.reported += 1
            else:
                others.append(outcome)
        self._publish(self.topics.outcomes, "Outcome", others)

    def _publish(self, topic: str, schema: str, records: list[dict], key_field: str = "ue_id") -> None:
        send = self.sink.send
        for record in records:
            key = record.get(key_field)
            if key is None:
                key = record.get("cell_id")
            send(topic, schema, record, key=key)
        self.published[schema] += len(records)

    def _close_inbox(self) -> None:
        if self._inbox is not None:
            rest, self._inbox = self._inbox.close(), None
            self._apply(rest)

    def _poll_decisions(self, timeout_ms: int) -> None:
        if self.source is None:
            return
        self._apply(self._inbox.take(timeout_ms) if self._inbox is not None else self.source.poll(timeout_ms))

    def _apply(self, records: list[KafkaRecord]) -> None:
        for rec in records:
            self._applied[(rec.topic, rec.partition)] = rec.offset + 1
            try:
                if rec.schema != "tiertwin.Decision":
                    raise DecodeError(f"expected tiertwin.Decision on {rec.topic}, got {rec.schema}",
                                      reason="wrong-schema")
                self.world.apply_decision(rec.value)
            except RecordRejected as exc:
                self._reject(rec, exc)

    def _reject(self, rec: KafkaRecord, error: RecordRejected) -> None:
        self.rejected += 1
        if self.dead_letters is None:
            return  # counted, and reported in the summary (no dead-letter sink offline)
        self.dead_letters.reject(value=rec.raw, key=rec.key, topic=rec.topic, partition=rec.partition,
                                 offset=rec.offset, error=error)

    def _flush_and_commit(self, wait_s: float | None = 60.0, only_applied: bool = False) -> None:
        """Outputs first, then the offsets of the decisions applied: at-least-once. Outputs not all
        acknowledged within ``wait_s`` leave the offsets to a later call, and the loop goes on.
        ``only_applied``: commit the offsets of applied decisions, not the source's position."""
        try:
            self.sink.flush(wait_s)
        except NotYetAcknowledged:
            self.commits_deferred += 1
            return
        if self._inbox is not None:
            self._inbox.commit(self._applied)
        elif self.source is not None:
            self.source.commit(self._applied if only_applied else None)

    def _summary(self, wall_s: float, sim_s: float) -> SimSummary:
        total = int(sum(self.published.values()))
        return summarize(self.world, wall_s, sim_s, steps=self._steps, realtime=self.realtime,
                         published=dict(self.published), records_per_s=total / wall_s if wall_s > 0 else 0.0,
                         decisions_rejected=self.rejected, commits_deferred=self.commits_deferred,
                         steps_behind=self._behind,
                         physics_seconds=round(self._physics_s, 6), local_twin=self.local_twin,
                         device=self._device_summary())

    def _device_summary(self) -> dict:
        if self.runtime is None:
            return {}
        from tiertwin.pipelines.device import stats_dict

        place_us = np.asarray(self._place_ns, dtype=float) / 1e3
        out = {"placements": int(place_us.size), "outcomes_reported": self.reported,
               "telemetry_rejected": self.rejected_telemetry, "queued": self.runtime.queued}
        if place_us.size:
            p50, p99 = percentiles(place_us, [50, 99])
            out.update(place_p50_us=p50, place_p99_us=p99,
                       place_max_us=float(place_us.max()))
        return {**out, "runtime": stats_dict(self.runtime.stats)}


def demand_figures(latencies_ms: Any, missed: int) -> dict[str, float]:
    """Deadline-miss rate and mean / p99 latency of a run's demands: one definition for live runs and baselines.

    >>> demand_figures([10.0, 20.0, 30.0, 40.0], missed=1)
    {'demands': 4, 'deadline_miss_rate': 0.25, 'latency_mean_ms': 25.0, 'latency_p99_ms': 39.7}
    """
    a = np.asarray(latencies_ms, dtype=float)
    if not a.size:
        return {"demands": 0, "deadline_miss_rate": 0.0, "latency_mean_ms": 0.0, "latency_p99_ms": 0.0}
    return {"demands": int(a.size), "deadline_miss_rate": missed / a.size, "latency_mean_ms": float(a.mean()),
            "latency_p99_ms": round(percentile(a, 99), 9)}


def summarize(world: World, wall_s: float, sim_s: float, **fields: Any) -> SimSummary:
    """The :class:`SimSummary` of ``world``'s run so far; ``fields`` are the loop's own counters."""
    stats = world.stats
    figures = demand_figures(stats.latencies_ms, stats.misses)
    return SimSummary(
        scenario=world.scenario.name, seed=world.seed, ues=world.scenario.ues,
        sim_seconds=round(sim_s, 6), wall_seconds=round(wall_s, 6),
        decisions_applied=dict(stats.decisions), late_decisions=stats.late_decisions,
        unknown_decisions=stats.unknown_decisions, duplicate_decisions=stats.duplicate_decisions,
        demands_by_placement=dict(stats.placements), demands_decided=stats.decided, demands_defaulted=stats.defaulted,
        deadline_miss_rate=figures["deadline_miss_rate"], latency_mean_ms=figures["latency_mean_ms"],
        latency_p99_ms=figures["latency_p99_ms"], handovers_a3=stats.handovers_a3,
        handovers_decided=stats.handovers_decided, migrations=stats.migrations, **fields)


def no_control(scenario: Any, seconds: float, *, seed: int | None = None, ues: int | None = None) -> SimSummary:
    """The baseline: the same scenario and seed for the same simulated seconds, with nobody deciding.

    Every demand runs where the network puts it by default, the cloud. Offline and lean: only
    the physics and the demands are computed (no telemetry records, nothing encoded), so a
    minute of 100 UEs takes about a second. Arrivals, radio and mobility draw from the seed's own
    streams whatever is decided, so a live run on that seed met the very same demands.

    >>> from tiertwin.connectors.simulator.scenarios import Scenario
    >>> base = no_control(Scenario(ues=20), seconds=2.0, seed=4)
    >>> base.steps, base.demands_by_placement.keys() == {"cloud"}, 0.0 <= base.deadline_miss_rate <= 1.0
    (200, True, True)
    """
    from tiertwin.connectors.simulator.scenarios import Scenario, load_scenario

    spec = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    spec = spec.with_overrides(ues=ues, compute={**spec.compute.model_dump(), "default_placement": "cloud"})
    world = World(spec, seed=seed)
    started, steps = time.monotonic(), int(round(seconds * 1000.0 / spec.step_ms))
    for _ in range(steps):
        world.step()
        world.demand_records()     # no decision source: each demand runs on the default placement at once
        world.outcome_records()
    world.finish_local_work()
    return summarize(world, time.monotonic() - started, world.t_ms / 1000.0, steps=steps, realtime=False)


def run_simulator(scenario: Any = "dense-urban-xr", seconds: float | None = None, *, realtime: bool = True,
                  seed: int | None = None, ues: int | None = None, telemetry_hz: float | None = None,
                  decision_timeout_ms: float | None = None, decisions: bool = True, offline: bool = False, settings: Settings | None = None,
                  topics: SimulatorTopics = SimulatorTopics(), group_id: str = "tiertwin-simulator",
                  handle_signals: bool = False, on_start: Any = None,
                  local_twin: Literal["device", "service"] = "service") -> SimSummary:
    """Build a World and its Kafka sink/source, run the loop, close everything; for operators and the CLI.

    ``scenario`` is a preset name, a YAML path or a :class:`Scenario`. Decisions are read from
    the end of the action topics (earlier ones refer to demands this world never issued); in
    device mode not from ``topics.local_actions``, where the device twins publish their own.
    The device runtime is named after ``group_id``, so a restarted simulator sends what the last
    one left in its spill file. ``on_start(loop)`` is called before the run (e.g. to keep the loop
    and call ``stop()`` later).
    """
    from tiertwin.connectors.simulator.scenarios import Scenario, load_scenario

    from tiertwin.schemas import SchemaRegistry

    spec = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    spec = spec.with_overrides(ues=ues, telemetry_hz=telemetry_hz)
    if decision_timeout_ms is not None:
        spec = spec.with_overrides(compute={**spec.compute.model_dump(), "decision_timeout_ms": decision_timeout_ms})
    registry = SchemaRegistry.default()
    sink: Any = MemorySink(registry, keep=False) if offline else None
    source = runtime = None
    try:
        if not offline:
            settings = settings or Settings.from_env()
            sink = KafkaSink(settings, registry, profile="low-latency" if realtime else "throughput",
                             client_id="tiertwin-simulator")
            if decisions:
                # A decision that does not decode is dead-lettered; its demand falls back as if undecided.
                letters = DeadLetterSink(sink, stage="simulator/read-decision", topic=topics.deadletters)
                source = KafkaSource(topics.decision_topics(local_twin), group_id, settings, registry, letters,
                                     on_undecodable="dead-letter", from_beginning=False,
                                     client_id="tiertwin-simulator")
        if local_twin == "device":
            from tiertwin.pipelines.device import DeviceConfig, DeviceRuntime

            config = DeviceConfig(device_id=group_id, topics=topics.device_topics())
            runtime = DeviceRuntime(config, settings, connect=not offline)
        loop = SimulatorLoop(World(spec, seed=seed), sink, source, topics, realtime=realtime, local_twin=local_twin,
                             runtime=runtime)
        if handle_signals:
            loop.install_signal_handlers()
        if on_start is not None:
            on_start(loop)
        return loop.run(seconds)
    finally:
        if runtime is not None:
            runtime.close()
        if source is not None:
            source.close()
        if isinstance(sink, KafkaSink):
            sink.close()
