"""What the agent tests share: an agent running in a thread, and agent configs on fresh topics."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from tiertwin.connectors.kafka import TopicReader, admin_client
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


def start_agent_process(tier: str, config_path, log_path=None) -> subprocess.Popen:
    """``tiertwin run <tier> --config <path>`` as its own process; its log (stderr) goes to ``log_path``,
    or to a pipe the caller reads (``communicate``) if None."""
    stderr = subprocess.PIPE if log_path is None else open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", "tiertwin.jobs.cli", "run", tier, "--config", str(config_path)],
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def terminate_all(processes, timeout_s: float = 60.0) -> None:
    """SIGTERM every process still running (an agent commits and checkpoints on it), then wait for each."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        process.wait(timeout_s)


def produce_fleet(sink, config, fleet, ticks, start_tick):
    """``ticks`` of a SyntheticFleet's telemetry and demands to the config's topics; returns their counts."""
    telemetry = demands = 0
    for tick in range(start_tick, start_tick + ticks):
        for kind, record in fleet.step(tick * 10):
            record["emitted_ns"] = time.time_ns()
            if kind == "telemetry":
                sink.send(config["telemetry_topic"], "Telemetry", record, key=record["ue_id"])
                telemetry += 1
            elif kind == "demand":
                sink.send(config["demands_topic"], "Demand", record, key=record["ue_id"])
                demands += 1
    sink.flush()
    return telemetry, demands


def committed_offset(settings, group: str, topic: str) -> int:
    """The sum of ``group``'s committed offsets on ``topic``."""
    admin = admin_client(settings)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0)


def read_raw(topic, settings):
    """(key, value) of every record of a raw-bytes topic (a changelog of pickles), latest last."""
    out = []
    with TopicReader([topic], settings, on_undecodable="raise") as reader:   # poll_raw decodes nothing
        while not reader.at_end():
            out.extend((m.key.decode(), m.value) for m in reader.poll_raw(500) if m.value is not None)
    return out
