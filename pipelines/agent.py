"""The run loop shared by the local and edge twin agents.

One loop per agent process (or thread)::

    poll side topics (models -> hot swap, edge state, outcomes)      every instance sees all
    poll the group's batch -> process -> produce decisions           this instance's partitions
    every commit interval: checkpoint dirty twins -> flush -> commit  at-least-once

Twin state lives in :attr:`TwinAgent.twins` (key -> picklable twin) with the input
partition it came from. A checkpoint writes each dirty twin to the compacted
changelog topic *on the same partition number*, so after a crash or a rebalance the
member that gets input partition ``p`` restores changelog partition ``p`` and
continues; decisions carry ids derived from the input record's coordinates, so the
records replayed since the last commit produce the same ids.

Subclasses (:mod:`~tiertwin.pipelines.local_twin`, :mod:`~tiertwin.pipelines.edge_twin`)
implement :meth:`TwinAgent.process` and :meth:`TwinAgent.process_side`.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, Iterable, Literal

import yaml
from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tiertwin.connectors.kafka import (DEAD_LETTER_TOPIC, DeadLetterSink, KafkaRecord, KafkaSink, KafkaSource,
                                       TopicReader, kafka_config)
from tiertwin.connectors.readiness import is_retriable
from tiertwin.errors import BrokerUnavailableError, ConfigError, RecordRejected, config_error
from tiertwin.pipelines.models import MODELS_TOPIC, ModelRejected, ModelSlot
from tiertwin.pipelines.pretrain import PRETRAINED_DIR, load_pretrained
from tiertwin.schemas import SchemaRegistry
from tiertwin.settings import Settings
from tiertwin.topics import MODEL_STATUS, OUTCOMES

SLOT_PREFIX = "~slot/"     # changelog keys of model slots (a UE or cell key never starts with "~")
log = logging.getLogger("tiertwin.agent")
OUTCOMES_TOPIC = OUTCOMES


class AgentConfig(BaseModel):
    """What every agent needs; the local and edge configs add their topics and knobs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instance_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    group_id: str
    changelog_topic: str
    models_topic: str = MODELS_TOPIC
    outcomes_topic: str = OUTCOMES_TOPIC
    dead_letter_topic: str = DEAD_LETTER_TOPIC
    model_status_topic: str | None = Field(MODEL_STATUS, description=(
        "Where each model lifecycle transition of this instance goes as a ModelStatus record (None: not written)"))
    profile: Literal["low-latency", "throughput"] = "low-latency"
    from_beginning: bool = True
    commit_interval_ms: int = Field(1000, ge=10, le=60_000, description="Checkpoint + commit period; bounds the replay after a crash")
    checkpoint_chunk: int = Field(64, ge=1, le=100_000, description="Twins pickled or sent per loop iteration while checkpointing")
    session_timeout_ms: int = Field(10_000, ge=6_000, le=300_000)
    poll_timeout_ms: int = Field(50, ge=0, le=5_000)
    fetch_max_wait_ms: int = Field(100, ge=0, le=5_000, description="Broker-side wait for fetch_min_bytes of data")
    fetch_min_bytes: int = Field(1, ge=1, le=10_000_000, description="Data a fetch waits for (up to fetch_max_wait_ms); 1 = answer as soon as anything arrives")
    side_poll_interval_ms: int = Field(20, ge=0, le=60_000, description="How often models / edge state / outcomes read by every instance are polled")
    metrics_port: int | None = Field(None, ge=1, le=65535)
    gc_freeze_after_open: bool = Field(True, description=(
        "`tiertwin run` only: after start-up, move everything loaded so far (libraries, models) out of the "
        "garbage collector's reach, so its full collections scan only what the agent allocates later; "
        "without it they paused the agent for up to 250 ms at 5k records/s"))
    gil_switch_interval_ms: float = Field(5.0, gt=0, le=100, description=(
        "Python's GIL switch interval in an agent process (`tiertwin run`); kafka-python hands every "
        "record between the agent thread and its IO threads, and each handoff can wait this long"))
    pretrained_dir: Path = PRETRAINED_DIR

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any):
        """The config from a YAML file (if given) with ``overrides``; ConfigError names the bad field."""
        values: dict[str, Any] = {}
        if path is not None:
            try:
                values = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"{path}: {exc}") from None
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: expected a mapping of settings")
        try:
            return cls(**{**values, **overrides})
        except ValidationError as exc:
            raise config_error(exc, str(path or "config")) from None


class AgentMetrics:
    """Prometheus metrics of one agent instance, in their own registry (several agents may share a process)."""

    LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

    def __init__(self, tier: str, instance_id: str):
        self.registry = CollectorRegistry()
        labels = {"tier": tier, "instance": instance_id}
        r = self.registry
        self.records = Counter("tiertwin_agent_records", "Records consumed", ["tier", "instance", "topic"], registry=r)
        self.records_per_s = Gauge("tiertwin_agent_records_per_second", "Records consumed per second over the last commit interval",
                                   ["tier", "instance"], registry=r).labels(**labels)
        self.decisions = Counter("tiertwin_agent_decisions", "Decisions emitted", ["tier", "instance", "kind"], registry=r)
        self.decision_latency = Histogram("tiertwin_agent_decision_latency_seconds", "Record received -> decision handed to the producer",
                                          ["tier", "instance"], buckets=self.LATENCY_BUCKETS, registry=r).labels(**labels)
        self.source_latency = Histogram("tiertwin_agent_source_to_decision_seconds", "Record produced upstream -> decision made",
                                        ["tier", "instance"], buckets=self.LATENCY_BUCKETS, registry=r).labels(**labels)
        self.lag = Gauge("tiertwin_agent_consumer_lag", "Records behind the end of each assigned partition",
                         ["tier", "instance", "topic", "partition"], registry=r)
        self.dead_letters = Counter("tiertwin_agent_dead_letters", "Records sent to the dead-letter topic",
                                    ["tier", "instance", "reason"], registry=r)
        self.replayed = Counter("tiertwin_agent_replayed", "Records already reflected in restored twin state",
                                ["tier", "instance"], registry=r).labels(**labels)
        self.model_version = Gauge("tiertwin_agent_model_version", "Live version of each model", ["tier", "instance", "model"], registry=r)
        self.model_swaps = Counter("tiertwin_agent_model_swaps", "Hot swaps of a model", ["tier", "instance", "model"], registry=r)
        self.models_refused = Counter("tiertwin_agent_models_refused", "Model updates refused before loading "
                                      "(unsigned-model, bad-signature, digest-mismatch, bad-model)",
                                      ["tier", "instance", "model", "reason"], registry=r)
        self.model_transitions = Counter("tiertwin_agent_model_transitions", "Lifecycle transitions of a model "
                                         "(shadowing, promoted, rejected, rolled-back, stable, ...-by-operator)",
                                         ["tier", "instance", "model", "event"], registry=r)
        self.checkpoints = Counter("tiertwin_agent_checkpointed_twins", "Twin states written to the changelog",
                                   ["tier", "instance"], registry=r).labels(**labels)
        self.commit_seconds = Histogram("tiertwin_agent_commit_seconds", "Flush + checkpoint + offset commit (the loop is paused meanwhile)",
                                        ["tier", "instance"], buckets=self.LATENCY_BUCKETS, registry=r).labels(**labels)
        self.restored = Counter("tiertwin_agent_restored_twins", "Twin states restored from the changelog",
                                ["tier", "instance"], registry=r).labels(**labels)
        self.learned = Counter("tiertwin_agent_learned", "Examples learned from outcomes", ["tier", "instance", "model"], registry=r)
        self.handoffs = Counter("tiertwin_agent_twin_handoffs", "UE twins handed to another instance (sent) or taken from one (adopted)",
                                ["tier", "instance", "direction"], registry=r)
        self._labels = labels

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (for tests and the bench report)."""
        return self.registry.get_sample_value(name, {**self._labels, **labels}) or 0.0


class _Rebalance(ConsumerRebalanceListener):
    """Notes partition changes; the agent acts on them in its own thread right after the poll.

    kafka-python 3 runs listeners on its IO thread, where blocking calls (commit,
    reading the changelog) are not allowed. Acting after the poll is still in time:
    no record of a newly assigned partition is processed before its twins are restored.
    """

    def __init__(self) -> None:
        self.revoked: set[int] = set()
        self.assigned: set[int] | None = None

    def on_partitions_revoked(self, revoked):
        self.revoked |= {tp.partition for tp in revoked}

    def on_partitions_assigned(self, assigned):
        self.assigned = {tp.partition for tp in assigned}


class TwinAgent:
    """Base of the local and edge agents: Kafka I/O, checkpoints, hot swap, metrics.

    Start it with ``agent.run(stop_event)`` (in a thread if you like); set the event to
    stop: it checkpoints, flushes, commits and closes.
    """

    tier: ClassVar[str] = "?"
    model_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: AgentConfig, settings: Settings | None = None):
        self.config = config
        self.settings = settings or Settings.from_env()
        self.registry = SchemaRegistry.default()
        self.metrics = AgentMetrics(self.tier, config.instance_id)
        self.slots = {name: ModelSlot(name, *load_pretrained(name, config.pretrained_dir)) for name in self.model_names}
        for slot in self.slots.values():
            self.metrics.model_version.labels(self.tier, config.instance_id, slot.name).set(slot.version)
        self._events_seen: dict[str, int] = {}
        self._slot_marks: dict[str, tuple] = {}
        self.twins: dict[str, Any] = {}
        self.twin_partition: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._held: set[int] = set()
        self.started = threading.Event()
        self._opened = False

    # -- subclass hooks ------------------------------------------------------------------------
    def group_topics(self) -> list[str]:
        """Topics consumed as a group member (co-partitioned by the twin key)."""
        raise NotImplementedError

    def side_topics(self) -> dict[str, bool]:
        """Topics every instance reads whole, mapped to ``from_beginning``."""
        return {self.config.models_topic: True}

    def process(self, batch: list[KafkaRecord], received_ns: int) -> None:
        raise NotImplementedError

    def process_side(self, record: KafkaRecord) -> None:
        if record.schema == "tiertwin.ModelUpdate":
            self.offer_model(record.value, record)
        else:
            self.reject(record, "wrong-schema", f"{record.topic} carries tiertwin.ModelUpdate, got {record.schema}")

    # -- helpers for subclasses ----------------------------------------------------------------
    def touch(self, key: str, partition: int) -> None:
        self.twin_partition[key] = partition
        self._dirty.add(key)

    def reject(self, record: KafkaRecord, reason: str, detail: str) -> None:
        """Send a record that decoded but makes no sense to the dead-letter topic."""
        self.process_letters.reject(value=record.raw, key=record.key, topic=record.topic, partition=record.partition,
                                    offset=record.offset, error=RecordRejected(detail, reason=reason))
        self.metrics.dead_letters.labels(self.tier, self.config.instance_id, reason).inc()

    def emit(self, topic: str, schema: str, record: dict, key: str | int | None) -> None:
        self.sink.send(topic, schema, record, key=key)

    def emit_decision(self, topic: str, decision: dict, key: str | int | None) -> None:
        decision["decided_ns"] = decided = time.time_ns()
        self.sink.send(topic, "Decision", decision, key=key)
        self.metrics.decisions.labels(self.tier, self.config.instance_id, decision["kind"]).inc()
        self.metrics.decision_latency.observe((decided - decision["received_ns"]) / 1e9)
        if decision["source_emitted_ns"] > 0:
            self.metrics.source_latency.observe(max(0, decided - decision["source_emitted_ns"]) / 1e9)

    def offer_model(self, update: dict, record: KafkaRecord | None = None) -> bool:
        """Hand a ModelUpdate (a model or a command) to its slot. One that fails verification or does not load
        goes to the dead-letter topic with its reason and is counted; the live model stays."""
        slot = self.slots.get(update["model_name"])
        if slot is None:
            return False
        try:
            taken = slot.offer(update)
        except ModelRejected as exc:
            self.metrics.models_refused.labels(self.tier, self.config.instance_id, slot.name, exc.reason).inc()
            log.warning("%s: refused %s v%s: %s", self.config.instance_id, slot.name, update.get("version"), exc)
            if record is not None:
                self.reject(record, exc.reason, str(exc))
            return False
        self.sync_model_metrics()
        return taken

    def sync_model_metrics(self) -> None:
        """Live versions and lifecycle transitions of every slot into the metrics (called on each side poll)."""
        for slot in {id(s): s for s in self.slots.values()}.values():
            labels = (self.tier, self.config.instance_id, slot.name)
            self.metrics.model_version.labels(*labels).set(slot.version)
            seen = self._events_seen.get(slot.name, 0)
            for event in (e for e in slot.events if e["seq"] > seen):
                self._emit_status(slot, event)
                self.metrics.model_transitions.labels(*labels, event["event"]).inc()
                if event["event"].startswith(("promoted", "rolled-back")):
                    self.metrics.model_swaps.labels(*labels).inc()
                log.info("%s: %s %s v%d %s", self.config.instance_id, slot.name, event["event"], event["version"],
                         {k: v for k, v in event.items() if k not in ("event", "version", "seq")})
            self._events_seen[slot.name] = slot.n_events

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> None:
        c, s = self.config, self.settings
        client = f"tiertwin-{self.tier}-{c.instance_id}"
        self.sink = KafkaSink(s, self.registry, profile=c.profile, client_id=client)
        self.dead_letters = DeadLetterSink(self.sink, stage=f"{self.tier}-agent/decode", topic=c.dead_letter_topic)
        self.process_letters = DeadLetterSink(self.sink, stage=f"{self.tier}-agent/process", topic=c.dead_letter_topic)
        rejected = self.metrics.dead_letters
        self.source = KafkaSource([], c.group_id, s, self.registry, self.dead_letters, on_undecodable="dead-letter",
                                  profile=c.profile, from_beginning=c.from_beginning, client_id=client,
                                  on_rejected=lambda e: rejected.labels(self.tier, c.instance_id, e.reason).inc(),
                                  session_timeout_ms=c.session_timeout_ms, fetch_max_wait_ms=c.fetch_max_wait_ms,
                                  fetch_min_bytes=c.fetch_min_bytes)
        self._rebalance = _Rebalance()
        self.source.consumer.subscribe(self.group_topics(), listener=self._rebalance)
        # Side topics are not on the decision path: long fetch waits keep their IO thread quiet.
        self.side = TopicReader(self.side_topics(), s, registry=self.registry, on_undecodable="dead-letter",
                                dead_letters=self.dead_letters, client_id=f"{client}-side", fetch_max_wait_ms=200,
                                start={t: "beginning" if first else "end" for t, first in self.side_topics().items()})
        self.changelog = KafkaProducer(**kafka_config(s, f"{client}-changelog"),
                                       acks="all", linger_ms=5, retries=2**31 - 1)
        self._metrics_server = None
        if c.metrics_port:
            self._metrics_server = start_http_server(c.metrics_port, registry=self.metrics.registry)
        self._last_commit = time.monotonic()
        self._phase: dict | None = None
        self._records_since_commit = 0
        self._next_lag_check = 0.0
        self._next_side_poll = 0.0
        self._opened = True
        for slot in {id(s): s for s in self.slots.values()}.values():    # every instance shows in `tiertwin models list`
            self._emit_status(slot, {"event": "started", "version": slot.version, "at_ms": int(time.time() * 1000)})

    def run(self, stop_event: threading.Event | None = None, max_seconds: float | None = None) -> None:
        """Consume until ``stop_event`` is set (or ``max_seconds`` pass), then shut down cleanly."""
        stop = stop_event or threading.Event()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        if not self._opened:
            self.open()
        try:
            self.started.set()
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                self.step()
        except BaseException:
            # A step that raised may have processed part of its batch, or lost outputs whose failure the
            # flush already reported: committing now would skip the rest of the batch for good. Close like a
            # SIGKILL instead, and let the next owner replay from the last checkpoint.
            self.close(checkpoint=False)
            raise
        self.close()

    def step(self) -> int:
        """One iteration: side topics (every ``side_poll_interval_ms``), one group batch, maybe a commit.
        Returns the batch size."""
        now = time.monotonic()
        if now >= self._next_side_poll:
            # Even an empty poll(0) costs about a millisecond in kafka-python 3: not on every record.
            self._next_side_poll = now + self.config.side_poll_interval_ms / 1000
            for record in self.side.poll(0):
                self.process_side(record)
            self.sync_model_metrics()
        batch = self.source.poll(self.config.poll_timeout_ms)
        if self._rebalance.revoked or self._rebalance.assigned is not None:
            self._apply_rebalance()
        if batch:
            self.process(batch, time.time_ns())
            self._records_since_commit += len(batch)
        now = time.monotonic()
        if self._phase is not None:
            self._advance_checkpoint()
        elif (now - self._last_commit) * 1000 >= self.config.commit_interval_ms:
            self.metrics.records_per_s.set(self._records_since_commit / max(now - self._last_commit, 1e-9))
            self._records_since_commit = 0
            self._begin_checkpoint()
        if now >= self._next_lag_check:
            self._update_lag()
            self._next_lag_check = now + 5.0
        return len(batch)

    # -- checkpoints spread over the loop ---------------------------------------------------------
    # Pickling every dirty twin at once would pause decisions for tens of ms each commit interval.
    # Instead: note the consumed positions P0, pickle the dirty twins a chunk per iteration (their
    # state may run ahead of P0, which replay tolerates: telemetry is deduplicated by seq and
    # decisions keep their ids), flush the outputs they reflect, send the pickles a chunk per
    # iteration, then commit P0 asynchronously.
    def _begin_checkpoint(self) -> None:
        consumer = self.source.consumer
        try:
            positions = {tp: consumer.position(tp) for tp in consumer.assignment()}
        except KafkaError as exc:
            # kafka-python validates a position against fresh metadata, and raises while the broker is
            # restarting (the agent died of a KafkaConnectionError here in the fault suite): no checkpoint
            # now, the next step tries again; the twins stay dirty and nothing is committed meanwhile.
            if not is_retriable(exc):
                raise
            log.warning("%s: checkpoint put off, the broker did not answer (%s)", self.config.instance_id, type(exc).__name__)
            return
        self._phase = {"started": time.perf_counter(), "positions": positions, "keys": list(self._dirty),
                       "pickled": self._slot_states(), "flushed": False}
        self._dirty.clear()

    def _advance_checkpoint(self) -> None:
        phase, chunk = self._phase, self.config.checkpoint_chunk
        if phase["keys"]:
            keys, phase["keys"] = phase["keys"][:chunk], phase["keys"][chunk:]
            for key in keys:
                twin = self.twins.get(key)
                if key in self.twin_partition:
                    value = None if twin is None else pickle.dumps(twin, protocol=pickle.HIGHEST_PROTOCOL)
                    phase["pickled"].append((key, self.twin_partition[key], value))
            return
        if not phase["flushed"]:
            self.sink.flush()           # outputs (and dead letters) before the states that reflect them
            phase["flushed"] = True
            return
        if phase["pickled"]:
            batch, phase["pickled"] = phase["pickled"][:chunk], phase["pickled"][chunk:]
            for key, partition, value in batch:
                self.changelog.send(self.config.changelog_topic, key=key.encode(), value=value, partition=partition)
            self.metrics.checkpoints.inc(len(batch))
            return
        self.changelog.flush()
        offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in phase["positions"].items()
                   if tp in self.source.consumer.assignment()}
        if offsets:
            self.source.consumer.commit_async(offsets, callback=self._committed)
        self.metrics.commit_seconds.observe(time.perf_counter() - phase["started"])
        self._phase = None
        self._last_commit = time.monotonic()

    def _committed(self, offsets, response) -> None:
        if isinstance(response, Exception):
            log.warning("%s: async offset commit failed: %r (records will be reprocessed)", self.config.instance_id, response)

    def _abort_checkpoint(self) -> None:
        """Give the phase's twins back to the dirty set (a rebalance or a full commit supersedes it)."""
        if self._phase is not None:
            self._dirty.update(self._phase["keys"])
            self._dirty.update(key for key, _, _ in self._phase["pickled"] if not key.startswith(SLOT_PREFIX))
            self._slot_marks.clear()    # the slots are written again with the next checkpoint
            self._phase = None

    def commit(self) -> None:
        """Flush outputs, checkpoint dirty twins, then commit the consumed offsets (synchronously, all at once).

        Outputs first: a checkpoint must never say a summary was sent that a crash then lost.
        """
        started = time.perf_counter()
        self._abort_checkpoint()
        self.sink.flush()
        self.checkpoint()
        self.changelog.flush()
        try:
            self.source.commit()
        except BrokerUnavailableError as exc:
            log.warning("%s: %s (records since the last commit will be reprocessed)", self.config.instance_id, exc)
        self._last_commit = time.monotonic()
        self.metrics.commit_seconds.observe(time.perf_counter() - started)

    def checkpoint(self) -> int:
        written = 0
        for key in self._dirty:
            if key not in self.twin_partition:
                continue
            twin = self.twins.get(key)
            value = None if twin is None else pickle.dumps(twin, protocol=pickle.HIGHEST_PROTOCOL)
            self.changelog.send(self.config.changelog_topic, key=key.encode(), value=value,
                                partition=self.twin_partition[key])
            written += 1
        for key, partition, value in self._slot_states():
            self.changelog.send(self.config.changelog_topic, key=key.encode(), value=value, partition=partition)
        self._dirty.clear()
        self.metrics.checkpoints.inc(written)
        return written

    def close(self, checkpoint: bool = True) -> None:
        """Checkpoint, flush and commit (unless ``checkpoint`` is False: after a failure), then close the clients."""
        if not self._opened:
            return
        self._opened = False
        try:
            if checkpoint and not self.source.still_member():
                # Fenced while stalled: another instance owns these twins now and has written newer states;
                # ours would land after them. Close like a SIGKILL; outputs are still flushed by sink.close().
                log.warning("%s: out of the group at close: no checkpoint, no offset commit", self.config.instance_id)
                checkpoint = False
            if checkpoint:
                self.commit()
            else:
                self._abort_checkpoint()
        finally:
            self.source.close()
            self.side.close()
            self.changelog.close(timeout=10)
            self.sink.close()
            if self._metrics_server:   # prometheus_client >= 0.17 returns (server, thread)
                self._metrics_server[0].shutdown()

    # -- rebalance and restore -----------------------------------------------------------------
    def _apply_rebalance(self) -> None:
        """Drop the twins of partitions taken away; restore those of partitions gained.

        Revoked partitions are not committed here: their new owner replays from the last
        commit on the twins of the last checkpoint (a consistent pair), and the replayed
        records yield the same decision ids.
        """
        revoked, assigned = self._rebalance.revoked, self._rebalance.assigned
        self._rebalance.revoked, self._rebalance.assigned = set(), None
        self._abort_checkpoint()
        if assigned is not None:
            revoked = (revoked | self._held) - assigned
        gone = [k for k, p in self.twin_partition.items() if p in revoked]
        for key in gone:
            self.twins.pop(key, None)
            self.twin_partition.pop(key, None)
            self._dirty.discard(key)
        self._held -= revoked
        if assigned is not None:
            new = assigned - self._held
            if new:
                restored = self.restore(new)
                log.info("%s: restored %d twins from %s partitions %s", self.config.instance_id, restored,
                         self.config.changelog_topic, sorted(new))
                self.metrics.restored.inc(restored)
            self._held |= assigned

    def restore(self, partitions: Iterable[int]) -> int:
        """Read changelog partitions to their end and load the latest twin per key."""
        with TopicReader([self.config.changelog_topic], self.settings, on_undecodable="raise",
                         client_id=f"tiertwin-{self.tier}-{self.config.instance_id}-restore",
                         only_partitions=partitions) as reader:
            restored = 0
            while not reader.at_end():
                for m in reader.poll_raw(500):  # pickled twins, not Avro: read as they are
                    key = m.key.decode()
                    if key.startswith(SLOT_PREFIX):
                        self._restore_slot(key, m.value)
                    elif m.value is None:
                        self.twins.pop(key, None)
                        self.twin_partition.pop(key, None)
                    else:
                        self.twins[key] = self.restore_twin(pickle.loads(m.value))
                        self.twin_partition[key] = m.partition
                        restored += 1
            return restored

    def _emit_status(self, slot: ModelSlot, event: dict) -> None:
        """A ModelStatus record of a slot's transition, keyed ``<model>/<instance>`` (compacted: the newest stays)."""
        topic, sink = self.config.model_status_topic, getattr(self, "sink", None)
        if not topic or sink is None:
            return
        sink.send(topic, "ModelStatus", slot.status_record(event, self.tier, self.config.instance_id),
                  key=f"{slot.name}/{self.config.instance_id}")

    # -- model slots ride the changelog beside the twins ------------------------------------------------
    # A slot is the instance's, not a partition's: it is written (when it changed) to the lowest partition the
    # instance holds, keyed by instance and model, and adopted by the same instance when it restores that
    # partition, so a restart resumes the live version, its revision and any shadow instead of the shipped model.
    def _slot_key(self, name: str) -> str:
        return f"{SLOT_PREFIX}{self.config.instance_id}/{name}"

    def _slot_states(self) -> list[tuple[str, int, bytes]]:
        if not self._held:
            return []
        partition = min(self._held)
        states = []
        for slot in {id(s): s for s in self.slots.values()}.values():
            mark = (slot.version, slot.revision, slot.n_events, partition)
            if self._slot_marks.get(slot.name) != mark:
                self._slot_marks[slot.name] = mark
                states.append((self._slot_key(slot.name), partition,
                               pickle.dumps(slot, protocol=pickle.HIGHEST_PROTOCOL)))
        return states

    def _restore_slot(self, key: str, value: bytes | None) -> None:
        name = key[len(self._slot_key("")):]
        slot = self.slots.get(name)
        if value is None or slot is None or not key.startswith(self._slot_key("")):
            return      # another instance's slot, or a model this agent does not hold
        if slot.adopt(pickle.loads(value)):
            log.info("%s: %s restored at v%d revision %d", self.config.instance_id, name, slot.version, slot.revision)
            self.sync_model_metrics()

    def restore_twin(self, twin: Any) -> Any:
        """Hook: adapt a restored twin (e.g. an older layout); the default keeps it as is."""
        return twin

    def _update_lag(self) -> None:
        consumer = self.source.consumer
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = consumer.position(tp)
            except Exception:  # no position yet right after an assignment
                continue
            self.metrics.lag.labels(self.tier, self.config.instance_id, tp.topic, str(tp.partition)).set(
                max(0, high - position))


def decision_stamps(record: KafkaRecord, received_ns: int) -> dict[str, Any]:
    """The provenance fields of a Decision answering ``record``."""
    value = record.value
    return {"source_topic": record.topic, "source_partition": record.partition, "source_offset": record.offset,
            "source_ts_ms": int(value.get("ts_ms", value.get("window_end_ms", record.timestamp_ms))),
            "source_emitted_ns": int(value.get("emitted_ns", 0)), "received_ns": received_ns, "decided_ns": 0}


def decision_id(tier: str, kind: str, record: KafkaRecord) -> str:
    """``"<tier>/<kind>/<topic>/<partition>/<offset>"``: the same input always yields the same id."""
    return f"{tier}/{kind}/{record.topic}/{record.partition}/{record.offset}"
