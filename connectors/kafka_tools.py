"""Kafka's own Java tools (from the managed broker's ``kafka-tools`` jars), run as floors and ceilings.

``ProducerPerformance`` is the ceiling for producing from this machine;
``EndToEndLatency`` is the floor for a produce -> consume hop. Benchmarks run
them against the same broker in the same run as tiertwin's own numbers.
"""

from __future__ import annotations

import re
import subprocess

from tiertwin.connectors.broker import ManagedBroker
from tiertwin.errors import BrokerSetupError
from tiertwin.settings import Settings


def _classpath(settings: Settings) -> str:
    libs = ManagedBroker(settings).paths.libs
    if not any(libs.glob("kafka-tools-*.jar")):
        raise BrokerSetupError(f"kafka-tools jars not found in {libs}; run `tiertwin broker install`")
    return f"{libs}/*"


def run_tool(main: str, args: list[str], settings: Settings | None = None, timeout_s: float = 600) -> str:
    settings = settings or Settings.from_env()
    cmd = ["java", "-Xmx512m", "-cp", _classpath(settings), main, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise BrokerSetupError(f"{main} failed: {(done.stdout + done.stderr)[-1500:]}")
    return done.stdout


def producer_performance(topic: str, num_records: int, record_size: int, settings: Settings | None = None,
                         acks: str = "all") -> dict[str, float]:
    """Run ProducerPerformance at unlimited throughput; returns records/s, MB/s and latencies (ms)."""
    settings = settings or Settings.from_env()
    out = run_tool("org.apache.kafka.tools.ProducerPerformance",
                   ["--topic", topic, "--num-records", str(num_records), "--record-size", str(record_size),
                    "--throughput", "-1", "--producer-props", f"bootstrap.servers={settings.bootstrap}",
                    f"acks={acks}"], settings)
    final = out.strip().splitlines()[-1]
    match = re.search(r"([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, ([\d.]+) ms max", final)
    if not match:
        raise BrokerSetupError(f"unexpected ProducerPerformance output: {final}")
    rps, mbps, avg, mx = map(float, match.groups())
    return {"records_per_s": rps, "mb_per_s": mbps, "avg_latency_ms": avg, "max_latency_ms": mx}


def end_to_end_latency(topic: str, num_records: int, record_size: int = 200, settings: Settings | None = None,
                       acks: str = "all") -> dict[str, float]:
    """Run EndToEndLatency (one produce -> consume hop, one record at a time); returns avg and percentiles (ms)."""
    settings = settings or Settings.from_env()
    out = run_tool("org.apache.kafka.tools.EndToEndLatency",
                   [settings.bootstrap, topic, str(num_records), acks, str(record_size)], settings)
    avg = re.search(r"Avg latency: ([\d.]+) ms", out)
    pct = re.search(r"Percentiles: 50th = ([\d.]+), 99th = ([\d.]+), 99.9th = ([\d.]+)", out)
    if not (avg and pct):
        raise BrokerSetupError(f"unexpected EndToEndLatency output: {out[-500:]}")
    p50, p99, p999 = map(float, pct.groups())
    return {"avg_ms": float(avg.group(1)), "p50_ms": p50, "p99_ms": p99, "p999_ms": p999}
