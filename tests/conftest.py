"""One managed Kafka broker per test session; a fresh topic and consumer group per test.

If a broker is already listening (``.ci/run`` and ``scripts/setup`` start one) it is
reused and left running; otherwise the session starts the managed broker and stops
it at the end.
"""

from __future__ import annotations

import uuid

import pytest

from tiertwin.settings import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def broker(settings):
    from tiertwin.connectors.broker import ManagedBroker
    from tiertwin.connectors.topics import apply_topology, load_topology

    managed = ManagedBroker(settings)
    started_here = False
    if not managed.port_open():
        managed.start()
        started_here = True
    apply_topology(load_topology(), settings)
    yield managed
    if started_here:
        managed.stop()


@pytest.fixture
def new_topic(broker, settings):
    """Factory: ``new_topic(partitions=3)`` creates a uniquely named topic and returns its name."""
    from tiertwin.connectors.kafka import admin_client
    from tiertwin.connectors.topics import wait_for_leaders

    admin = admin_client(settings)
    created: list[str] = []

    def make(partitions: int = 3, prefix: str = "test") -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        # No time-based retention: tests produce records with fixed event times (2026-01-01) as Kafka timestamps,
        # and the broker's periodic retention check (24 h) could delete them between produce and read.
        admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1,
                                    "configs": {"retention.ms": "-1"}}}, timeout_ms=30_000)
        wait_for_leaders(admin, [name])  # else a consumer group may form before the topic is known
        created.append(name)
        return name

    yield make
    if created:
        admin.delete_topics(created)
    admin.close()


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory, broker):
    """A second managed broker with SASL/SCRAM, the StandardAuthorizer and the topology's ACLs (one per run)."""
    from tiertwin.connectors.broker import ManagedBroker
    from tiertwin.connectors.security import apply_security
    from tiertwin.connectors.topics import apply_topology, load_topology

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


@pytest.fixture
def group_id() -> str:
    return f"test-group-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def view_topics(new_topic):
    """Fresh topics for a TwinView (twin API and live view tests)."""
    from tiertwin.jobs.api.twin_api import ViewTopics

    return ViewTopics(summaries=new_topic(1), edge_state=new_topic(1), cell_reports=new_topic(1),
                      snapshots=new_topic(1), outcomes=new_topic(1), decisions=(new_topic(1), new_topic(1)),
                      cloud_actions=new_topic(1))
