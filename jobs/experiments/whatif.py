"""What-if (counterfactual) replay: one archived log, two policies, their decisions and outcomes side by side.

``tiertwin whatif LOG --a SPEC --b SPEC`` reads the Demand and Telemetry records of an
archive (``tiertwin archive`` / :mod:`tiertwin.connectors.archive`) in their logged order
and, for each policy, re-executes every demand in its own counterfactual copy of the
network (:class:`~tiertwin.connectors.simulator.world.World`):

* the **radio** state of a UE (serving cell, uplink and downlink rates) is what the log
  observed: the UE's latest telemetry is applied before each of its demands run;
* the **compute** state (the device's busy queue, each site's MEC queue, the cloud queue,
  battery) evolves with the placements of *that* policy, so a policy that floods the edge
  pays for it in queueing; the world's cell reports of that copy are the edge state the
  policy sees, so it observes the consequences of its own choices.

Policies (``SPEC``):

* ``default:cloud`` / ``default:edge`` / ``default:local`` / ``default:random`` - a fixed policy,
  the simulator's default placement;
* ``logged`` - the placements made live (the Decisions archived on the actions topic; a demand
  without one falls back to the default, cloud);
* ``agent[:key=value,...]`` - the local twin itself (:class:`~tiertwin.pipelines.local_twin.LocalTwin`,
  the same data and service modules a device or the ``tiertwin run local`` service runs):
  ``cost_local``, ``cost_edge``, ``cost_cloud``, ``margin`` (its cost weights and deadline margin),
  ``model=FILE`` (a pickled model, as in ``pipelines/pretrained``; default the shipped pretrained
  one), ``learn=1`` (learn online from the replayed outcomes, i.e. a model trained longer as the
  replay goes).

A policy takes plain records (decoded dicts): ``observe(telemetry)``, ``observe_edge(edge_state)``,
``place(demand) -> (placement, decision_id, info)``, ``learn(outcome)``.

>>> parse_policy("agent:cost_local=4,margin=0.8")
('agent', {'cost_local': '4', 'margin': '0.8'})
"""

from __future__ import annotations

import json
import pickle
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tiertwin.connectors.archive import ArchivedRecord, archived_topics, read_archive
from tiertwin.connectors.kafka import KafkaRecord
from tiertwin.errors import ConfigError, RecordRejected
from tiertwin.schemas import SchemaRegistry
from tiertwin.topics import ACTIONS_LOCAL, DEMANDS, TELEMETRY

PLACEMENTS = ("local", "edge", "cloud")


@dataclass(frozen=True)
class LogTopics:
    demands: str = DEMANDS
    telemetry: str = TELEMETRY
    actions: str = ACTIONS_LOCAL


def parse_policy(spec: str) -> tuple[str, dict[str, str]]:
    """``"agent:cost_local=4,margin=0.8"`` -> ``("agent", {...})``; ``"default:edge"`` -> ``("default", {"placement": "edge"})``."""
    name, _, rest = spec.partition(":")
    if name == "default":
        if rest not in (*PLACEMENTS, "random"):
            raise ConfigError(f"policy {spec!r}: use default:cloud|edge|local|random")
        return name, {"placement": rest}
    if name not in ("logged", "agent"):
        raise ConfigError(f"policy {spec!r}: use default:<placement>, logged or agent[:key=value,...]")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"policy {spec!r}: option {item!r} is not key=value")
        options[key.strip()] = value.strip()
    return name, options


# =============================================================================================
# Policies
# =============================================================================================
class FixedPolicy:
    """Every demand to one placement (or uniformly at random, with its own seeded stream)."""

    def __init__(self, placement: str, seed: int = 0):
        self.placement = placement
        self.rng = random.Random(seed)
        self.model = f"default:{placement}"

    def observe(self, telemetry: dict) -> None:
        return None

    def observe_edge(self, state: dict) -> None:
        return None

    def place(self, demand: dict) -> tuple[str, str | None, dict]:
        target = self.rng.choice(PLACEMENTS) if self.placement == "random" else self.placement
        return target, None, {}

    def learn(self, outcome: dict) -> None:
        return None


class LoggedPolicy(FixedPolicy):
    """The placements the live system made, from the archived decisions."""

    def __init__(self, placements: dict[str, tuple[str, str]], fallback: str = "cloud"):
        super().__init__(fallback)
        self.placements = placements
        self.model = "logged"
        self.missing = 0

    def place(self, demand: dict) -> tuple[str, str | None, dict]:
        logged = self.placements.get(demand["demand_id"])
        if logged is None:
            self.missing += 1
            return self.placement, None, {"logged": 0.0}
        return logged[0], logged[1], {"logged": 1.0}


class AgentPolicy:
    """The local twin (:class:`~tiertwin.pipelines.local_twin.LocalTwin`) fed the log record by record."""

    KNOWN = frozenset({"cost_local", "cost_edge", "cost_cloud", "margin", "model", "learn"})

    def __init__(self, options: dict[str, str]):
        from tiertwin.pipelines.local_twin import LocalTwin, LocalTwinConfig

        unknown = set(options) - self.KNOWN
        if unknown:
            raise ConfigError(f"agent policy: unknown option {sorted(unknown)[0]!r} (known: {', '.join(sorted(self.KNOWN))})")
        costs = {"local": 2.0, "edge": 1.0, "cloud": 1.5}
        costs.update({k.removeprefix("cost_"): float(v) for k, v in options.items() if k.startswith("cost_")})
        config = LocalTwinConfig(tier_costs=costs, deadline_margin=float(options.get("margin", 0.9)))
        model, version = self._load_model(Path(options["model"])) if "model" in options else (None, 1)
        self.twin = LocalTwin(config, model, version)
        self.learning = options.get("learn", "0") not in ("0", "false", "no", "")
        self.rejected: Counter[str] = Counter()   # telemetry the twin refused, by reason (the live agent dead-letters it)
        self.model = f"{self.twin.model_name} v{self.twin.model_version}" \
            + (f" ({Path(options['model']).name})" if "model" in options else "") \
            + (" +online learning" if self.learning else "")

    @staticmethod
    def _load_model(path: Path) -> tuple[Any, int]:
        """The model in ``path`` and its version (``{"name", "version", "model"}`` as shipped, or a bare pickled model, v0)."""
        try:
            doc = pickle.loads(path.read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            raise ConfigError(f"agent policy: model {path}: {exc}") from None
        model = doc["model"] if isinstance(doc, dict) and "model" in doc else doc
        if not callable(getattr(model, "predict_tiers", None)):
            raise ConfigError(f"agent policy: model {path}: a {type(model).__name__}, not a demand-latency model "
                              "(it needs predict_tiers)")
        return model, int(doc.get("version", 0)) if isinstance(doc, dict) else 0

    def observe(self, telemetry: dict) -> None:
        try:
            self.twin.observe(telemetry)
        except RecordRejected as exc:
            self.rejected[exc.reason] += 1
        self.twin.due_summaries()      # summaries for the edge: not part of this replay

    def observe_edge(self, state: dict) -> None:
        self.twin.update_edge_state(state)

    def place(self, demand: dict) -> tuple[str, str | None, dict]:
        d = self.twin.place(demand)
        return d["target"], d["decision_id"], {"predicted_ms": d["parameters"]["predicted_latency_ms"],
                                               "model_version": float(d["model_version"]), "confidence": d["confidence"]}

    def learn(self, outcome: dict) -> None:
        if self.learning:
            self.twin.learn(outcome)


def make_policy(spec: str, logged: dict[str, tuple[str, str]] | None) -> Any:
    name, options = parse_policy(spec)
    if name == "default":
        return FixedPolicy(options["placement"])
    if name == "logged":
        if not logged:
            raise ConfigError("policy 'logged' needs the archived placement decisions (--actions-topic); none found")
        return LoggedPolicy(logged)
    return AgentPolicy(options)


# =============================================================================================
# The log and the counterfactual network
# =============================================================================================
def load_log(log_dir: Path, topics: LogTopics, registry: SchemaRegistry | None = None):
    """``(events, logged placements)``: telemetry and demands merged in event-time order."""
    registry = registry or SchemaRegistry.default()
    present = archived_topics(log_dir)
    if topics.demands not in present:
        raise ConfigError(f"{log_dir}: no archived {topics.demands!r} (archived: {', '.join(present) or 'nothing'})")
    events: list[tuple[int, int, str, KafkaRecord]] = []
    skipped = Counter()
    for kind, topic in (("telemetry", topics.telemetry), ("demand", topics.demands)):
        if topic not in present:
            continue
        for i, rec in enumerate(read_archive(log_dir, topic)):
            decoded = _decode(rec, registry)
            if decoded is None:
                skipped[topic] += 1
                continue
            events.append((decoded.value["ts_ms"], 0 if kind == "telemetry" else 1, kind, decoded))
    events.sort(key=lambda e: (e[0], e[1]))
    logged: dict[str, tuple[str, str]] = {}
    if topics.actions in present:
        for rec in read_archive(log_dir, topics.actions):
            decoded = _decode(rec, registry)
            if decoded is not None and decoded.value.get("kind") == "placement" and decoded.value.get("subject_id"):
                logged.setdefault(decoded.value["subject_id"], (decoded.value["target"], decoded.value["decision_id"]))
    return [(kind, rec) for _, _, kind, rec in events], logged, dict(skipped)


def _decode(rec: ArchivedRecord, registry: SchemaRegistry) -> KafkaRecord | None:
    try:
        name, value = registry.decode(rec.value)
    except RecordRejected:
        return None
    return KafkaRecord(rec.topic, rec.partition, rec.offset, rec.timestamp_ms, rec.key, name, value, rec.value)


class CounterfactualNetwork:
    """A World whose radio follows the log and whose compute follows one policy's placements."""

    def __init__(self, scenario, ue_ids: list[str], start_ms: int, seed: int = 0):
        from tiertwin.connectors.simulator import World

        self.world = World(scenario.with_overrides(ues=max(len(ue_ids), 1)), seed=seed, start_ms=start_ms)
        self.index = {u: i for i, u in enumerate(ue_ids)}
        self.cells = self.world.layout.n_cells

    def advance(self, ts_ms: int) -> list[dict]:
        """Step the world up to ``ts_ms``; the cell reports produced on the way (the edge state)."""
        reports: list[dict] = []
        while self.world.now_ms < ts_ms:
            self.world.step()
            reports += self.world.cell_reports()
            self.world.demand_records()       # the world's own arrivals are not the log's: drop them
            self.world.outcome_records()
        return reports

    def observe(self, telemetry: dict) -> None:
        ue = self.index[telemetry["ue_id"]]
        w = self.world
        w.serving[ue] = telemetry["serving_cell"] % self.cells
        w.ul_mbps[ue] = telemetry["throughput_ul_mbps"]
        w.dl_mbps[ue] = telemetry["throughput_dl_mbps"]

    def execute(self, demand: dict, placement: str, decision_id: str | None) -> dict:
        w = self.world
        ue = self.index[demand["ue_id"]]
        local = {**demand, "ue_id": w.ue_ids[ue]}
        outcome = w.execute_demand(local, placement, decision_id)
        return {**outcome, "ue_id": demand["ue_id"]}


def replay(events: list[tuple[str, KafkaRecord]], policy: Any, scenario, seed: int = 0) -> list[dict]:
    """Run ``policy`` over the log in its own counterfactual network; one row per demand."""
    ue_ids = sorted({rec.value["ue_id"] for _, rec in events})
    start = events[0][1].value["ts_ms"] if events else 0
    network = CounterfactualNetwork(scenario, ue_ids, start, seed)
    last_telemetry: dict[str, dict] = {}
    rows = []
    for kind, rec in events:
        for report in network.advance(rec.value["ts_ms"]):
            policy.observe_edge(report)
        if kind == "telemetry":
            last_telemetry[rec.value["ue_id"]] = rec.value
            policy.observe(rec.value)
            continue
        demand = rec.value
        if demand["ue_id"] in last_telemetry:
            network.observe(last_telemetry[demand["ue_id"]])
        placement, decision_id, info = policy.place(demand)
        outcome = network.execute(demand, placement, decision_id)
        policy.learn(outcome)
        rows.append({"demand_id": demand["demand_id"], "ue_id": demand["ue_id"], "kind": demand["kind"],
                     "ts_ms": demand["ts_ms"], "deadline_ms": demand["deadline_ms"], "placement": placement,
                     "latency_ms": outcome["latency_ms"], "deadline_met": outcome["deadline_met"],
                     "predicted_ms": info.get("predicted_ms", float("nan"))})
    return rows


def summarize(rows: list[dict], spec: str, model: str) -> dict[str, Any]:
    from tiertwin.stats import summary_ms

    latency = [r["latency_ms"] for r in rows]
    kinds: dict[str, list[dict]] = {}
    for r in rows:
        kinds.setdefault(r["kind"], []).append(r)
    predicted = np.array([r["predicted_ms"] for r in rows], dtype=float)
    errors = np.abs(predicted - np.array(latency, dtype=float))
    return {
        "spec": spec, "model": model, "demands": len(rows), "latency_ms": summary_ms(latency),
        "deadline_miss_rate": float(np.mean([not r["deadline_met"] for r in rows])) if rows else float("nan"),
        "placements": dict(Counter(r["placement"] for r in rows)),
        "by_kind": {k: {"demands": len(v), "mean_ms": float(np.mean([r["latency_ms"] for r in v])),
                        "deadline_miss_rate": float(np.mean([not r["deadline_met"] for r in v])),
                        "placements": dict(Counter(r["placement"] for r in v))} for k, v in sorted(kinds.items())},
        "prediction_mae_ms": float(np.nanmean(errors)) if np.isfinite(predicted).any() else None,
    }


def run_whatif(log_dir: Path, spec_a: str, spec_b: str, scenario: str = "dense-urban-xr", out_dir: Path | None = None,
               topics: LogTopics = LogTopics(), seed: int = 0) -> dict[str, Any]:
    """Replay ``log_dir`` under policies A and B; write ``report.md``, plots and per-demand rows; return the numbers."""
    from tiertwin.connectors.simulator import load_scenario

    log_dir = Path(log_dir)
    spec = load_scenario(scenario)
    events, logged, skipped = load_log(log_dir, topics)
    if not any(kind == "demand" for kind, _ in events):
        raise ConfigError(f"{log_dir}: the archive holds no decodable Demand records on {topics.demands!r}")
    results: dict[str, Any] = {"log": str(log_dir), "scenario": spec.name, "undecodable_records": skipped,
                               "policies": {}}
    rows = {}
    for side, policy_spec in (("a", spec_a), ("b", spec_b)):
        policy = make_policy(policy_spec, logged)
        rows[side] = replay(events, policy, spec, seed)
        results["policies"][side] = summarize(rows[side], policy_spec, policy.model)
        if isinstance(policy, LoggedPolicy):
            results["policies"][side]["without_logged_decision"] = policy.missing
        if isinstance(policy, AgentPolicy) and policy.rejected:
            results["policies"][side]["rejected_telemetry"] = dict(policy.rejected)
    same = [ra["placement"] == rb["placement"] for ra, rb in zip(rows["a"], rows["b"])]
    results["agreement"] = float(np.mean(same)) if same else float("nan")
    a_met, b_met = ([r["deadline_met"] for r in rows[s]] for s in ("a", "b"))
    results["only_a_met"] = int(sum(x and not y for x, y in zip(a_met, b_met)))
    results["only_b_met"] = int(sum(y and not x for x, y in zip(a_met, b_met)))
    out_dir = Path(out_dir or log_dir / "whatif")
    results["report"] = str(write_report(results, rows, out_dir))
    return results


def write_report(results: dict[str, Any], rows: dict[str, list[dict]], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import polars as pl

    out_dir.mkdir(parents=True, exist_ok=True)
    a, b = results["policies"]["a"], results["policies"]["b"]
    side_by_side = pl.DataFrame(rows["a"]).join(pl.DataFrame(rows["b"]).select(
        "demand_id", "placement", "latency_ms", "deadline_met", "predicted_ms"), on="demand_id", suffix="_b")
    side_by_side.write_parquet(out_dir / "demands.parquet")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for side, colour in (("a", "#2a7ab0"), ("b", "#d0672a")):
        lat = np.sort(np.array([r["latency_ms"] for r in rows[side]], dtype=float))
        if lat.size:
            axes[0].plot(np.maximum(lat, 1e-3), np.arange(1, lat.size + 1) / lat.size, color=colour,
                         label=f"{side.upper()}: {results['policies'][side]['spec']}")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("demand latency (ms)")
    axes[0].set_ylabel("CDF")
    axes[0].set_title("Counterfactual demand latency")
    axes[0].grid(alpha=0.3)
    axes[0].legend()
    kinds = sorted(set(a["by_kind"]) | set(b["by_kind"]))
    for i, (s, colour) in enumerate(((a, "#2a7ab0"), (b, "#d0672a"))):
        axes[1].bar([j + i * 0.4 for j in range(len(kinds))],
                    [s["by_kind"].get(k, {}).get("deadline_miss_rate", 0.0) for k in kinds], 0.4, color=colour,
                    label=s["spec"])
    axes[1].set_xticks([j + 0.2 for j in range(len(kinds))], kinds)
    axes[1].set_ylabel("deadline-miss rate")
    axes[1].set_title("Deadline misses per demand kind")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out_dir / "whatif.png", dpi=100)
    plt.close(fig)

    fmt = lambda v: "-" if v is None or v != v else f"{v:.1f}"
    lines = ["# What-if replay", "", f"Log `{results['log']}`, network `{results['scenario']}`: every demand of the log "
             "re-executed under each policy in its own counterfactual network (radio as logged, compute queues as "
             "the policy loads them).", "",
             "| | policy | model | demands | mean ms | p50 ms | p99 ms | deadline misses | placements | prediction MAE ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for side, s in (("A", a), ("B", b)):
        lat = s["latency_ms"]
        lines.append(f"| {side} | `{s['spec']}` | {s['model']} | {s['demands']} | {fmt(lat['mean'])} | {fmt(lat['p50'])} | "
                     f"{fmt(lat['p99'])} | {s['deadline_miss_rate']:.1%} | {s['placements']} | {fmt(s['prediction_mae_ms'])} |")
    lines += ["", f"Same placement for {results['agreement']:.1%} of demands; deadline met only under A: "
                  f"{results['only_a_met']}, only under B: {results['only_b_met']}.", "",
              "| kind | A mean ms | A misses | B mean ms | B misses |", "|---|---|---|---|---|"]
    for k in kinds:
        ka, kb = a["by_kind"].get(k, {}), b["by_kind"].get(k, {})
        lines.append(f"| {k} | {fmt(ka.get('mean_ms'))} | {ka.get('deadline_miss_rate', float('nan')):.1%} | "
                     f"{fmt(kb.get('mean_ms'))} | {kb.get('deadline_miss_rate', float('nan')):.1%} |")
    lines += ["", "![whatif](whatif.png)", "", "Per-demand rows side by side: `demands.parquet`.", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return path
