"""``tiertwin bench latency`` and ``tiertwin bench throughput``: the agents' benchmarks.

``tiertwin bench latency`` produces Telemetry + Demand records at a fixed rate into
fresh topics, runs one local agent process on them and measures *record produced ->
decision consumed* (two Kafka hops plus the agent); both ends are Kafka's Java client
(``connectors/java/LatencyProbe.java``), as in Kafka's ``EndToEndLatency``, so the only
kafka-python on the measured path is the agent's;
in the same run it repeats the measurement with a kafka-python relay in place of the agent
(same client settings, answers each demand at once: the floor of the client) and runs
Kafka's own ``EndToEndLatency`` tool (one hop) against the same broker, and reports the
ratios to both. ``tiertwin bench
throughput`` preloads a backlog and measures records/s through one agent process.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import typer
import yaml

from tiertwin.connectors.kafka import read_topic
from tiertwin.errors import BrokerSetupError
from tiertwin.jobs.bench import write_results
from tiertwin.jobs.cli.common import console, one_line_errors
from tiertwin.procs import freeze_heap
from tiertwin.stats import percentiles


def create_topics(settings, partitions: dict[str, int], compacted: tuple[str, ...] = ()) -> None:
    from tiertwin.connectors.kafka import admin_client

    admin = admin_client(settings)
    try:
        admin.create_topics({name: {"num_partitions": n, "replication_factor": 1,
                                    **({"topic_configs": {"cleanup.policy": "compact"}} if name in compacted else {})}
                             for name, n in partitions.items()}, timeout_ms=30_000)
    finally:
        admin.close()


def delete_topics(settings, names: list[str]) -> None:
    from tiertwin.connectors.kafka import admin_client

    admin = admin_client(settings)
    try:
        admin.delete_topics(names)
    except Exception:  # cleanup of bench topics is best effort  # noqa: BLE001
        pass
    finally:
        admin.close()


def _percentiles(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {"count": 0}
    p50, p99, p999 = percentiles(values_ms, [50, 99, 99.9])
    return {"count": len(values_ms), "p50_ms": p50, "p99_ms": p99, "p999_ms": p999,
            "mean_ms": statistics.fmean(values_ms), "max_ms": max(values_ms)}


def kafka_end_to_end_latency(settings, records: int, record_size: int = 200) -> dict[str, float]:
    """Run org.apache.kafka.tools.EndToEndLatency (one hop) on a fresh topic and parse its summary."""
    libs = settings.home / "kafka" / "libs"
    if not libs.exists():
        raise BrokerSetupError(f"no Kafka jars in {libs}; run `tiertwin broker install`")
    topic = f"bench.e2e.{uuid.uuid4().hex[:8]}"
    create_topics(settings, {topic: 1})
    try:
        out = subprocess.run(["java", "-cp", f"{libs}/*", "org.apache.kafka.tools.EndToEndLatency", settings.bootstrap,
                              topic, str(records), "1", str(record_size)], capture_output=True, text=True, timeout=600)
    finally:
        delete_topics(settings, [topic])
    text = out.stdout + out.stderr
    avg = re.search(r"Avg latency: ([\d.]+) ms", text)
    pct = re.search(r"50th = ([\d.]+), 99th = ([\d.]+), 99.9th = ([\d.]+)", text)
    if not (avg and pct):
        raise BrokerSetupError(f"EndToEndLatency output not understood: {text[-500:]}")
    return {"records": records, "acks": "1", "record_size": record_size, "mean_ms": float(avg.group(1)),
            "p50_ms": float(pct.group(1)), "p99_ms": float(pct.group(2)), "p999_ms": float(pct.group(3))}


def _bench_topics(prefix: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    names = ("telemetry", "demands", "outcomes", "edge-state", "summaries", "actions", "models", "changelog", "deadletters")
    return {n: f"{prefix}.{tag}.{n}" for n in names}


def _agent_config_file(topics: dict[str, str], directory: Path, **extra: Any) -> Path:
    config = {"instance_id": "bench-local", "group_id": f"bench-{uuid.uuid4().hex[:8]}",
              "telemetry_topic": topics["telemetry"], "demands_topic": topics["demands"],
              "outcomes_topic": topics["outcomes"], "edge_state_topic": topics["edge-state"],
              "summaries_topic": topics["summaries"], "actions_topic": topics["actions"],
              "models_topic": topics["models"], "changelog_topic": topics["changelog"],
              "dead_letter_topic": topics["deadletters"], **extra}
    path = directory / "local.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start_agent_process(config_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tiertwin.jobs.cli", "run", "local", "--config", str(config_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err or ""


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _zigzag_varint(value: int) -> bytes:
    """Avro's encoding of a long."""
    n, out = (value << 1) ^ (value >> 63), bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def pre_encoded(registry, schema: str, record: dict) -> tuple[bytes, int]:
    """``(body without its last field, length of that field)`` for a record whose last field is
    ``emitted_ns``: the bench stamps the send time by appending its varint, without re-encoding
    (an encode per record would take the CPU the agent under test needs)."""
    placeholder = time.time_ns()
    data = registry.encode(schema, {**record, "emitted_ns": placeholder})
    tail = _zigzag_varint(placeholder)
    assert data.endswith(tail), f"{schema}: emitted_ns is not the last field"
    return data[: -len(tail)], len(tail)


def _fleet_records(fleet, ticks: int, dt_ms: int = 10):
    for tick in range(ticks):
        for kind, record in fleet.step(tick * dt_ms, dt_ms):
            if kind != "cell-report":
                yield kind, record


def _wait_for_agent(sink, topics, settings, fleet) -> None:
    """Produce warm-up demands until the agent (joining its group) answers one."""
    from tiertwin.schemas import SchemaRegistry  # noqa: F401  (import cost paid before timing)

    ue = fleet.ues[0]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        demand = fleet.demand(ue["ue_id"], 0, 0)
        demand["emitted_ns"] = time.time_ns()
        sink.send(topics["demands"], "Demand", demand, key=demand["ue_id"])
        sink.flush()
        if read_topic(topics["actions"], settings, expect=1, timeout_s=2.0):
            return
    raise BrokerSetupError("the local agent did not answer within 90 s")


def fixed_decision(template: dict, demand, received_ns: int) -> dict:
    """The relays' answer to ``demand``: ``template`` with the demand's id and stamps, decided now."""
    from tiertwin.pipelines.agent import decision_id, decision_stamps

    decision = {**template, "decision_id": decision_id("local", "placement", demand), "ue_id": demand.value["ue_id"],
                "subject_id": demand.value["demand_id"], **decision_stamps(demand, received_ns)}
    decision["decided_ns"] = time.time_ns()
    return decision


def relay_demands(topics: dict[str, str], bootstrap: str, group_id: str, stop_event) -> None:
    """Child process: the kafka-python floor of the decision path. Consumes the same topics with the
    agent's client settings (low-latency profile, one group member, decode + validate every record)
    and answers each Demand with a fixed Decision at once: the agent's Kafka I/O without its twin."""
    from tiertwin.connectors.kafka import DeadLetterSink, KafkaSink, KafkaSource
    from tiertwin.schemas.examples import example
    from tiertwin.settings import Settings

    settings = Settings(bootstrap_servers=bootstrap)
    template = example("Decision")
    with KafkaSink(settings, client_id="bench-relay") as sink:
        letters = DeadLetterSink(sink, stage="bench-relay", topic=topics["deadletters"])
        with KafkaSource([topics["telemetry"], topics["demands"]], group_id, settings, sink.registry, letters,
                         on_undecodable="dead-letter", fetch_max_wait_ms=100) as source:
            freeze_heap()   # as `tiertwin run` does for an agent
            while not stop_event.is_set():
                batch = source.poll(50)
                received = time.time_ns()
                for record in batch:
                    if record.topic == topics["demands"]:
                        sink.send(topics["actions"], "Decision", fixed_decision(template, record, received),
                                  key=record.value["ue_id"])


def relay_demands_librdkafka(topics: dict[str, str], bootstrap: str, group_id: str, stop_event) -> None:
    """:func:`relay_demands` on confluent-kafka (librdkafka, C) instead of kafka-python: what the
    decision path's Kafka I/O costs with a C client. Not a tiertwin dependency (the design names
    kafka-python); ``bench latency --c-client-relay`` runs it only if ``confluent_kafka`` is installed."""
    from confluent_kafka import Consumer, Producer

    from tiertwin.connectors.kafka import KafkaRecord
    from tiertwin.schemas import SchemaRegistry
    from tiertwin.schemas.examples import example

    registry, template = SchemaRegistry.default(), example("Decision")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100, "socket.nagle.disable": True})
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 0, "socket.nagle.disable": True})
    consumer.subscribe([topics["telemetry"], topics["demands"]])
    freeze_heap()
    try:
        while not stop_event.is_set():
            first = consumer.poll(0.05)
            if first is None:
                continue
            received = time.time_ns()
            for m in [first, *consumer.consume(1000, 0)]:
                if m.error() is not None or m.topic() != topics["demands"]:
                    continue
                schema, value = registry.decode(m.value())
                record = KafkaRecord(m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), schema, value, m.value())
                producer.produce(topics["actions"], registry.encode("Decision", fixed_decision(template, record, received)),
                                 key=value["ue_id"].encode())
            producer.poll(0)
    finally:
        producer.flush(10)
        consumer.close()


class _Relay:
    """A relay function in a spawned process, shaped like the agent's ``Popen`` for the harness."""

    def __init__(self, topics: dict[str, str], bootstrap: str, target=relay_demands):
        ctx = multiprocessing.get_context("spawn")
        self.stop_event = ctx.Event()
        self.process = ctx.Process(target=target, daemon=True,
                                   args=(topics, bootstrap, f"bench-relay-{uuid.uuid4().hex[:8]}", self.stop_event))
        self.process.start()
        self.pid = self.process.pid

    def stop(self) -> str:
        self.stop_event.set()
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
        return ""


PROBE_SOURCE = Path(__file__).resolve().parents[2] / "connectors" / "java" / "LatencyProbe.java"


def _probe_source() -> Path:
    from importlib.resources import files

    installed = Path(str(files("tiertwin.connectors") / "java" / "LatencyProbe.java"))
    return installed if installed.exists() else PROBE_SOURCE


def _write_frames(path: Path, frames: list[tuple[str, bytes, bytes]]) -> None:
    """The probe's input: ``[u8 len][topic][u16 len][key][u32 len][body]`` per record."""
    with path.open("wb") as out:
        for topic, key, body in frames:
            name = topic.encode()
            out.write(len(name).to_bytes(1, "big") + name + len(key).to_bytes(2, "big") + key
                      + len(body).to_bytes(4, "big") + body)


def run_latency_probe(settings, frames: list[tuple[str, bytes, bytes]], rate: int, decisions_topic: str,
                      expect: int, timeout_s: float, workdir: Path) -> tuple[int, float, list[tuple[int, int, int]]]:
    """Offer ``frames`` at ``rate`` and note each decision's arrival with Kafka's Java clients
    (``connectors/java/LatencyProbe.java``, source-file mode). Returns ``(produced, seconds,
    [(partition, offset, consumed_epoch_ns)])``."""
    from tiertwin.connectors.kafka_tools import run_tool

    frames_path, out_path = workdir / "frames.bin", workdir / "arrivals.txt"
    _write_frames(frames_path, frames)
    # Java runs a .java file given in place of a main class in source-file mode.
    run_tool(str(_probe_source()), [settings.bootstrap, str(frames_path), str(rate), decisions_topic, str(expect),
                                    str(timeout_s), str(out_path)], settings, timeout_s=timeout_s + 120)
    if not out_path.exists():
        raise BrokerSetupError(f"LatencyProbe wrote no {out_path.name}")
    header, *rows = out_path.read_text().splitlines()
    _, produced, _, seconds = header.split()
    return int(produced), float(seconds), [tuple(map(int, row.split())) for row in rows]


def _offer_and_measure(decider: str, rate: int, seconds: float, demand_every: int, ues: int,
                       agent_overrides: dict[str, Any]) -> dict[str, Any]:
    """Offer ``rate`` records/s for ``seconds`` to fresh topics served by ``decider`` (``"agent"`` or
    ``"relay"``) and measure record emitted -> decision consumed, both ends in Kafka's Java client."""
    from tiertwin.connectors.kafka import KafkaSink
    from tiertwin.pipelines.pretrain import SyntheticFleet
    from tiertwin.settings import Settings

    settings = Settings.from_env()
    topics = _bench_topics(f"bench.latency.{decider}")
    create_topics(settings, {**{t: 3 for t in topics.values()}, topics["models"]: 1}, compacted=(topics["changelog"],))
    fleet = SyntheticFleet(n_ues=ues, n_cells=4, seed=3, demand_every=demand_every)
    with tempfile.TemporaryDirectory() as tmp:
        if decider == "agent":
            proc = _start_agent_process(_agent_config_file(topics, Path(tmp), commit_interval_ms=1000, **agent_overrides))
            stop = lambda: _stop(proc)   # noqa: E731
        else:
            proc = _Relay(topics, settings.bootstrap, relay_demands if decider == "relay" else relay_demands_librdkafka)
            stop = proc.stop
        try:
            with KafkaSink(settings, client_id="bench-latency-producer") as sink:
                _wait_for_agent(sink, topics, settings, fleet)
                warm = len(read_topic(topics["actions"], settings, timeout_s=3.0))
                registry = sink.registry
            total = int(rate * seconds)
            records = list(_fleet_records(fleet, int(total / (ues * (1 + 1 / demand_every))) + 2))[:total]
            demands = sum(1 for kind, _ in records if kind == "demand")
            frames = [(topics["telemetry"] if kind == "telemetry" else topics["demands"], record["ue_id"].encode(),
                       pre_encoded(registry, "Telemetry" if kind == "telemetry" else "Demand", record)[0])
                      for kind, record in records]
            cpu_start = process_cpu_s(proc.pid)
            produced, produced_s, arrivals = run_latency_probe(settings, frames, rate, topics["actions"], demands,
                                                               seconds + 60, Path(tmp))
            cpu_share = (process_cpu_s(proc.pid) - cpu_start) / produced_s
            decided = {(r.partition, r.offset): r.value
                       for r in read_topic(topics["actions"], settings, expect=warm + len(arrivals), timeout_s=60)}
        finally:
            log_tail = stop()
    delete_topics(settings, list(topics.values()))
    latencies = []
    for partition, offset, consumed in arrivals:
        v = decided.get((partition, offset))
        if v is not None:
            emitted, received, made = v["source_emitted_ns"], v["received_ns"], v["decided_ns"]
            latencies.append(((consumed - emitted) / 1e6, (received - emitted) / 1e6, (made - received) / 1e6,
                              (consumed - made) / 1e6))
    legs = {leg: _percentiles([row[i] for row in latencies])
            for i, leg in ((1, "emitted_to_agent"), (2, "in_agent"), (3, "decided_to_consumed")) if latencies}
    return {"achieved_rate_records_per_s": produced / produced_s, "records": produced, "demands": demands,
            "decision_latency": _percentiles([row[0] for row in latencies]), "legs": legs,
            "cpu_share_while_offered": cpu_share, "stderr_tail": log_tail[-400:]}


def bench_latency(rate: int, seconds: float, demand_every: int, e2e_records: int, ues: int,
                  c_client_relay: bool = False, **agent_overrides: Any) -> dict[str, Any]:
    """The agent, then the kafka-python relay, then Kafka's EndToEndLatency, in one run on one broker."""
    from tiertwin.settings import Settings

    agent = _offer_and_measure("agent", rate, seconds, demand_every, ues, agent_overrides)
    relay = _offer_and_measure("relay", rate, seconds, demand_every, ues, {})
    c_relay = _offer_and_measure("c-relay", rate, seconds, demand_every, ues, {}) if c_client_relay else None
    floor = kafka_end_to_end_latency(Settings.from_env(), e2e_records)
    ours, client = agent["decision_latency"], relay["decision_latency"]
    keys = ("mean_ms", "p50_ms", "p99_ms", "p999_ms")
    result = {
        "offered_rate_records_per_s": rate, "achieved_rate_records_per_s": agent["achieved_rate_records_per_s"],
        "records": agent["records"], "demands": agent["demands"], "decisions_measured": ours.get("count", 0),
        "decision_latency": ours, "decision_latency_legs": agent["legs"],
        "kafka_python_relay": {"decision_latency": client, "legs": relay["legs"],
                               "cpu_share_while_offered": relay["cpu_share_while_offered"]},
        **({"librdkafka_relay": {"decision_latency": c_relay["decision_latency"], "legs": c_relay["legs"],
                                 "cpu_share_while_offered": c_relay["cpu_share_while_offered"]}} if c_relay else {}),
        "kafka_end_to_end_latency_one_hop": floor,
        "two_hop_floor": {k: 2 * floor[k] for k in keys},
        "agent_stderr_tail": agent["stderr_tail"], "load_average_1m_at_end": os.getloadavg()[0],
        "agent_cpu_share_while_offered": agent["cpu_share_while_offered"],
        "note": ("EndToEndLatency prints whole-millisecond percentiles by its own definition (floor rank, not "
                 "tiertwin.stats linear); a 0 ms floor percentile has no ratio"),
    }
    if ours.get("count"):
        result["ratio_to_two_hop_floor"] = {k: (ours[k] / (2 * floor[k]) if floor[k] > 0 else None) for k in keys}
        if client.get("count"):
            result["ratio_to_kafka_python_relay"] = {k: ours[k] / client[k] for k in keys}
        result["target_p99_le_10ms"] = ours["p99_ms"] <= 10.0
        p99_ratio = result["ratio_to_two_hop_floor"]["p99_ms"]
        result["target_p99_le_1_5x_floor"] = p99_ratio is not None and p99_ratio <= 1.5
    return result


def bench_throughput(records: int, demand_every: int, ues: int) -> dict[str, Any]:
    from tiertwin.connectors.kafka import KafkaSink
    from tiertwin.pipelines.pretrain import SyntheticFleet
    from tiertwin.settings import Settings

    settings = Settings.from_env()
    topics = _bench_topics("bench.throughput")
    create_topics(settings, {**{t: 3 for t in topics.values()}, topics["models"]: 1}, compacted=(topics["changelog"],))
    fleet = SyntheticFleet(n_ues=ues, n_cells=4, seed=5, demand_every=demand_every)
    backlog = list(_fleet_records(fleet, int(records / (ues * (1 + 1 / demand_every))) + 2))[:records]
    demands = sum(1 for kind, _ in backlog if kind == "demand")
    with KafkaSink(settings, profile="throughput", client_id="bench-throughput-producer") as sink:
        for kind, record in backlog:
            topic = topics["telemetry"] if kind == "telemetry" else topics["demands"]
            sink.send(topic, "Telemetry" if kind == "telemetry" else "Demand", record, key=record["ue_id"])
    with tempfile.TemporaryDirectory() as tmp:
        config = _agent_config_file(topics, Path(tmp), profile="throughput", commit_interval_ms=1000)
        started = time.perf_counter()
        proc = _start_agent_process(config)
        try:
            early = read_topic(topics["actions"], settings, expect=1, timeout_s=120)
            cpu_start, wall_start = process_cpu_s(proc.pid), time.perf_counter()
            decisions = read_topic(topics["actions"], settings, expect=demands, timeout_s=600)
            cpu_s, window_s = process_cpu_s(proc.pid) - cpu_start, time.perf_counter() - wall_start
            # Startup (imports, group join) counts against us unless we time from the first decision.
            first = min(r.value["decided_ns"] for r in decisions) if decisions else 0
            last = max(r.value["decided_ns"] for r in decisions) if decisions else 0
            wall = time.perf_counter() - started
        finally:
            agent_log = _stop(proc)
    delete_topics(settings, list(topics.values()))
    span_s = max((last - first) / 1e9, 1e-9)
    return {"records": records, "demands": demands, "decisions": len(decisions),
            "records_per_s_first_to_last_decision": records / span_s if decisions else 0.0,
            "records_per_s_including_startup": records / wall, "wall_s_including_startup": wall,
            # Load-independent view: records per CPU-second the agent process actually got (all its threads).
            "agent_cpu_share_while_measured": cpu_s / max(window_s, 1e-9),
            "records_per_agent_cpu_s": (records * (1 - len(early) / max(demands, 1))) / max(cpu_s, 1e-9),
            "load_average_1m_at_end": os.getloadavg()[0],
            "target_20k_met": bool(decisions) and records / span_s >= 20_000, "agent_stderr_tail": agent_log[-400:]}


bench_commands = typer.Typer()


@bench_commands.command("latency")
@one_line_errors
def latency(rate: int = typer.Option(5_000, help="Records/s offered (telemetry + demands)."),
            seconds: float = typer.Option(10.0, help="How long to offer them."),
            demand_every: int = typer.Option(4, help="One demand per this many telemetry records per UE."),
            e2e_records: int = typer.Option(5_000, help="Records for Kafka's EndToEndLatency."),
            ues: int = typer.Option(200),
            agent_set: list[str] = typer.Option([], "--agent-set", help="Agent config KEY=VALUE (YAML value), repeatable."),
            c_client_relay: bool = typer.Option(False, "--c-client-relay", help=(
                "Also measure the relay on confluent-kafka (librdkafka), if installed: the decision "
                "path's Kafka I/O with a C client, for comparison (not a tiertwin dependency)."))):
    """Record produced -> local decision consumed, beside a kafka-python relay in the same harness (the
    client's floor) and Kafka's EndToEndLatency (two hops = the broker's floor)."""
    overrides = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in agent_set)}
    if c_client_relay:
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            raise BrokerSetupError("--c-client-relay needs confluent-kafka: pip install confluent-kafka") from None
    results = bench_latency(rate, seconds, demand_every, e2e_records, ues, c_client_relay, **overrides)
    results["agent_overrides"] = overrides
    path = write_results("agents-latency", results)
    ours, floor = results["decision_latency"], results["two_hop_floor"]
    console.print(f"local decision latency at {results['achieved_rate_records_per_s']:.0f} rec/s: "
                  f"p50 {ours.get('p50_ms', float('nan')):.2f} ms, p99 {ours.get('p99_ms', float('nan')):.2f} ms, "
                  f"p99.9 {ours.get('p999_ms', float('nan')):.2f} ms ({ours.get('count', 0)} decisions)")
    console.print(f"two-hop floor (2 x EndToEndLatency): p50 {floor['p50_ms']:.2f} ms, p99 {floor['p99_ms']:.2f} ms, "
                  f"p99.9 {floor['p999_ms']:.2f} ms, mean {floor['mean_ms']:.2f} ms")
    for leg, pct in results["decision_latency_legs"].items():
        console.print(f"  {leg:20} p50 {pct['p50_ms']:.2f} ms, p99 {pct['p99_ms']:.2f} ms")
    for key, label in (("kafka_python_relay", "kafka-python relay (same harness, no twin)"),
                       ("librdkafka_relay", "confluent-kafka relay (C client, no twin)")):
        relay = results.get(key, {}).get("decision_latency", {})
        if relay.get("count"):
            console.print(f"{label}: p50 {relay['p50_ms']:.2f} ms, p99 {relay['p99_ms']:.2f} ms, "
                          f"p99.9 {relay['p999_ms']:.2f} ms")
    if "ratio_to_two_hop_floor" in results:
        r = results["ratio_to_two_hop_floor"]
        console.print("ratio to floor: " + ", ".join(
            f"{k.removesuffix('_ms')} {'n/a' if v is None else f'{v:.2f}x'}" for k, v in r.items()))
    console.print(f"load average (1 min) at the end: {results['load_average_1m_at_end']:.1f} "
                  f"on {os.cpu_count()} CPUs; the agent used {results['agent_cpu_share_while_offered']:.2f} CPUs")
    console.print(f"results: {path}")


@bench_commands.command("throughput")
@one_line_errors
def throughput(records: int = typer.Option(100_000, help="Backlog of telemetry + demand records."),
               demand_every: int = typer.Option(4),
               ues: int = typer.Option(500)):
    """Records/s through one local agent process (decisions included)."""
    results = bench_throughput(records, demand_every, ues)
    path = write_results("agents-throughput", results)
    console.print(f"{results['records']} records ({results['demands']} demands -> {results['decisions']} decisions): "
                  f"{results['records_per_s_first_to_last_decision']:.0f} records/s "
                  f"({results['records_per_s_including_startup']:.0f} with startup); "
                  f"{results['records_per_agent_cpu_s']:.0f} records per agent CPU-second "
                  f"(agent got {results['agent_cpu_share_while_measured']:.2f} CPUs; load {results['load_average_1m_at_end']:.1f})")
    console.print(f"results: {path}")
