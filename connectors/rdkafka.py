"""librdkafka clients (confluent-kafka), built from the shared ``kafka_config``: the device uplink's producer
and the cloud twin's partition reader.

The device runtime's uplink hands the broker hundreds of thousands of records per second
at 10,000 UEs. With kafka-python every record costs Python work in the sending thread
and again in kafka-python's own IO thread, both holding the GIL the decisions need:
37.6 µs of CPU per record, all threads counted, against 5.8 µs through librdkafka, whose
batching, compression, retries and socket IO run in C threads without the GIL
(50,000 encoded Decisions/LocalSummaries, one broker on this machine, 2026-12-03).
So the uplink produces through :class:`RdKafkaSink`, and the cloud twin's Beam read fetches through
:class:`RdKafkaPartitionConsumer` (kafka-python parsed a fetch at about 10 µs of Python per record);
every other client stays on kafka-python.

The settings come from :func:`~tiertwin.connectors.kafka.kafka_config` (so SASL/SCRAM is
never dropped) and are translated key by key by :func:`rdkafka_config`; a kafka-python
setting without a translation is an error, not silently left out.

>>> from tiertwin.settings import Settings
>>> config = rdkafka_config(Settings(bootstrap_servers="a:9092,b:9092"), "tiertwin-x", acks="all", linger_ms=5)
>>> config["bootstrap.servers"], config["client.id"], config["acks"], config["linger.ms"]
('a:9092,b:9092', 'tiertwin-x', 'all', 5)
>>> config["partitioner"]     # keyed records land where kafka-python's (Java's) murmur2 puts them
'murmur2_random'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tiertwin.connectors.kafka import PRODUCER_PROFILES, Profile, kafka_config
from tiertwin.errors import AccessDeniedError, BrokerUnavailableError, ConfigError, NotYetAcknowledged
from tiertwin.schemas import SchemaRegistry
from tiertwin.settings import Settings

log = logging.getLogger("tiertwin.rdkafka")

# kafka-python keyword -> librdkafka property (values that need converting are converted below)
_RENAMED = {
    "client_id": "client.id",
    "request_timeout_ms": "request.timeout.ms",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "acks": "acks",
    "enable_idempotence": "enable.idempotence",
    "retries": "retries",
    "linger_ms": "linger.ms",
    "batch_size": "batch.size",
    "delivery_timeout_ms": "delivery.timeout.ms",
    "reconnect_backoff_ms": "reconnect.backoff.ms",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms",
    "compression_type": "compression.type",
}
# kafka-python keywords with no librdkafka counterpart, and why leaving them out is right
_NOT_NEEDED = {
    "bootstrap_timeout_ms",   # librdkafka connects in the background; flush(timeout) bounds every wait instead
    "max_block_ms",           # produce() never blocks: a full local queue raises BufferError at once
    "partitioner",            # a kafka-python object; 'murmur2_random' below is the same key -> partition map
}


def rdkafka_config(settings: Settings, client_id: str, **overrides: Any) -> dict[str, Any]:
    """librdkafka properties for a producer: :func:`kafka_config` (``overrides`` in kafka-python's
    names, as every other client takes them) translated. Raises ConfigError for a setting it cannot translate."""
    python = kafka_config(settings, client_id, **overrides)
    config: dict[str, Any] = {"bootstrap.servers": ",".join(python.pop("bootstrap_servers")),
                              "partitioner": "murmur2_random"}
    for key, value in python.items():
        if key in _NOT_NEEDED:
            continue
        if key not in _RENAMED:
            raise ConfigError(f"kafka setting {key!r} has no librdkafka translation (connectors/rdkafka.py)")
        if key == "retries":
            value = min(int(value), 2_147_483_647)
        config[_RENAMED[key]] = value
    return config


class RdKafkaSink:
    """The producer of :class:`~tiertwin.connectors.kafka.KafkaSink`'s contract on librdkafka:
    ``acks=all``, idempotent, keyed records partitioned as kafka-python does.

    ``send_raw`` hands a record to librdkafka (no Python per record after that); ``flush(timeout_s)``
    waits until every record handed over is acknowledged: it raises :class:`BrokerUnavailableError`
    ``"records not acknowledged within ..."`` if some are still waiting (the producer keeps them and
    retries them itself, same producer id and sequence numbers: exactly once), or ``"producing failed: ..."``
    if the producer gave up on some (they are no longer held: the caller sends them again).
    Only failed deliveries call back into Python (``delivery.report.only.error``).
    """

    def __init__(self, settings: Settings | None = None, registry: SchemaRegistry | None = None,
                 profile: Profile = "throughput", client_id: str = "tiertwin-sink", **overrides: Any):
        from confluent_kafka import Producer

        self.settings = settings or Settings.from_env()
        self.registry = registry or SchemaRegistry.default()
        self._errors: list[Exception] = []
        self.fatal: Exception | None = None   # the producer cannot go on (idempotence state lost): build a new one
        config = rdkafka_config(self.settings, client_id, acks="all", enable_idempotence=True, retries=2**31 - 1,
                                **{**PRODUCER_PROFILES[profile], **overrides})
        config.update({"delivery.report.only.error": True, "on_delivery": self._on_delivery,
                       "error_cb": self._on_error, "logger": log,
                       "queue.buffering.max.messages": 1_000_000})
        self._producer = Producer(config)
        self._produce = self._producer.produce

    def _on_delivery(self, error, message) -> None:
        if error is not None:
            self._errors.append(_as_exception(error))

    def _on_error(self, error) -> None:
        if error.fatal():
            self.fatal = _as_exception(error)
            self._errors.append(self.fatal)
        else:   # a broker down or refusing the connection: retried by librdkafka, reported by flush
            log.debug("librdkafka: %s", error)

    def send(self, topic: str, schema: str, record: dict, key: str | int | bytes | None = None,
             timestamp_ms: int | None = None) -> None:
        """Encode ``record`` with ``schema`` (validated) and produce it. Raises RecordRejected if invalid."""
        self.send_raw(topic, self.registry.encode(schema, record), key, timestamp_ms)

    def send_raw(self, topic: str, value: bytes, key: str | int | bytes | None = None,
                 timestamp_ms: int | None = None, partition: int | None = None) -> None:
        """Hand bytes to librdkafka. BrokerUnavailableError if its local queue stays full."""
        if timestamp_ms is None and partition is None and (key is None or type(key) is bytes):
            try:    # the uplink's case, without building keyword arguments
                self._produce(topic, value, key)
                return
            except BufferError:
                pass
        if key is not None and not isinstance(key, bytes):
            key = str(key).encode()
        producer = self._producer
        kwargs: dict[str, Any] = {}
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if partition is not None:
            kwargs["partition"] = partition
        for _ in range(50):
            try:
                producer.produce(topic, value, key, **kwargs)
                break
            except BufferError:     # the local queue is full: let librdkafka deliver some first
                producer.poll(0.1)
        else:
            raise BrokerUnavailableError("the producer's local queue stayed full for 5 s")

    def flush(self, timeout_s: float | None = 60.0) -> None:
        """Wait until every record sent so far is acknowledged; raise if any failed or some are still waiting."""
        # flush also serves the callbacks (failed deliveries, errors, logs): the sender calls it after every batch
        left = self._producer.flush(-1 if timeout_s is None else timeout_s)
        if self._errors:
            first, self._errors = self._errors[0], []
            if _is_authorization(first):
                credentials = self.settings.sasl_credentials()
                who = f"principal {credentials[0]!r}" if credentials else "this anonymous client"
                raise AccessDeniedError(f"the broker refused to let {who} write: {first}")
            raise BrokerUnavailableError(f"producing failed: {first!r}")
        if left:
            raise NotYetAcknowledged(f"records not acknowledged within {timeout_s}s: {left} still waiting")

    def abandon(self) -> int:
        """Drop whatever the producer still holds (the caller keeps it elsewhere); the number dropped."""
        left = len(self._producer)
        if left:
            self._producer.purge()
            self._producer.flush(0)     # serves the purged records' callbacks
        self._errors = []
        return left

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush (raising as :meth:`flush` does), then let the producer go."""
        try:
            self.flush(timeout_s)
        finally:
            self.abandon()

    def __len__(self) -> int:
        return len(self._producer)

    def __enter__(self) -> "RdKafkaSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_exception(error) -> Exception:
    from confluent_kafka import KafkaException

    return KafkaException(error)


def _is_authorization(error: Exception) -> bool:
    text = str(error)
    return "AUTHORIZATION" in text.upper() or "authoriz" in text.lower()


# kafka-python consumer keywords -> librdkafka properties (the settings the Beam read passes)
_CONSUMER_RENAMED = {
    "fetch_min_bytes": "fetch.min.bytes",
    "fetch_max_wait_ms": "fetch.wait.max.ms",
    "enable_auto_commit": "enable.auto.commit",
}


def rdkafka_consumer_config(settings: Settings, client_id: str, **overrides: Any) -> dict[str, Any]:
    """librdkafka properties for a group-less consumer of assigned partitions: :func:`rdkafka_config`
    (so SASL/SCRAM too) plus the consumer settings in ``overrides`` (kafka-python's names), translated.

    >>> from tiertwin.settings import Settings
    >>> config = rdkafka_consumer_config(Settings(bootstrap_servers="a:9092"), "tiertwin-r", fetch_max_wait_ms=500)
    >>> config["fetch.wait.max.ms"], config["enable.auto.commit"], "partitioner" in config
    (500, False, False)
    """
    consumer = {key: overrides.pop(key) for key in list(overrides) if key in _CONSUMER_RENAMED}
    overrides.pop("group_id", None)
    config = rdkafka_config(settings, client_id, **overrides)
    config.pop("partitioner", None)
    config.pop("request.timeout.ms", None)   # a producer property (librdkafka warns and ignores it)
    config.update({_CONSUMER_RENAMED[key]: value for key, value in consumer.items()})
    # No group: positions are the reader's (assign), never committed. librdkafka wants a group id anyway,
    # and looks up its coordinator: on a SCRAM broker it must be a group the principal may use (named
    # after it, as the ACLs of `tiertwin broker secure` allow), or every read fails its authorization.
    credentials = settings.sasl_credentials()
    unused = f"{credentials[0]}-{client_id}-unused" if credentials else f"{client_id}-unused"
    config.update({"group.id": unused, "enable.auto.commit": False,
                   "enable.auto.offset.store": False, "auto.offset.reset": "earliest"})
    return config


class PartitionRecord:
    """One record as :class:`RdKafkaPartitionConsumer` hands it over: the attributes of kafka-python's
    ``ConsumerRecord`` that the Beam read uses."""

    __slots__ = ("topic", "partition", "offset", "timestamp", "key", "value")

    def __init__(self, topic: str, partition: int, offset: int, timestamp: int, key: bytes | None,
                 value: bytes | None):
        self.topic, self.partition, self.offset = topic, partition, offset
        self.timestamp, self.key, self.value = timestamp, key, value


class Fetch(Sequence):
    """What one :meth:`RdKafkaPartitionConsumer.poll` brought of one partition: a sequence of
    :class:`PartitionRecord` (built when asked for) over librdkafka's messages, and :meth:`columns`, the values,
    keys, offsets and timestamps as lists, for a reader that decodes the fetch as a batch and needs no object
    per record (building a PartitionRecord per message cost about 1 us of the read's GIL a record)."""

    __slots__ = ("_messages",)

    def __init__(self, messages: list):
        self._messages = messages

    def __len__(self) -> int:
        return len(self._messages)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Fetch(self._messages[index])
        return _record(self._messages[index])

    def __iter__(self):
        return map(_record, self._messages)

    def columns(self) -> tuple[list, list, list[int], list[int]]:
        messages = self._messages
        return ([m.value() for m in messages], [m.key() for m in messages], [m.offset() for m in messages],
                [m.timestamp()[1] for m in messages])


def _record(m) -> PartitionRecord:
    return PartitionRecord(m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value())


class RdKafkaPartitionConsumer:
    """A group-less librdkafka consumer of assigned partitions, with the part of kafka-python's
    ``KafkaConsumer`` API the Beam read uses: ``assign``, ``seek``, ``poll(timeout_ms)`` -> ``{tp: records}``,
    ``position``, ``highwater``, ``close``.

    Why: kafka-python parses a fetch in Python, about 10 µs of the reading thread's CPU per record (and its
    IO thread holds the GIL meanwhile); librdkafka fetches, decompresses and parses in its own C threads and
    prefetches the next fetch while Python decodes this one, so a record costs the GIL only the few calls
    that hand it over (see docs/cloud-twin.md for the measurements).

    ``poll`` returns as soon as one record is there, with whatever else librdkafka has queued, up to
    ``max_poll_records`` (``Consumer.consume(n, timeout)`` would wait until it has ``n`` or the timeout
    passed: a caught-up partition would wait out every poll). Settings come from :func:`rdkafka_config`,
    so SASL/SCRAM is the same as every other client's.
    """

    def __init__(self, settings: Settings, client_id: str, max_poll_records: int = 2000, **overrides: Any):
        from confluent_kafka import Consumer

        config = rdkafka_consumer_config(settings, client_id, **overrides)
        config.update({"logger": log, "error_cb": self._on_error})
        self._consumer = Consumer(config)
        self.max_poll_records = max_poll_records
        self._assigned: dict[tuple, Any] = {}     # (topic, partition) -> the caller's TopicPartition
        self._position: dict[tuple, int] = {}
        self._fetched: set[tuple] = set()        # partitions whose librdkafka position is of the current seek
        self._reassign, self._closed = False, False

    @staticmethod
    def _on_error(error) -> None:
        log.debug("librdkafka: %s", error)

    def assign(self, tps: list) -> None:
        """Read these partitions (from where :meth:`seek` puts them; from the earliest offset if never)."""
        self._assigned = {(tp.topic, tp.partition): tp for tp in tps}
        self._reassign = True

    def seek(self, tp, offset: int) -> None:
        """Read ``tp`` from ``offset`` on; whatever librdkafka had prefetched for it is dropped."""
        self._check_open()
        self._position[(tp.topic, tp.partition)] = offset
        self._fetched.discard((tp.topic, tp.partition))  # librdkafka's position is stale until a record comes
        self._reassign = True

    def _assign(self) -> None:
        # Assigning sets the start even before the first fetch (seek() needs a partition that is already fetching).
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        self._consumer.assign([TopicPartition(t, p, self._position.get((t, p), OFFSET_BEGINNING))
                               for t, p in self._assigned])
        self._reassign = False

    def poll(self, timeout_ms: int) -> dict:
        self._check_open()
        if self._reassign:
            self._assign()
        consumer = self._consumer
        first = consumer.poll(timeout_ms / 1000)
        if first is None:
            return {}
        messages = [first]
        if self.max_poll_records > 1:
            messages += consumer.consume(self.max_poll_records - 1, 0)
        if any(m.error() is not None for m in messages):
            for m in messages:
                if m.error() is not None:
                    self._on_message_error(m)
            messages = [m for m in messages if m.error() is None]
        if len(self._assigned) == 1:  # the Beam read's case: a consumer per partition, so one fetch
            by_tp = {next(iter(self._assigned)): messages} if messages else {}
        else:
            by_tp = {}
            for m in messages:
                by_tp.setdefault((m.topic(), m.partition()), []).append(m)
        out = {}
        for key, fetched in by_tp.items():
            self._position[key] = fetched[-1].offset() + 1
            self._fetched.add(key)
            out[self._assigned.get(key, key)] = Fetch(fetched)
        return out

    def _on_message_error(self, message) -> None:
        from confluent_kafka import KafkaError, KafkaException

        error = message.error()
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal() or not error.retriable():
            raise KafkaException(error)
        log.debug("librdkafka: %s", error)

    def position(self, tp) -> int | None:
        from confluent_kafka import TopicPartition

        self._check_open()
        own = self._position.get((tp.topic, tp.partition))
        if (tp.topic, tp.partition) not in self._fetched:
            return own
        found = self._consumer.position([TopicPartition(tp.topic, tp.partition)])[0].offset
        # librdkafka's position also moves over offsets without records (transaction markers, compaction)
        known = [o for o in (own, found) if o is not None and o >= 0]
        return max(known) if known else None

    def highwater(self, tp) -> int | None:
        """The partition's end offset as of the last fetch response (no broker round trip); None before one."""
        from confluent_kafka import TopicPartition

        self._check_open()
        _, high = self._consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), cached=True)
        return high if high >= 0 else None

    def _check_open(self) -> None:
        if self._closed:   # what kafka-python raises on a closed consumer: the read defers its remainder
            from kafka.errors import IllegalStateError

            raise IllegalStateError("the consumer is closed")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()
