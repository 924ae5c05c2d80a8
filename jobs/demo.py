"""The live three-tier demo: simulator, local, edge and cloud jobs on the managed broker.

``tiertwin demo`` deploys the ready-made specs in ``jobs/specs/`` (agents first, the
simulator once they are listening), watches the topics while decisions flow, stops
every job cleanly, and prints what happened: records per topic, decisions per tier
and kind with their latency, where demands ran and how often they missed their
deadline, snapshots and model updates.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kafka import TopicPartition

from tiertwin.connectors.kafka import KafkaSource
from tiertwin.errors import TiertwinError
from tiertwin.jobs.launcher import SPECS_DIR, JobSpec, deploy, load_spec, skip_to_latest, status_of, stop
from tiertwin.settings import Settings

WATCHED = ("tiertwin.local.telemetry", "tiertwin.local.demands", "tiertwin.edge.summaries",
           "tiertwin.cloud.edge-state", "tiertwin.actions.local", "tiertwin.actions.edge", "tiertwin.actions.cloud",
           "tiertwin.outcomes", "tiertwin.cloud.snapshots", "tiertwin.models", "tiertwin.deadletters")
AGENT_SPECS = ("local", "edge", "cloud")


class DemoError(TiertwinError):
    """A job of the demo failed."""


@dataclass
class DemoSummary:
    records: Counter = field(default_factory=Counter)
    decisions: Counter = field(default_factory=Counter)                  # (tier, kind) -> n
    decision_latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    placements: Counter = field(default_factory=Counter)
    demand_latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    deadline_missed: Counter = field(default_factory=Counter)
    model_versions: dict[str, int] = field(default_factory=dict)
    decision_model_versions: dict[str, set] = field(default_factory=lambda: defaultdict(set))
    dead_letter_reasons: Counter = field(default_factory=Counter)
    decision_topics: Counter = field(default_factory=Counter)            # (topic, tier) -> n

    def add(self, topic: str, schema: str, v: dict) -> None:
        self.records[topic] += 1
        if schema == "tiertwin.Decision":
            self.decisions[(v["tier"], v["kind"])] += 1
            self.decision_topics[(topic, v["tier"])] += 1
            self.decision_latency_ms[v["tier"]].append((v["decided_ns"] - v["source_emitted_ns"]) / 1e6)
            self.decision_model_versions[v["model_name"]].add(v["model_version"])
        elif schema == "tiertwin.Outcome" and v["kind"] == "demand" and v["latency_ms"] is not None:
            placement = v["placement"] or "?"
            self.placements[placement] += 1
            self.demand_latency_ms[placement].append(v["latency_ms"])
            self.deadline_missed[placement] += 0 if v["deadline_met"] else 1
        elif schema == "tiertwin.ModelUpdate":
            self.model_versions[v["model_name"]] = max(v["version"], self.model_versions.get(v["model_name"], 0))
        elif schema == "tiertwin.DeadLetter":
            self.dead_letter_reasons[v["reason"]] += 1

    def as_dict(self) -> dict:
        """The summary as plain JSON-able data (``tiertwin demo --summary-json``; CI checks it)."""
        by_tier: Counter = Counter()
        for (tier, _), n in self.decisions.items():
            by_tier[tier] += n
        by_topic: dict[str, dict[str, int]] = defaultdict(dict)
        for (topic, tier), n in sorted(self.decision_topics.items()):
            by_topic[topic][tier] = n
        return {
            "records": {topic: self.records[topic] for topic in WATCHED},
            "decisions": {tier: by_tier[tier] for tier in ("local", "edge", "cloud")},
            "decisions_by_kind": {f"{tier}/{kind}": n for (tier, kind), n in sorted(self.decisions.items())},
            "decisions_by_topic": dict(by_topic),
            "decision_latency_ms": {tier: {"p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99)}
                                    for tier, lat in sorted(self.decision_latency_ms.items())},
            "demands": {placement: {"n": n, "deadline_missed": self.deadline_missed[placement]}
                        for placement, n in sorted(self.placements.items())},
            "snapshots": self.records["tiertwin.cloud.snapshots"],
            "model_versions": dict(self.model_versions),
            "dead_letters": dict(self.dead_letter_reasons),
        }

    def progress_line(self, elapsed_s: float) -> str:
        by_tier = Counter()
        for (tier, _), n in self.decisions.items():
            by_tier[tier] += n
        demands = sum(self.placements.values())
        missed = sum(self.deadline_missed.values())
        return (f"{elapsed_s:5.0f}s  telemetry {self.records['tiertwin.local.telemetry']:>7}  "
                f"demands {self.records['tiertwin.local.demands']:>6}  decisions local {by_tier['local']:>6} "
                f"edge {by_tier['edge']:>5} cloud {by_tier['cloud']:>3}  snapshots "
                f"{self.records['tiertwin.cloud.snapshots']:>4}  deadline misses "
                f"{(missed / demands if demands else 0):.1%}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class TopicWatcher:
    """Reads the watched topics from their end offsets at construction (this run's records only)."""

    def __init__(self, settings: Settings, topics=WATCHED):
        self.source = KafkaSource([], None, settings, client_id="tiertwin-demo-watch", on_rejected=lambda e: None,
                                  dead_letters=None)
        consumer = self.source.consumer
        tps = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        for tp in tps:
            consumer.position(tp)
        self.summary = DemoSummary()

    def drain(self, budget_s: float) -> None:
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            try:
                batch = self.source.poll(100)
            except Exception:  # a malformed record: the agents dead-letter it; the demo just skips it
                continue
            for rec in batch:
                self.summary.add(rec.topic, rec.schema, rec.value)

    def close(self) -> None:
        self.source.close()


def run_demo(seconds: float = 60.0, ues: int | None = None, specs_dir: Path = SPECS_DIR,
             with_cloud: bool = True, with_api: bool = False, settings: Settings | None = None,
             on_progress: Callable[[str], None] = print) -> DemoSummary:
    settings = settings or Settings.from_env()
    specs = {name: load_spec(specs_dir / f"{name}.yaml") for name in ("simulator", *AGENT_SPECS, "api")
             if (specs_dir / f"{name}.yaml").exists()}
    agents = [n for n in AGENT_SPECS if n in specs and (with_cloud or n != "cloud")]
    if with_api and "api" in specs:
        agents.append("api")
    simulator = specs["simulator"]
    if ues is not None:
        simulator = JobSpec(**{**simulator.model_dump(), "args": [*simulator.args, "--ues", str(ues)]})
    for name in [*agents, "simulator"]:  # a previous, interrupted demo may have left jobs running
        try:
            if status_of(name, settings)["running"]:
                stop(name, settings)
        except Exception:
            pass
    for name in [*agents, "simulator"]:
        spec = specs[name] if name != "simulator" else simulator
        if spec.group_id and spec.inputs:  # the demo is about now: skip whatever earlier runs left unread
            skip_to_latest(spec.group_id, spec.inputs, settings)
    watcher = TopicWatcher(settings)
    started: list[str] = []
    try:
        for name in agents:
            deploy(specs[name], settings)
            started.append(name)
            on_progress(f"deployed {name} ({specs[name].instances} instance(s))")
        watcher.drain(6.0)  # let the agents join their groups before the first telemetry arrives
        deploy(simulator, settings)
        started.append("simulator")
        on_progress(f"deployed simulator; running for {seconds:.0f}s")
        t0 = time.monotonic()
        next_line = 5.0
        while time.monotonic() - t0 < seconds:
            watcher.drain(min(1.0, seconds - (time.monotonic() - t0)))
            for name in started:
                if status_of(name, settings)["running"] == 0:
                    log = Path(status_of(name, settings)["instances"][0]["log"])
                    tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
                    raise DemoError(f"job {name} exited early; see {log}; it ends with: {tail.splitlines()[-1] if tail else '-'}")
            if time.monotonic() - t0 >= next_line:
                on_progress(watcher.summary.progress_line(time.monotonic() - t0))
                next_line += 5.0
    finally:
        if "simulator" in started:
            stop("simulator", settings)
        watcher.drain(3.0)  # decisions and outcomes still in flight
        for name in reversed([s for s in started if s != "simulator"]):
            stop(name, settings)
        watcher.drain(1.0)
        watcher.close()
    return watcher.summary


def summary_tables(summary: DemoSummary):
    from rich.table import Table

    decisions = Table("tier", "kind", "decisions", "p50 ms", "p99 ms", title="Decisions (record produced -> decided)")
    for (tier, kind), n in sorted(summary.decisions.items()):
        lat = summary.decision_latency_ms[tier]
        decisions.add_row(tier, kind, str(n), f"{percentile(lat, 0.5):.2f}", f"{percentile(lat, 0.99):.2f}")
    demands = Table("placement", "demands", "mean ms", "p99 ms", "deadline misses", title="Demands (measured)")
    for placement, n in sorted(summary.placements.items()):
        lat = summary.demand_latency_ms[placement]
        demands.add_row(placement, str(n), f"{sum(lat) / len(lat):.1f}", f"{percentile(lat, 0.99):.1f}",
                        f"{summary.deadline_missed[placement] / n:.1%}")
    records = Table("topic", "records", title="Records this run")
    for topic in WATCHED:
        records.add_row(topic, str(summary.records[topic]))
    models = Table("model", "versions used in decisions", "newest published", title="Models")
    for name in sorted(set(summary.decision_model_versions) | set(summary.model_versions)):
        models.add_row(name, ", ".join(map(str, sorted(summary.decision_model_versions.get(name, ())))) or "-",
                       str(summary.model_versions.get(name, "-")))
    return [records, decisions, demands, models]
