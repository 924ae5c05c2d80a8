"""Typed Kafka source and sink on kafka-python, with a dead-letter path for every record.

* :class:`KafkaSink` encodes records with their Avro contract, keys them by UE or
  cell, produces with ``acks=all`` and idempotence, and bounds the work in flight.
* :class:`KafkaSource` is a consumer-group member that decodes and validates each
  batch; a record it cannot use goes to the dead-letter topic with its reason and
  coordinates (via :class:`DeadLetterSink`) and the batch goes on. Offsets are
  committed only when the caller says the batch is processed (at-least-once).

Profiles: ``low-latency`` (linger 0, fetch_min_bytes 1, 5 ms fetch wait) for the
decision path, ``throughput`` (5 ms linger, large batches) for bulk movement.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import (AuthorizationError, CommitFailedError, IllegalGenerationError, KafkaConnectionError,
                          KafkaError, KafkaTimeoutError, RebalanceInProgressError, UnknownMemberIdError)
from kafka.partitioner.abc import Partitioner
from kafka.partitioner.default import DefaultPartitioner, murmur2
from kafka.structs import OffsetAndMetadata

from tiertwin.connectors.readiness import wait_out
from tiertwin.errors import AccessDeniedError, BrokerUnavailableError, ConfigError, NotYetAcknowledged, RecordRejected
from tiertwin.schemas import SchemaRegistry
from tiertwin.settings import Settings
from tiertwin.topics import DEAD_LETTERS

log = logging.getLogger(__name__)

Profile = Literal["low-latency", "throughput"]
# What a reader does with a record that does not decode or validate: write it to the dead-letter
# topic and go on, raise RecordRejected (what was polled with it is lost), or count it and go on.
Undecodable = Literal["dead-letter", "raise", "skip"]
UNDECODABLE = ("dead-letter", "raise", "skip")
DEAD_LETTER_TOPIC = DEAD_LETTERS   # the name callers import from here

PRODUCER_PROFILES: dict[str, dict[str, Any]] = {
    "low-latency": {"linger_ms": 0, "batch_size": 64 * 1024},
    "throughput": {"linger_ms": 5, "batch_size": 512 * 1024},
}
CONSUMER_PROFILES: dict[str, dict[str, Any]] = {
    "low-latency": {"fetch_min_bytes": 1, "fetch_max_wait_ms": 5, "max_poll_records": 1000},
    "throughput": {"fetch_min_bytes": 64 * 1024, "fetch_max_wait_ms": 100, "max_poll_records": 5000},
}


def encode_key(key: str | int | bytes | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return str(key).encode()


class KeyHashCachePartitioner(Partitioner):
    """Kafka's default key partitioning (murmur2, as the Java client), with each key's hash cached.

    kafka-python hashes every key in pure Python (about 3 µs, a tenth of a send);
    twin keys repeat (UE and cell ids), so the hash is looked up instead. Keyless
    records go to the default partitioner.

    >>> from types import SimpleNamespace
    >>> cluster = SimpleNamespace(topics=lambda: {"t"}, partitions_for_topic=lambda t: {0, 1, 2},
    ...                           available_partitions_for_topic=lambda t: {0, 1, 2})
    >>> cached, default = KeyHashCachePartitioner(), DefaultPartitioner()
    >>> keys = [f"ue-{i:04d}".encode() for i in range(500)] * 2
    >>> [cached.partition("t", k, k, None, None, cluster) for k in keys] == [default.partition("t", k, k, None, None, cluster) for k in keys]
    True
    """

    def __init__(self, max_keys: int = 1_000_000):
        self.max_keys = max_keys
        self._hash: dict[bytes, int] = {}
        self._default = DefaultPartitioner()

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        if serialized_key is None:
            return self._default.partition(topic, key, serialized_key, value, serialized_value, cluster)
        return self.key_partition(serialized_key, len(cluster.partitions_for_topic(topic)))

    def key_partition(self, serialized_key: bytes, partitions: int) -> int:
        """The partition of a key in a topic of ``partitions`` partitions."""
        positive_hash = self._hash.get(serialized_key)
        if positive_hash is None:
            if len(self._hash) >= self.max_keys:
                self._hash.clear()
            positive_hash = self._hash[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
        # Kafka numbers a topic's partitions 0..n-1, so the sorted list the default indexes is range(n).
        return positive_hash % partitions


def _unreachable(settings: Settings, exc: Exception) -> BrokerUnavailableError:
    credentials = settings.sasl_credentials()
    if credentials is not None:
        # kafka-python retries a refused SASL handshake until the bootstrap times out, so a wrong
        # password looks exactly like a broker that is down: name both.
        return BrokerUnavailableError(
            f"cannot reach Kafka at {settings.bootstrap} as {credentials[0]!r} within {settings.connect_timeout_s:g}s "
            f"({type(exc).__name__}); is the broker running, and is the password for {credentials[0]!r} right?")
    return BrokerUnavailableError(
        f"cannot reach Kafka at {settings.bootstrap} within {settings.connect_timeout_s:g}s "
        f"({type(exc).__name__}); is the broker running? try `tiertwin broker start`")


def _is_authorization_error(error: Exception) -> bool:
    return isinstance(error, AuthorizationError) or "AuthorizationFailed" in str(error)


def kafka_config(settings: Settings, client_id: str, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments of every kafka-python client tiertwin builds: where the broker is,
    how long to wait for it and, when the settings carry credentials, SASL/SCRAM. ``overrides``
    (a consumer's ``group_id``, a producer's ``acks``, ...) are added last and win.

    Build a ``KafkaProducer``, ``KafkaConsumer`` or ``KafkaAdminClient`` only with it: a client
    built beside it connects anonymously to a SCRAM broker (``tests/test_kafka_clients.py`` checks).

    >>> config = kafka_config(Settings(bootstrap_servers="a:9092,b:9092"), "tiertwin-x", group_id=None)
    >>> config["bootstrap_servers"], config["client_id"], config["group_id"]
    (['a:9092', 'b:9092'], 'tiertwin-x', None)
    """
    config: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap.split(","),
        "client_id": client_id,
        "bootstrap_timeout_ms": int(settings.connect_timeout_s * 1000),
        "request_timeout_ms": max(30_000, int(settings.connect_timeout_s * 1000)),
        # kafka-python backs off up to 30 s between attempts to reach a node, and refreshes metadata
        # only after an attempt: when a leader dies, a client learned the new leaders up to 7 s after the
        # cluster had elected them (bench failover). Java's clients cap this at 1 s; so do we.
        "reconnect_backoff_max_ms": 1000,
    }
    credentials = settings.sasl_credentials()
    if credentials is not None:
        config.update(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                      sasl_plain_username=credentials[0], sasl_plain_password=credentials[1])
    config.update(overrides)
    return config


def admin_client(settings: Settings | None = None, client_id: str = "tiertwin-admin") -> KafkaAdminClient:
    """An admin client, or :class:`BrokerUnavailableError` within ``connect_timeout_s``."""
    settings = settings or Settings.from_env()
    try:
        return KafkaAdminClient(**kafka_config(settings, client_id))
    except (KafkaTimeoutError, KafkaConnectionError) as exc:
        raise _unreachable(settings, exc) from None


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """A decoded record with its Kafka coordinates."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    schema: str
    value: dict
    raw: bytes


class KafkaSink:
    """Avro-encoding producer with bounded in-flight work.

    Once about ``max_in_flight`` records are unacknowledged, ``send`` waits for the
    oldest of them (kafka-python 3 has no ``buffer_memory`` bound), so a slow broker
    slows the caller instead of growing memory without bound, and the pipe stays full.
    """


    def __init__(self, settings: Settings | None = None, registry: SchemaRegistry | None = None,
                 profile: Profile = "low-latency", max_in_flight: int = 20_000,
                 client_id: str = "tiertwin-sink", **overrides: Any):
        self.settings = settings or Settings.from_env()
        self.registry = registry or SchemaRegistry.default()
        self.max_in_flight = max_in_flight
        self._unflushed = 0
        self._marks: collections.deque = collections.deque()   # every _mark_every-th future, for flow control
        self._mark_every = max(1, min(1024, max_in_flight // 4))
        self._errors: list[Exception] = []
        self._note_error = self._errors.append
        config = {**kafka_config(self.settings, client_id), "acks": "all", "enable_idempotence": True,
                  "retries": 2**31 - 1, "partitioner": KeyHashCachePartitioner(),
                  **PRODUCER_PROFILES[profile], **overrides}
        try:
            self._producer = KafkaProducer(**config)
        except (KafkaTimeoutError, KafkaConnectionError) as exc:
            raise _unreachable(self.settings, exc) from None

    def send(self, topic: str, schema: str, record: dict, key: str | int | bytes | None = None,
             timestamp_ms: int | None = None) -> None:
        """Encode ``record`` with ``schema`` (validated) and produce it. Raises RecordRejected if invalid."""
        self.send_raw(topic, self.registry.encode(schema, record), key, timestamp_ms)

    def send_raw(self, topic: str, value: bytes, key: str | int | bytes | None = None,
                 timestamp_ms: int | None = None, partition: int | None = None) -> None:
        """Produce bytes as they are; ``partition`` only if the caller already knows the key's partition."""
        future = self._producer.send(topic, value=value, key=encode_key(key), timestamp_ms=timestamp_ms,
                                     partition=partition)
        future.add_errback(self._note_error)
        self._unflushed += 1
        if self._unflushed % self._mark_every == 0:
            self._marks.append(future)
            if self._unflushed >= self.max_in_flight:
                self._wait_for_oldest()

    def _wait_for_oldest(self) -> None:
        """Wait until the oldest marked record is acknowledged (or failed: flush reports it)."""
        oldest = self._marks.popleft()
        try:
            oldest.get(timeout=60.0)
        except KafkaTimeoutError as exc:
            raise BrokerUnavailableError(f"records not acknowledged within 60s: {exc}") from None
        except KafkaError:
            self.flush()   # raises with the first error
        self._unflushed -= self._mark_every

    def flush(self, timeout_s: float | None = 60.0) -> None:
        """Wait until every record sent so far is acknowledged; raise if any failed, or NotYetAcknowledged
        (still queued, still sent) if ``timeout_s`` passes first.

        With nothing sent since the last flush it returns at once: kafka-python's flush wakes its sender
        thread and waits for it even then, 0.1-40 ms on a busy SDK worker, and a Beam sink flushes at the end
        of every bundle, records or not."""
        if not self._unflushed:
            return
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaTimeoutError as exc:
            raise NotYetAcknowledged(f"records not acknowledged within {timeout_s}s: {exc}") from None
        self._unflushed = 0
        self._marks.clear()
        if self._errors:
            first, self._errors = self._errors[0], []
            if _is_authorization_error(first):
                raise AccessDeniedError(f"the broker refused to let {self._principal()} write: {first}")
            raise BrokerUnavailableError(f"producing failed: {first!r}")

    def _principal(self) -> str:
        credentials = self.settings.sasl_credentials()
        return f"principal {credentials[0]!r}" if credentials else "this anonymous client"

    def close(self, timeout_s: float = 10.0) -> None:
        try:
            self.flush(timeout_s)
        finally:
            self._producer.close(timeout=timeout_s)

    def __enter__(self) -> "KafkaSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DeadLetterSink:
    """Writes rejected records, whole, with reason and coordinates to the dead-letter topic."""

    def __init__(self, sink: KafkaSink, stage: str, topic: str = DEAD_LETTER_TOPIC):
        self.sink, self.stage, self.topic = sink, stage, topic
        self.count = 0

    def reject(self, *, value: bytes | None, key: bytes | None, topic: str, partition: int, offset: int,
               error: RecordRejected | Exception) -> None:
        reason = getattr(error, "reason", None) or f"error:{type(error).__name__}"
        letter = {
            "original": value or b"", "original_key": key, "topic": topic, "partition": partition,
            "offset": offset, "reason": reason, "detail": str(error)[:2000], "stage": self.stage,
            "failed_at_ms": int(time.time() * 1000),
        }
        self.sink.send(self.topic, "DeadLetter", letter, key=f"{topic}:{partition}")
        self.count += 1

_REBALANCE_ERRORS = (RebalanceInProgressError, CommitFailedError, IllegalGenerationError, UnknownMemberIdError)


class KafkaSource:
    """A consumer-group member yielding decoded, validated batches.

    Iterate it (``for batch in source``) or call :meth:`poll`; after the batch is
    processed and its outputs flushed, call :meth:`commit`. Records that fail to
    decode or validate never reach the caller; they are counted in :attr:`rejected`
    and handled as ``on_undecodable`` says, a choice every caller makes: ``"dead-letter"``
    (to ``dead_letters``, flushed before the commit), ``"raise"`` (RecordRejected out of
    :meth:`poll`, losing the rest of that batch) or ``"skip"`` (the batch goes on without them).
    """

    def __init__(self, topics: Iterable[str], group_id: str | None, settings: Settings | None = None,
                 registry: SchemaRegistry | None = None, dead_letters: DeadLetterSink | None = None, *,
                 on_undecodable: Undecodable, profile: Profile = "low-latency", from_beginning: bool = True,
                 client_id: str = "tiertwin-source", on_rejected: Callable[[RecordRejected], None] | None = None,
                 **overrides: Any):
        if on_undecodable not in UNDECODABLE:
            raise ConfigError(f"on_undecodable must be one of {', '.join(UNDECODABLE)}, not {on_undecodable!r}")
        if on_undecodable == "dead-letter" and dead_letters is None:
            raise ConfigError("on_undecodable='dead-letter' needs a DeadLetterSink (dead_letters)")
        self.settings = settings or Settings.from_env()
        self.registry = registry or SchemaRegistry.default()
        self.dead_letters = dead_letters
        self.on_undecodable = on_undecodable
        self.on_rejected = on_rejected
        self.rejected = 0
        self.topics = list(topics)
        config = {**kafka_config(self.settings, client_id), "group_id": group_id,
                  "enable_auto_commit": False,
                  "auto_offset_reset": "earliest" if from_beginning else "latest",
                  "session_timeout_ms": 10_000, "heartbeat_interval_ms": 2_000,
                  **CONSUMER_PROFILES[profile], **overrides}
        try:
            self._consumer = KafkaConsumer(**config)
        except (KafkaTimeoutError, KafkaConnectionError) as exc:
            raise _unreachable(self.settings, exc) from None
        if self.topics:
            # kafka-python can lead a group join with no partition metadata for a topic created
            # moments ago; it then assigns nothing and may never rebalance (dpkp/kafka-python#2377).
            # Knowing every topic's partitions before the first poll joins the group closes that window.
            self._consumer.subscribe(self.topics)
            for topic in self.topics:   # a cluster node that is down refuses the look-up: wait_out tries another
                wait_out(lambda: self._consumer.partitions_for_topic(topic), f"the partitions of {topic!r}",
                         self.settings)

    @property
    def consumer(self) -> KafkaConsumer:
        return self._consumer

    def poll(self, timeout_ms: int = 100) -> list[KafkaRecord]:
        """One batch of decoded records, in partition order; rejects are dead-lettered."""
        batch: list[KafkaRecord] = []
        decode = self.registry.decode
        for tp, messages in self._consumer.poll(timeout_ms=timeout_ms).items():
            for m in messages:
                try:
                    name, value = decode(m.value)
                except RecordRejected as exc:
                    self._reject(m, exc)
                    continue
                batch.append(KafkaRecord(m.topic, m.partition, m.offset, m.timestamp, m.key, name, value, m.value))
        return batch

    def _reject(self, message: Any, error: RecordRejected) -> None:
        self.rejected += 1
        if self.on_rejected is not None:
            self.on_rejected(error)
        if self.on_undecodable == "skip":
            return
        if self.on_undecodable == "raise":
            raise error
        self.dead_letters.reject(value=message.value, key=message.key, topic=message.topic,
                                 partition=message.partition, offset=message.offset, error=error)

    def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> bool:
        """Commit everything polled so far, or ``offsets``: the next offset to read per (topic,
        partition), for a caller that processes what it polled later, elsewhere. Call only after the
        records are processed and their outputs flushed.

        Returns False when a group rebalance refused the commit: the records since the last commit
        are redelivered (at-least-once) and the caller goes on polling, which completes the rebalance.
        Any other failure raises :class:`BrokerUnavailableError`.
        """
        if self.dead_letters is not None:
            self.dead_letters.sink.flush()
        try:
            if offsets is None:
                self._consumer.commit()
            elif offsets:
                self._consumer.commit({TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
                                       for (topic, partition), offset in offsets.items()})
        except _REBALANCE_ERRORS as exc:
            log.warning("offset commit skipped during a group rebalance (%s); records since the last commit "
                        "will be redelivered", type(exc).__name__)
            return False
        except KafkaError as exc:
            raise BrokerUnavailableError(f"offset commit failed: {exc!r}") from exc
        return True

    def still_member(self) -> bool:
        """Whether the group still counts this consumer as the owner of its partitions.

        A consumer stalled past its session (a long pause, a frozen VM) is fenced by the group
        coordinator, and may not know it yet: its heartbeats stopped with it. So the coordinator is
        asked: the offsets already committed for its partitions are committed again, which it refuses
        from a member it has fenced. False when it refused, or when the consumer already knows it is
        out of the group; True with no partitions, nothing committed yet, or the broker not answering
        (nothing to ask with, or no answer: as before the question).
        """
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is not None and coordinator.generation_if_stable() is None:
            return False
        try:
            committed = {tp: self._consumer.committed(tp, metadata=True) for tp in self._consumer.assignment()}
            committed = {tp: offset for tp, offset in committed.items() if offset is not None}
            if committed:
                self._consumer.commit(committed)
        except _REBALANCE_ERRORS as exc:
            log.warning("this consumer is no longer a member of its group (%s)", type(exc).__name__)
            return False
        except KafkaError:
            return True
        return True

    def __iter__(self) -> Iterator[list[KafkaRecord]]:
        while True:
            yield self.poll()

    def close(self) -> None:
        self._consumer.close(autocommit=False)

    def __enter__(self) -> "KafkaSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TopicReader:
    """Every partition of ``topics`` assigned (no consumer group), read from ``start`` on in decoded batches.

    ``start`` is ``"beginning"`` or ``"end"``, or one of them per topic (a dict); the seeks are resolved
    inside the readiness wait (:func:`~tiertwin.connectors.readiness.wait_out`), so a broker formatted
    a moment ago is waited for and the first :meth:`poll` reads from where asked. ``on_undecodable`` is
    the caller's choice (see :class:`KafkaSource`); a reader that keeps every record as it is (an
    archive) reads with :meth:`poll_raw` and decodes itself. A topic that does not exist is a ConfigError, unless ``require`` is
    False: then it is left out. ``only_partitions``: just these partitions of each topic (those that
    exist). :attr:`partitions` are the ones read, :attr:`end_offsets` their ends when reading started.
    """

    def __init__(self, topics: Iterable[str], settings: Settings | None = None, *,
                 on_undecodable: Undecodable,
                 start: Literal["beginning", "end"] | dict[str, Literal["beginning", "end"]] = "beginning",
                 dead_letters: DeadLetterSink | None = None, registry: SchemaRegistry | None = None,
                 client_id: str = "tiertwin-reader", require: bool = True,
                 only_partitions: Iterable[int] | None = None, **overrides: Any):
        self.topics = list(topics)
        only = None if only_partitions is None else set(only_partitions)
        self.source = KafkaSource([], None, settings, registry, dead_letters, client_id=client_id,
                                  on_undecodable=on_undecodable, **overrides)
        consumer = self.source.consumer

        def assign() -> tuple[list[TopicPartition], dict]:
            by_topic = {}
            for topic in self.topics:
                partitions = consumer.partitions_for_topic(topic)
                if not partitions and require:
                    raise ConfigError(f"topic {topic!r} does not exist; see `tiertwin topics list`")
                by_topic[topic] = [TopicPartition(topic, p) for p in sorted(partitions or ())
                                   if only is None or p in only]
            tps = [tp for topic_tps in by_topic.values() for tp in topic_tps]
            consumer.assign(tps)
            for topic, topic_tps in by_topic.items():
                where = start.get(topic, "beginning") if isinstance(start, dict) else start
                if topic_tps:
                    (consumer.seek_to_beginning if where == "beginning" else consumer.seek_to_end)(*topic_tps)
            for tp in tps:
                consumer.position(tp)  # resolve the seek now, inside the wait
            return tps, consumer.end_offsets(tps)

        try:
            self.partitions, self.end_offsets = wait_out(
                assign, f"the partitions of {', '.join(repr(t) for t in self.topics)}", self.source.settings)
        except BaseException:
            self.source.close()
            raise

    @property
    def consumer(self) -> KafkaConsumer:
        return self.source.consumer

    @property
    def rejected(self) -> int:
        return self.source.rejected

    def poll(self, timeout_ms: int = 200) -> list[KafkaRecord]:
        return self.source.poll(timeout_ms)

    def poll_raw(self, timeout_ms: int = 200) -> list:
        """The next records as they are on the log (kafka-python ``ConsumerRecord``s), undecoded;
        each partition's in offset order."""
        return [m for messages in self.consumer.poll(timeout_ms=timeout_ms).values() for m in messages]

    def at_end(self, latest: bool = False) -> bool:
        """Whether every partition is read up to its end when reading started (``latest``: its end now)."""
        end = self.consumer.end_offsets(self.partitions) if latest else self.end_offsets
        return all(self.consumer.position(tp) >= end[tp] for tp in self.partitions)

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> "TopicReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_topic(topic: str, settings: Settings | None = None, expect: int | None = None, timeout_s: float = 30.0,
               until=None) -> list:
    """Every record of ``topic`` from the beginning (KafkaRecords), until ``expect`` records,
    ``until(records)`` is true, or ``timeout_s`` passes; without either, until its end.
    A record that does not decode raises RecordRejected."""
    records: list = []
    with TopicReader([topic], settings, on_undecodable="raise") as reader:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            records.extend(reader.poll(200))
            if expect is not None and len(records) >= expect:
                break
            if until is not None and until(records):
                break
            if expect is None and until is None and reader.at_end(latest=True):
                break
    return records
