"""Kafka read and write for Beam Python, without Java: the read fetches through librdkafka
(:class:`~tiertwin.connectors.rdkafka.RdKafkaPartitionConsumer`, ``ReadSpec.client``) or kafka-python,
the write produces through kafka-python.

Beam's own ``ReadFromKafka`` is a Java cross-language transform that cannot run on
this machine's runners, so tiertwin reads Kafka with a **splittable DoFn**:

* one element per topic-partition (found at run time), whose *restriction* is an
  offset range ``[start, stop)`` tracked by an :class:`OffsetRestrictionTracker`;
  ``stop`` is the partition's end offset (or the offset of a stop timestamp) in
  **bounded** mode and :data:`UNBOUNDED` in **unbounded** mode;
* each ``process`` call reads until it has caught up with the partition (or for at
  most ``max_read_s``) and then checkpoints with ``defer_remainder``, so the runner
  commits the bundle and downstream windows see the records; a caught-up or idle
  partition resumes after ``poll_interval_s``;
* the watermark is set by hand (``ManualWatermarkEstimator``) from the records'
  event times minus ``max_out_of_order_ms``. A partition that is caught up with
  its log end and has had no records for ``idle_after_s`` is idle: its watermark
  moves on with the wall clock from where its last record left it, so a quiet
  partition never holds every window open (a never-written one starts at now),
  while a partition with a backlog never counts as idle;
* with ``ReadSpec.resume`` the read starts from a consumer group's committed offsets and commits,
  when the runner finalizes a bundle, a position held back far enough that every window not yet
  emitted can be recomputed after a restart (:mod:`tiertwin.connectors.beam_resume`);
* ``ReadFromKafka(shard=(i, n))`` reads every n-th partition, so n reads can run in n SDK workers;
* records are decoded and validated with tiertwin's :class:`SchemaRegistry`; a
  record that fails goes, whole, to the ``dead_letters`` output as a
  ``DeadLetter`` record: :class:`ReadFromKafka` returns ``records`` and
  ``dead_letters``, and :class:`WriteToKafka` writes either to a topic.

Elements of ``records`` are ``(schema short name, record dict)``, timestamped with
the record's event time (:func:`tiertwin.schemas.event_time.event_time_ms`,
falling back to the Kafka record timestamp). With ``batches=True`` they are
:class:`~tiertwin.schemas.batches.RecordBatch` elements instead: one per fetch, partition
and contract, decoded and validated column-wise (:func:`~tiertwin.schemas.batches.decode_batch`),
timestamped with their earliest record; dead letters are the same either way.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import IllegalStateError

from tiertwin.connectors.beam_resume import RESUME_LOG, ResumePolicy, committed_positions
from tiertwin.connectors.kafka import kafka_config
from tiertwin.connectors.readiness import wait_out
from tiertwin.errors import ConfigError, RecordRejected
from tiertwin.schemas.batches import dead_letter, decode_batch
from tiertwin.schemas.event_time import event_time_ms, short_name
from tiertwin.settings import Settings

UNBOUNDED = sys.maxsize
DEAD_LETTERS = "dead_letters"
RECORDS = "records"


@dataclass(frozen=True)
class ReadSpec:
    """Where to start and stop reading.

    ``start``: ``"earliest"``, ``"latest"`` or an event time in ms (first offset whose
    Kafka timestamp is at or after it). ``stop``: ``None`` for unbounded reading,
    ``"end"`` for the end offsets at start-up, or a time in ms.

    Every ``process`` call is a bundle, and on Prism a bundle costs milliseconds of CPU
    in the runner and the SDK worker whatever it carries: a caught-up partition resumes
    after ``poll_interval_s`` (at 50 ms, 8 idle partitions kept Prism and the worker at 0.75 core),
    and a partition with a backlog hands its records on every ``max_read_s``.
    """

    start: str | int = "earliest"
    stop: str | int | None = None
    max_out_of_order_ms: int = 200
    max_read_s: float = 0.1
    poll_interval_s: float = 0.15
    idle_after_s: float = 0.5
    max_poll_records: int = 2000
    # Which client fetches: librdkafka (confluent-kafka; parses fetches in its own C threads) or kafka-python.
    client: Literal["librdkafka", "kafka-python"] = "librdkafka"
    # Commit offsets to this consumer group, and start from its committed offsets (see connectors/beam_resume.py).
    resume: "ResumePolicy | None" = None


@dataclass(frozen=True)
class PartitionSlice:
    """One topic-partition and the offsets to read from it."""

    topic: str
    partition: int
    start: int
    stop: int
    # Every (topic, partition) of the same read: a worker holds its watermark until each has been heard from.
    read_partitions: tuple = ()
    # Resuming (ReadSpec.resume): every partition of the job, all shards (workers) included, and the replay
    # point committed with ``start`` (connectors/beam_resume.py).
    group_partitions: tuple = ()
    replay_from_ms: int | None = None

    @property
    def bounded(self) -> bool:
        return self.stop != UNBOUNDED


def _consumer(settings: Settings, client_id: str, **overrides) -> KafkaConsumer:
    """A group-less consumer with the shared client config (so with the tier's credentials)."""
    return KafkaConsumer(**kafka_config(settings, client_id, enable_auto_commit=False, group_id=None, **overrides))


def discover_partitions(settings: Settings, topics: list[str], spec: ReadSpec,
                        shard: tuple[int, int] = (0, 1)) -> list[PartitionSlice]:
    """The partitions of ``topics`` with the offset range ``spec`` asks for; with ``shard=(i, n)``, every n-th
    of them from the i-th (in topic, partition order)."""
    consumer = _consumer(settings, "tiertwin-beam-discover")
    try:
        tps = []
        for topic in topics:   # a cluster node that is down refuses the look-up: wait_out tries another
            partitions = wait_out(lambda: consumer.partitions_for_topic(topic), f"the partitions of {topic!r}",
                                  settings)
            if not partitions:
                raise ConfigError(f"topic {topic!r} does not exist on {settings.bootstrap}")
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        every_shard, tps = tuple((tp.topic, tp.partition) for tp in tps), tps[shard[0]::shard[1]]
        what = f"the offsets of {', '.join(repr(t) for t in topics)}"
        starts = wait_out(lambda: _offsets_at(consumer, tps, spec.start), what, settings)
        committed: dict = {}
        if spec.resume is not None:  # resume where the group committed (the others start at spec.start)
            committed = wait_out(lambda: committed_positions(settings, spec.resume.group_id, tps), what, settings)
            starts = {tp: committed[tp][0] if tp in committed else starts[tp] for tp in tps}
        stops = ({tp: UNBOUNDED for tp in tps} if spec.stop is None
                 else wait_out(lambda: _offsets_at(consumer, tps, spec.stop), what, settings))
        every = tuple((tp.topic, tp.partition) for tp in tps)
        return [PartitionSlice(tp.topic, tp.partition, starts[tp], max(starts[tp], stops[tp]), every,
                               every_shard if spec.resume is not None else (), committed.get(tp, (0, None))[1])
                for tp in tps]
    finally:
        consumer.close()


def _offsets_at(consumer: KafkaConsumer, tps: list, where: str | int) -> dict:
    if where == "earliest":
        return consumer.beginning_offsets(tps)
    if where in ("latest", "end"):
        return consumer.end_offsets(tps)
    if isinstance(where, int):
        ends = consumer.end_offsets(tps)
        found = consumer.offsets_for_times({tp: where for tp in tps})
        return {tp: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in tps}
    raise ConfigError(f"read position must be 'earliest', 'latest', 'end' or a time in ms, not {where!r}")


class KafkaOffsetTracker(OffsetRestrictionTracker):
    """An offset tracker that knows an open-ended range is unbounded.

    Runner-initiated fractional splits of an open-ended range would put the split
    point at an offset that never exists, so only checkpoints (fraction 0) split it.
    """

    def is_bounded(self):
        return self.current_restriction().stop != UNBOUNDED

    def try_split(self, fraction_of_remainder):
        if not self.is_bounded() and fraction_of_remainder != 0:
            return None
        return super().try_split(fraction_of_remainder)


class PartitionOffsets(RestrictionProvider):
    def initial_restriction(self, element: PartitionSlice) -> OffsetRange:
        return OffsetRange(element.start, element.stop)

    def create_tracker(self, restriction: OffsetRange) -> KafkaOffsetTracker:
        return KafkaOffsetTracker(restriction)

    def restriction_size(self, element, restriction: OffsetRange) -> int:
        # An open range has no size; report a nominal one so runners do not split on it.
        return 1 if restriction.stop == UNBOUNDED else max(0, restriction.stop - restriction.start)


class _ReadPartition(beam.DoFn):
    """The splittable DoFn: reads one partition's offset range, decodes, dead-letters."""

    def __init__(self, settings: Settings, spec: ReadSpec, stage: str, read_id: str, batches: bool = False,
                 fold=None):
        self.settings, self.spec, self.stage, self.read_id = settings, spec, stage, read_id
        self.batches, self.fold = batches, fold
        self._consumers: dict[tuple, KafkaConsumer] = {}  # taken by the running step (_CONSUMERS)
        self.read = Metrics.counter("kafka-read", "records")
        self.rejected = Metrics.counter("kafka-read", "dead_letters")
        self.committed = Metrics.counter("kafka-read", "offset_commits")

    def setup(self):
        from tiertwin.schemas import SchemaRegistry

        self.registry = SchemaRegistry.default()
        self._consumers: dict[tuple, KafkaConsumer] = {}  # taken by the running step (_CONSUMERS)
        self._next_offset: dict[tuple, int] = {}
        _CONSUMERS.join(self.read_id)

    def teardown(self):
        if not hasattr(self, "registry"):
            return  # never set up
        for consumer in self._consumers.values():
            consumer.close()
        self._consumers.clear()
        _CONSUMERS.leave(self.read_id)

    def _consumer_at(self, tp: TopicPartition, offset: int) -> KafkaConsumer:
        """The partition's consumer, positioned to read ``offset`` next: taken from the worker's
        (:data:`_CONSUMERS`) until the step ends (:meth:`_release`), or made if it has none free."""
        key = (tp.topic, tp.partition)
        consumer = self._consumers.get(key)
        if consumer is None:
            consumer, at = _CONSUMERS.take(self.read_id, key, offset)
            if at is None:
                self._next_offset.pop(key, None)
            else:
                self._next_offset[key] = at
        if consumer is None:
            if self.spec.client == "librdkafka":
                from tiertwin.connectors.rdkafka import RdKafkaPartitionConsumer

                consumer = RdKafkaPartitionConsumer(self.settings, f"tiertwin-beam-{tp.topic}-{tp.partition}",
                                                    max_poll_records=self.spec.max_poll_records,
                                                    fetch_min_bytes=1, fetch_max_wait_ms=500)
            else:
                consumer = _consumer(self.settings, f"tiertwin-beam-{tp.topic}-{tp.partition}",
                                     fetch_min_bytes=1, fetch_max_wait_ms=500,
                                     max_poll_records=self.spec.max_poll_records)
            consumer.assign([tp])
        self._consumers[key] = consumer
        if self._next_offset.get(key) != offset:  # keep the prefetched data when resuming where we were
            consumer.seek(tp, offset)
            self._next_offset[key] = offset
        return consumer

    def process(self, element: PartitionSlice,
                finalizer=beam.DoFn.BundleFinalizerParam,  # before the SDF's keyword parameters (passed by name)
                tracker=beam.DoFn.RestrictionParam(PartitionOffsets()),
                watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())):
        yield from self._read(element, tracker, watermark, finalizer)

    def _read(self, element: PartitionSlice, tracker, watermark, finalizer=None):
        if self.fold is None:
            yield from self._read_fetches(element, tracker, watermark, finalizer)
            return
        self.fold.start()  # this step's batches are folded, and only what the fold gives leaves
        yield from self._read_fetches(element, tracker, watermark, finalizer)
        yield from self.fold.finish()

    def _read_fetches(self, element: PartitionSlice, tracker, watermark, finalizer=None):
        try:
            yield from self._read_step(element, tracker, watermark, finalizer)
        finally:  # the next step of the partition may run in another instance: it takes the consumer from there
            self._release((element.topic, element.partition))

    def _release(self, key: tuple) -> None:
        """Give the partition's consumer back to the worker's, with the offset it reads next (if known)."""
        consumer = self._consumers.pop(key, None)
        if consumer is not None:
            _CONSUMERS.give_back(self.read_id, key, consumer, self._next_offset.pop(key, None))

    def _read_step(self, element: PartitionSlice, tracker, watermark, finalizer=None):
        commits: list = []  # what to do once the runner holds this bundle (_commit_when_finalized)
        if finalizer is not None:  # every bundle: Prism finalizes each bundle of a stage that can ask for it
            finalizer.register(lambda: [commit() for commit in commits])
        restriction = tracker.current_restriction()
        if restriction.start >= restriction.stop:
            return
        tp, key = TopicPartition(element.topic, element.partition), (element.topic, element.partition)
        if restriction.stop == UNBOUNDED and drained(self.read_id):
            tracker.try_claim(UNBOUNDED - 1)  # the last offset of the range: all of it is done
            _WORKER_WATERMARKS.forget(self.read_id, key)
            return
        _WORKER_WATERMARKS.expect(self.read_id, element.read_partitions)
        if restriction.stop == UNBOUNDED:
            # This step resumes the partition's previous one (a checkpoint), which the runner schedules only once it
            # holds that step's outputs: what it read may now count for the other partitions.
            _WORKER_WATERMARKS.publish(self.read_id, key)
        moved: list = []  # the partition's watermark this step moved to (_set_watermark)
        commits.append(lambda: moved and _WORKER_WATERMARKS.publish(self.read_id, key, moved[-1]))
        if self.spec.resume is not None:
            RESUME_LOG.started(self.read_id, key, restriction.start, element.replay_from_ms)
        consumer = self._consumer_at(tp, restriction.start)
        deadline = time.monotonic() + self.spec.max_read_s
        last_claimed = restriction.start - 1
        while time.monotonic() < deadline:
            try:
                messages = consumer.poll(timeout_ms=int(self.spec.poll_interval_s * 1000)).get(tp, [])
            except IllegalStateError:  # the worker is shutting down and closed the consumer: resume elsewhere
                tracker.defer_remainder()
                return
            if not messages:
                if restriction.stop != UNBOUNDED and consumer.position(tp) >= restriction.stop:
                    # Offsets left (transaction markers, compacted gaps) hold no records: claim them.
                    if last_claimed < restriction.stop - 1:
                        tracker.try_claim(restriction.stop - 1)
                    _WORKER_WATERMARKS.forget(self.read_id, key)
                    return
                highwater = consumer.highwater(tp)
                if highwater is not None and self._next_offset[key] >= highwater:
                    self._advance_idle(key, watermark, moved)
                    self._commit_when_finalized(commits, element, tp)
                # else: records exist that this poll did not bring (a slow fetch, a starved CPU); not idle
                tracker.defer_remainder(Duration.of(self.spec.poll_interval_s))
                return
            newest = None
            if self.batches:
                claimed = self._claim_batch(tracker, messages)
                if claimed:
                    last_claimed = claimed[-1].offset
                    self._next_offset[key] = last_claimed + 1
                    outputs, newest = self._decode_batch(claimed)
                    yield from outputs
                if len(claimed) < len(messages):
                    self._lost_position(key)
                    return
            else:
                for m in messages:
                    if not tracker.try_claim(m.offset):
                        self._lost_position(key)
                        return
                    last_claimed = m.offset
                    self._next_offset[key] = m.offset + 1
                    output = self._decode(m)
                    if not isinstance(output, beam.pvalue.TaggedOutput):
                        newest = output.timestamp if newest is None else max(newest, output.timestamp)
                    yield output
            self.read.inc(len(messages))
            if newest is not None:
                self._set_watermark(key, watermark, newest - Duration.of(self.spec.max_out_of_order_ms / 1000),
                                    moved)
            _WORKER_WATERMARKS.progressed(self.read_id, key)
            if self.spec.resume is not None:
                RESUME_LOG.note(self.read_id, key, self._next_offset[key],
                                None if newest is None else newest.micros // 1000)
            highwater = consumer.highwater(tp)
            if highwater is not None and self._next_offset[key] >= highwater:
                # Caught up: end the bundle now so its records (and watermark) move on downstream,
                # instead of waiting out max_read_s for a trickle.
                self._commit_when_finalized(commits, element, tp)
                tracker.defer_remainder(Duration.of(self.spec.poll_interval_s))
                return
        self._commit_when_finalized(commits, element, tp, advance=False)
        tracker.defer_remainder(Duration.of(0))

    def _commit_when_finalized(self, commits: list, element: PartitionSlice, tp: TopicPartition,
                               advance: bool = True) -> None:
        """Once the runner holds this bundle, commit the partition's resume point (connectors/beam_resume.py):
        the last breakpoint before the replay point of the job's held watermark, at most this bundle's end.
        Only bundles that caught their partition up move it (a read with a backlog runs ahead of downstream);
        the others (``advance=False``) commit the last point again, so that a partition that never catches
        up still resumes where it started, not at ``start``."""
        resume = self.spec.resume
        key = (tp.topic, tp.partition)
        if resume is None or key not in self._next_offset:
            return
        held = _WORKER_WATERMARKS.held(self.read_id)
        watermark_ms = None if not advance or held is None or held <= MIN_TIMESTAMP else held.micros // 1000
        upto, run, settings = self._next_offset[key], self.read_id, self.settings
        mine = set(element.read_partitions)
        others = tuple(p for p in element.group_partitions if p not in mine)

        def commit():
            if RESUME_LOG.finalized(settings, resume, run, tp, upto, watermark_ms, others):
                self.committed.inc()

        commits.append(commit)

    def _lost_position(self, key: tuple) -> None:
        """The runner split the range under a fetch: the consumer has handed over records this restriction
        may not claim, so its position is past the next offset to read. Forget it, so whatever resumes
        here seeks (before, the resumed restriction read on from the consumer's position and would have
        skipped those records; see tests/test_cloud_batches.py)."""
        self._next_offset.pop(key, None)

    @staticmethod
    def _claim_batch(tracker, messages: list) -> list:
        """Claim a fetch with one claim of its last offset (the tracker claims every offset up to it); if
        the range ends inside the fetch (a bounded range, or a split), claim and return only the part in it.
        One claim only: a tracker refuses a second claim below a failed one."""
        stop = tracker.current_restriction().stop
        inside = messages if messages[-1].offset < stop else [m for m in messages if m.offset < stop]
        if inside and tracker.try_claim(inside[-1].offset):
            return inside
        return []  # split meanwhile: nothing of this fetch is ours

    def _decode_batch(self, messages: list) -> tuple[list, Timestamp | None]:
        """One fetch of one partition -> (a RecordBatch per contract, timestamped with its earliest record,
        and a dead letter per refused record; the newest event time read, for the watermark)."""
        first = messages[0]
        if hasattr(messages, "columns"):  # a librdkafka Fetch: its lists, no record object per message
            values, keys, offsets, timestamps = messages.columns()
        else:
            values, keys = [m.value for m in messages], [m.key for m in messages]
            offsets, timestamps = [m.offset for m in messages], [m.timestamp for m in messages]
        batches, letters = decode_batch(self.registry, values, keys=keys, topic=first.topic,
                                        partition=first.partition, offsets=offsets, timestamps_ms=timestamps,
                                        stage=self.stage)
        if self.fold is not None:
            outputs: list = []
            for batch in batches:
                self.fold.add(batch)
        else:
            outputs = [beam.window.TimestampedValue(batch, min(batch.event_ms) / 1000) for batch in batches]
        newest = Timestamp.of(max(max(b.event_ms) for b in batches) / 1000) if batches else None
        if letters:
            self.rejected.inc(len(letters))
            outputs += [beam.pvalue.TaggedOutput(DEAD_LETTERS, letter) for letter in letters]
        return outputs, newest

    def _decode(self, m):
        output = decode_record(self.registry, value=m.value, key=m.key, topic=m.topic, partition=m.partition,
                               offset=m.offset, timestamp_ms=m.timestamp, stage=self.stage)
        if isinstance(output, beam.pvalue.TaggedOutput):
            self.rejected.inc()
        return output

    def _advance_idle(self, key: tuple, watermark, moved: list) -> None:
        """With no records, event time moves on at the wall clock's pace from the partition's last watermark."""
        now = time.monotonic()
        since = _WORKER_WATERMARKS.last_progress(self.read_id, key)
        if now - since < self.spec.idle_after_s:
            return
        own = _WORKER_WATERMARKS.own(self.read_id, key)
        if own is None:
            own = watermark.current_watermark()
        if own is None or own <= Timestamp.of(0):
            target = Timestamp.of(time.time() - self.spec.max_out_of_order_ms / 1000)
        else:
            target = own + Duration.of(now - since)
        read_in_this_step = bool(moved)
        self._set_watermark(key, watermark, target, moved)
        if not read_in_this_step:  # no record of the partition is in flight: the advance counts at once
            _WORKER_WATERMARKS.publish(self.read_id, key)
        _WORKER_WATERMARKS.progressed(self.read_id, key, now)

    def _set_watermark(self, key: tuple, watermark, target: Timestamp, moved: list | None = None) -> None:
        bound = _WORKER_WATERMARKS.report(self.read_id, key, target)
        if moved is not None:
            moved.append(_WORKER_WATERMARKS.own(self.read_id, key))
        current = watermark.current_watermark()
        if current is None or bound > current:
            watermark.set_watermark(bound)


class _WorkerWatermarks:
    """The newest watermark of every partition one read is handling in this worker process.

    Each restriction reports the minimum over the partitions of its read that this
    worker has heard from recently, not just its own. Prism (2.77) lets a stage's
    watermark pass a restriction that is in flight in another bundle, which made
    records of a lagging partition late once several partitions were read at once;
    with the minimum, the slowest partition in the worker holds every window. A
    partition silent for ``stale_s`` (moved to another worker, finished) stops counting.

    A partition's advance counts for the others only once the runner holds the records it came from
    (:meth:`publish`: when the step that read them is finalized, or the partition's next step starts).
    Until then it is *pending*: only the step that read them reports it (its residual's watermark reaches
    the runner with its outputs). Prism takes a read stage's output watermark from the last bundle it
    committed; when the other partitions' steps reported the advance at once, one of them that was committed
    first moved the watermark past records still in flight in the bundle that read them, and a window
    fired without them (late, so dropped: tests/test_fold_watermarks.py).
    """

    def __init__(self, stale_s: float = 60.0):
        self.stale_s = stale_s
        self._lock = threading.Lock()
        self._own: dict[tuple, tuple[Timestamp, float]] = {}  # published: (watermark, when last heard from)
        self._pending: dict[tuple, Timestamp] = {}  # advances read by a step the runner may not hold yet
        self._expected: set[str] = set()
        # When each partition last moved (records read or an idle step); shared by every DoFn
        # instance of the worker, since a partition's restriction moves between instances.
        self._progress: dict[tuple, float] = {}

    def progressed(self, read_id: str, key: tuple, at: float | None = None) -> None:
        with self._lock:
            self._progress[(read_id, key)] = time.monotonic() if at is None else at

    def last_progress(self, read_id: str, key: tuple) -> float:
        with self._lock:
            return self._progress.setdefault((read_id, key), time.monotonic())

    def expect(self, read_id: str, keys: tuple) -> None:
        """Count the partitions ``keys`` of a read before they report: until one has read something (or
        gone idle), it holds the read's watermark at the beginning of time. Without this, the first partition
        to report set the watermark alone, and a backlog in the others (a job started on full topics) was late.
        Done once per read and worker; a partition that never reports here goes stale after ``stale_s``."""
        if read_id in self._expected:
            return
        now = time.monotonic()
        with self._lock:
            self._expected.add(read_id)
            for key in keys:
                self._own.setdefault((read_id, tuple(key)), (MIN_TIMESTAMP, now))

    def own(self, read_id: str, key: tuple) -> Timestamp | None:
        """The partition's newest watermark, pending or published."""
        with self._lock:
            entry, pending = self._own.get((read_id, key)), self._pending.get((read_id, key))
        if pending is not None and (entry is None or pending > entry[0]):
            return pending
        return entry[0] if entry else None

    def report(self, read_id: str, key: tuple, target: Timestamp) -> Timestamp:
        """A step of partition ``key`` read up to watermark ``target`` (pending until :meth:`publish`): the
        watermark that step may report, the minimum over the fresh partitions with ``target`` for its own.

        >>> ww, t = _WorkerWatermarks(), Timestamp.of
        >>> ww.report("r", ("a", 0), t(10))  # its own step reports its advance
        Timestamp(10)
        >>> ww.report("r", ("a", 1), t(20)) == MIN_TIMESTAMP  # a/0's is pending: not for a/1's step
        True
        >>> ww.publish("r", ("a", 0)); ww.report("r", ("a", 1), t(20))
        Timestamp(10)
        """
        now = time.monotonic()
        with self._lock:
            own = (read_id, key)
            published = self._own.get(own)
            floor = max(published[0] if published else MIN_TIMESTAMP, self._pending.get(own, MIN_TIMESTAMP))
            self._pending[own] = max(floor, target)
            self._own[own] = (published[0] if published else MIN_TIMESTAMP, now)
            fresh = [self._pending[own] if k == own else w for k, (w, seen) in self._own.items()
                     if k[0] == read_id and now - seen < self.stale_s]
        return min(fresh)

    def publish(self, read_id: str, key: tuple, upto: Timestamp | None = None) -> None:
        """The runner holds what partition ``key`` read up to watermark ``upto`` (None: all it read so far):
        from now on it counts for every partition of the read."""
        with self._lock:
            own = (read_id, key)
            pending = self._pending.get(own)
            target = pending if upto is None else upto
            if target is None:
                return
            published = self._own.get(own)
            if published is None or target > published[0]:
                self._own[own] = (target, time.monotonic())
            if pending is not None and pending <= target:
                del self._pending[own]

    def held(self, read_id: str) -> Timestamp | None:
        """The read's held watermark here: the minimum over its fresh partitions, as published (None: none
        reported)."""
        now = time.monotonic()
        with self._lock:
            fresh = [w for (rid, _), (w, seen) in self._own.items() if rid == read_id and now - seen < self.stale_s]
        return min(fresh) if fresh else None

    def forget(self, read_id: str, key: tuple) -> None:
        with self._lock:
            self._own.pop((read_id, key), None)
            self._pending.pop((read_id, key), None)
            self._progress.pop((read_id, key), None)


_WORKER_WATERMARKS = _WorkerWatermarks()


class _PartitionConsumers:
    """The Kafka consumers of one worker process, at most a couple per partition of a read, shared by every
    instance of the read's DoFn: a step takes its partition's consumer and gives it back when it ends, with the
    offset the consumer reads next.

    Prism runs every step of a partition's read as a bundle of its own, and the SDK worker hands a bundle to
    whichever of its bundle processors is free, each with its own DoFn instance: 8 of them in a drain of 8
    partitions. With a consumer per instance and partition, a partition's next step mostly ran in an instance
    whose consumer of it was elsewhere or missing: it seeked (librdkafka drops what it had prefetched) or
    connected a new consumer, whose first poll often came back empty after ``poll_interval_s``; and every one of
    the 64 consumers prefetched its partition (a drain of 1M records: 64 consumers for 8 partitions, 528 seeks,
    librdkafka's fetch threads 21 CPU-s against 27 for the rest of the worker's Python).
    """

    def __init__(self, idle_per_partition: int = 2):
        self.idle_per_partition = idle_per_partition
        self._lock = threading.Lock()
        self._idle: dict[tuple, list] = {}  # (read_id, topic, partition) -> [(consumer, next offset or None)]
        self._users: dict[str, int] = {}  # read_id -> DoFn instances set up and not torn down
        self._ended: set[str] = set()  # reads whose every instance was torn down

    def join(self, read_id: str) -> None:
        with self._lock:
            self._users[read_id] = self._users.get(read_id, 0) + 1
            self._ended.discard(read_id)

    def leave(self, read_id: str) -> None:
        """An instance of the read is torn down; with the last one, its consumers are closed."""
        with self._lock:
            left = self._users.get(read_id, 0) - 1
            if left > 0:
                self._users[read_id] = left
                return
            self._users.pop(read_id, None)
            self._ended.add(read_id)
            closing = [c for k in [k for k in self._idle if k[0] == read_id] for c, _ in self._idle.pop(k)]
        for consumer in closing:
            consumer.close()

    def take(self, read_id: str, key: tuple, offset: int) -> tuple:
        """``(consumer, the offset it reads next or None)`` for partition ``key``, one at ``offset`` if there is
        one; ``(None, None)`` if none is free (the caller makes one, and gives it back too)."""
        with self._lock:
            idle = self._idle.get((read_id, *key))
            if not idle:
                return None, None
            at = next((i for i, (_, position) in enumerate(idle) if position == offset), len(idle) - 1)
            return idle.pop(at)

    def give_back(self, read_id: str, key: tuple, consumer, next_offset: int | None) -> None:
        with self._lock:
            idle = self._idle.setdefault((read_id, *key), [])
            if read_id not in self._ended and len(idle) < self.idle_per_partition:
                idle.append((consumer, next_offset))
                return
        consumer.close()  # its read is torn down, or the partition has enough idle consumers


_CONSUMERS = _PartitionConsumers()
_DRAINED_READS: set[str] = set()


def _drain_marker(read_id: str) -> Path:
    return Path(tempfile.gettempdir()) / "tiertwin-drain" / read_id


def drained(read_id: str) -> bool:
    """Whether :func:`drain` was called for ``read_id`` (in this process, or in another on this machine)."""
    return read_id in _DRAINED_READS or _drain_marker(read_id).exists()


def drain(read_id: str) -> None:
    """Make the unbounded read ``read_id`` finish, in this process and in SDK workers on this machine.

    The SDK workers are this process with LOOPBACK, or its worker pool's child processes with several
    workers (``--sdk-workers``): those see a marker file (``<tmp>/tiertwin-drain/<read_id>``).

    At its next step each of the read's restrictions gives up the rest of its open offset
    range (claims it without reading it), so the read's watermark reaches the end of time,
    every window fires its last pane, stateful steps flush, and the job ends by itself:
    no bundle is cut off mid-flight as a cancel does. Records not yet read stay in Kafka.
    """
    _DRAINED_READS.add(read_id)
    marker = _drain_marker(read_id)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def drained_and_done(read_id: str) -> None:
    """The job of ``read_id`` has ended: remove its :func:`drain` marker."""
    _drain_marker(read_id).unlink(missing_ok=True)


class _ReadOpenPartition(_ReadPartition):
    """The same reader, declared unbounded so the runner treats its output as a stream."""

    @beam.DoFn.unbounded_per_element()
    def process(self, element: PartitionSlice,
                finalizer=beam.DoFn.BundleFinalizerParam,  # before the SDF's keyword parameters (passed by name)
                tracker=beam.DoFn.RestrictionParam(PartitionOffsets()),
                watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())):
        yield from self._read(element, tracker, watermark, finalizer)


def decode_record(registry, *, value: bytes, key: bytes | None, topic: str, partition: int, offset: int,
                  timestamp_ms: int, stage: str):
    """Decode one Kafka (or archived Kafka) record into a DoFn output.

    The main output: ``(schema, record)`` timestamped with its event time; or a
    ``dead_letters`` TaggedOutput: a DeadLetter record with the original bytes,
    coordinates and reason.
    """
    try:
        name, record = registry.decode(value)
    except RecordRejected as exc:
        return beam.pvalue.TaggedOutput(DEAD_LETTERS, dead_letter(value, key, topic, partition, offset, exc, stage))
    schema = short_name(name)
    ts_ms = event_time_ms(schema, record, default=timestamp_ms)
    return beam.window.TimestampedValue((schema, record), ts_ms / 1000)


class ReadFromKafka(beam.PTransform):
    """Read tiertwin topics: ``pipeline | ReadFromKafka(topics)`` -> ``.records``, ``.dead_letters``.

    Args:
        topics: topic names (any mix of contracts).
        spec: start / stop positions and polling (:class:`ReadSpec`); unbounded by default.
        settings: where Kafka is (``Settings.from_env()`` by default).
        stage: the ``stage`` written into dead letters.
        batches: emit one :class:`~tiertwin.schemas.batches.RecordBatch` per fetch, partition and
            contract instead of one ``(schema, record)`` per record.
        shard: ``(i, n)``: read only every n-th partition from the i-th (n reads, one per SDK worker).
        read_id: what :func:`drain` names (a fresh one by default; the shards of one job share theirs).
        fold: with ``batches``, an object that each read step hands its batches (``start()``, ``add(batch)``,
            ``finish()`` -> outputs): ``records`` is then what ``finish`` gives, not the batches (the cloud twin's
            :class:`~tiertwin.pipelines.cloud.fusion.FoldInRead`).
    """

    def __init__(self, topics: list[str], spec: ReadSpec = ReadSpec(), settings: Settings | None = None,
                 stage: str = "cloud-twin/kafka-read", batches: bool = False, shard: tuple[int, int] = (0, 1),
                 read_id: str | None = None, fold=None):
        super().__init__()
        if fold is not None and not batches:
            raise ConfigError("ReadFromKafka: fold needs batches=True")
        self.fold = fold
        self.topics, self.spec, self.stage, self.batches, self.shard = list(topics), spec, stage, batches, shard
        self.settings = settings or Settings.from_env()
        self.read_id = read_id or uuid.uuid4().hex  # what :func:`drain` names

    def expand(self, pbegin):
        settings, topics, spec, shard = self.settings, self.topics, self.spec, self.shard
        reader = (_ReadPartition if spec.stop is not None else _ReadOpenPartition)(settings, spec, self.stage,
                                                                                  self.read_id, self.batches,
                                                                                  self.fold)
        return (pbegin
                | "Impulse" >> beam.Impulse()
                | "Partitions" >> beam.FlatMap(lambda _: discover_partitions(settings, topics, spec, shard))
                | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(reader).with_outputs(
                    DEAD_LETTERS, main=RECORDS))


class _WriteRecords(beam.DoFn):
    """Produce records with the Avro contract; flush at the end of every bundle."""

    def __init__(self, settings: Settings, topic: str, schema: str, key: Callable[[dict], object] | str | None,
                 profile: Literal["low-latency", "throughput"]):
        self.settings, self.topic, self.schema, self.key, self.profile = settings, topic, schema, key, profile
        self.written = Metrics.counter("kafka-write", "records")

    def setup(self):
        from tiertwin.connectors.kafka import DeadLetterSink, KafkaSink

        self.sink = KafkaSink(self.settings, profile=self.profile, client_id=f"tiertwin-beam-write-{self.topic}")
        self.dead_letters = DeadLetterSink(self.sink, stage=f"cloud-twin/write-{self.topic}")

    def _key_of(self, record: dict):
        if self.key is None:
            return None
        return record.get(self.key) if isinstance(self.key, str) else self.key(record)

    def process(self, record: dict):
        try:
            self.sink.send(self.topic, self.schema, record, key=self._key_of(record))
            self.written.inc()
        except RecordRejected as exc:
            # An invalid output is kept, as text, with why it was refused.
            self.dead_letters.reject(value=repr(record).encode(), key=None, topic=self.topic,
                                     partition=-1, offset=-1, error=exc)

    def finish_bundle(self):
        self.sink.flush()

    def teardown(self):
        sink = getattr(self, "sink", None)
        if sink is not None:
            sink.close()


class WriteToKafka(beam.PTransform):
    """Write record dicts to ``topic`` with contract ``schema``; ``key`` is a field name or a function.

    Records are sent as they arrive (the producer batches them) and flushed at the
    end of each bundle, so a bundle is committed only after Kafka acknowledged it.
    """

    def __init__(self, topic: str, schema: str, key: Callable[[dict], object] | str | None = None,
                 settings: Settings | None = None, profile: Literal["low-latency", "throughput"] = "low-latency"):
        super().__init__()
        self.topic, self.schema, self.key, self.profile = topic, schema, key, profile
        self.settings = settings or Settings.from_env()

    def expand(self, records):
        return records | "Produce" >> beam.ParDo(
            _WriteRecords(self.settings, self.topic, self.schema, self.key, self.profile))


def dead_letter_key(letter: dict) -> str:
    """Dead letters are keyed ``topic:partition`` (see jobs/ops/topology.yaml)."""
    return f"{letter['topic']}:{letter['partition']}"
