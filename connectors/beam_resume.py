"""Resuming a streaming Kafka read: which offsets to commit, when, and where a restarted job starts.

Window aggregates live in the runner (Prism keeps them in memory) and die with the job. So the
offset a read commits is not where it has read to, but a position from which **every window that
may not have been emitted yet can be recomputed completely**:

* Per partition, the read notes after each fetch ``(next offset, newest event time read so far)``
  (a *breakpoint*: every record before that offset has an event time at or below that bound).
* When a bundle that caught the partition up is **finalized** (Beam bundle finalization: the runner
  calls back once it holds the bundle's output; on Prism right after it persisted the bundle), the
  read takes the read's held watermark ``W`` at the end of that bundle (the minimum over every
  partition of the read, :class:`~tiertwin.connectors.beam_kafka._WorkerWatermarks`, each as of the last
  step of it the runner holds) and the
  **replay point** ``R = start of the earliest window containing W - allowed lateness - margin``
  (:meth:`ResumePolicy.replay_from`). Windows that start before ``R`` ended more than
  ``lateness + margin`` of event time behind the watermark: they are closed and, given the margin,
  emitted. It commits the last breakpoint whose bound is below ``R`` (no record before it belongs
  to a window starting at or after ``R``), never past the bundle's own end, with ``R`` as the
  commit's metadata.
* Only bundles that caught their partition up (or found it idle) commit: while a read works
  through a backlog its watermark runs ahead of the windows still being fired and written
  downstream, so commits wait until it is live again and event time moves at the wall clock's pace.
* On start, a partition with a committed offset in the group is read from there; the others from
  the read's ``start``. ``B = max R`` over the committed partitions (:func:`committed_positions`)
  is the **resume boundary**: every record of a window starting at or after ``B`` is at or after
  the committed offsets, so those windows re-fire complete (and, aggregated deterministically,
  identical to a first emission); windows starting before ``B`` were emitted before the restart and
  the job does not emit them again (they would be partial).

The assumption: a window's snapshot is written within ``margin`` of event time after the read's
watermark passed its end plus the allowed lateness (at the live pace, ``margin`` seconds). A job
killed while its output stage lags further than that loses those windows' last panes.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from tiertwin.connectors.kafka import kafka_config
from tiertwin.settings import Settings

NO_BOUND = -(2 ** 62)


@dataclass(frozen=True)
class ResumePolicy:
    """Where a read commits its offsets (``group_id``) and how far behind its watermark (the windows).

    >>> p = ResumePolicy("g", window_ms=10_000, period_ms=10_000, lateness_ms=30_000, margin_ms=10_000)
    >>> p.replay_from(100_000)   # 100 s - 30 s - 10 s = 60 s, in the window [60 s, 70 s)
    60000
    >>> p.replay_from(105_000)
    60000
    >>> ResumePolicy("g", window_ms=10_000, period_ms=5_000, lateness_ms=0, margin_ms=0).replay_from(62_000)
    55000
    """

    group_id: str
    window_ms: int
    period_ms: int
    lateness_ms: int
    margin_ms: int
    offset_ms: int = 0

    def replay_from(self, watermark_ms: int) -> int:
        """The start of the earliest window that contains ``watermark - lateness - margin``."""
        t = watermark_ms - self.lateness_ms - self.margin_ms
        k = math.floor((t - self.offset_ms - self.window_ms) / self.period_ms) + 1
        return self.offset_ms + k * self.period_ms


def _metadata(replay_from_ms: int, watermark_ms: int | None, run: str) -> str:
    return json.dumps({"replay_from_ms": int(replay_from_ms), "watermark_ms": watermark_ms, "run": run})


def _field(metadata: str | None, name: str):
    try:
        return json.loads(metadata or "")[name]
    except (ValueError, KeyError, TypeError):
        return None


def _replay_from_of(metadata: str | None) -> int | None:
    value = _field(metadata, "replay_from_ms")
    return int(value) if isinstance(value, int) else None


def committed_positions(settings: Settings, group_id: str, tps: list) -> dict:
    """``{TopicPartition: (offset, replay_from_ms or None)}`` for the partitions the group has committed."""
    consumer = KafkaConsumer(**kafka_config(settings, f"{group_id}-resume", group_id=group_id,
                                            enable_auto_commit=False))
    try:
        found = {}
        for tp in tps:
            committed = consumer.committed(tp, metadata=True)
            if committed is not None and committed.offset >= 0:
                found[tp] = (committed.offset, _replay_from_of(committed.metadata))
        return found
    finally:
        consumer.close()


def resume_boundary_ms(positions: dict) -> int | None:
    """Windows starting before this were emitted before the restart (None: nothing was committed)."""
    marks = [r for _, r in positions.values() if r is not None and r > NO_BOUND]
    return max(marks) if marks else None


COMMIT_INTERVAL_S = 1.0  # a partition commits at most this often (each commit is a request to the broker)


class _Partition:
    __slots__ = ("breakpoints", "newest_ms", "committed", "replay_from_ms", "last_commit", "published")

    def __init__(self, start: int, replay_from_ms: int | None):
        # [offset, newest event time before it]. Before the start: nothing (a fresh read skipped it) or, resuming
        # from a commit, records older than the commit's replay point.
        bound = NO_BOUND if replay_from_ms is None else replay_from_ms - 1
        self.breakpoints: list[list[int]] = [[start, bound]]
        self.newest_ms = bound
        self.committed = start
        self.replay_from_ms = NO_BOUND if replay_from_ms is None else replay_from_ms
        self.last_commit = 0.0
        self.published = False  # a watermark: until then, commit as soon as there is one (other workers wait on it)


class ResumeLog:
    """Per worker process: the breakpoints of every partition a read handles here, and the commits.

    A partition's restriction moves between DoFn instances of a worker, so this is per process
    (like the watermarks); commits are made by one group consumer per process and group.

    With several SDK workers (each reading a shard of the partitions), the replay point must follow the
    watermark of the whole job, not one worker's: every commit also carries the worker's held watermark
    and the run (the read id), and a worker takes the minimum of its own and what the other workers'
    partitions last committed in this run; until each of them has, it commits no further than before
    (but still publishes its watermark, so the others can move on).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._parts: dict[tuple, _Partition] = {}
        self._committers: dict[tuple, KafkaConsumer] = {}
        self._others: dict[tuple, tuple[float, int | None]] = {}
        self._io_lock = threading.Lock()  # broker requests: never under _lock, which the read path takes

    def started(self, read_id: str, key: tuple, start: int, replay_from_ms: int | None = None) -> None:
        """The read reached ``key`` at offset ``start`` (the first time: its breakpoints begin there);
        ``replay_from_ms``: the replay point committed with ``start``, if it was."""
        with self._lock:
            self._parts.setdefault((read_id, key), _Partition(start, replay_from_ms))

    def note(self, read_id: str, key: tuple, next_offset: int, newest_ms: int | None) -> None:
        """A fetch up to ``next_offset`` was read; ``newest_ms``: its newest event time (None: no event)."""
        with self._lock:
            part = self._parts.get((read_id, key))
            if part is None:
                return
            if newest_ms is not None and newest_ms > part.newest_ms:
                part.newest_ms = newest_ms
            last = part.breakpoints[-1]
            if last[1] == part.newest_ms:
                last[0] = max(last[0], next_offset)  # same bound: the later offset is the better commit
            else:
                part.breakpoints.append([next_offset, part.newest_ms])

    def plan(self, read_id: str, key: tuple, upto: int, replay_from_ms: int | None,
             now: float | None = None, watermark_known: bool = True) -> tuple[int, int] | None:
        """``(offset, replay point)`` to commit for ``key`` now: the last breakpoint at most ``upto`` before which
        no record belongs to a window starting at or after ``replay_from_ms`` (None: unknown, keep the last
        commit), or the last commit again; None if the partition committed less than
        :data:`COMMIT_INTERVAL_S` ago.

        >>> log = ResumeLog(); log.started("r", ("t", 0), 100)
        >>> log.note("r", ("t", 0), 150, 5_000); log.note("r", ("t", 0), 200, 9_000); log.note("r", ("t", 0), 250, 12_000)
        >>> log.plan("r", ("t", 0), upto=250, replay_from_ms=10_000, now=10.0)  # records before 200 are older
        (200, 10000)
        >>> log.plan("r", ("t", 0), upto=250, replay_from_ms=20_000, now=10.5) is None  # too soon
        True
        >>> log.plan("r", ("t", 0), upto=250, replay_from_ms=None, now=12.0)  # unknown: the last commit again
        (200, 10000)
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            part = self._parts.get((read_id, key))
            if part is None or (now - part.last_commit < COMMIT_INTERVAL_S and (part.published or not watermark_known)):
                return None
            part.last_commit, part.published = now, part.published or watermark_known
            if replay_from_ms is not None:
                best = None
                for offset, bound in part.breakpoints:
                    if offset > upto or bound >= replay_from_ms:
                        break
                    best = offset
                if best is not None and best > part.committed:
                    part.committed, part.replay_from_ms = best, replay_from_ms
                    part.breakpoints = [b for b in part.breakpoints if b[0] >= best]
            return part.committed, part.replay_from_ms

    def forget(self, read_id: str, key: tuple) -> None:
        with self._lock:
            self._parts.pop((read_id, key), None)

    def _committer(self, settings: Settings, group_id: str) -> KafkaConsumer:
        consumer = self._committers.get((group_id, settings.bootstrap))
        if consumer is None:
            consumer = KafkaConsumer(**kafka_config(settings, f"{group_id}-commit", group_id=group_id,
                                                    enable_auto_commit=False))
            self._committers[(group_id, settings.bootstrap)] = consumer
        return consumer

    def others_watermark(self, settings: Settings, group_id: str, others: tuple, run: str) -> int | None:
        """The minimum watermark the partitions ``others`` (read by other workers) committed in run ``run``;
        None while one has not. Looked up at most every :data:`COMMIT_INTERVAL_S`."""
        now = time.monotonic()
        with self._io_lock:
            cached = self._others.get((group_id, run))
            if cached is not None and now - cached[0] < COMMIT_INTERVAL_S:
                return cached[1]
            consumer = self._committer(settings, group_id)
            marks = []
            for topic, partition in others:
                committed = consumer.committed(TopicPartition(topic, partition), metadata=True)
                meta = committed.metadata if committed is not None else None
                mark = _field(meta, "watermark_ms") if _field(meta, "run") == run else None
                if not isinstance(mark, int):
                    marks = None
                    break
                marks.append(mark)
            found = min(marks) if marks else None
            self._others[(group_id, run)] = (now, found)
            return found

    def commit(self, settings: Settings, group_id: str, tp: TopicPartition, offset: int,
               replay_from_ms: int, watermark_ms: int | None = None, run: str = "") -> None:
        """Commit ``offset`` of ``tp`` for ``group_id``, with its replay point, the worker's held watermark and
        the run as metadata."""
        with self._io_lock:
            consumer = self._committer(settings, group_id)
            try:
                consumer.commit({tp: OffsetAndMetadata(offset, _metadata(replay_from_ms, watermark_ms, run), -1)})
            except KafkaError as exc:  # the next finalized bundle commits a later point; a restart replays more
                logging.getLogger(__name__).warning("resume commit of %s at %d failed: %s", tp, offset, exc)

    def finalized(self, settings: Settings, policy: ResumePolicy, run: str, tp: TopicPartition, upto: int,
                  watermark_ms: int | None, others: tuple = ()) -> bool:
        """A bundle that caught ``tp`` up (read to ``upto``, the worker's held watermark ``watermark_ms``) is
        held by the runner: commit what :meth:`plan` says. True if it committed."""
        key = (tp.topic, tp.partition)
        job_watermark = watermark_ms
        if job_watermark is not None and others:
            try:
                theirs = self.others_watermark(settings, policy.group_id, others, run)
            except KafkaError:  # unknown for now: commit no further than before
                theirs = None
            job_watermark = None if theirs is None else min(job_watermark, theirs)
        replay_from = None if job_watermark is None else policy.replay_from(job_watermark)
        planned = self.plan(run, key, upto, replay_from, watermark_known=watermark_ms is not None)
        if planned is None:
            return False
        self.commit(settings, policy.group_id, tp, planned[0], planned[1], watermark_ms, run)
        return True


RESUME_LOG = ResumeLog()


def resume_boundary(settings: Settings, group_id: str, topics: list[str]) -> int | None:
    """:func:`resume_boundary_ms` of the group's commits on every partition of ``topics`` (waiting out a
    broker that is not up yet, as the read does)."""
    from tiertwin.connectors.readiness import wait_out

    def look_up():
        consumer = KafkaConsumer(**kafka_config(settings, f"{group_id}-resume", group_id=None,
                                                enable_auto_commit=False))
        try:
            tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        finally:
            consumer.close()
        return resume_boundary_ms(committed_positions(settings, group_id, tps))

    return wait_out(look_up, f"the commits of consumer group {group_id!r}", settings)
