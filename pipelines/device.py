"""The device runtime: the local twin decides in the caller's thread; Kafka carries what leaves the device.

A :class:`DeviceRuntime` hosts the :class:`~tiertwin.pipelines.local_twin.LocalTwin`
of one device, or of every UE a simulator process simulates. ``observe``, ``place``
and ``report`` run synchronously in the caller's thread and touch no I/O, no Avro
and no lock: a decision costs the twin's own work plus one ``deque.append``.

Two background threads do the rest:

* the **uplink** takes what the caller queued, encodes it (Avro, on its own thread)
  and publishes it with the project's :class:`~tiertwin.connectors.kafka.KafkaSink`:
  Decisions to ``tiertwin.actions.local`` (key UE), LocalSummary records to
  ``tiertwin.edge.summaries`` (key serving cell) and Outcomes to
  ``tiertwin.outcomes`` (key UE), in batches of up to ``uplink_batch_records``
  every ``uplink_batch_ms``. A batch is done when ``flush`` says the broker has it.
  A host that steps calls :meth:`DeviceRuntime.pump` after each step: the step's records are
  then encoded in its thread, between steps, not on the uplink thread while a ``place()``
  needs the GIL (the thread encodes again itself when the pumps stop, and when closing).
  If the broker is unreachable the device keeps deciding: records wait in memory
  up to ``queue_limit``, the oldest beyond that go to an append-only spill file
  (:class:`SpillFile`, under ``TIERTWIN_HOME/device/<device_id>/``), and on
  reconnect everything is sent in order, spill first, then memory;
* the **downlink** reads ``tiertwin.models`` whole (the newest version per model
  wins) and ``tiertwin.cloud.edge-state`` from its end, and hands the records to the
  caller's thread through a deque; ``place``/``observe`` apply them between decisions.

Exactly once, and where it becomes at least once: records of a batch whose flush
timed out stay in the idempotent producer, which retries them when the broker is
back (same producer id and sequence numbers, so the broker keeps one copy); the
uplink sends nothing new until that flush succeeds, so order holds. Only a batch
that the producer itself gave up on (``delivery_timeout_s``, default 10 min) or a
crash between a spill read and its confirmation is sent again whole: then records
may arrive twice, always with the same ids.

``connect=False`` runs without Kafka (offline simulation, unit tests): the uplink
records are kept in memory (``offline_uplink="keep"``) or only counted ("count").

The garbage collector runs in the caller's thread too, inside whichever call allocates
past its threshold: with Python's default (700) a young collection lands in about one
placement in a hundred, and those pauses were the p99 (`tiertwin bench local`, 1k UEs:
p99 1.43 ms, 0.30 ms with ``gc.set_threshold(20_000, 10, 10)`` after ``gc.freeze()``).
Those are process-wide choices, so the process hosting the runtime makes them (the bench
does; ``tiertwin.procs.freeze_heap`` after start-up).

>>> from tiertwin.pipelines.device import DeviceConfig, DeviceRuntime
>>> config = DeviceConfig(device_id="doc-phone", offline_uplink="keep")
>>> with DeviceRuntime(config, connect=False) as device:
...     device.observe({"ue_id": "ue-1", "ts_ms": 1_767_225_600_000, "seq": 1, "serving_cell": 3,
...                     "rsrp_dbm": -90.0, "sinr_db": 14.0, "cqi": 10, "throughput_dl_mbps": 120.0,
...                     "throughput_ul_mbps": 30.0, "rtt_ms": 8.0, "neighbours": [], "cpu_util": 0.2,
...                     "memory_util": 0.3, "battery_pct": 80.0, "emitted_ns": 0})
...     decision = device.place({"demand_id": "ue-1/d/1", "ue_id": "ue-1", "ts_ms": 1_767_225_600_010,
...                              "kind": "xr_frame", "compute_gcycles": 0.4, "input_bytes": 2_000,
...                              "output_bytes": 50_000, "deadline_ms": 20.0, "priority": 6,
...                              "serving_cell": 3, "emitted_ns": 0})
>>> decision["decision_id"], decision["target"] in ("local", "edge", "cloud"), decision["twin_site"]
('local/placement/ue-1/d/1', True, 'device')
>>> device.stats.decisions, [topic for topic, _ in device.pending_records()]
(1, ['tiertwin.actions.local'])
"""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field

from tiertwin.errors import BrokerUnavailableError, RecordRejected, TiertwinError
from tiertwin.pipelines.local_twin import LocalTwin, LocalTwinConfig
from tiertwin.pipelines.models import verify_update
from tiertwin.schemas import SchemaRegistry
from tiertwin.schemas.flat_encoder import NotFlat, compile_encoder
from tiertwin.settings import Settings
from tiertwin.topics import ACTIONS_LOCAL, DEAD_LETTERS, EDGE_STATE, MODEL_STATUS, MODELS, OUTCOMES, SUMMARIES

log = logging.getLogger("tiertwin.device")


# =============================================================================================
# Configuration
# =============================================================================================
class DeviceTopics(BaseModel):
    """Where the device's records go and what it reads (the topology's names by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    actions: str = ACTIONS_LOCAL
    summaries: str = SUMMARIES
    outcomes: str = OUTCOMES
    models: str = MODELS
    edge_state: str = EDGE_STATE
    dead_letters: str = DEAD_LETTERS
    model_status: str = MODEL_STATUS


class DeviceConfig(BaseModel):
    """One device runtime's knobs; the twin's own knobs are in ``twin``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
                           pattern=r"^[A-Za-z0-9._-]{1,128}$", description="Names the spill folder and the Kafka clients")
    twin: LocalTwinConfig = Field(default_factory=lambda: LocalTwinConfig(site="device"),
                                  description="The local twin's knobs (its site stays 'device' unless set)")
    topics: DeviceTopics = DeviceTopics()
    queue_limit: int = Field(100_000, ge=1, description="Records waiting in memory before the oldest go to the spill file")
    spill_dir: Path | None = Field(None, description="Default: TIERTWIN_HOME/device/<device_id>")
    uplink_batch_ms: float = Field(20.0, gt=0, le=10_000, description="The uplink sends what is queued at least this often")
    uplink_batch_records: int = Field(2_000, ge=1, le=100_000, description="... or as soon as this many are queued")
    uplink_yield_every: int = Field(64, ge=1, description=(
        "The uplink gives the GIL back after encoding, and again after sending, this many records, so a decision "
        "waiting for it waits for a slice of the uplink's work, not a whole batch"))
    pump_grace_s: float = Field(1.0, gt=0, le=3_600, description=(
        "Once the host calls pump(), the uplink thread leaves encoding to it; if no pump comes for this long "
        "(or the runtime is closing) the thread encodes again itself, so nothing waits on a host that stopped"))
    flush_timeout_s: float = Field(5.0, gt=0, le=600, description="A batch not acknowledged within this means the broker is gone")
    probe_timeout_s: float = Field(0.5, gt=0, le=60, description="While the broker is gone: wait this long per retry")
    backoff_s: tuple[float, float] = Field((0.1, 2.0), description="Retry backoff while the broker is gone: first, max")
    connect_timeout_s: float = Field(2.0, gt=0, le=300, description="Bootstrap timeout per (re)connection attempt")
    delivery_timeout_s: float = Field(600.0, ge=31, le=86_400, description=(
        "How long the producer retries a batch by itself (exactly once) before the uplink sends it again (at least once)"))
    uplink_client: Literal["librdkafka", "kafka-python"] = Field("librdkafka", description=(
        "The uplink's producer: librdkafka (confluent-kafka; its IO runs in C threads without the GIL, "
        "5.8 against 37.6 us of CPU per record) or kafka-python (as every other client of tiertwin)"))
    downlink: bool = Field(True, description="Read models and edge state (needs connect=True)")
    offline_uplink: Literal["keep", "count"] = Field("count", description=(
        "connect=False: keep the uplink records in memory (pending_records()) or only count them"))


# =============================================================================================
# Counters
# =============================================================================================
@dataclass
class DeviceStats:
    """Every count of the runtime. Each field is written by one thread only (no lock needed)."""

    # the caller's thread
    observed: int = 0
    replays: int = 0
    rejected: int = 0
    decisions: int = 0
    summaries: int = 0
    outcomes: int = 0
    learned: int = 0
    models_swapped: int = 0
    models_refused: int = 0
    model_transitions: int = 0   # lifecycle transitions of the model slot, sent up as ModelStatus
    edge_states: int = 0
    # the uplink thread
    sent: int = 0                # records the broker acknowledged
    resent: int = 0              # of those, records that came back from the spill file
    spilled: int = 0             # records written to the spill file
    send_errors: int = 0         # failed sends / flushes
    reconnects: int = 0          # broker back after it was lost
    retried_batches: int = 0     # batches sent again after the producer gave up on them (at least once)
    encode_errors: int = 0       # records that did not encode (dead-lettered; also pump(), under the outbox lock)
    queued: int = 0              # records waiting in memory, as of the uplink's last turn (live: runtime.queued)
    spill_pending: int = 0       # records in the spill file not yet acknowledged, as of the same turn
    connected: bool = False
    # the downlink thread
    downlink_records: int = 0
    downlink_rejected: int = 0
    downlink_reconnects: int = 0


# =============================================================================================
# The spill file
# =============================================================================================
class SpillInUseError(TiertwinError):
    """Another running device runtime owns this spill folder."""


_FRAME = struct.Struct(">IHi")   # rest-of-frame length, topic length, key length (-1 = no key)


class SpillFile:
    """Append-only file of encoded records ``(topic, key, value)``, length-prefixed, read back in order.

    ``read`` returns records after the read position; ``commit(offset)`` records (in a
    small cursor file) that everything before ``offset`` reached Kafka, so a restarted
    device resends only what was not confirmed. When everything is confirmed the file
    is emptied.

    >>> import tempfile
    >>> spill = SpillFile(Path(tempfile.mkdtemp()))
    >>> spill.append("t", b"ue-1", b"one"); spill.append("t", None, b"two")
    >>> records, offset = spill.read(10)
    >>> records, spill.pending
    ([('t', b'ue-1', b'one'), ('t', None, b'two')], 2)
    >>> spill.commit(offset, 2); spill.pending, spill.path.stat().st_size
    (0, 0)
    >>> try:
    ...     SpillFile(spill.path.parent)   # one owner per folder
    ... except SpillInUseError as exc:
    ...     print(type(exc).__name__)
    SpillInUseError
    >>> spill.close()
    """

    def __init__(self, directory: Path, name: str = "uplink"):
        import fcntl

        directory.mkdir(parents=True, exist_ok=True)
        # Two runtimes appending to one file would interleave their frames: one owner per folder.
        self._lock = open(directory / f"{name}.lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SpillInUseError(f"{directory} is the spill folder of another running device runtime; "
                                  "give this one its own device_id or spill_dir") from None
        self.path = directory / f"{name}.spill"
        self.cursor_path = directory / f"{name}.cursor"
        self._writer = open(self.path, "ab")
        self._reader = open(self.path, "rb")
        try:
            self.read_offset = int(self.cursor_path.read_text())
        except (FileNotFoundError, ValueError):
            self.read_offset = 0
        self.confirmed_offset = self.read_offset
        self.pending = self._count_from(self.read_offset)   # records after the confirmed offset
        self._unread = self.pending

    def _count_from(self, offset: int) -> int:
        count, size = 0, self.path.stat().st_size
        self._reader.seek(offset)
        while offset < size:
            head = self._reader.read(4)
            if len(head) < 4:
                break
            (length,) = struct.unpack(">I", head)
            offset += 4 + length
            if offset > size:   # a torn last frame (crash mid-write) is not a record
                break
            self._reader.seek(offset)
            count += 1
        return count

    @property
    def unread(self) -> int:
        return self._unread

    def append(self, topic: str, key: bytes | None, value: bytes) -> None:
        t = topic.encode()
        k = b"" if key is None else key
        self._writer.write(_FRAME.pack(2 + len(t) + 4 + len(k) + len(value), len(t), -1 if key is None else len(k)))
        self._writer.write(t + k + value)
        self.pending += 1
        self._unread += 1

    def read(self, max_records: int) -> tuple[list[tuple[str, bytes | None, bytes]], int]:
        """Up to ``max_records`` records after the read position, and the offset after them."""
        self._writer.flush()
        self._reader.seek(self.read_offset)
        records = []
        offset = self.read_offset
        while len(records) < max_records and self._unread:
            head = self._reader.read(_FRAME.size)
            if len(head) < _FRAME.size:
                break
            length, topic_length, key_length = _FRAME.unpack(head)
            body = self._reader.read(length - 6)
            topic = body[:topic_length].decode()
            cut = topic_length + max(key_length, 0)
            key = None if key_length < 0 else body[topic_length:cut]
            records.append((topic, key, body[cut:]))
            offset += 4 + length
            self._unread -= 1
        self.read_offset = offset
        return records, offset

    def rewind(self) -> None:
        """Read again from the last confirmed offset (records read but not confirmed)."""
        self.read_offset = self.confirmed_offset
        self._unread = self.pending

    def commit(self, offset: int, records: int) -> None:
        """``records`` records up to ``offset`` reached Kafka."""
        self.confirmed_offset = offset
        self.pending -= records
        if self.pending == 0 and self._unread == 0:
            self._writer.flush()
            os.truncate(self.path, 0)
            self.read_offset = self.confirmed_offset = 0
            self.cursor_path.unlink(missing_ok=True)
            return
        tmp = self.cursor_path.with_suffix(".tmp")
        tmp.write_text(str(offset))
        os.replace(tmp, self.cursor_path)

    def drain_all(self) -> list[tuple[str, bytes | None, bytes]]:
        """Every unconfirmed record (for rewriting the file at close)."""
        self.rewind()
        records, _ = self.read(self.pending)
        return records

    def rewrite(self, records: list[tuple[str, bytes | None, bytes]]) -> None:
        """Replace the whole file by ``records`` (close: what is in flight goes before the spill)."""
        self._writer.close()
        self._reader.close()
        tmp = self.path.with_suffix(".rewrite")
        with open(tmp, "wb") as out:
            for topic, key, value in records:
                t, k = topic.encode(), b"" if key is None else key
                out.write(_FRAME.pack(2 + len(t) + 4 + len(k) + len(value), len(t), -1 if key is None else len(k)))
                out.write(t + k + value)
        os.replace(tmp, self.path)
        self.cursor_path.unlink(missing_ok=True)
        self._writer = open(self.path, "ab")
        self._reader = open(self.path, "rb")
        self.read_offset = self.confirmed_offset = 0
        self.pending = self._unread = len(records)

    def close(self) -> None:
        self._writer.close()
        self._reader.close()
        self._lock.close()   # releases the flock


# =============================================================================================
# Metrics: read from the stats at scrape time, so the decision path increments plain ints
# =============================================================================================
class _StatsCollector:
    COUNTERS = {
        "observed": "Telemetry records folded into the twins",
        "replays": "Telemetry records already folded in (redelivered)",
        "rejected": "Records the twin rejected (dead-lettered)",
        "decisions": "Placement decisions made",
        "summaries": "LocalSummary records queued for the uplink",
        "outcomes": "Outcomes reported by the device",
        "learned": "Outcomes the twin learned from",
        "models_swapped": "Models hot-swapped between decisions",
        "models_refused": "Model updates refused before loading (unsigned, badly signed, digest mismatch, does not "
                          "load); each one also goes to the dead-letter topic",
        "model_transitions": "Lifecycle transitions of the model slot (shadowing, promoted, rejected, rolled back), "
                             "each sent up as a ModelStatus record",
        "edge_states": "EdgeState records applied",
        "sent": "Records the broker acknowledged",
        "resent": "Acknowledged records that came back from the spill file",
        "spilled": "Records written to the spill file",
        "send_errors": "Failed sends or flushes",
        "reconnects": "Broker regained after it was lost",
        "retried_batches": "Batches sent again after the producer gave up on them",
        "encode_errors": "Uplink records that did not encode",
        "downlink_records": "Records received on the downlink",
        "downlink_rejected": "Downlink records that did not decode",
        "downlink_reconnects": "Downlink consumer rebuilt after a failure",
    }

    def __init__(self, runtime: "DeviceRuntime"):
        self.runtime = runtime

    def _slot(self, name: str, default):
        slot = getattr(self.runtime.twin, "slot", None)
        return getattr(slot, name, default)

    def collect(self) -> Iterator:
        stats, device = self.runtime.stats, self.runtime.config.device_id
        for name, doc in self.COUNTERS.items():
            family = CounterMetricFamily(f"tiertwin_device_{name}", doc, labels=["device"])
            family.add_metric([device], getattr(stats, name))
            yield family
        for name, doc, value in (
                ("queued", "Records waiting in memory for the uplink", self.runtime.queued),
                ("spill_pending", "Records in the spill file not yet acknowledged", self.runtime.spill_pending),
                ("connected", "1 while the uplink reaches the broker", float(stats.connected)),
                ("model_version", "Live demand-latency model version", self.runtime.model_version),
                ("model_revision", "Online updates of the live model since its version", self._slot("revision", 0)),
                ("shadow_version", "Version running in shadow beside the live one (0: none)",
                 getattr(self._slot("shadow", None), "version", 0))):
            family = GaugeMetricFamily(f"tiertwin_device_{name}", doc, labels=["device"])
            family.add_metric([device], float(value))
            yield family


# =============================================================================================
# The runtime
# =============================================================================================
_DECISION, _SUMMARY, _OUTCOME, _DEAD_LETTER, _MODEL_STATUS = range(5)
_SCHEMAS = ("Decision", "LocalSummary", "Outcome", "DeadLetter", "ModelStatus")


class DeviceRuntime:
    """Local twins deciding in the caller's thread, with an uplink and a downlink thread.

    ``DeviceRuntime(config, settings, connect=True).start()`` (or ``with``); call
    :meth:`observe` with every Telemetry record, :meth:`place` with every Demand
    (returns the Decision), :meth:`report` with the device's Outcomes, and, a host that steps,
    :meth:`pump` after each step; :meth:`close` sends what is left (or keeps it in the spill
    file for the next start).
    Not thread-safe by design: one caller thread owns the twins.
    """

    def __init__(self, config: DeviceConfig | None = None, settings: Settings | None = None, *,
                 connect: bool = True, twin: Any | None = None):
        self.config = config or DeviceConfig()
        self.settings = settings or Settings.from_env()
        self.connect = connect
        self.twin = twin if twin is not None else LocalTwin(self.config.twin)
        self.stats = DeviceStats()
        self.metrics = CollectorRegistry()
        self.metrics.register(_StatsCollector(self))
        self.registry = SchemaRegistry.default()
        t = self.config.topics
        self._topics = (t.actions, t.summaries, t.outcomes, t.dead_letters, t.model_status)
        # The uplink encodes with compiled encoders that also check the contract's ranges (schemas/flat_encoder.py:
        # the same bytes as fastavro; validate + encode of a Decision 6.1 vs 8.2 us, LocalSummary 4.4 vs 6.9 us
        # before, hot, 2026-12-03); a record they doubt is validated (the precise error) and encoded by fastavro.
        self._schemas = tuple(self.registry.current(name) for name in _SCHEMAS)
        self._fast_encoders = tuple(_compiled_or_none(schema) for schema in self._schemas)
        self._keys: dict[Any, bytes] = {}     # uplink thread: record key -> its bytes
        self._outbox: collections.deque = collections.deque()    # caller -> uplink: (kind, record, key)
        self._encoded: collections.deque = collections.deque()   # pump() -> uplink: (topic, key, value), after the outbox
        self._take = threading.Lock()     # held by whoever takes from the outbox (pump() or the uplink thread)
        self._pumped_at = float("-inf")   # monotonic time of the host's last pump()
        self._inbox: collections.deque = collections.deque()     # downlink -> caller: (kind, record)
        self._status_seen = getattr(getattr(self.twin, "slot", None), "n_events", 0)   # reported before a restart
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._spill: SpillFile | None = None
        self._retry: collections.deque = collections.deque()     # encoded records that go before all others
        self._inflight: list = []                                # encoded records handed to the producer
        self._spill_reads: list[tuple[int, int]] = []            # (offset, records) read from the spill, unconfirmed
        self._sink = None
        self._close_deadline = float("inf")
        self._uplink_idle = threading.Event()
        self.downlink_ready = threading.Event()   # set once the downlink is positioned on its topics
        self.started = False

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def spill_dir(self) -> Path:
        return self.config.spill_dir or self.settings.home / "device" / self.config.device_id

    def start(self) -> "DeviceRuntime":
        if self.started:
            return self
        if self.connect:
            self._spill = SpillFile(self.spill_dir)   # SpillInUseError if another runtime owns the folder
        self.started = True
        self._stop.clear()
        self._close_deadline = float("inf")
        if self.connect:
            self._threads.append(threading.Thread(target=self._uplink_loop, name=f"device-uplink-{self.config.device_id}",
                                                  daemon=True))
            if self.config.downlink:
                self._threads.append(threading.Thread(target=self._downlink_loop,
                                                      name=f"device-downlink-{self.config.device_id}", daemon=True))
            for thread in self._threads:
                thread.start()
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued (for up to ``timeout_s``), keep the rest in the spill file, stop the threads."""
        if not self.started:
            return
        self._close_deadline = time.monotonic() + timeout_s
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s + 15)
        self._threads = []
        self.started = False

    def __enter__(self) -> "DeviceRuntime":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the caller's API (its thread; no I/O, no Avro, no lock) -----------------------------------
    def observe(self, telemetry: dict) -> None:
        """Fold one Telemetry record into its UE's twin; due LocalSummary records go to the uplink.

        Raises :class:`~tiertwin.errors.RecordRejected` (with ``.reason``) for a record that makes
        no sense; it is counted and dead-lettered too."""
        if self._inbox:
            self._apply_downlink()
        try:
            fresh = self.twin.observe(telemetry)
        except RecordRejected as exc:
            self.stats.rejected += 1
            self._dead_letter(telemetry, exc)
            raise
        self.stats.observed += 1
        if not fresh:
            self.stats.replays += 1
        summaries = self.twin.due_summaries()
        if summaries:
            self._queue_summaries(summaries)

    def _queue_summaries(self, summaries: list[dict]) -> None:
        for summary in summaries:
            self._queue(_SUMMARY, summary, summary["serving_cell"])
        self.stats.summaries += len(summaries)

    def observe_many(self, telemetry: list[dict]) -> int:
        """:meth:`observe` every record of a batch (a simulator step's telemetry) in one call: the same twin state
        and uplink records; a record that makes no sense is counted and dead-lettered and does not stop the
        others (nothing raised). Returns how many were rejected."""
        if self._inbox:
            self._apply_downlink()
        observe_many = getattr(self.twin, "observe_many", None)
        if observe_many is None:    # a twin without it: record by record
            rejected = 0
            for record in telemetry:
                try:
                    self.observe(record)
                except RecordRejected:
                    rejected += 1
            return rejected
        fresh, replays, summaries, rejected = observe_many(telemetry)
        for record, exc in rejected:
            self.stats.rejected += 1
            self._dead_letter(record, exc)
        self.stats.observed += fresh + replays
        self.stats.replays += replays
        if summaries:
            self._queue_summaries(summaries)
        return len(rejected)

    def place(self, demand: dict) -> dict:
        """Decide where ``demand`` runs; returns the Decision (treat it as read-only: the uplink sends it)."""
        if self._inbox:
            self._apply_downlink()
        decision = self.twin.place(demand)
        if self.connect or self.config.offline_uplink == "keep":    # _queue, inlined (per decision)
            self._outbox.append((_DECISION, decision, decision["ue_id"]))
        self.stats.decisions += 1
        return decision

    def pump(self) -> int:
        """Encode what is queued for the uplink, in the caller's thread, between its steps; how many records.

        Optional. A host that steps (the simulator, ``tiertwin bench local``) calls it after each step's
        placements. Encoding is most of the uplink's Python work (about 10 us a record); on the uplink thread it
        competes with ``place()`` for the GIL, which CPython hands to a waiting thread only when the holder
        blocks or after the switch interval (5 ms), so a decision could wait for a slice of the uplink's
        encoding. Once a host pumps, the uplink thread only sends, confirms, spills and reconnects, unless no
        pump came for ``pump_grace_s`` or it is closing: then it encodes again itself, so nothing is held up.
        Order holds: one thread at a time takes from the outbox, and what pump() encoded goes before it.
        Offline (``connect=False``) there is nothing to encode: 0."""
        if not self.started or not self.connect:
            return 0
        self._pumped_at = time.monotonic()
        if not self._take.acquire(blocking=False):   # the uplink thread is taking from the outbox itself
            return 0
        try:
            n = len(self._outbox)
            self._take_outbox(n, self._encoded.append, 0)
        finally:
            self._take.release()
        return n

    def report(self, outcome: dict) -> None:
        """The device measured an Outcome: the twin learns from it and it goes up to the outcomes topic."""
        if self.twin.learn(outcome):
            self.stats.learned += 1
        self._queue(_OUTCOME, outcome, outcome["ue_id"])
        self.stats.outcomes += 1
        self._model_status()      # learning from it may have promoted or rolled back a version

    def _model_status(self) -> None:
        """Each new lifecycle transition of the twin's model slot goes up as a ModelStatus record, keyed
        ``<model>/<device_id>`` like an agent instance's (the status topic is compacted by that key)."""
        slot = getattr(self.twin, "slot", None)
        if slot is None or slot.n_events == self._status_seen:
            return
        for event in (e for e in slot.events if e["seq"] > self._status_seen):
            self._queue(_MODEL_STATUS, slot.status_record(event, "local", self.config.device_id),
                        f"{slot.name}/{self.config.device_id}")
            self.stats.model_transitions += 1
        self._status_seen = slot.n_events

    def device_queue(self, ue_id: str):
        """The UE's EDF queue of local work (run it in this order)."""
        return self.twin.device_queue(ue_id)

    def _queue(self, kind: int, record: dict, key: Any) -> None:
        if self.connect:
            self._outbox.append((kind, record, key))
        elif self.config.offline_uplink == "keep":
            self._outbox.append((kind, record, key))

    def _dead_letter(self, record: dict, error: RecordRejected) -> None:
        letter = {"original": json.dumps(record, default=str).encode(), "original_key": None,
                  "topic": "device", "partition": -1, "offset": -1,
                  "reason": getattr(error, "reason", None) or f"error:{type(error).__name__}",
                  "detail": str(error)[:2000], "stage": f"device/{self.config.device_id}",
                  "failed_at_ms": int(time.time() * 1000)}
        self._queue(_DEAD_LETTER, letter, None)

    def pending_records(self) -> list[tuple[str, dict]]:
        """``(topic, record)`` queued in memory and not yet taken by the uplink (offline: everything kept)."""
        return [(self._topics[kind], record) for kind, record, _ in list(self._outbox)]

    @property
    def queued(self) -> int:
        return len(self._outbox) + len(self._encoded)

    @property
    def spill_pending(self) -> int:
        return self._spill.pending if self._spill is not None else 0

    @property
    def model_version(self) -> int:
        return getattr(self.twin, "model_version", 0)

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything queued so far has reached Kafka (True) or ``timeout_s`` passes (False)."""
        if not self.connect or not self.started:
            return True     # nothing leaves an offline runtime
        deadline = time.monotonic() + timeout_s
        pumps = self._pumped_at > float("-inf")   # a host that pumps: this is its thread, keep pumping
        while time.monotonic() < deadline:
            if pumps and self._outbox:
                self.pump()
            if self._outbox or self._encoded or self._inflight or self._retry or self.spill_pending:
                time.sleep(0.02)
                continue
            self._uplink_idle.clear()
            if self._uplink_idle.wait(max(0.0, deadline - time.monotonic())) and not (
                    self._outbox or self._encoded or self._inflight or self._retry or self.spill_pending):
                return True
        return False

    # -- downlink records, applied between decisions ------------------------------------------------
    def _apply_downlink(self) -> None:
        inbox = self._inbox
        while inbox:
            kind, value = inbox.popleft()
            if kind == "model":
                try:
                    live = self.twin.model_version
                    self.twin.swap_model(value)     # a newer version runs in shadow; the slot promotes it
                    if self.twin.model_version != live:
                        self.stats.models_swapped += 1
                    self._model_status()
                except RecordRejected as exc:   # ModelRejected, before anything was unpickled: the live model stays
                    self.stats.models_refused += 1
                    log.warning("%s: model %s v%s refused: %s", self.config.device_id,
                                value.get("model_name"), value.get("version"), exc)
                    self._dead_letter({k: v for k, v in value.items() if k != "payload"}, exc)
                except TiertwinError as exc:
                    log.warning("%s: model %s v%s not swapped: %s", self.config.device_id,
                                value.get("model_name"), value.get("version"), exc)
            else:
                self.twin.update_edge_state(value)
                self.stats.edge_states += 1

    # =========================================================================================
    # Uplink thread
    # =========================================================================================
    def _uplink_loop(self) -> None:
        backoff = self.config.backoff_s[0]
        try:
            while True:
                stopping = self._stop.is_set()
                self._admit()
                self.stats.queued, self.stats.spill_pending = self.queued, self._spill.pending
                if stopping and (not self._has_work() or time.monotonic() >= self._close_deadline):
                    break
                if self._sink is None and not self._connect_sink():
                    self._wait(backoff)
                    backoff = min(backoff * 2, self.config.backoff_s[1])
                    continue
                if self._inflight:
                    ok = self._confirm(self.config.probe_timeout_s)
                elif self._has_work():
                    ok = self._send_batch()
                else:
                    self._uplink_idle.set()
                    self._wait(self.config.uplink_batch_ms / 1000)
                    continue
                if ok:
                    backoff = self.config.backoff_s[0]
                    if self._sendable() < self.config.uplink_batch_records and not self._retry \
                            and not (self._spill and self._spill.unread):
                        self._wait(self.config.uplink_batch_ms / 1000)
                else:
                    self._wait(backoff)
                    backoff = min(backoff * 2, self.config.backoff_s[1])
        except Exception:  # the uplink must not die silently: say so, keep what is unsent on disk
            log.exception("%s: uplink thread failed", self.config.device_id)
        finally:
            self._shutdown_uplink()

    def _has_work(self) -> bool:
        return bool(self._outbox or self._encoded or self._inflight or self._retry or (self._spill and self._spill.unread))

    def _sendable(self) -> int:
        """Records in memory this thread may take now (not the outbox while the host pumps)."""
        return len(self._encoded) + (0 if self._host_pumps() else len(self._outbox))

    def _host_pumps(self) -> bool:
        """The host pumped within ``pump_grace_s`` and the runtime is not closing: the outbox is its to encode."""
        return not self._stop.is_set() and time.monotonic() - self._pumped_at < self.config.pump_grace_s

    def _wait(self, seconds: float) -> None:
        """Sleep, keeping the memory bound (spilling) meanwhile; wake early when stopping."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0 or self._stop.wait(min(left, 0.05)):
                return
            self._admit()

    def _admit(self) -> None:
        """Keep at most ``queue_limit`` records in memory: the oldest beyond it go to the spill file."""
        outbox, encoded, limit = self._outbox, self._encoded, self.config.queue_limit
        if len(outbox) + len(encoded) <= limit:
            return
        spill, n = self._spill, 0
        with self._take:   # pump() moves records from the outbox to ``encoded`` meanwhile: the oldest are in ``encoded``
            excess = len(outbox) + len(encoded) - limit
            while excess > 0 and encoded:
                spill.append(*encoded.popleft())
                n += 1
                excess -= 1
            if excess > 0:   # then the oldest of the outbox, encoded as the uplink does (dead letters not kept)
                kept: list = []
                self._take_outbox(excess, kept.append, self.config.uplink_yield_every)
                for entry in kept:
                    spill.append(*entry)
                n += len(kept)
        self.stats.spilled += n

    def _encode(self, entry: tuple[int, dict, Any]) -> tuple[str, bytes | None, bytes] | None:
        kind, record, key = entry
        try:
            try:
                fast = self._fast_encoders[kind]
                if fast is None:
                    raise NotFlat
                value = fast(record)    # checks the contract's ranges as it goes (compile_encoder(checked=True))
            except NotFlat:   # out of range, or a value the compiled encoder does not take: the precise error, fastavro
                schema = self._schemas[kind]
                schema.validate(record)
                value = self.registry.encode_with(schema, record, validate=False)
        except RecordRejected as exc:
            self.stats.encode_errors += 1
            log.error("%s: a %s does not encode (%s); dead-lettered", self.config.device_id, _SCHEMAS[kind], exc)
            if kind == _DEAD_LETTER:
                return None
            self._outbox.appendleft((_DEAD_LETTER, {
                "original": json.dumps(record, default=str).encode(), "original_key": None, "topic": self._topics[kind],
                "partition": -1, "offset": -1, "reason": exc.reason, "detail": str(exc)[:2000],
                "stage": f"device/{self.config.device_id}/uplink", "failed_at_ms": int(time.time() * 1000)}, None))
            return None
        if key is None:
            return self._topics[kind], None, value
        encoded_key = self._keys.get(key)
        if encoded_key is None:
            encoded_key = str(key).encode()
            if len(self._keys) < 100_000 and (type(key) is str or type(key) is int):   # UE ids, cells: once each
                self._keys[key] = encoded_key
        return self._topics[kind], encoded_key, value

    def _connect_sink(self) -> bool:
        from tiertwin.connectors.kafka import KafkaSink
        from tiertwin.connectors.rdkafka import RdKafkaSink

        settings = self.settings.model_copy(update={"connect_timeout_s": self.config.connect_timeout_s})
        common = dict(profile="throughput", client_id=f"tiertwin-device-{self.config.device_id}",
                      delivery_timeout_ms=int(self.config.delivery_timeout_s * 1000), reconnect_backoff_max_ms=1000)
        try:
            if self.config.uplink_client == "librdkafka":
                # connects in the background: an unreachable broker shows as a flush that times out
                self._sink = RdKafkaSink(settings, self.registry, **common)
            else:
                self._sink = KafkaSink(settings, self.registry, max_block_ms=int(self.config.flush_timeout_s * 1000),
                                       **common)
        except BrokerUnavailableError as exc:
            self.stats.send_errors += 1
            log.info("%s: uplink cannot reach Kafka yet (%s)", self.config.device_id, exc)
            return False
        return True

    def _next_batch(self) -> list[tuple[str, bytes | None, bytes]]:
        """In order: records to send again, then the spill file, then memory.

        A batch is at most ``queue_limit`` records too: librdkafka takes a whole batch at once even with
        the broker gone, and what it holds unconfirmed counts against the memory bound like the queue."""
        limit = min(self.config.uplink_batch_records, self.config.queue_limit)
        batch: list = []
        while self._retry and len(batch) < limit:
            batch.append(self._retry.popleft())
        if len(batch) < limit and self._spill.unread:
            records, offset = self._spill.read(limit - len(batch))
            self._spill_reads.append((offset, len(records)))
            batch.extend(records)
            return batch   # memory only after the spill is drained (its records are newer)
        encoded = self._encoded
        with self._take:   # what pump() encoded is older than the outbox: it goes first, nothing in between
            room = limit - len(batch)
            if len(encoded) <= room:
                batch.extend(encoded)
                encoded.clear()
            else:
                popleft = encoded.popleft
                batch.extend(popleft() for _ in range(room))
            if len(batch) < limit and not self._host_pumps():
                self._take_outbox(min(limit - len(batch), len(self._outbox)), batch.append,
                                  self.config.uplink_yield_every)
        return batch

    def _take_outbox(self, n: int, append, every: int) -> None:
        """Take the ``n`` oldest records off the outbox, encode them and ``append`` each ``(topic, key, value)``
        (a record that does not encode is dead-lettered instead); ``every``: give the GIL back after this many
        (0: never). One thread at a time takes from the outbox."""
        # The fast path inline (a compiled encoder and a known key: every record but the first per key);
        # anything else goes through _encode (fastavro, the precise error, dead letters).
        popleft, encoders, topics, keys = self._outbox.popleft, self._fast_encoders, self._topics, self._keys
        for encoded in range(1, n + 1):
            entry = popleft()
            kind, record, key = entry
            encoder = encoders[kind]
            key_bytes = keys.get(key) if encoder is not None else None
            encoded_entry = None
            if key_bytes is not None:
                try:
                    encoded_entry = (topics[kind], key_bytes, encoder(record))  # checks the contract's ranges too
                except NotFlat:
                    pass
            if encoded_entry is None:
                encoded_entry = self._encode(entry)
            if encoded_entry is not None:
                append(encoded_entry)
            if every and encoded % every == 0:
                # Encoding is most of the uplink's GIL time (~10 us a record): without this a decision
                # waited for the switch interval (5 ms) whenever it asked for the GIL mid-batch.
                time.sleep(0)

    def _send_batch(self) -> bool:
        batch = self._next_batch()
        if not batch:
            return True
        self._inflight = batch
        sink, every = self._sink, self.config.uplink_yield_every
        # librdkafka's produce straight (RdKafkaSink.send_raw's own fast path, without its call); a full local
        # queue (BufferError) goes through send_raw, which waits for room
        produce = getattr(sink, "_produce", None) or sink.send_raw
        send_raw = sink.send_raw
        i = 0
        try:
            for i, (topic, key, value) in enumerate(batch, 1):
                try:
                    produce(topic, value, key)
                except BufferError:
                    send_raw(topic, value, key)
                if i % every == 0:
                    time.sleep(0)   # let a waiting decision have the GIL
        except Exception as exc:  # kafka-python raises its own errors (metadata timeout) from send
            # What was handed over stays with the producer; the rest is sent after it, in order.
            handed = i - 1
            self._retry.extendleft(reversed(batch[handed:]))
            self._inflight = batch[:handed]
            self._lost_broker(exc)
            return False
        return self._confirm(self.config.flush_timeout_s)

    def _confirm(self, timeout_s: float) -> bool:
        """Flush the in-flight batch; on success count it and advance the spill cursor."""
        try:
            self._sink.flush(timeout_s)
        except BrokerUnavailableError as exc:
            if "producing failed" in str(exc):
                # The producer gave up on some records (delivery timeout or a fatal error): it holds none
                # of them now, so the whole batch goes again (those that did land arrive twice, same ids).
                self._retry.extendleft(reversed(self._inflight))
                self._inflight = []
                self.stats.retried_batches += 1
            if getattr(self._sink, "fatal", None) is not None:   # librdkafka cannot go on: a new producer
                self._close_sink(abandon=True)
            self._lost_broker(exc)
            return False
        batch, self._inflight = self._inflight, []
        self.stats.sent += len(batch)
        # Spill reads are confirmed once nothing read is waiting to be sent again (the retries go out
        # first, so the next confirmation without any covers every read so far).
        if not self._retry:
            for offset, records in self._spill_reads:
                self._spill.commit(offset, records)
                self.stats.resent += records
            self._spill_reads = []
        if not self.stats.connected:
            self.stats.connected = True
            if self.stats.send_errors:
                self.stats.reconnects += 1
                log.info("%s: uplink reached Kafka again", self.config.device_id)
        return True

    def _lost_broker(self, exc: Exception) -> None:
        self.stats.send_errors += 1
        if self.stats.connected:
            log.warning("%s: uplink lost Kafka (%s); deciding on, records queue up", self.config.device_id, exc)
        self.stats.connected = False

    def _shutdown_uplink(self) -> None:
        """Whatever did not reach Kafka goes to the spill file, in order, for the next start."""
        unsent = list(self._inflight) + list(self._retry)
        spill = self._spill
        if spill is not None and (unsent or self._outbox or self._encoded):
            # records read from the spill but not confirmed are in ``unsent`` already: keep what follows them
            spill_rest = spill.drain_all()[sum(n for _, n in self._spill_reads):]
            with self._take:
                memory = list(self._encoded)
                self._encoded.clear()
                while self._outbox:   # a record that does not encode leaves a dead letter in its place
                    self._take_outbox(len(self._outbox), memory.append, 0)
            spill.rewrite(unsent + spill_rest + memory)
            self.stats.spilled += len(memory) + len(unsent)
            log.warning("%s: %d records not sent; kept in %s for the next start", self.config.device_id,
                        spill.pending, spill.path)
        self._inflight, self._retry = [], collections.deque()
        self.stats.queued = self.queued
        if spill is not None:
            self.stats.spill_pending = spill.pending
            spill.close()
        self._close_sink(abandon=bool(unsent))
        self.stats.connected = False

    def _close_sink(self, abandon: bool) -> None:
        """Let the producer go; ``abandon``: what it still holds is kept elsewhere (spill file, retry queue)."""
        sink, self._sink = self._sink, None
        if sink is None:
            return
        try:
            if hasattr(sink, "abandon"):    # librdkafka
                if abandon:
                    sink.abandon()
                else:
                    sink.close(5)
            else:
                sink._producer.close(timeout=0 if abandon else 5)
        except Exception:  # closing a producer whose broker is gone  # noqa: BLE001
            pass

    # =========================================================================================
    # Downlink thread
    # =========================================================================================
    def _downlink_loop(self) -> None:
        from tiertwin.connectors.kafka import TopicReader

        topics = self.config.topics
        reader = None
        best_version: dict[str, int] = {}
        backoff = self.config.backoff_s[0]
        settings = self.settings.model_copy(update={"connect_timeout_s": self.config.connect_timeout_s})
        while not self._stop.is_set():
            try:
                if reader is None:
                    # Models whole (the newest version wins), edge state from now on; undecodable records
                    # are counted by _hand_down, which decodes each one itself.
                    reader = TopicReader([topics.models, topics.edge_state], settings, on_undecodable="skip",
                                         start={topics.models: "beginning", topics.edge_state: "end"},
                                         registry=self.registry,
                                         client_id=f"tiertwin-device-{self.config.device_id}-downlink",
                                         fetch_max_wait_ms=200, reconnect_backoff_max_ms=1000)
                    self.downlink_ready.set()
                    backoff = self.config.backoff_s[0]
                for message in reader.poll_raw(200):
                    self._hand_down(message, best_version)
            except Exception as exc:  # broker gone at start, or the consumer failed: rebuild it later
                log.info("%s: downlink not reading (%s); retrying", self.config.device_id, exc)
                if reader is not None:
                    try:
                        reader.close()
                    except Exception:  # noqa: BLE001
                        pass
                    reader = None
                    self.stats.downlink_reconnects += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.config.backoff_s[1])
        if reader is not None:
            reader.close()

    def _hand_down(self, message, best_version: dict[str, int]) -> None:
        try:
            schema, value = self.registry.decode(message.value)
        except RecordRejected as exc:
            self.stats.downlink_rejected += 1
            log.warning("%s: %s/%d@%d does not decode (%s)", self.config.device_id, message.topic,
                        message.partition, message.offset, exc)
            return
        self.stats.downlink_records += 1
        if schema == "tiertwin.ModelUpdate":
            # The models topic is read whole: hand only versions newer than any handed before (commands
            # always; the caller's slot verifies both). A refused version does not count as handed.
            if value.get("action", "publish") == "publish":
                if value["version"] <= best_version.get(value["model_name"], -1):
                    return
                try:
                    verify_update(value)
                except RecordRejected:
                    pass
                else:
                    best_version[value["model_name"]] = value["version"]
            self._inbox.append(("model", value))
        elif schema == "tiertwin.EdgeState":
            self._inbox.append(("edge", value))
        else:
            self.stats.downlink_rejected += 1


def _compiled_or_none(schema):
    try:
        return compile_encoder(schema.raw, schema.header, checked=True)
    except NotFlat:
        return None


def stats_dict(stats: DeviceStats) -> dict[str, Any]:
    """The counts as a plain dict (for JSON summaries)."""
    return asdict(stats)
