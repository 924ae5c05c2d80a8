"""A read step's watermark and the records it has in flight (#18: a folding job emitted on-time panes with records
missing, tests/test_cloud_resume.py).

Prism takes a read stage's output watermark from the residual of the last bundle it committed. Every step of a
partition reports the minimum over the worker's partitions (connectors/beam_kafka.py, ``_WorkerWatermarks``), so
a partition's advance must not count for the other partitions' steps while the records it came from are still in
a bundle the runner does not hold: a step of another partition, committed first, would move the watermark past
them and their window would fire without them (late, dropped). Here two partitions' steps run one after the other
on fake consumers, the first one not yet finalized, as on Prism when a lagging partition's bundle and another's
are in flight together.
"""

from __future__ import annotations

from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.runners.sdf_utils import ThreadsafeRestrictionTracker
from apache_beam.utils.timestamp import Timestamp
from kafka import TopicPartition

from tiertwin.connectors.beam_kafka import UNBOUNDED, KafkaOffsetTracker, PartitionSlice, ReadSpec, _ReadPartition
from tiertwin.pipelines.cloud.config import CloudTwinConfig
from tiertwin.pipelines.cloud.fusion import FoldInRead
from tiertwin.schemas import SchemaRegistry
from tiertwin.schemas.examples import example

T0 = 1_767_225_600_000  # a window boundary (2 s windows)
REGISTRY = SchemaRegistry.default()
PARTITIONS = (("t", 0), ("t", 1))


class Message:
    def __init__(self, partition: int, offset: int, event_ms: int):
        self.topic, self.partition, self.offset, self.key, self.timestamp = "t", partition, offset, None, event_ms
        self.value = REGISTRY.encode("EdgeState", example("EdgeState", cell_id=1, ts_ms=event_ms))


class Consumer:
    """One partition's log: each poll hands what was appended since the last one."""

    def __init__(self, partition: int):
        self.partition, self.log, self.next = partition, [], 0

    def append(self, *event_ms: int) -> None:
        self.log += [Message(self.partition, len(self.log) + i, ms) for i, ms in enumerate(event_ms)]

    def seek(self, tp, offset):
        self.next = offset

    def poll(self, timeout_ms):
        fetch, self.next = self.log[self.next:], len(self.log)
        return {TopicPartition("t", self.partition): fetch} if fetch else {}

    def highwater(self, tp):
        return len(self.log)


class Finalizer:
    def __init__(self):
        self.callbacks = []

    def register(self, callback):
        self.callbacks.append(callback)

    def finalize(self):
        for callback in self.callbacks:
            callback()


class Partition:
    """A partition's restriction across steps (each step resumes the last one's checkpoint)."""

    def __init__(self, reader: _ReadPartition, partition: int):
        self.reader, self.partition, self.consumer = reader, partition, Consumer(partition)
        self.start, self.watermark_state = 0, None
        reader._consumers[("t", partition)] = self.consumer

    def step(self):
        """One read step (a bundle): ``(its outputs, the watermark its residual reports, its finalizer)``."""
        tracker = ThreadsafeRestrictionTracker(KafkaOffsetTracker(OffsetRange(self.start, UNBOUNDED)))
        estimator, finalizer = ManualWatermarkEstimator(self.watermark_state), Finalizer()
        element = PartitionSlice("t", self.partition, 0, UNBOUNDED, PARTITIONS)
        outputs = list(self.reader._read(element, tracker, estimator, finalizer))
        residual, _ = tracker.deferred_status()
        self.start, self.watermark_state = residual.start, estimator.get_estimator_state()
        return outputs, estimator.current_watermark(), finalizer


def _reader(read_id: str, fold) -> _ReadPartition:
    reader = _ReadPartition(settings=None, spec=ReadSpec(max_out_of_order_ms=0, idle_after_s=3600), stage="s",
                            read_id=read_id, batches=True, fold=fold)
    reader.setup()
    return reader


def _earliest(outputs) -> Timestamp:
    return min(o.timestamp for o in outputs)


def test_a_partitions_advance_counts_for_the_others_only_once_the_step_that_read_it_is_held():
    reader = _reader("fold-watermarks", FoldInRead(CloudTwinConfig(window_s=2, train=False)))
    lagging, other = Partition(reader, 0), Partition(reader, 1)
    lagging.consumer.append(T0 - 500), other.consumer.append(T0 - 400)
    for p in (lagging, other):  # both partitions heard from, their steps held by the runner
        _, _, finalizer = p.step()
        finalizer.finalize()

    # The lagging partition's next fetch reaches into the next window; its bundle is still in flight (not held)
    # when a step of the other partition, which read further, ends.
    lagging.consumer.append(T0 - 200, T0 + 900)
    in_flight, own_watermark, held_later = lagging.step()
    assert _earliest(in_flight) == Timestamp.of((T0 - 200) / 1000), "a partial timestamped with its earliest record"
    other.consumer.append(T0 + 1_000)
    _, reported, finalizer = other.step()
    finalizer.finalize()
    assert reported < _earliest(in_flight), (
        f"the other partition's step reports {reported}: past records in flight at {_earliest(in_flight)}, whose "
        "window would fire without them if the runner committed that step first")
    # The step that read them reports its own advance with them (its residual reaches the runner with its outputs).
    assert own_watermark == Timestamp.of((T0 - 400) / 1000)

    held_later.finalize()  # the runner holds them now: the advance counts for every partition
    other.consumer.append(T0 + 1_100)
    _, reported, _ = other.step()
    assert reported == Timestamp.of((T0 + 900) / 1000)


def test_the_partitions_next_step_counts_its_last_advance_without_a_finalization():
    # A runner that does not finalize bundles still moves on: a partition's next step starts only once the runner
    # holds the one before (a checkpoint's residual), so that one's advance counts from then on.
    reader = _reader("fold-watermarks-no-finalize", FoldInRead(CloudTwinConfig(window_s=2, train=False)))
    first, second = Partition(reader, 0), Partition(reader, 1)
    first.consumer.append(T0 + 100), second.consumer.append(T0 + 200)
    first.step(), second.step()
    first.consumer.append(T0 + 300)
    first.step()
    second.consumer.append(T0 + 400)
    _, reported, _ = second.step()  # the first partition's step at T0 + 100 is held (its next one started)
    assert reported == Timestamp.of((T0 + 100) / 1000)
