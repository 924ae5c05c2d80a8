"""Resuming a streaming Kafka read: which offsets to commit, when, and where a restarted job starts.

Window aggregates live in the runner (Prism keeps them in memory) and die with the job. So the
offset a read commits is not where it has read to, but a position from which **every window that
may not have been emitted yet can be recomputed completely**:

* Per partition, the read notes after each fetch ``(next offset, newest event time read so far)``
  (a *breakpoint*: every record before that offset has an event time at or below that bound).
* When a bundle that caught the partition up is **finalized** (Beam bundle finalization: the runner
  calls back once it holds the bundle's output; on Prism right after it persisted the bundle), the
  read takes the read's held watermark ``W`` at the end of that bundle (the minimum over every
  partition of the read, :class:`~tiertwin.connectors.beam_kafka._WorkerWatermarks`) and the
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


def _metadata(replay_from_ms: int) -> str:
    return json.dumps({"replay_from_ms": int(replay_from_ms)})


def _replay_from_of(metadata: str | None) -> int | None:
    try:
        return int(json.loads(metadata or "")["replay_from_ms"])
    except (ValueError, KeyError, TypeError):
        return None


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
    marks = [r for _, r in positions.values() if r is not None]
    return max(marks) if marks else None


class _Partition:
    __slots__ = ("breakpoints", "newest_ms", "committed")

    def __init__(self, start: int):
        self.breakpoints: list[list[int]] = [[start, NO_BOUND]]  # [offset, bound of every event before it]
        self.newest_ms = NO_BOUND
        self.committed = start  # nothing before the start needs reading again


class ResumeLog:
    """Per worker process: the breakpoints of every partition a read handles here, and the commits.

    A partition's restriction moves between DoFn instances of a worker, so this is per process
    (like the watermarks); commits are made by one group consumer per process and group.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._parts: dict[tuple, _Partition] = {}
        self._committers: dict[tuple, KafkaConsumer] = {}

    def started(self, read_id: str, key: tuple, start: int) -> None:
        """The read reached ``key`` at offset ``start`` (the first time: its breakpoints begin there)."""
        with self._lock:
            self._parts.setdefault((read_id, key), _Partition(start))

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

    def to_commit(self, read_id: str, key: tuple, upto: int, replay_from_ms: int) -> int | None:
        """The offset to commit for ``key`` (at most ``upto``) so that replay from it recomputes every window
        starting at or after ``replay_from_ms``; None if that is no further than the last commit."""
        with self._lock:
            part = self._parts.get((read_id, key))
            if part is None:
                return None
            best = None
            for offset, bound in part.breakpoints:
                if offset > upto or bound >= replay_from_ms:
                    break
                best = offset
            if best is None or best <= part.committed:
                return None
            part.committed = best
            part.breakpoints = [b for b in part.breakpoints if b[0] >= best]
            return best

    def forget(self, read_id: str, key: tuple) -> None:
        with self._lock:
            self._parts.pop((read_id, key), None)

    def commit(self, settings: Settings, group_id: str, tp: TopicPartition, offset: int,
               replay_from_ms: int) -> None:
        """Commit ``offset`` of ``tp`` for ``group_id`` with ``replay_from_ms`` as its metadata."""
        with self._lock:
            consumer = self._committers.get((group_id, settings.bootstrap))
            if consumer is None:
                consumer = KafkaConsumer(**kafka_config(settings, f"{group_id}-commit", group_id=group_id,
                                                        enable_auto_commit=False))
                self._committers[(group_id, settings.bootstrap)] = consumer
            try:
                consumer.commit({tp: OffsetAndMetadata(offset, _metadata(replay_from_ms), -1)})
            except KafkaError as exc:  # the next finalized bundle commits a later point; a restart replays more
                logging.getLogger(__name__).warning("resume commit of %s at %d failed: %s", tp, offset, exc)


RESUME_LOG = ResumeLog()


def resume_boundary(settings: Settings, group_id: str, topics: list[str]) -> int | None:
    """:func:`resume_boundary_ms` of the group's commits on every partition of ``topics``."""
    consumer = KafkaConsumer(**kafka_config(settings, f"{group_id}-resume", group_id=None, enable_auto_commit=False))
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
    finally:
        consumer.close()
    return resume_boundary_ms(committed_positions(settings, group_id, tps))
