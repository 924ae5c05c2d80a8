"""A second managed broker with SASL/SCRAM and the StandardAuthorizer: tiers as principals, ACLs enforced."""

import pytest

from tests.secure_support import settings_as
from tiertwin.connectors.kafka import KafkaSink, KafkaSource
from tiertwin.connectors.security import credential_file
from tiertwin.errors import AccessDeniedError, BrokerUnavailableError
from tiertwin.schemas.examples import example

pytestmark = pytest.mark.broker


_as = settings_as


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
    source = KafkaSource(["tiertwin.actions.local"], "tiertwin-subscriber-test", subscriber, on_undecodable="raise")
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

    from tiertwin.jobs.cli.main import app

    def walk(command, path=()):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, path + (name,))

    options = [(path, opt) for path, command in walk(typer.main.get_command(app))
               for param in command.params for opt in getattr(param, "opts", [])]
    assert len(options) > 20
    assert not [(p, o) for p, o in options if any(w in o.lower() for w in ("password", "secret", "token"))]


def _cloud_job(secure_broker, home, config, log_path, principal):
    """``tiertwin run cloud`` on Prism against the secure broker, as ``principal`` (None: anonymous)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERTWIN_")}
    env.update(TIERTWIN_HOME=str(home), TIERTWIN_BROKER_PORT=str(secure_broker.settings.broker_port),
               TIERTWIN_CONNECT_TIMEOUT_S="3", TIERTWIN_READY_TIMEOUT_S="20")
    if principal is not None:
        env.update(TIERTWIN_SASL_USERNAME=principal,
                   TIERTWIN_SASL_PASSWORD_FILE=str(credential_file(secure_broker, principal)))
    return subprocess.Popen([sys.executable, "-m", "tiertwin.jobs.cli", "run", "cloud", "--config", str(config),
                             "--runner", "prism"], stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env)


@pytest.mark.slow
def test_the_cloud_twin_on_prism_fuses_as_the_cloud_tier_and_is_refused_anonymously(secure_broker, settings,
                                                                                     tmp_path):
    import signal
    import subprocess
    import time

    import yaml

    from tiertwin.connectors.kafka import read_topic
    from tiertwin.jobs.bench.cloud import produce, tier_traffic

    config = tmp_path / "cloud.yaml"
    config.write_text(yaml.safe_dump({
        "input_topics": ["tiertwin.edge.summaries", "tiertwin.cloud.edge-state"], "train": False,
        "start": "earliest", "window_s": 1, "early_firing_s": None, "allowed_lateness_s": 0}))
    admin = secure_broker.client_settings()
    start = (int(time.time() * 1000) // 1000 - 5) * 1000
    records = [(s, r) for s, r in tier_traffic(start, 80, 40, cells=2, ues=4, seed=3)
               if s in ("LocalSummary", "EdgeState")]
    with KafkaSink(admin) as sink:
        produce(sink, records)

    log = tmp_path / "cloud.log"
    job = _cloud_job(secure_broker, settings.home, config, log, "tiertwin-cloud")
    try:
        snapshots = read_topic("tiertwin.cloud.snapshots", _as(secure_broker, "tiertwin-subscriber"),
                               timeout_s=180, until=lambda recs: len(recs) > 0)
        assert snapshots, log.read_text()[-2000:]
        assert {s.value["cell_id"] for s in snapshots} <= {r.get("serving_cell", r.get("cell_id")) for _, r in records}
    finally:
        job.send_signal(signal.SIGTERM)
        try:
            job.wait(60)
        except subprocess.TimeoutExpired:
            job.kill()
    assert job.returncode == 0 and "cloud twin drained" in log.read_text(), log.read_text()[-2000:]

    refused_log = tmp_path / "anonymous.log"
    anonymous = _cloud_job(secure_broker, settings.home, config, refused_log, None)
    try:
        code = anonymous.wait(240)
    except subprocess.TimeoutExpired:
        anonymous.kill()
        code = None
    # Refused where it first reaches Kafka: the look-up of the job's resume point in its consumer group
    # (without a group, the Beam read's partition discovery) cannot bootstrap.
    refused = refused_log.read_text()
    assert code not in (0, None), refused[-2000:]
    assert "the commits of consumer group 'tiertwin-cloud-twin'" in refused and "Unable to bootstrap" in refused, \
        refused[-2000:]
