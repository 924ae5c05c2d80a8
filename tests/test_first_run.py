"""What a new user has: a broker formatted a moment ago, then the quickstart's commands.

Every other test runs on the session's broker, which earlier tests have warmed up: its
``__consumer_offsets`` exists and its group coordinators are loaded. Here each test gets a
private broker in a new ``TIERTWIN_HOME`` on free ports (the session broker's jars), so the
first group request of the test is the broker's first one too (issue 13).
"""

from __future__ import annotations

import pytest

from tiertwin.connectors.broker import ManagedBroker
from tiertwin.settings import Settings

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def fresh_home(tmp_path, settings, monkeypatch):
    """A private, not yet started broker home (jars and Prism linked from the session's home), with
    the environment pointing at it so the demo's detached jobs use it too."""
    private = ManagedBroker.private(tmp_path / "home", main=settings)
    prism = settings.home / "bin" / "prism"
    if prism.exists():
        (tmp_path / "home" / "bin").mkdir(parents=True)
        (tmp_path / "home" / "bin" / "prism").symlink_to(prism.resolve())
    for key, value in private.env().items():
        if key.startswith("TIERTWIN_"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("TIERTWIN_BOOTSTRAP_SERVERS", raising=False)
    yield private
    private.stop()


def _start_and_apply_topics(broker: ManagedBroker) -> Settings:
    from tiertwin.connectors.topics import apply_topology, load_topology

    broker.start()
    apply_topology(load_topology(), broker.settings)
    return broker.settings


def test_demo_runs_on_a_broker_formatted_a_moment_ago(fresh_home):
    from tiertwin.jobs.ops.demo import run_demo
    from tiertwin.jobs.ops.launcher import deployed, status_of

    settings = _start_and_apply_topics(fresh_home)
    lines: list[str] = []
    summary = run_demo(seconds=8, ues=10, with_cloud=True, settings=settings, on_progress=lines.append,
                       baseline=False)
    assert summary.decision_topics[("tiertwin.actions.local", "local")] > 0, (summary.decisions, lines)
    assert any(tier == "edge" for tier, _ in summary.decisions), (summary.decisions, lines)
    assert {job["name"] for job in deployed(settings)} >= {"simulator", "edge", "cloud"}
    for job in deployed(settings):
        assert status_of(job["name"], settings)["running"] == 0


def test_broker_start_returns_once_a_consumer_group_can_be_served(fresh_home):
    """Right after `tiertwin broker start`, plain kafka-python group requests (no waiting) succeed."""
    from kafka import TopicPartition
    from kafka.admin import OffsetSpec

    from tiertwin.connectors.kafka import admin_client
    from tiertwin.connectors.readiness import PROBE_GROUP

    settings = _start_and_apply_topics(fresh_home)
    admin = admin_client(settings)
    try:
        for group in ("tiertwin-local", "tiertwin-edge", "tiertwin-simulator"):
            done = admin.reset_group_offsets(group, {TopicPartition("tiertwin.local.telemetry", 0): OffsetSpec.LATEST})
            assert [r["error"].__name__ for r in done.values()] == ["NoError"], (group, done)
        assert PROBE_GROUP not in {g["group_id"] for g in admin.list_groups()}  # the probe cleans up after itself
    finally:
        admin.close()


def test_each_caller_waits_out_a_coordinator_that_is_still_loading(fresh_home, monkeypatch, tmp_path):
    """With broker start's own wait switched off (the broker as the old code left it), the callers
    that talk to a group coordinator first wait for it themselves; the readers work too."""
    from tiertwin.client import subscribe
    from tiertwin.connectors.archive import archive_topics
    from tiertwin.jobs.ops.launcher import consumer_progress, skip_to_latest

    monkeypatch.setattr(ManagedBroker, "wait_serving_groups", lambda self, timeout_s=0.0: None)
    settings = _start_and_apply_topics(fresh_home)
    topic = "tiertwin.actions.local"
    assert list(subscribe(topic, from_beginning=True, follow=False, settings=settings)) == []
    assert archive_topics([topic], tmp_path / "archive", settings) == {topic: 0}
    skip_to_latest("tiertwin-local", ["tiertwin.local.telemetry", "tiertwin.local.demands"], settings)
    assert consumer_progress("tiertwin-edge", ["tiertwin.edge.summaries"], settings) == (0, 0)
