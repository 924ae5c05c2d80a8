"""The edge digital twin: one per cell, at the base station / MEC site; decides in near real time.

Reading order: configuration, the **data module** (per-cell twins built from the
gNB/MEC cell reports and the local twins' summaries), the **service module**
(handover from a SINR forecast with hysteresis, PRB and MEC shares from contextual
bandits rewarded by outcomes, twin migration between sites) and the
**communication module** (:class:`EdgeTwinAgent`).

In: ``tiertwin.edge.summaries`` (LocalSummary, keyed by serving cell),
``tiertwin.edge.cell-reports`` (EdgeState ground truth, keyed by cell) and
``tiertwin.edge.migrations`` (TwinMigration, keyed by the cell a UE moves to) as a
group member; ``tiertwin.outcomes`` and ``tiertwin.models`` read whole.
Out: Decision records to ``tiertwin.actions.edge`` (``handover`` target
``cell:<id>``, ``prb_share`` / ``mec_share`` with ``parameters["share"]``,
``migration`` target ``site:<id>``), EdgeState to ``tiertwin.cloud.edge-state``,
UE twins handed to other instances to ``tiertwin.edge.migrations``, checkpoints to
``tiertwin.state.edge-changelog``.

Twin migration: within one instance a UE's view moves with it from cell to cell. When
its next cell belongs to another instance, this one hands the view over before the
move: on a handover it decides, and while the best neighbour is within
``handoff_margin_db`` of the serving cell (so a network-triggered A3 handover can come),
at most once per ``handoff_interval_ms``. The receiver keeps the view until the UE's
first summary in its cell and adopts it then; the sender drops a UE from a cell once
it has sent no summary there for ``ue_timeout_ms``.

>>> handover_margin(serving_forecast_db=5.0, neighbour_forecast_db=9.5, hysteresis_db=3.0)
1.5
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Any

from pydantic import Field

from tiertwin.connectors.kafka import KafkaRecord, KeyHashCachePartitioner
from tiertwin.pipelines.agent import AgentConfig, TwinAgent, decision_id, decision_stamps
from tiertwin.pipelines.features import cell_context, sinr_forecast_features
from tiertwin.pipelines.learners import HANDOVER, MEC_SHARE, PRB_SHARE, allocation_reward
from tiertwin.pipelines.models import features_to_parameters


class EdgeAgentConfig(AgentConfig):
    """Configuration of one edge agent instance (``tiertwin run edge --config FILE``)."""

    group_id: str = "tiertwin-edge"
    changelog_topic: str = "tiertwin.state.edge-changelog"
    summaries_topic: str = "tiertwin.edge.summaries"
    cell_reports_topic: str = "tiertwin.edge.cell-reports"
    migrations_topic: str = "tiertwin.edge.migrations"
    edge_state_topic: str = "tiertwin.cloud.edge-state"
    actions_topic: str = "tiertwin.actions.edge"
    cells: list[int] = Field(default_factory=list, description="Cells this instance serves; empty = every cell of its partitions")
    hysteresis_db: float = Field(3.0, ge=0, le=30)
    handover_horizon_s: float = Field(0.5, gt=0, le=10, description="How far ahead the SINR forecast looks")
    handover_cooldown_ms: int = Field(2_000, ge=0, description="No second handover of a UE within this much event time")
    allocation_interval_ms: int = Field(1_000, ge=1, description="PRB / MEC shares re-decided per cell at most this often")
    share_cost: float = Field(0.3, ge=0, le=10, description="Reward penalty per unit of share given")
    handoff_margin_db: float = Field(3.0, ge=0, le=30, description="Hand a UE's twin to the instance of its best neighbour once that neighbour is within this of the serving SINR")
    handoff_interval_ms: int = Field(200, ge=0, description="At most one hand-off of a UE per this much event time (the view the next instance adopts is at most this old)")
    ue_timeout_ms: int = Field(5_000, ge=100, description="A UE with no summary in a cell for this long (event time) has left it")
    pending_handoffs: int = Field(100_000, ge=1, description="Handed-over twins kept until their UE's first summary here")
    handover_model: str = HANDOVER
    prb_model: str = PRB_SHARE
    mec_model: str = MEC_SHARE


# =============================================================================================
# Data module: per-cell twins
# =============================================================================================
class UEView:
    """What the edge knows of one UE from its summaries (enough to forecast and to migrate)."""

    def __init__(self, ue_id: str):
        self.ue_id = ue_id
        self.ts_ms = 0
        self.sinr_db = 0.0
        self.trend = 0.0
        self.speed = 0.0
        self.neighbour: tuple[int, float] | None = None
        self.neighbour_trend = 0.0
        self.last_handover_ms = -10**15
        self.last_handoff_ms = -10**15
        self.summaries = 0

    @classmethod
    def from_migration(cls, m: dict) -> "UEView":
        view = cls(m["ue_id"])
        view.ts_ms, view.sinr_db, view.trend, view.speed = m["ts_ms"], m["sinr_db"], m["sinr_trend_db_per_s"], m["speed_mps"]
        if m["neighbour_cell"] is not None and m["neighbour_sinr_db"] is not None:
            view.neighbour = (m["neighbour_cell"], m["neighbour_sinr_db"])
        view.neighbour_trend, view.last_handover_ms, view.summaries = m["neighbour_trend_db_per_s"], m["last_handover_ms"], m["summaries"]
        return view

    def to_migration(self, from_cell: int, from_site: int | None, to_cell: int, reason: str) -> dict:
        neighbour_cell, neighbour_sinr = self.neighbour if self.neighbour is not None else (None, None)
        return {"ue_id": self.ue_id, "from_cell": from_cell, "from_site": from_site, "to_cell": to_cell, "reason": reason,
                "ts_ms": self.ts_ms, "sinr_db": self.sinr_db, "sinr_trend_db_per_s": self.trend, "speed_mps": self.speed,
                "neighbour_cell": neighbour_cell, "neighbour_sinr_db": neighbour_sinr,
                "neighbour_trend_db_per_s": self.neighbour_trend, "last_handover_ms": self.last_handover_ms,
                "summaries": self.summaries, "emitted_ns": time.time_ns()}


class CellTwin:
    """The twin of one cell and its MEC server: latest report, attached UEs, open allocations."""

    def __init__(self, cell_id: int):
        self.cell_id = cell_id
        self.site_id: int | None = None
        self.state: dict[str, Any] | None = None
        self.ues: dict[str, UEView] = {}
        self.last_allocation_ms = -10**15
        # kind -> [decision id, share, context, demands met, demands measured]
        self.allocations: dict[str, list] = {}

    def load(self) -> dict[str, float]:
        s = self.state or {}
        return {"prb_utilization": s.get("prb_utilization", 0.0), "mec_queue_gcycles": s.get("mec_queue_gcycles", 0.0),
                "attached_ues": max(s.get("attached_ues", 0), len(self.ues))}


# =============================================================================================
# Service module: handover, allocation, migration
# =============================================================================================
def handover_margin(serving_forecast_db: float, neighbour_forecast_db: float, hysteresis_db: float) -> float:
    """How far (dB) the neighbour's forecast beats the serving one beyond the hysteresis; > 0 means hand over."""
    return neighbour_forecast_db - serving_forecast_db - hysteresis_db


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


ALLOCATIONS = (("prb_share", "prb_model"), ("mec_share", "mec_model"))


# =============================================================================================
# Communication module: the agent
# =============================================================================================
class EdgeTwinAgent(TwinAgent):
    """The edge DT agent. ``EdgeTwinAgent(EdgeAgentConfig(...)).run(stop_event)``."""

    tier = "edge"
    model_names = (HANDOVER, PRB_SHARE, MEC_SHARE)
    config: EdgeAgentConfig

    def __init__(self, config: EdgeAgentConfig, settings=None):
        self.model_names = (config.handover_model, config.prb_model, config.mec_model)
        super().__init__(config, settings)
        self.ue_cell: dict[str, int] = {}
        self.site_of: dict[int, int] = {}
        self.cells = set(config.cells)
        self.handed_in: OrderedDict[str, dict] = OrderedDict()   # ue -> TwinMigration, until its first summary here
        self._partitioner = KeyHashCachePartitioner()
        self._summary_partitions = 0

    def group_topics(self) -> list[str]:
        return [self.config.summaries_topic, self.config.cell_reports_topic, self.config.migrations_topic]

    def open(self) -> None:
        super().open()
        self._summary_partitions = len(self.source.consumer.partitions_for_topic(self.config.summaries_topic) or ())

    def side_topics(self) -> dict[str, bool]:
        return {self.config.models_topic: True, self.config.outcomes_topic: False}

    def serves(self, cell_id: int) -> bool:
        return not self.cells or cell_id in self.cells

    def holds(self, cell_id: int) -> bool:
        """Whether this instance gets ``cell_id``'s summaries (its cell list, else its partitions)."""
        if self.cells:
            return cell_id in self.cells
        if not self._summary_partitions:
            return True
        return self._partitioner.key_partition(str(cell_id).encode(), self._summary_partitions) in self._held

    def cell(self, cell_id: int, partition: int) -> CellTwin:
        key = str(cell_id)
        twin = self.twins.get(key)
        if twin is None:
            twin = self.twins[key] = CellTwin(cell_id)
        self.touch(key, partition)
        return twin

    def restore_twin(self, twin: Any) -> Any:
        if isinstance(twin, CellTwin):
            for ue_id in twin.ues:
                self.ue_cell[ue_id] = twin.cell_id
            if twin.site_id is not None:
                self.site_of[twin.cell_id] = twin.site_id
        return twin

    def process(self, batch: list[KafkaRecord], received_ns: int) -> None:
        c = self.config
        counts: dict[str, int] = {}
        expected = {c.summaries_topic: "tiertwin.LocalSummary", c.cell_reports_topic: "tiertwin.EdgeState",
                    c.migrations_topic: "tiertwin.TwinMigration"}
        for record in batch:
            counts[record.topic] = counts.get(record.topic, 0) + 1
            if record.schema != expected[record.topic]:
                self.reject(record, "wrong-schema", f"{record.topic} carries {expected[record.topic]}, got {record.schema}")
                continue
            try:
                if record.topic == c.summaries_topic and self.serves(record.value["serving_cell"]):
                    self.on_summary(record, received_ns)
                elif record.topic == c.cell_reports_topic and self.serves(record.value["cell_id"]):
                    self.on_cell_report(record, received_ns)
                elif record.topic == c.migrations_topic and self.serves(record.value["to_cell"]):
                    self.on_migration(record.value)
            except Exception as exc:  # one record must not stop the twin: dead-letter it with the cause
                self.reject(record, "processing-error", f"{type(exc).__name__}: {exc}")
        for topic, n in counts.items():
            self.metrics.records.labels(self.tier, c.instance_id, topic).inc(n)

    def process_side(self, record: KafkaRecord) -> None:
        if record.topic != self.config.outcomes_topic:
            super().process_side(record)
        elif record.schema != "tiertwin.Outcome":
            self.reject(record, "wrong-schema", f"{record.topic} carries tiertwin.Outcome, got {record.schema}")
        else:
            self.on_outcome(record.value)

    def _decision(self, kind: str, record: KafkaRecord, received_ns: int, *, target: str, cell_id: int,
                  ue_id: str | None, parameters: dict, model: str, version: int, confidence: float) -> dict:
        return {"decision_id": decision_id("edge", kind, record), "tier": "edge", "kind": kind, "ue_id": ue_id,
                "cell_id": cell_id, "subject_id": None, "target": target, "parameters": parameters,
                "model_name": model, "model_version": version, "confidence": min(1.0, max(0.0, confidence)),
                **decision_stamps(record, received_ns), "twin_site": "edge"}

    # -- summaries: UE views, migration, handover ----------------------------------------------
    def on_summary(self, record: KafkaRecord, received_ns: int) -> None:
        s = record.value
        ue_id, cell_id = s["ue_id"], s["serving_cell"]
        twin = self.cell(cell_id, record.partition)
        view = twin.ues.get(ue_id)
        if view is None:
            view = self._adopt(record, received_ns, ue_id, twin)
        elif s["window_end_ms"] <= view.ts_ms:
            self.metrics.replayed.inc()
            return
        else:   # the same cell as last time: the SINR it forecast can be checked now
            self._learn_forecast(view, s)
        self._update_view(view, s)
        self._maybe_handover(record, received_ns, twin, view)
        self._maybe_hand_off(twin, view)

    def _adopt(self, record: KafkaRecord, received_ns: int, ue_id: str, twin: CellTwin) -> UEView:
        """A UE new to this cell: move its view from its previous cell here, or take the one another
        instance handed over (migrating sites if they differ)."""
        previous_cell = self.ue_cell.get(ue_id)
        previous = self.twins.get(str(previous_cell)) if previous_cell is not None else None
        view = previous.ues.pop(ue_id, None) if previous is not None else None
        if previous is not None:
            self.touch(str(previous_cell), self.twin_partition[str(previous_cell)])
        old_site = self.site_of.get(previous_cell) if previous_cell is not None else None
        handed = self.handed_in.pop(ue_id, None)
        if view is None and handed is not None:
            view, previous_cell, old_site = UEView.from_migration(handed), handed["from_cell"], handed["from_site"]
            self.metrics.handoffs.labels(self.tier, self.config.instance_id, "adopted").inc()
        view = view or UEView(ue_id)
        twin.ues[ue_id] = view
        self.ue_cell[ue_id] = twin.cell_id
        new_site = self.site_of.get(twin.cell_id)
        if old_site is not None and new_site is not None and old_site != new_site:
            self.emit_decision(self.config.actions_topic, self._migration(
                record, received_ns, twin.cell_id, ue_id, previous_cell, old_site, new_site, view), key=twin.cell_id)
        return view

    def _maybe_hand_off(self, twin: CellTwin, view: UEView, decided_cell: int | None = None) -> None:
        """Send the UE's view to the instance of the cell it is about to move to, if that is not this one."""
        c = self.config
        if decided_cell is None:
            if view.neighbour is None or view.neighbour[1] < view.sinr_db - c.handoff_margin_db:
                return
            if view.ts_ms - getattr(view, "last_handoff_ms", -10**15) < c.handoff_interval_ms:
                return
        to_cell = decided_cell if decided_cell is not None else view.neighbour[0]
        if self.holds(to_cell):
            return
        view.last_handoff_ms = view.ts_ms
        reason = "handover-decided" if decided_cell is not None else "neighbour-close"
        self.emit(c.migrations_topic, "TwinMigration",
                  view.to_migration(twin.cell_id, self.site_of.get(twin.cell_id), to_cell, reason), key=to_cell)
        self.metrics.handoffs.labels(self.tier, c.instance_id, "sent").inc()

    def on_migration(self, m: dict) -> None:
        """A twin handed over by another instance: keep it until the UE's first summary here."""
        if m["ue_id"] in self.ue_cell:   # already here (its summaries came first): ours is as new
            return
        known = self.handed_in.get(m["ue_id"])
        if known is None or m["ts_ms"] >= known["ts_ms"]:
            self.handed_in[m["ue_id"]] = m
            self.handed_in.move_to_end(m["ue_id"])
        while len(self.handed_in) > self.config.pending_handoffs:
            self.handed_in.popitem(last=False)

    def _migration(self, record, received_ns, cell_id, ue_id, previous_cell, old_site, new_site, view) -> dict:
        return self._decision("migration", record, received_ns, target=f"site:{new_site}", cell_id=cell_id, ue_id=ue_id,
                              parameters={"from_site": float(old_site), "to_site": float(new_site),
                                          "from_cell": float(previous_cell), "summaries": float(view.summaries),
                                          "handed_over": float(not self.holds(previous_cell))},
                              model="twin-migration", version=0, confidence=1.0)

    def _learn_forecast(self, view: UEView, s: dict) -> None:
        if view.summaries == 0:
            return
        dt = (s["window_end_ms"] - view.ts_ms) / 1000.0
        if 0 < dt <= 5.0:
            model, _ = self.slots[self.config.handover_model].current()
            model.learn_one(sinr_forecast_features(view.sinr_db, view.trend, view.speed, dt), s["sinr_db"])
            self.metrics.learned.labels(self.tier, self.config.instance_id, self.config.handover_model).inc()

    @staticmethod
    def _update_view(view: UEView, s: dict) -> None:
        dt = (s["window_end_ms"] - view.ts_ms) / 1000.0
        neighbour = None
        if s["best_neighbour_cell"] is not None and s["best_neighbour_sinr_db"] is not None:
            trend = 0.0
            if view.neighbour is not None and view.neighbour[0] == s["best_neighbour_cell"] and 0 < dt <= 5.0:
                trend = (s["best_neighbour_sinr_db"] - view.neighbour[1]) / dt
            neighbour = (s["best_neighbour_cell"], s["best_neighbour_sinr_db"], trend)
        view.neighbour = neighbour[:2] if neighbour else None
        view.neighbour_trend = neighbour[2] if neighbour else 0.0
        view.ts_ms, view.sinr_db, view.trend, view.speed = s["window_end_ms"], s["sinr_db"], s["sinr_trend_db_per_s"], s["speed_mps"]
        view.summaries += 1

    def _maybe_handover(self, record: KafkaRecord, received_ns: int, twin: CellTwin, view: UEView) -> None:
        c = self.config
        if view.neighbour is None or view.ts_ms - view.last_handover_ms < c.handover_cooldown_ms:
            return
        slot = self.slots[c.handover_model]
        model, version = slot.current()
        h = c.handover_horizon_s
        serving_x = sinr_forecast_features(view.sinr_db, view.trend, view.speed, h)
        neighbour_x = sinr_forecast_features(view.neighbour[1], view.neighbour_trend, view.speed, h)
        serving, neighbour = model.predict_one(serving_x), model.predict_one(neighbour_x)
        margin = handover_margin(serving, neighbour, c.hysteresis_db)
        if margin <= 0:
            return
        view.last_handover_ms = view.ts_ms
        parameters = {"serving_forecast_db": serving, "neighbour_forecast_db": neighbour, "margin_db": margin,
                      "hysteresis_db": c.hysteresis_db, **features_to_parameters(serving_x),
                      **{f"neighbour_{k}": v for k, v in features_to_parameters(neighbour_x).items()}}
        self.emit_decision(c.actions_topic, self._decision(
            "handover", record, received_ns, target=f"cell:{view.neighbour[0]}", cell_id=twin.cell_id, ue_id=view.ue_id,
            parameters=parameters, model=slot.name, version=version, confidence=_sigmoid(margin)), key=twin.cell_id)
        self._maybe_hand_off(twin, view, decided_cell=view.neighbour[0])

    # -- cell reports: state, forwarding, allocation -------------------------------------------
    def on_cell_report(self, record: KafkaRecord, received_ns: int) -> None:
        report = record.value
        twin = self.cell(report["cell_id"], record.partition)
        if twin.state is not None and report["ts_ms"] < twin.state["ts_ms"]:
            self.metrics.replayed.inc()
            return
        twin.state, twin.site_id = report, report["site_id"]
        self.site_of[twin.cell_id] = report["site_id"]
        gone = [ue for ue, view in twin.ues.items() if report["ts_ms"] - view.ts_ms > self.config.ue_timeout_ms]
        for ue in gone:   # left for a cell of another instance (or went quiet)
            del twin.ues[ue]
            if self.ue_cell.get(ue) == twin.cell_id:
                del self.ue_cell[ue]
        forwarded = {**report, "attached_ues": max(report["attached_ues"], len(twin.ues)), "emitted_ns": time.time_ns()}
        self.emit(self.config.edge_state_topic, "EdgeState", forwarded, key=twin.cell_id)
        if report["ts_ms"] - twin.last_allocation_ms >= self.config.allocation_interval_ms:
            twin.last_allocation_ms = report["ts_ms"]
            for kind, model_field in ALLOCATIONS:
                self._allocate(record, received_ns, twin, kind, getattr(self.config, model_field))

    def _allocate(self, record: KafkaRecord, received_ns: int, twin: CellTwin, kind: str, model_name: str) -> None:
        slot = self.slots[model_name]
        allocator, version = slot.current()
        context = cell_context(twin.state)
        previous = twin.allocations.get(kind)
        if previous is not None and previous[4] > 0:
            _, share, prev_context, met, measured = previous
            allocator.update(share, prev_context, allocation_reward(met / measured, share, self.config.share_cost))
            self.metrics.learned.labels(self.tier, self.config.instance_id, model_name).inc()
        share = allocator.pull(context)
        expected = allocator.expected_reward(share, context)
        decision = self._decision(kind, record, received_ns, target="", cell_id=twin.cell_id, ue_id=None,
                                  parameters={"share": share, "expected_reward": expected, **features_to_parameters(context)},
                                  model=slot.name, version=version, confidence=min(1.0, max(0.0, expected + self.config.share_cost * share)))
        twin.allocations[kind] = [decision["decision_id"], share, context, 0, 0]
        self.emit_decision(self.config.actions_topic, decision, key=twin.cell_id)

    # -- outcomes: rewards for the bandits -----------------------------------------------------
    def on_outcome(self, outcome: dict) -> None:
        cell_id = outcome.get("cell_id")
        twin = self.twins.get(str(cell_id)) if cell_id is not None else None
        if twin is None:
            return
        if outcome["kind"] == "demand" and outcome.get("deadline_met") is not None:
            for allocation in twin.allocations.values():
                allocation[3] += int(outcome["deadline_met"])
                allocation[4] += 1
        elif outcome["kind"] == "decision" and "reward" in outcome["effect"]:
            for kind, allocation in list(twin.allocations.items()):
                if allocation[0] == outcome["decision_id"]:
                    model_name = getattr(self.config, dict(ALLOCATIONS)[kind])
                    allocator, _ = self.slots[model_name].current()
                    allocator.update(allocation[1], allocation[2], outcome["effect"]["reward"])
                    allocation[4] = 0   # rewarded directly: do not reward it again from demand outcomes
                    self.metrics.learned.labels(self.tier, self.config.instance_id, model_name).inc()
