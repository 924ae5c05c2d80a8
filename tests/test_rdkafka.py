"""The uplink's librdkafka producer takes the shared settings, SASL included, and keeps KafkaSink's flush contract."""

import uuid

import pytest

from tiertwin.connectors.rdkafka import RdKafkaSink, rdkafka_config
from tiertwin.errors import BrokerUnavailableError, ConfigError
from tiertwin.settings import Settings


def test_sasl_and_producer_settings_are_translated_not_dropped():
    settings = Settings(bootstrap_servers="a:9092", sasl_username="device", sasl_password="s3cret")
    config = rdkafka_config(settings, "tiertwin-device-x", acks="all", enable_idempotence=True, linger_ms=5,
                            delivery_timeout_ms=600_000, retries=2**31 - 1)
    assert config["security.protocol"] == "SASL_PLAINTEXT" and config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"]) == ("device", "s3cret")
    assert config["enable.idempotence"] is True and config["delivery.timeout.ms"] == 600_000
    assert config["retries"] == 2**31 - 1 and config["partitioner"] == "murmur2_random"


def test_a_setting_without_translation_is_an_error():
    with pytest.raises(ConfigError, match="fetch_min_bytes"):
        rdkafka_config(Settings(), "x", fetch_min_bytes=1)


@pytest.mark.broker
def test_keyed_records_land_where_kafka_python_puts_them(broker, settings, new_topic):
    from tiertwin.connectors.kafka import KafkaSink, read_topic

    topic = new_topic(3)
    keys = [f"ue-{i:04d}".encode() for i in range(60)]
    with RdKafkaSink(settings, client_id="test-rdkafka") as ours:
        for key in keys:
            ours.send_raw(topic, b"librdkafka", key)
        ours.flush(30)
    with KafkaSink(settings, client_id="test-rdkafka-reference") as reference:
        for key in keys:
            reference.send_raw(topic, b"kafka-python", key)
    by_client: dict[bytes, dict[bytes, int]] = {}
    for record in read_topic_raw(topic, settings, 2 * len(keys)):
        by_client.setdefault(record.value, {})[record.key] = record.partition
    assert by_client[b"librdkafka"] == by_client[b"kafka-python"]


def read_topic_raw(topic, settings, expect):
    from tiertwin.connectors.kafka import TopicReader

    records = []
    with TopicReader([topic], settings, on_undecodable="skip") as reader:
        while len(records) < expect:
            records.extend(reader.poll_raw(500))
    return records


def test_flush_times_out_while_the_broker_is_unreachable_and_the_producer_keeps_the_records():
    from tiertwin.procs import free_ports

    (dead_port,) = free_ports(1)
    sink = RdKafkaSink(Settings(bootstrap_servers=f"127.0.0.1:{dead_port}"), client_id="test-rdkafka-down")
    for i in range(10):
        sink.send_raw(f"test.rdkafka.{uuid.uuid4().hex[:6]}", b"v", str(i).encode())
    with pytest.raises(BrokerUnavailableError, match="not acknowledged"):
        sink.flush(0.5)
    assert len(sink) == 10          # still held: retried by the producer itself when the broker is back
    assert sink.abandon() == 10 and len(sink) == 0


@pytest.mark.broker
def test_sasl_scram_principals_and_acls_hold_for_the_librdkafka_producer(secure_broker):
    """On a SCRAM broker with ACLs: the local tier's principal writes its action topic through librdkafka,
    another tier's principal is refused (AccessDeniedError), as with kafka-python (tests/test_security.py)."""
    from tests.secure_support import settings_as
    from tiertwin.errors import AccessDeniedError
    from tiertwin.schemas.examples import example

    with RdKafkaSink(settings_as(secure_broker, "tiertwin-local"), client_id="test-rdkafka-local") as sink:
        sink.send("tiertwin.actions.local", "Decision", example("Decision"), key="ue-1")
        sink.flush(20)
    intruder = RdKafkaSink(settings_as(secure_broker, "tiertwin-edge"), client_id="test-rdkafka-edge",
                           delivery_timeout_ms=10_000, request_timeout_ms=5_000)
    intruder.send("tiertwin.actions.local", "Decision", example("Decision"), key="ue-1")
    with pytest.raises(AccessDeniedError, match="tiertwin-edge"):
        intruder.flush(20)
    intruder.abandon()
