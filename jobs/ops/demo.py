"""The live three-tier demo: simulator, local, edge and cloud jobs on the managed broker.

``tiertwin demo`` deploys the ready-made specs in ``jobs/ops/specs/`` (agents first, the
simulator once they are listening), watches the topics while decisions flow, stops
every job cleanly, and prints what happened: records per topic, decisions per tier
and kind with their latency, where demands ran and how often they missed their
deadline, snapshots and model updates.

By default the UEs' local twins run on the device, inside the simulator's process
(``--local-twin device``): no local service is deployed and each demand is placed the
moment it arises. ``local_twin="service"`` deploys the local-twin service (``local.yaml``)
and runs today's Kafka round trip instead. The simulator runs on a fixed, printed seed,
and the summary sets its deadline misses and demand latency beside **no control on the
same seed and scenario** (everything to the cloud), computed offline in seconds with
:func:`~tiertwin.connectors.simulator.no_control`.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tiertwin.connectors.kafka import TopicReader
from tiertwin.connectors.simulator.kafka_loop import SimSummary, demand_figures
from tiertwin.errors import TiertwinError
from tiertwin.jobs.ops.launcher import SPECS_DIR, JobSpec, deploy, load_spec, skip_to_latest, status_of, stop
from tiertwin.settings import Settings
from tiertwin.stats import percentile
from tiertwin.topics import (
    ACTIONS, ACTIONS_LOCAL, DEAD_LETTERS, DEMANDS, EDGE_STATE, MODELS, OUTCOMES, SNAPSHOTS, SUMMARIES, TELEMETRY)

WATCHED = (TELEMETRY, DEMANDS, SUMMARIES, EDGE_STATE, *ACTIONS, OUTCOMES, SNAPSHOTS, MODELS, DEAD_LETTERS)
AGENT_SPECS = ("local", "edge", "cloud")
SIMULATOR_START_TIMEOUT_S = 120.0
DEMO_SEED = 14   # fixed, so the no-control baseline is the very same world


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
    # the run's identity, for the baseline: same scenario, seed and simulated seconds
    scenario: str = "dense-urban-xr"
    seed: int = DEMO_SEED
    ues: int | None = None
    local_twin: str = "device"
    telemetry_ts_ms: list[int] = field(default_factory=lambda: [0, 0])   # first, last event time seen
    baseline: SimSummary | None = None
    simulator: dict | None = None    # the simulator's own summary (tiertwin sim --summary-json), when it wrote one
    place_us: list[float] = field(default_factory=list)                 # device twins: place() wall time
    # placements: what the twin predicted for the tier it chose beside what the demand then took
    predicted_vs_measured: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    _predicted: dict[str, tuple[str, float]] = field(default_factory=dict)
    _measured: dict[str, float] = field(default_factory=dict)
    decision_topics: Counter = field(default_factory=Counter)            # (topic, tier) -> n

    def add(self, topic: str, schema: str, v: dict) -> None:
        self.records[topic] += 1
        if schema == "tiertwin.Decision":
            self.decisions[(v["tier"], v["kind"])] += 1
            self.decision_topics[(topic, v["tier"])] += 1
            self.decision_latency_ms[v["tier"]].append((v["decided_ns"] - v["source_emitted_ns"]) / 1e6)
            self.decision_model_versions[v["model_name"]].add(v["model_version"])
            if v["kind"] == "placement":
                if v.get("twin_site") == "device":   # received/decided are stamped on entry to and exit from place()
                    self.place_us.append((v["decided_ns"] - v["received_ns"]) / 1e3)
                predicted = v["parameters"].get("predicted_latency_ms")
                if predicted is not None:
                    self._pair(v["decision_id"], predicted=(v["target"], predicted))
        elif schema == "tiertwin.Outcome" and v["kind"] == "demand" and v["latency_ms"] is not None:
            placement = v["placement"] or "?"
            self.placements[placement] += 1
            self.demand_latency_ms[placement].append(v["latency_ms"])
            self.deadline_missed[placement] += 0 if v["deadline_met"] else 1
            if v["decision_id"]:
                self._pair(v["decision_id"], measured=v["latency_ms"])
        elif schema == "tiertwin.Telemetry":
            first, last = self.telemetry_ts_ms
            self.telemetry_ts_ms = [min(first, v["ts_ms"]) if first else v["ts_ms"], max(last, v["ts_ms"])]
        elif schema == "tiertwin.ModelUpdate" and v.get("action", "publish") == "publish":   # not operator commands
            self.model_versions[v["model_name"]] = max(v["version"], self.model_versions.get(v["model_name"], 0))
        elif schema == "tiertwin.DeadLetter":
            self.dead_letter_reasons[v["reason"]] += 1

    def _pair(self, decision_id: str, predicted: tuple[str, float] | None = None, measured: float | None = None) -> None:
        """Join a placement's prediction with its Outcome, whichever topic delivers first."""
        if predicted is not None:
            latency = self._measured.pop(decision_id, None)
            if latency is None:
                self._predicted[decision_id] = predicted
                return
        else:
            predicted = self._predicted.pop(decision_id, None)
            if predicted is None:
                self._measured[decision_id] = measured
                return
            latency = measured
        self.predicted_vs_measured[predicted[0]].append((predicted[1], latency))

    @property
    def sim_seconds(self) -> float:
        """Simulated seconds the watcher saw (telemetry event times; one telemetry period added)."""
        first, last = self.telemetry_ts_ms
        return (last - first) / 1000.0 + 0.1 if last > first else 0.0

    def figures(self) -> dict[str, float]:
        """This run's deadline-miss rate and mean / p99 demand latency, defined as for the baseline: the
        simulator's own count (every demand of its run) if it wrote one, else the Outcomes the demo saw."""
        if self.simulator is not None:
            sim = self.simulator
            return {"demands": sum(sim["demands_by_placement"].values()), "deadline_miss_rate": sim["deadline_miss_rate"],
                    "latency_mean_ms": sim["latency_mean_ms"], "latency_p99_ms": sim["latency_p99_ms"]}
        latencies = [x for values in self.demand_latency_ms.values() for x in values]
        return demand_figures(latencies, sum(self.deadline_missed.values()))

    @property
    def run_seconds(self) -> float:
        """Simulated seconds of the run: the simulator's own, else what the watcher saw."""
        return self.simulator["sim_seconds"] if self.simulator is not None else self.sim_seconds

    def as_dict(self) -> dict:
        """The summary as plain JSON-able data (``tiertwin demo --summary-json``; CI checks it)."""
        by_tier: Counter = Counter()
        for (tier, _), n in self.decisions.items():
            by_tier[tier] += n
        by_topic: dict[str, dict[str, int]] = defaultdict(dict)
        for (topic, tier), n in sorted(self.decision_topics.items()):
            by_topic[topic][tier] = n
        return {
            "run": {"scenario": self.scenario, "seed": self.seed, "ues": self.ues, "local_twin": self.local_twin,
                    "sim_seconds": self.run_seconds},
            "figures": self.figures(),
            "records": {topic: self.records[topic] for topic in WATCHED},
            "decisions": {tier: by_tier[tier] for tier in ("local", "edge", "cloud")},
            "decisions_by_kind": {f"{tier}/{kind}": n for (tier, kind), n in sorted(self.decisions.items())},
            "decisions_by_topic": dict(by_topic),
            "decision_latency_ms": {tier: {"p50": percentile(lat, 50), "p99": percentile(lat, 99)}
                                    for tier, lat in sorted(self.decision_latency_ms.items())},
            "demands": {placement: {"n": n, "deadline_missed": self.deadline_missed[placement]}
                        for placement, n in sorted(self.placements.items())},
            "snapshots": self.records[SNAPSHOTS],
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


class TopicWatcher:
    """Reads the watched topics from their end offsets at construction (this run's records only)."""

    def __init__(self, settings: Settings, topics=WATCHED):
        # A record that does not decode is skipped (the agents dead-letter it); the rest of its batch counts.
        self.source = TopicReader(topics, settings, on_undecodable="skip", start="end", require=False,
                                  client_id="tiertwin-demo-watch")
        self.summary = DemoSummary()

    def drain(self, budget_s: float) -> None:
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            for rec in self.source.poll(100):
                self.summary.add(rec.topic, rec.schema, rec.value)

    def close(self) -> None:
        self.source.close()


def _option(args: list[str], name: str, default: str) -> str:
    """The last value given for ``name`` in a spec's arguments (the last one wins, as on a command line)."""
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]
    return values[-1] if values else default


def _fail_if_exited(started: list[str], settings: Settings) -> None:
    for name in started:
        if status_of(name, settings)["running"] == 0:
            log = Path(status_of(name, settings)["instances"][0]["log"])
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise DemoError(f"job {name} exited early; see {log}; it ends with: {tail.splitlines()[-1] if tail else '-'}")


def run_demo(seconds: float = 60.0, ues: int | None = None, specs_dir: Path = SPECS_DIR,
             with_cloud: bool = True, with_api: bool = False, settings: Settings | None = None,
             on_progress: Callable[[str], None] = print, *, seed: int = DEMO_SEED,
             local_twin: str = "device", baseline: bool = True) -> DemoSummary:
    if local_twin not in ("device", "service"):
        raise DemoError(f"local_twin must be 'device' or 'service', not {local_twin!r}")
    settings = settings or Settings.from_env()
    specs = {name: load_spec(specs_dir / f"{name}.yaml") for name in ("simulator", *AGENT_SPECS, "api")
             if (specs_dir / f"{name}.yaml").exists()}
    # on the device the local twins live in the simulator; a local service would answer the same demands again
    agents = [n for n in AGENT_SPECS if n in specs and (with_cloud or n != "cloud")
              and (local_twin == "service" or n != "local")]
    if with_api and "api" in specs:
        agents.append("api")
    simulator = specs["simulator"]
    args = [*simulator.args, "--seed", str(seed), "--local-twin", local_twin]
    if ues is not None:
        args += ["--ues", str(ues)]
    inputs = list(simulator.inputs)
    if local_twin == "service" and ACTIONS_LOCAL not in inputs:
        inputs.insert(0, ACTIONS_LOCAL)
    summary_file = settings.home / "jobs" / simulator.name / "demo-summary.json"
    summary_file.unlink(missing_ok=True)
    args += ["--summary-json", str(summary_file)]
    simulator = JobSpec(**{**simulator.model_dump(), "args": args, "inputs": inputs})
    scenario = _option(args, "--scenario", "dense-urban-xr")
    if "edge" in specs and "scenario" not in specs["edge"].config:   # the edge knows its network: SINR forecast geometry
        specs["edge"] = JobSpec(**{**specs["edge"].model_dump(), "config": {**specs["edge"].config, "scenario": scenario}})
    uses = _option(args, "--ues", "")
    summary_ues = int(uses) if uses else None
    # a previous, interrupted demo may have left jobs running (a local service would answer the device's demands too)
    for name in dict.fromkeys([*agents, *AGENT_SPECS, "simulator"]):
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
    watcher.summary.scenario, watcher.summary.seed, watcher.summary.ues = scenario, seed, summary_ues
    watcher.summary.local_twin = local_twin
    started: list[str] = []
    try:
        for name in agents:
            deploy(specs[name], settings)
            started.append(name)
            on_progress(f"deployed {name} ({specs[name].instances} instance(s))")
        watcher.drain(6.0)  # let the agents join their groups before the first telemetry arrives
        deploy(simulator, settings)
        started.append("simulator")
        on_progress(f"deployed simulator ({scenario}, seed {seed}, local twins on the "
                    f"{'device, in its process' if local_twin == 'device' else 'local service'}); "
                    f"running for {seconds:.0f}s")
        # The run's seconds count from the simulated network's first telemetry, not from the deployment: the
        # simulator's start-up (imports, connections) took longer than a short run on a loaded machine, and
        # `--seconds 5` then stopped it before it had sent anything ("no decisions were made").
        started_by = time.monotonic() + SIMULATOR_START_TIMEOUT_S
        while watcher.summary.records[TELEMETRY] == 0:
            if time.monotonic() > started_by:
                raise DemoError(f"the simulator sent no telemetry within {SIMULATOR_START_TIMEOUT_S:.0f} s of its "
                                f"deployment; see {settings.home / 'jobs' / 'simulator'}/")
            watcher.drain(0.5)
            _fail_if_exited(started, settings)
        t0 = time.monotonic()
        next_line = 5.0
        while time.monotonic() - t0 < seconds:
            watcher.drain(min(1.0, seconds - (time.monotonic() - t0)))
            _fail_if_exited(started, settings)
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
    summary = watcher.summary
    if summary_file.exists():   # written as the simulator ended (SIGTERM: it finishes the step, then reports)
        summary.simulator = json.loads(summary_file.read_text())
    if baseline and summary.run_seconds > 0:
        from tiertwin.connectors.simulator import no_control

        on_progress(f"no control on the same world (seed {seed}, {summary.run_seconds:.2f} simulated s), offline ...")
        summary.baseline = no_control(scenario, summary.run_seconds, seed=seed, ues=summary_ues)
    return summary


def summary_tables(summary: DemoSummary):
    from rich.table import Table

    decisions = Table("tier", "kind", "decisions", "p50 ms", "p99 ms", title="Decisions (record produced -> decided)")
    for (tier, kind), n in sorted(summary.decisions.items()):
        lat = summary.decision_latency_ms[tier]
        decisions.add_row(tier, kind, str(n), f"{percentile(lat, 50):.2f}", f"{percentile(lat, 99):.2f}")
    demands = Table("placement", "demands", "mean ms", "p99 ms", "deadline misses", title="Demands (measured)")
    for placement, n in sorted(summary.placements.items()):
        lat = summary.demand_latency_ms[placement]
        demands.add_row(placement, str(n), f"{sum(lat) / len(lat):.1f}", f"{percentile(lat, 99):.1f}",
                        f"{summary.deadline_missed[placement] / n:.1%}")
    tables = [*_comparison_tables(summary)]
    records = Table("topic", "records", title="Records this run")
    for topic in WATCHED:
        records.add_row(topic, str(summary.records[topic]))
    models = Table("model", "versions used in decisions", "newest published", title="Models")
    for name in sorted(set(summary.decision_model_versions) | set(summary.model_versions)):
        models.add_row(name, ", ".join(map(str, sorted(summary.decision_model_versions.get(name, ())))) or "-",
                       str(summary.model_versions.get(name, "-")))
    return [records, decisions, demands, *tables, models]


def _comparison_tables(summary: DemoSummary):
    """This run beside no control on the same world; the device twins' decision time; predictions vs outcomes."""
    from rich.table import Table

    out = []
    if summary.baseline is not None:
        b, mine = summary.baseline, summary.figures()
        table = Table("run", "demands", "deadline misses", "mean ms", "p99 ms",
                      title=f"Against no control: same scenario ({summary.scenario}), seed {summary.seed}, "
                            f"{b.sim_seconds:.1f} simulated s (baseline computed offline in {b.wall_seconds:.1f} s)")
        table.add_row(f"this run (local twins: {summary.local_twin})"
                      + ("" if summary.simulator is not None else ", Outcomes seen"), str(mine["demands"]),
                      f"{mine['deadline_miss_rate']:.1%}", f"{mine['latency_mean_ms']:.1f}", f"{mine['latency_p99_ms']:.1f}")
        table.add_row("no control (everything to the cloud)", str(sum(b.demands_by_placement.values())),
                      f"{b.deadline_miss_rate:.1%}", f"{b.latency_mean_ms:.1f}", f"{b.latency_p99_ms:.1f}")
        if b.deadline_miss_rate > 0 and b.latency_mean_ms > 0:
            table.add_row("this run / no control", "",
                          f"{mine['deadline_miss_rate'] / b.deadline_miss_rate:.2f}x",
                          f"{mine['latency_mean_ms'] / b.latency_mean_ms:.2f}x",
                          f"{mine['latency_p99_ms'] / b.latency_p99_ms:.2f}x" if b.latency_p99_ms else "-")
        out.append(table)
    device = (summary.simulator or {}).get("device") or {}
    if summary.place_us or device.get("placements"):
        table = Table("measured", "decisions", "p50 µs", "p99 µs", "max µs",
                      title="Local decisions on the device (in-process place() wall time)")
        if device.get("placements"):
            table.add_row("by the simulator, around DeviceRuntime.place()", str(device["placements"]),
                          f"{device['place_p50_us']:.0f}", f"{device['place_p99_us']:.0f}", f"{device['place_max_us']:.0f}")
        if summary.place_us:
            table.add_row("inside LocalTwin.place() (the Decisions' stamps)", str(len(summary.place_us)),
                          f"{percentile(summary.place_us, 50):.0f}", f"{percentile(summary.place_us, 99):.0f}",
                          f"{max(summary.place_us):.0f}")
        out.append(table)
    if summary.predicted_vs_measured:
        table = Table("placed on", "demands", "predicted mean ms", "measured mean ms", "mean abs error ms",
                      "measured > predicted", title="Placements: the twin's prediction for its choice vs the outcome")
        for tier, pairs in sorted(summary.predicted_vs_measured.items()):
            p, m = np.array(pairs).T
            table.add_row(tier, str(len(pairs)), f"{p.mean():.1f}", f"{m.mean():.1f}", f"{np.abs(m - p).mean():.1f}",
                          f"{(m > p).mean():.0%}")
        out.append(table)
    return out
