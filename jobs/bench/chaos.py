"""``tiertwin chaos``: kill agents and restart the broker mid-stream, then account for every record.

Runs on a private managed broker (its own home and ports; the shared broker is never
touched): a producer streams Telemetry and Demand records of a synthetic fleet, with
a few malformed records among them, while local and edge agent processes are
SIGKILLed and restarted and the broker itself is restarted. Afterwards:

* every telemetry record is accounted for: per UE, the distinct LocalSummary windows
  plus the samples of the twin's open window (its checkpoint) equal the records sent;
* every demand is decided, and a demand decided more than once (reprocessing after a
  kill) always gets the same decision id; likewise every edge decision id names one
  source record and one kind;
* every malformed record is in the dead-letter topic.

With ``nodes=3`` the private broker is a 3-node cluster (replication factor 3, two in-sync
replicas required) and ``leader_kills`` SIGKILL the node that leads the most partitions of the
busiest topics (telemetry and demands) mid-stream, then start it again; the same accounting holds,
and the longest pause in local and edge decisions after each kill is measured.
"""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import typer
import yaml

from tiertwin.connectors.broker import ManagedBroker
from tiertwin.connectors.kafka import KafkaSink, TopicReader, read_topic
from tiertwin.connectors.topics import apply_topology, load_topology
from tiertwin.errors import TiertwinError
from tiertwin.jobs.cli.common import console, one_line_errors
from tiertwin.settings import Settings
from tiertwin.topics import (
    ACTIONS_EDGE, ACTIONS_LOCAL, CELL_REPORTS, DEAD_LETTERS, DEMANDS, EDGE_STATE, LOCAL_CHANGELOG, SUMMARIES,
    TELEMETRY)

TOPICS = {"telemetry": TELEMETRY, "demands": DEMANDS,
          "cell_reports": CELL_REPORTS,
          "summaries": SUMMARIES, "local_actions": ACTIONS_LOCAL,
          "edge_actions": ACTIONS_EDGE, "edge_state": EDGE_STATE, "dead_letters": DEAD_LETTERS,
          "local_changelog": LOCAL_CHANGELOG}


class ChaosError(TiertwinError):
    """The chaos run could not be carried out (an agent would not come back, the broker would not restart)."""


@dataclass
class ChaosReport:
    telemetry_sent: int = 0
    demands_sent: int = 0
    malformed_sent: int = 0
    kills: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    broker_restarts: int = 0
    nodes: int = 1
    leader_kills: list[dict] = field(default_factory=list)   # {node, at_ns, restart_s}, one per kill
    local_decision_pause_s: float = 0.0    # the longest time without a local decision after a leader kill
    edge_decision_pause_s: float = 0.0     # ... without an edge output (its cell state or a handover decision)
    input_pause_s: float = 0.0             # ... without telemetry from the fleet: what no tier can do better than
    local_decision_latency_max_s: float = 0.0   # decided_ns - source_emitted_ns, worst after a leader kill
    baseline_pause_s: dict[str, float] = field(default_factory=dict)  # per tier, the 15 s before the first kill
    telemetry_accounted: int = 0
    unaccounted_ues: dict[str, int] = field(default_factory=dict)
    demands_decided: int = 0
    local_decisions: int = 0
    conflicting_local_ids: int = 0
    edge_decisions: int = 0
    conflicting_edge_ids: int = 0
    dead_lettered_malformed: int = 0

    @property
    def ok(self) -> bool:
        return (self.telemetry_accounted == self.telemetry_sent and not self.unaccounted_ues
                and self.demands_decided == self.demands_sent and self.conflicting_local_ids == 0
                and self.conflicting_edge_ids == 0 and self.dead_lettered_malformed == self.malformed_sent)


class AgentProcess:
    def __init__(self, tier: str, config: dict, folder: Path, env: dict[str, str]):
        self.tier, self.env = tier, env
        self.config_path = folder / f"{tier}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = folder / f"{tier}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "tiertwin.jobs.cli", "run", self.tier, "--config",
                                      str(self.config_path)], stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


def _stream(sink: KafkaSink, report: ChaosReport, stop: threading.Event, rate_ticks_s: float, seed: int,
            errors: list) -> None:
    from tiertwin.pipelines.pretrain import SyntheticFleet

    fleet = SyntheticFleet(n_ues=8, n_cells=4, seed=seed, demand_every=3)
    tick = 0
    try:
        while not stop.is_set():
            for kind, record in fleet.step(1_767_225_600_000 + tick * 10):
                record["emitted_ns"] = time.time_ns()
                if kind == "telemetry":
                    sink.send(TOPICS["telemetry"], "Telemetry", record, key=record["ue_id"])
                    report.telemetry_sent += 1
                elif kind == "demand":
                    sink.send(TOPICS["demands"], "Demand", record, key=record["ue_id"])
                    report.demands_sent += 1
                else:
                    sink.send(TOPICS["cell_reports"], "EdgeState", record, key=record["cell_id"])
            if tick % 50 == 25:
                sink.send_raw(TOPICS["telemetry"], b"\x00chaos-garbage-%d" % tick, key="ue-0000")
                report.malformed_sent += 1
            tick += 1
            sink.flush()
            time.sleep(1 / rate_ticks_s)
    except Exception as exc:  # surfaced by run_chaos
        errors.append(exc)


def run_chaos(folder: Path, seconds: float = 40.0, local_kills: int = 3, edge_kills: int = 2,
              broker_restarts: int = 1, seed: int = 5, main: Settings | None = None,
              on_progress=print, nodes: int = 1, leader_kills: int = 0, leader_down_s: float = 10.0) -> ChaosReport:
    """``leader_kills`` (a cluster: ``nodes`` > 1) SIGKILL the busiest partitions' leader node and start
    it again ``leader_down_s`` later."""
    if leader_kills and nodes < 3:
        raise ChaosError("killing a leader node needs a cluster of 3 nodes (nodes=3)")
    folder.mkdir(parents=True, exist_ok=True)
    private = ManagedBroker.private(folder / "home", main=main, nodes=nodes)
    report = ChaosReport(nodes=nodes)
    private.start()
    agents: list[AgentProcess] = []
    try:
        apply_topology(load_topology(), private.settings, brokers=private.node_count)
        common = {"commit_interval_ms": 1000, "session_timeout_ms": 6000}
        local = AgentProcess("local", {**common, "group_id": "tiertwin-local", "instance_id": "chaos-local"},
                             folder, private.env())
        edge = AgentProcess("edge", {**common, "group_id": "tiertwin-edge", "instance_id": "chaos-edge"},
                            folder, private.env())
        agents = [local, edge]
        for agent in agents:
            agent.start()
        time.sleep(3)
        stop, errors = threading.Event(), []
        sink = KafkaSink(private.settings, client_id="chaos-producer")
        producer = threading.Thread(target=_stream, args=(sink, report, stop, 20.0, seed, errors), daemon=True)
        producer.start()
        events = ([("local", i) for i in range(local_kills)] + [("edge", i) for i in range(edge_kills)]
                  + [("broker", i) for i in range(broker_restarts)] + [("leader", i) for i in range(leader_kills)])
        events.sort(key=lambda e: (e[1], e[0]))
        gap = seconds / (len(events) + 1)
        for what, _ in events:
            time.sleep(gap)
            if what == "broker":
                on_progress("chaos: restarting the broker")
                private.stop(timeout_s=20)
                time.sleep(1)
                private.start()
                report.broker_restarts += 1
            elif what == "leader":
                victim = _busiest_leader(private.settings)
                on_progress(f"chaos: SIGKILL broker node {victim}, the busiest partitions' leader")
                killed_ns = time.time_ns()
                private.kill_node(victim)
                time.sleep(leader_down_s)
                restarting = time.monotonic()
                private.start()
                report.leader_kills.append({"node": victim, "at_ns": killed_ns,
                                            "restart_s": round(time.monotonic() - restarting, 1)})
            else:
                agent = local if what == "local" else edge
                on_progress(f"chaos: SIGKILL {what} agent (pid {agent.proc.pid}) and restart it")
                agent.kill()
                report.kills[what] += 1
                agent.start()
        time.sleep(gap)
        stop.set()
        producer.join(60)
        sink.close()
        if errors:
            raise ChaosError(f"the producer failed: {errors[0]!r}")
        on_progress(f"chaos: produced {report.telemetry_sent} telemetry, {report.demands_sent} demands, "
                    f"{report.malformed_sent} malformed; letting the agents catch up")
        _wait_for_catch_up(private.settings, report, timeout_s=120)
        for agent in agents:
            code = agent.terminate()
            if code != 0:
                raise ChaosError(f"{agent.tier} agent exited with {code} on SIGTERM; see {agent.log_path}")
        agents = []
        _account(private.settings, report)
        _decision_pauses(private.settings, report)
    finally:
        for agent in agents:
            if agent.proc and agent.proc.poll() is None:
                agent.proc.kill()
        private.stop()
    return report


def _busiest_leader(settings: Settings) -> int:
    """The node that leads the most partitions of the telemetry and demand topics."""
    from collections import Counter

    from tiertwin.connectors.kafka import admin_client

    admin = admin_client(settings)
    try:
        described = admin.describe_topics([TOPICS["telemetry"], TOPICS["demands"]])
    finally:
        admin.close()
    return Counter(p["leader_id"] for t in described for p in t["partitions"]).most_common(1)[0][0]


def _decision_pauses(settings: Settings, report: ChaosReport, span_s: float = 30.0) -> None:
    """For each leader kill: the longest gap in each stream from the kill to ``span_s`` after it, kept in
    the kill's entry and, the worst over every kill, in the report:

    - ``local_pause_s``: between local decisions (one per demand, a steady stream);
    - ``edge_pause_s``: between the edge's outputs, the cell state it publishes for every cell report it
      folds in and its handover decisions. Handovers alone are rare (a gap of 13 s without any kill was
      seen), so their gaps measure the fleet's mobility, not the tier's recovery;
    - ``input_pause_s``: between the fleet's telemetry records, produced into the same cluster, so the
      pause the tiers add is theirs minus this one.

    The longest gap of each in the 15 s before the first kill is kept too (``baseline_pause_s``)."""
    if not report.leader_kills:
        return
    streams = {"local": [d["decided_ns"] for d in _decoded(settings, TOPICS["local_actions"])],
               "edge": [d["decided_ns"] for d in _decoded(settings, TOPICS["edge_actions"])]
               + [s["emitted_ns"] for s in _decoded(settings, TOPICS["edge_state"])],
               "input": [m.timestamp * 10**6 for m in _records(settings, TOPICS["telemetry"])]}   # when produced
    first = report.leader_kills[0]["at_ns"]   # what a stream's longest gap is without a kill, for comparison
    for name, stamps in streams.items():
        times = sorted(t for t in stamps if first - 15 * 10**9 <= t < first)
        if len(times) > 1:    # else the tier was not deciding yet
            report.baseline_pause_s[name] = round(max(b - a for a, b in zip(times, times[1:])) / 1e9, 2)
    local_decisions = _decoded(settings, TOPICS["local_actions"])
    for kill in report.leader_kills:
        start, end = kill["at_ns"], kill["at_ns"] + int(span_s * 1e9)
        for name, stamps in streams.items():
            times = [start] + sorted(t for t in stamps if start <= t <= end)
            kill[f"{name}_pause_s"] = round(max((b - a for a, b in zip(times, times[1:])), default=end - start) / 1e9, 2)
        within = [d for d in local_decisions if start <= d["decided_ns"] <= end]
        if within:
            kill["local_latency_max_s"] = round(max(d["decided_ns"] - d["source_emitted_ns"] for d in within) / 1e9, 2)
        report.local_decision_pause_s = max(report.local_decision_pause_s, kill["local_pause_s"])
        report.edge_decision_pause_s = max(report.edge_decision_pause_s, kill["edge_pause_s"])
        report.input_pause_s = max(report.input_pause_s, kill["input_pause_s"])
        report.local_decision_latency_max_s = max(report.local_decision_latency_max_s,
                                                  kill.get("local_latency_max_s", 0.0))


def _decoded(settings: Settings, topic: str) -> list[dict]:
    return [r.value for r in read_topic(topic, settings)]


def _records(settings: Settings, topic: str) -> list:
    """Every record of ``topic`` as it is on the log (the changelog holds pickles, not Avro)."""
    with TopicReader([topic], settings, on_undecodable="raise", client_id="tiertwin-chaos-reader",
                     require=False) as reader:
        out = []
        while not reader.at_end():
            out.extend(reader.poll_raw(500))
        return out


def _wait_for_catch_up(settings: Settings, report: ChaosReport, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        decided = {d["subject_id"] for d in _decoded(settings, TOPICS["local_actions"])}
        if len(decided) >= report.demands_sent:
            return
        time.sleep(1)


def _account(settings: Settings, report: ChaosReport) -> None:
    sent_per_ue: dict[str, int] = defaultdict(int)
    demand_ids = set()
    for m in _records(settings, TOPICS["telemetry"]):
        if m.value[:2] == b"\xc3\x01":
            sent_per_ue[m.key.decode()] += 1
    for d in _decoded(settings, TOPICS["demands"]):
        demand_ids.add(d["demand_id"])

    windows: dict[str, dict[int, int]] = defaultdict(dict)
    for s in _decoded(settings, TOPICS["summaries"]):
        windows[s["ue_id"]].setdefault(s["window_start_ms"], s["samples"])
    open_samples: dict[str, int] = {}
    for m in _records(settings, TOPICS["local_changelog"]):
        if m.value is not None and not m.key.startswith(b"~"):    # "~slot/...": a model slot, not a UE twin
            open_samples[m.key.decode()] = pickle.loads(m.value).samples
    for ue, sent in sent_per_ue.items():
        accounted = sum(windows[ue].values()) + open_samples.get(ue, 0)
        report.telemetry_accounted += min(accounted, sent)
        if accounted != sent:
            report.unaccounted_ues[ue] = sent - accounted

    ids_by_demand: dict[str, set] = defaultdict(set)
    for d in _decoded(settings, TOPICS["local_actions"]):
        report.local_decisions += 1
        ids_by_demand[d["subject_id"]].add(d["decision_id"])
    report.demands_decided = len(demand_ids & set(ids_by_demand))
    report.conflicting_local_ids = sum(1 for ids in ids_by_demand.values() if len(ids) > 1)

    ids_by_source: dict[tuple, set] = defaultdict(set)
    for d in _decoded(settings, TOPICS["edge_actions"]):
        report.edge_decisions += 1
        ids_by_source[(d["source_topic"], d["source_partition"], d["source_offset"], d["kind"], d["ue_id"],
                       d["cell_id"])].add(d["decision_id"])
    report.conflicting_edge_ids = sum(1 for ids in ids_by_source.values() if len(ids) > 1)

    report.dead_lettered_malformed = len({(l["partition"], l["offset"]) for l in _decoded(settings, TOPICS["dead_letters"])
                                          if l["original"].startswith(b"\x00chaos-garbage")})


# -- commands (added to the `tiertwin` tree in jobs/cli/main.py) ---------------------------------
commands = typer.Typer()


@commands.command("chaos")
@one_line_errors
def chaos_cmd(seconds: float = typer.Option(40.0, help="How long the fleet streams while things break."),
              local_kills: int = typer.Option(3, help="SIGKILLs of the local agent."),
              edge_kills: int = typer.Option(2, help="SIGKILLs of the edge agent."),
              broker_restarts: int = typer.Option(1, help="Broker restarts mid-run."),
              nodes: int = typer.Option(1, min=1, max=9, help="Nodes of the private broker (3: a replicated cluster)."),
              leader_kills: int = typer.Option(0, help="SIGKILLs of the node leading the busiest partitions, "
                                                       "restarted 10 s later (needs --nodes 3)."),
              keep: Path = typer.Option(None, help="Keep the private broker, configs and agent logs here.")):
    """Kill agents and restart a private broker (or kill a leader node of a private cluster) mid-stream; then
    account for every record."""
    folder = keep or Path(tempfile.mkdtemp(prefix="tiertwin-chaos-"))
    report = run_chaos(folder, seconds, local_kills, edge_kills, broker_restarts, on_progress=console.print,
                       nodes=nodes, leader_kills=leader_kills)
    for key, value in report.__dict__.items():
        console.print(f"{key:26} {dict(value) if isinstance(value, defaultdict) else value}")
    if not report.ok:
        raise ChaosError(f"records unaccounted for or decision ids not idempotent; logs in {folder}")
    console.print("[green]every record accounted for; decision ids idempotent[/green]")


# -- bench failover (added to `tiertwin bench` in jobs/cli/main.py) -------------------------------
bench_commands = typer.Typer()


@bench_commands.command("failover")
@one_line_errors
def bench_failover_cmd(kills: int = typer.Option(3, min=1, help="Leader nodes SIGKILLed, one after another "
                                                                 "(each started again 10 s later)."),
                       keep: Path = typer.Option(None, help="Keep the private cluster, configs and agent logs here.")):
    """Decision pause p50/max when the node leading the busiest partitions of a private 3-node cluster is
    SIGKILLed while the fleet streams through local and edge agents; every record accounted for."""
    import statistics

    from tiertwin.jobs.bench import write_results

    folder = keep or Path(tempfile.mkdtemp(prefix="tiertwin-failover-"))
    report = run_chaos(folder, seconds=30.0 * kills, local_kills=0, edge_kills=0, broker_restarts=0, nodes=3,
                       leader_kills=kills, on_progress=console.print)
    pauses = {name: [k[f"{name}_pause_s"] for k in report.leader_kills] for name in ("local", "edge", "input")}
    results = {
        "kills": [{k: v for k, v in kill.items() if k != "at_ns"} for kill in report.leader_kills],
        **{f"{tier}_decision_pause_s": {"p50": statistics.median(pauses[tier]), "max": max(pauses[tier])}
           for tier in ("local", "edge")},
        "edge_decisions_are": "the edge's outputs: the cell state it publishes per cell report, and handovers",
        "telemetry_produce_pause_s": {"p50": statistics.median(pauses["input"]), "max": max(pauses["input"])},
        "pause_without_a_kill_s": report.baseline_pause_s,
        "telemetry_sent": report.telemetry_sent, "telemetry_lost": report.telemetry_sent - report.telemetry_accounted,
        "demands_sent": report.demands_sent, "demands_undecided": report.demands_sent - report.demands_decided,
        "conflicting_decision_ids": report.conflicting_local_ids + report.conflicting_edge_ids,
        "target": "decision pause <= 10 s with zero records lost", "ok": report.ok,
    }
    path = write_results("failover", results)
    for tier, what in (("local", "decisions"), ("edge", "outputs"), ("input", "telemetry")):
        p = results["telemetry_produce_pause_s" if tier == "input" else f"{tier}_decision_pause_s"]
        console.print(f"{tier:6} {what:9} pause p50 {p['p50']:.2f} s, max {p['max']:.2f} s over {kills} leader kill(s) "
                      f"(longest gap in the 15 s before the first: {report.baseline_pause_s.get(tier, '-')} s)")
    console.print(f"telemetry lost {results['telemetry_lost']} of {report.telemetry_sent}, demands undecided "
                  f"{results['demands_undecided']} of {report.demands_sent}; wrote {path}")
    if not report.ok:
        raise ChaosError(f"records unaccounted for or decision ids not idempotent; logs in {folder}")
