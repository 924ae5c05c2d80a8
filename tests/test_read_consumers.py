"""The Kafka read's consumers are the worker's, not a DoFn instance's (#18: the drain waited on them).

Prism runs each step of a partition's read as a bundle, and the SDK worker runs a bundle on whichever bundle
processor is free, each with a DoFn instance of its own. A partition's next step must find the consumer its last
step left, positioned where that step stopped, whichever instance runs it: no new consumer, no seek (a seek drops
what librdkafka prefetched). Here the steps of one partition run in two instances on a fake librdkafka consumer.
"""

from __future__ import annotations

import pytest
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.runners.sdf_utils import ThreadsafeRestrictionTracker
from kafka import TopicPartition

from tiertwin.connectors import rdkafka
from tiertwin.connectors.beam_kafka import UNBOUNDED, KafkaOffsetTracker, PartitionSlice, ReadSpec, _ReadPartition
from tiertwin.schemas import SchemaRegistry
from tiertwin.schemas.batches import RecordBatch
from tiertwin.schemas.examples import example

T0 = 1_767_225_600_000
REGISTRY = SchemaRegistry.default()


class Message:
    """The record at ``offset``, with event time T0 + offset (so a batch's event times give its offsets)."""

    def __init__(self, offset: int):
        self.topic, self.partition, self.offset, self.key, self.timestamp = "t", 0, offset, None, T0 + offset
        self.value = REGISTRY.encode("EdgeState", example("EdgeState", cell_id=1, ts_ms=T0 + offset))


class FakeConsumer:
    """Stands in for RdKafkaPartitionConsumer: one partition's log; each poll hands what is left of it."""

    made: list["FakeConsumer"] = []
    log: list[Message] = []

    def __init__(self, settings, client_id, **config):
        self.seeks, self.next, self.closed = [], 0, False
        FakeConsumer.made.append(self)

    def assign(self, tps):
        pass

    def seek(self, tp, offset):
        self.seeks.append(offset)
        self.next = offset

    def poll(self, timeout_ms):
        fetch, self.next = FakeConsumer.log[self.next:], len(FakeConsumer.log)
        return {TopicPartition("t", 0): fetch} if fetch else {}

    def highwater(self, tp):
        return len(FakeConsumer.log)

    def position(self, tp):
        return self.next

    def close(self):
        self.closed = True


@pytest.fixture
def consumers(monkeypatch):
    monkeypatch.setattr(rdkafka, "RdKafkaPartitionConsumer", FakeConsumer)
    FakeConsumer.made, FakeConsumer.log = [], []
    return FakeConsumer


def _reader(read_id: str) -> _ReadPartition:
    reader = _ReadPartition(settings=None, spec=ReadSpec(client="librdkafka"), stage="s", read_id=read_id,
                            batches=True)
    reader.setup()
    return reader


def _step(reader: _ReadPartition, start: int) -> tuple[list[int], int]:
    """One read step of partition t/0 from ``start``: (the offsets it emitted, where its residual resumes)."""
    tracker = ThreadsafeRestrictionTracker(KafkaOffsetTracker(OffsetRange(start, UNBOUNDED)))
    element = PartitionSlice("t", 0, start, UNBOUNDED, (("t", 0),))
    outputs = list(reader._read(element, tracker, ManualWatermarkEstimator(None)))
    offsets = [ms - T0 for out in outputs if isinstance(out.value, RecordBatch) for ms in out.value.event_ms]
    residual, _ = tracker.deferred_status()
    return offsets, residual.start


def test_a_partitions_next_step_in_another_instance_reads_on_with_the_same_consumer(consumers):
    first, second = _reader("consumers-shared"), _reader("consumers-shared")
    consumers.log += [Message(o) for o in range(10)]
    read, resume_at = _step(first, 0)
    assert read == list(range(10)) and resume_at == 10
    consumers.log += [Message(o) for o in range(10, 25)]
    read, resume_at = _step(second, resume_at)
    assert read == list(range(10, 25)) and resume_at == 25
    assert len(consumers.made) == 1, "the second instance took the partition's consumer, it did not make one"
    assert consumers.made[0].seeks == [0], "it read on from where the first step stopped, without a seek"
    first.teardown()
    assert not consumers.made[0].closed, "the read's other instance is still set up"
    second.teardown()
    assert consumers.made[0].closed, "the last instance of the read closes its consumers"


def test_a_step_that_resumes_elsewhere_than_the_consumer_stopped_seeks(consumers):
    # A restriction retried after a failed bundle (or split under a fetch) starts behind the consumer's position.
    reader = _reader("consumers-seek")
    consumers.log += [Message(o) for o in range(10)]
    _step(reader, 0)
    read, _ = _step(reader, 4)
    assert read == list(range(4, 10))
    assert len(consumers.made) == 1 and consumers.made[0].seeks == [0, 4]
    reader.teardown()


def test_two_steps_of_one_partition_at_once_each_get_a_consumer(consumers):
    # A bounded range split by the runner: its two halves may be read at the same time in two instances.
    first, second = _reader("consumers-split"), _reader("consumers-split")
    held = first._consumer_at(TopicPartition("t", 0), 0)
    other = second._consumer_at(TopicPartition("t", 0), 5)
    assert held is not other and len(consumers.made) == 2
    first._release(("t", 0)), second._release(("t", 0))
    assert first._consumer_at(TopicPartition("t", 0), 5) is other, "the one already at the offset is taken"
    first._release(("t", 0))
    first.teardown(), second.teardown()
    assert all(c.closed for c in consumers.made)
