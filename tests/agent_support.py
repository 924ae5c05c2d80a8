"""What the agent tests share: an agent running in a thread, and agent configs on fresh topics."""

from __future__ import annotations

import threading
import time

from tiertwin.pipelines.edge_twin import EdgeAgentConfig
from tiertwin.pipelines.local_twin import LocalAgentConfig

LOCAL_TOPICS = ("telemetry", "demands", "outcomes", "edge_state", "summaries", "actions", "models", "changelog",
                "dead_letter", "model_status")
EDGE_TOPICS = ("summaries", "cell_reports", "migrations", "edge_state", "actions", "outcomes", "models", "changelog",
               "dead_letter", "model_status")


class Running:
    """An agent running in a thread for the duration of a ``with`` block (``thread`` stays reachable)."""

    def __init__(self, agent):
        self.agent, self.stop = agent, threading.Event()
        self.thread = threading.Thread(target=agent.run, args=(self.stop,), daemon=True)

    def __enter__(self):
        self.thread.start()
        assert self.agent.started.wait(30)
        return self.agent

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


def local_agent_config(new_topic, group_id: str, prefix: str = "test.local", **overrides) -> LocalAgentConfig:
    topics = {name: new_topic(1 if name == "models" else 3, prefix=f"{prefix}.{name}") for name in LOCAL_TOPICS}
    return LocalAgentConfig(
        instance_id=f"test-{group_id}", group_id=group_id, commit_interval_ms=200, session_timeout_ms=6000,
        **{f"{name}_topic": topic for name, topic in topics.items()}, **overrides)


def edge_agent_config(new_topic, group_id: str, prefix: str = "test.edge", **overrides) -> EdgeAgentConfig:
    topics = {name: new_topic(1, prefix=f"{prefix}.{name}") for name in EDGE_TOPICS}
    return EdgeAgentConfig(
        instance_id=f"test-{group_id}", group_id=group_id, commit_interval_ms=200, session_timeout_ms=6000,
        **{f"{name}_topic": topic for name, topic in topics.items()}, **overrides)


def wait_until_or_fail(condition, timeout_s: float = 20.0) -> None:
    """:func:`wait_until`, failing the test if ``condition`` never holds."""
    if not wait_until(condition, timeout_s):
        raise AssertionError(f"timed out after {timeout_s:g}s waiting for {getattr(condition, '__name__', condition)}")


def wait_until(condition, timeout_s: float = 20.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()
