"""A second managed broker with SASL/SCRAM and the StandardAuthorizer: tiers as principals, ACLs enforced."""

import pytest

from tiertwin.connectors.broker import ManagedBroker
from tiertwin.connectors.kafka import KafkaSink, KafkaSource
from tiertwin.connectors.security import apply_security, credential_file
from tiertwin.connectors.topics import apply_topology, load_topology
from tiertwin.errors import AccessDeniedError, BrokerUnavailableError
from tiertwin.schemas.examples import example

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory, broker):
    secure = ManagedBroker.private(tmp_path_factory.mktemp("secure-home"), main=broker.settings,
                                   broker_security="scram", connect_timeout_s=5)
    secure.start()
    try:
        topology = load_topology()
        apply_topology(topology, secure.client_settings())
        apply_security(secure, topology)
        yield secure
    finally:
        secure.stop()


def _as(broker, principal):
    return broker.settings.model_copy(update={"sasl_username": principal,
                                              "sasl_password_file": credential_file(broker, principal)})


def test_each_tier_writes_only_its_own_action_topic(secure_broker):
    with KafkaSink(_as(secure_broker, "tiertwin-local")) as sink:
        sink.send("tiertwin.actions.local", "Decision", example("Decision"), key="ue-1")
        sink.flush(10)
    for intruder in ("tiertwin-edge", "tiertwin-simulator"):
        sink = KafkaSink(_as(secure_broker, intruder))
        with pytest.raises(AccessDeniedError, match=intruder):
            sink.send("tiertwin.actions.local", "Decision", example("Decision"), key="ue-1")
            sink.flush(10)
        sink._producer.close(timeout=2)
    cloud = KafkaSink(_as(secure_broker, "tiertwin-edge"))
    with pytest.raises(AccessDeniedError):
        cloud.send("tiertwin.models", "ModelUpdate", example("ModelUpdate"), key="demand-latency")
        cloud.flush(10)
    cloud._producer.close(timeout=2)


def test_read_only_subscriber_reads_but_cannot_produce(secure_broker):
    subscriber = _as(secure_broker, "tiertwin-subscriber")
    with KafkaSink(_as(secure_broker, "tiertwin-local")) as sink:
        sink.send("tiertwin.actions.local", "Decision", example("Decision", decision_id="for-subscriber"), key="k")
    source = KafkaSource(["tiertwin.actions.local"], "tiertwin-subscriber-test", subscriber)
    seen = []
    for _ in range(50):
        seen += [r.value["decision_id"] for r in source.poll(200)]
        if "for-subscriber" in seen:
            break
    source.close()
    assert "for-subscriber" in seen
    sink = KafkaSink(subscriber)
    with pytest.raises(AccessDeniedError):
        sink.send("tiertwin.actions.local", "Decision", example("Decision"), key="k")
        sink.flush(10)
    sink._producer.close(timeout=2)


def test_wrong_password_is_refused(secure_broker, tmp_path):
    bad = tmp_path / "wrong.password"
    bad.write_text("not-the-password")
    settings = secure_broker.settings.model_copy(update={"sasl_username": "tiertwin-local",
                                                         "sasl_password_file": bad, "connect_timeout_s": 3})
    with pytest.raises((BrokerUnavailableError, AccessDeniedError), match="tiertwin-local"):
        with KafkaSink(settings) as sink:
            sink.send("tiertwin.actions.local", "Decision", example("Decision"), key="k")


def test_the_cloud_twins_own_consumers_authenticate(secure_broker):
    """The Beam read's partition discovery and the trainer's models consumer are built with the
    shared client config: with the cloud tier's credentials they read, without them they are refused."""
    from kafka.errors import KafkaError

    from tiertwin.connectors.beam_kafka import ReadSpec, discover_partitions
    from tiertwin.pipelines.cloud.training import _models_reader

    cloud = _as(secure_broker, "tiertwin-cloud")
    slices = discover_partitions(cloud, ["tiertwin.outcomes"], ReadSpec(stop="end"))
    assert slices and {s.topic for s in slices} == {"tiertwin.outcomes"}
    with _models_reader(cloud, "tiertwin.models") as models:
        assert models.partitions and all(models.consumer.position(tp) == 0 for tp in models.partitions)
    anonymous = secure_broker.settings.model_copy(update={"connect_timeout_s": 3})
    assert anonymous.sasl_credentials() is None
    with pytest.raises(KafkaError):
        discover_partitions(anonymous, ["tiertwin.outcomes"], ReadSpec(stop="end"))


def test_no_command_takes_a_secret_on_the_command_line():
    import typer.main

    from tiertwin.jobs.cli import app

    def walk(command, path=()):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, path + (name,))

    options = [(path, opt) for path, command in walk(typer.main.get_command(app))
               for param in command.params for opt in getattr(param, "opts", [])]
    assert len(options) > 20
    assert not [(p, o) for p, o in options if any(w in o.lower() for w in ("password", "secret", "token"))]
