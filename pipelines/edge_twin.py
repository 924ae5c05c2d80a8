"""The edge digital twin: one per cell, at the base station / MEC site; decides in near real time.

Reading order: configuration, the **data module** (per-cell twins built from the
gNB/MEC cell reports and the local twins' summaries), the **service module**
(handover from a SINR forecast with hysteresis, PRB and MEC shares from contextual
bandits rewarded by outcomes, twin migration between sites), :class:`EdgeTwin` (both
modules for a set of cells, with no Kafka inside) and the **communication module**
(:class:`EdgeTwinAgent`: routes Kafka records to an EdgeTwin, ``tiertwin run edge``).

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
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from pydantic import BaseModel, ConfigDict, Field

from tiertwin.connectors.kafka import KafkaRecord, KeyHashCachePartitioner
from tiertwin.pipelines.agent import AgentConfig, TwinAgent, decision_id, decision_stamps
from tiertwin.pipelines.features import cell_context, sinr_forecast_features
from tiertwin.pipelines.forecasting import HorizonBuffer
from tiertwin.pipelines.geometry import RadioGeometry
from tiertwin.pipelines.learners import HANDOVER, MEC_SHARE, PRB_SHARE, allocation_reward
from tiertwin.pipelines.models import ModelSlot, features_to_parameters
from tiertwin.pipelines.pretrain import load_pretrained
from tiertwin.topics import ACTIONS_EDGE, CELL_REPORTS, EDGE_CHANGELOG, EDGE_STATE, MIGRATIONS, SUMMARIES


class EdgeTwinConfig(BaseModel):
    """The edge twin's knobs (no topics: :class:`EdgeTwin` needs none of them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cells: list[int] = Field(default_factory=list, description="Cells this instance serves; empty = every cell of its partitions")
    hysteresis_db: float = Field(3.0, ge=0, le=30)
    handover_horizon_s: float = Field(0.5, gt=0, le=10, description="How far ahead the SINR forecast looks")
    scenario: str | None = Field(None, description=(
        "The network this edge runs in (a simulator preset name or scenario YAML): its sites' positions, sector "
        "boresights and 3GPP model give the SINR forecaster the geometry of each UE's move (None: no geometry)"))
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


class EdgeAgentConfig(AgentConfig, EdgeTwinConfig):
    """Configuration of one edge agent instance (``tiertwin run edge --config FILE``): the twin's knobs and its topics."""

    group_id: str = "tiertwin-edge"
    changelog_topic: str = EDGE_CHANGELOG
    summaries_topic: str = SUMMARIES
    cell_reports_topic: str = CELL_REPORTS
    migrations_topic: str = MIGRATIONS
    edge_state_topic: str = EDGE_STATE
    actions_topic: str = ACTIONS_EDGE


# =============================================================================================
# Data module: per-cell twins
# =============================================================================================
def summary_sinr(s: dict) -> tuple[float, float | None]:
    """The serving and best-neighbour SINR "now" of a LocalSummary: the window's latest samples where the
    summary carries them (v2), else the denoised values (a v1 producer). Denoising lags a moving UE's radio
    by about a window, which a forecast from "now" would have to make up.

    >>> summary_sinr({"sinr_db": 10.0, "sinr_last_db": 12.5, "best_neighbour_sinr_db": 4.0})
    (12.5, 4.0)
    """
    serving = s.get("sinr_last_db")
    neighbour = s.get("best_neighbour_sinr_last_db")
    return (s["sinr_db"] if serving is None else serving,
            s.get("best_neighbour_sinr_db") if neighbour is None else neighbour)


class UEView:
    """What the edge knows of one UE from its summaries (enough to forecast and to migrate).

    Its position is the latest summary's; its velocity points along the move between its last two summaries
    (a jump longer than the speed allows, a highway lane wrapping around, keeps the heading before it),
    at the latest summary's speed.

    >>> view = UEView("ue-1")
    >>> for t, x in ((0, 0.0), (100, 3.0), (200, 6.0)):
    ...     view.update({"window_end_ms": t, "sinr_db": 5.0, "sinr_trend_db_per_s": 0.0, "best_neighbour_cell": None,
    ...                  "speed_mps": 30.0, "x_m": x, "y_m": 0.0})
    >>> view.position, view.velocity
    ((6.0, 0.0), (30.0, 0.0))
    """

    position: tuple[float, float] | None = None     # class defaults: views pickled before these existed
    velocity: tuple[float, float] = (0.0, 0.0)

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

    def update(self, s: dict) -> None:
        """Fold one LocalSummary in (its serving cell is this view's cell)."""
        dt = (s["window_end_ms"] - self.ts_ms) / 1000.0
        sinr_now, neighbour_now = summary_sinr(s)
        neighbour = None
        if s["best_neighbour_cell"] is not None and neighbour_now is not None:
            trend = 0.0
            if self.neighbour is not None and self.neighbour[0] == s["best_neighbour_cell"] and 0 < dt <= 5.0:
                trend = (neighbour_now - self.neighbour[1]) / dt
            neighbour = (s["best_neighbour_cell"], neighbour_now, trend)
        self.neighbour = neighbour[:2] if neighbour else None
        self.neighbour_trend = neighbour[2] if neighbour else 0.0
        self._move(s, dt)
        self.ts_ms, self.sinr_db, self.trend, self.speed = s["window_end_ms"], sinr_now, s["sinr_trend_db_per_s"], s["speed_mps"]
        self.summaries += 1

    def _move(self, s: dict, dt: float) -> None:
        """Position and velocity from a summary (see the class docstring)."""
        x, y, speed = s.get("x_m"), s.get("y_m"), float(s.get("speed_mps") or 0.0)
        if x is None or y is None:
            return
        heading = self.velocity
        if self.position is not None and 0 < dt <= 5.0:
            dx, dy = x - self.position[0], y - self.position[1]
            step = math.hypot(dx, dy)
            if 1e-6 < step <= 2.0 * speed * dt + 1.0:
                heading = (dx / step, dy / step)
        norm = math.hypot(*heading)
        self.velocity = (heading[0] / norm * speed, heading[1] / norm * speed) if norm > 0 else (0.0, 0.0)
        self.position = (float(x), float(y))


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


def forecast_features(view: UEView, cell_id: int, horizon_s: float, geometry: RadioGeometry | None = None,
                      loads=None) -> list[tuple[str, int, dict[str, float]]]:
    """``(role, cell, features)`` of the forecasts a UE view asks for: its serving cell ``cell_id`` and, if
    it has one, its best neighbour (:func:`~tiertwin.pipelines.features.sinr_forecast_features`, each
    with the other cell's SINR); with a ``geometry`` and the UE's position, also the deterministic SINR change
    of each cell over the horizon and the shadowing's mean reversion
    (:meth:`~tiertwin.pipelines.geometry.RadioGeometry.features`, cell ``loads`` held).

    >>> view = UEView("ue-1")
    >>> view.sinr_db, view.trend, view.speed, view.neighbour = 5.0, -2.0, 10.0, (4, 9.0)
    >>> [(role, cell, x["gap_x_speed_h"], x["neighbour"]) for role, cell, x in forecast_features(view, 3, 0.5)]
    [('serving', 3, 2.0, 0.0), ('neighbour', 4, -2.0, 1.0)]
    """
    neighbour = view.neighbour
    out = [("serving", cell_id, sinr_forecast_features(view.sinr_db, view.trend, view.speed, horizon_s,
                                                        neighbour[1] if neighbour is not None else None))]
    if neighbour is not None:
        out.append(("neighbour", neighbour[0], sinr_forecast_features(neighbour[1], view.neighbour_trend, view.speed,
                                                                       horizon_s, view.sinr_db, neighbour=True)))
    if geometry is not None and view.position is not None:
        geo = geometry.features(view.position, view.velocity, horizon_s,
                                [(cell, x["sinr_db"]) for _, cell, x in out], loads)
        for (_, _, x), g in zip(out, geo):
            x.update(g)
    return out


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


ALLOCATIONS = (("prb_share", "prb_model"), ("mec_share", "mec_model"))
SUMMARY_DECISIONS = ("migration", "handover")               # the kinds a LocalSummary can lead to
REPORT_DECISIONS = tuple(kind for kind, _ in ALLOCATIONS)   # the kinds a cell report can lead to


# =============================================================================================
# The edge twin: data and service modules for a set of cells, no Kafka inside
# =============================================================================================
@dataclass
class EdgeOutput:
    """What one record did to an :class:`EdgeTwin`: the records to send and what to count."""

    decisions: list[dict] = field(default_factory=list)    # Decision records (key: their cell_id)
    migrations: list[dict] = field(default_factory=list)   # TwinMigration records for other instances (key: to_cell)
    edge_state: dict | None = None                         # the cell report to forward, with the twin's UE count
    touched: list[int] = field(default_factory=list)       # cells whose twins changed (to checkpoint)
    learned: list[str] = field(default_factory=list)       # models that learned one example from the record
    replayed: bool = False                                 # the record is already reflected in the twin's state
    adopted: bool = False                                  # a UE's twin handed over by another instance was adopted


class EdgeTwin:
    """The edge twins of a set of cells and their UEs' views. No Kafka inside.

    Feed it decoded records: ``observe_summary(local_summary)`` (UE views, handover, migration),
    ``observe_cell_report(edge_state)`` (cell state, departed UEs, PRB / MEC shares),
    ``adopt(twin_migration)`` (a UE's twin from another instance), ``learn(outcome)`` (bandit
    rewards), ``swap_model(model_update)``. The first two return an :class:`EdgeOutput` with
    complete Decision, TwinMigration and EdgeState records; ``export(ue_id, to_cell)`` is a UE's
    twin as a TwinMigration. Its state (cell twins, UE index, handed-over twins, models) pickles
    whole; ``holds_cell`` (which cells' summaries reach this twin, when that depends on Kafka
    partitions) is not pickled: set it again after loading.

    Decision ids default to ``edge/<kind>/<ue_id>/<window_end_ms>`` for a summary's decisions and
    ``edge/<kind>/<cell_id>/<ts_ms>`` for a report's (the same record, the same id); the agent
    passes ids and provenance from the input record's coordinates instead.

    >>> twin = EdgeTwin()
    >>> report = {"cell_id": 0, "site_id": 0, "ts_ms": 1_000, "attached_ues": 2, "prb_utilization": 0.5,
    ...           "cell_load_mbps": 300.0, "mean_sinr_db": 15.0, "mec_queue_gcycles": 1.0, "mec_utilization": 0.4,
    ...           "mec_capacity_gcps": 100.0, "handovers": 0, "emitted_ns": 0}
    >>> out = twin.observe_cell_report(report)
    >>> [(d["decision_id"], d["kind"], d["parameters"]["share"] in (0.25, 0.5, 0.75, 1.0)) for d in out.decisions]
    [('edge/prb_share/0/1000', 'prb_share', True), ('edge/mec_share/0/1000', 'mec_share', True)]
    >>> out.edge_state["attached_ues"], out.touched
    (2, [0])
    >>> summary = {"ue_id": "ue-1", "serving_cell": 0, "window_start_ms": 900, "window_end_ms": 1_000, "sinr_db": 4.0,
    ...            "sinr_trend_db_per_s": 0.0, "best_neighbour_cell": 1, "best_neighbour_sinr_db": 12.0, "speed_mps": 10.0}
    >>> [(d["kind"], d["target"], d["twin_site"]) for d in twin.observe_summary(summary).decisions]
    [('handover', 'cell:1', 'edge')]
    >>> twin.ue_cell, twin.export("ue-1", to_cell=1)["summaries"]
    ({'ue-1': 0}, 1)
    """

    def __init__(self, config: EdgeTwinConfig | None = None, models: Mapping[str, tuple[Any, int]] | None = None,
                 holds_cell: Callable[[int], bool] | None = None):
        """``models``: model name -> ``(model, version)``; a model not given is the shipped pretrained one.
        ``holds_cell``: whether a cell's summaries reach this twin when ``config.cells`` is empty
        (the agent answers from its partitions); None: every cell's do."""
        self.config = config = config or EdgeTwinConfig()
        models = models or {}
        self.slots: dict[str, ModelSlot] = {}
        for name in (config.handover_model, config.prb_model, config.mec_model):
            model, version = models[name] if name in models else load_pretrained(name)
            self.slots[name] = ModelSlot(name, model, version)
        self.twins: dict[str, CellTwin] = {}                   # str(cell_id) -> its twin
        self.ue_cell: dict[str, int] = {}                      # UE -> the cell whose twin holds its view
        self.site_of: dict[int, int] = {}                      # cell -> its MEC site (from its reports)
        self.handed_in: OrderedDict[str, dict] = OrderedDict()  # ue -> TwinMigration, until its first summary here
        self.holds_cell = holds_cell
        self._cells = frozenset(config.cells)
        self._geometry = RadioGeometry.from_scenario(config.scenario) if config.scenario else None

    # -- state ---------------------------------------------------------------------------------
    def cell(self, cell_id: int) -> CellTwin:
        """The cell's twin (created empty on first sight)."""
        key = str(cell_id)
        twin = self.twins.get(key)
        if twin is None:
            twin = self.twins[key] = CellTwin(cell_id)
        return twin

    def restore_cell(self, twin: CellTwin) -> CellTwin:
        """Take a cell twin loaded from a checkpoint: keep it and index its UEs and site."""
        self.twins[str(twin.cell_id)] = twin
        for ue_id in twin.ues:
            self.ue_cell[ue_id] = twin.cell_id
        if twin.site_id is not None:
            self.site_of[twin.cell_id] = twin.site_id
        return twin

    def serves(self, cell_id: int) -> bool:
        """Whether this twin decides for ``cell_id`` (``config.cells``; empty = every cell)."""
        return not self._cells or cell_id in self._cells

    def holds(self, cell_id: int) -> bool:
        """Whether ``cell_id``'s summaries reach this twin (its cell list, else ``holds_cell``, else yes)."""
        if self._cells:
            return cell_id in self._cells
        return self.holds_cell is None or self.holds_cell(cell_id)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["holds_cell"] = None      # the agent's (partitions): not part of the twin
        return state

    def __setstate__(self, state: dict) -> None:
        # Slots pickle whole (version, revision, shadow); pickles made before that carry their fields as tuples.
        if isinstance(state["slots"], list):
            state["slots"] = {name: ModelSlot(name, model, version, swaps) for name, model, version, swaps in state["slots"]}
        self.__dict__.update(state)

    def swap_model(self, update: dict) -> bool:
        """Take a ModelUpdate record (a newer version of one of this twin's models, or a command); True if taken.

        The handover forecaster's new versions run in shadow until promoted; the bandits' swap in once verified
        (nothing scores them yet). Raises :class:`~tiertwin.pipelines.models.ModelRejected` before anything is
        unpickled if the update is unsigned, badly signed or does not match its digest.
        """
        slot = self.slots.get(update["model_name"])
        return slot is not None and slot.offer(update)

    # -- decisions -----------------------------------------------------------------------------
    @staticmethod
    def _provenance(record: dict, ts_ms: int, decision_ids: Mapping[str, str] | None, stamps: dict | None,
                    id_suffix: str) -> tuple[Mapping[str, str] | str, dict]:
        """The decision ids (kind -> id, else the suffix of ``edge/<kind>/<suffix>``) and provenance to decide with."""
        if stamps is None:
            stamps = {"source_topic": "edge", "source_partition": 0, "source_offset": 0, "source_ts_ms": ts_ms,
                      "source_emitted_ns": record.get("emitted_ns", 0), "received_ns": time.time_ns(), "decided_ns": 0}
        return (decision_ids if decision_ids is not None else id_suffix), stamps

    @staticmethod
    def _decision(kind: str, ids: Mapping[str, str] | str, stamps: dict, *, target: str, cell_id: int,
                  ue_id: str | None, parameters: dict, model: str, version: int, confidence: float,
                  revision: int = 0) -> dict:
        did = f"edge/{kind}/{ids}" if isinstance(ids, str) else ids[kind]
        return {"decision_id": did, "tier": "edge", "kind": kind, "ue_id": ue_id,
                "cell_id": cell_id, "subject_id": None, "target": target, "parameters": parameters,
                "model_name": model, "model_version": version, "model_revision": revision,
                "confidence": min(1.0, max(0.0, confidence)),
                **stamps, "decided_ns": time.time_ns(), "twin_site": "edge"}

    # -- summaries: UE views, migration, handover ----------------------------------------------
    def observe_summary(self, summary: dict, *, decision_ids: Mapping[str, str] | None = None,
                        stamps: dict | None = None) -> EdgeOutput:
        """Fold one LocalSummary into its serving cell's twin; decide a migration (the UE came from
        another site) and a handover (the neighbour's forecast wins), hand the UE's twin over if its
        next cell is not held here.

        ``decision_ids``: kind (``migration``, ``handover``) -> id; ``stamps``: the Decision's provenance
        fields (see :func:`~tiertwin.pipelines.agent.decision_stamps`). A summary of a cell this twin
        does not serve changes nothing.
        """
        out = EdgeOutput()
        ue_id, cell_id = summary["ue_id"], summary["serving_cell"]
        if not self.serves(cell_id):
            return out
        ids, stamps = self._provenance(summary, summary["window_end_ms"], decision_ids, stamps,
                                       f"{ue_id}/{summary['window_end_ms']}")
        twin = self.cell(cell_id)
        out.touched.append(cell_id)
        view = twin.ues.get(ue_id)
        if view is None:
            view = self._arrive(ue_id, twin, ids, stamps, out)
        elif summary["window_end_ms"] <= view.ts_ms:
            out.replayed = True
            return out
        else:   # the same cell as last time: the SINR it forecast can be checked now
            self._learn_forecast(view, summary, out)
        view.update(summary)
        features = self._forecast_features(view, cell_id)
        self._remember_forecasts(view, features)
        self._maybe_handover(twin, view, features, ids, stamps, out)
        self._maybe_hand_off(twin, view, out)
        return out

    def _arrive(self, ue_id: str, twin: CellTwin, ids, stamps: dict, out: EdgeOutput) -> UEView:
        """A UE new to this cell: move its view from its previous cell here, or take the one another
        instance handed over (migrating sites if they differ)."""
        previous_cell = self.ue_cell.get(ue_id)
        previous = self.twins.get(str(previous_cell)) if previous_cell is not None else None
        view = previous.ues.pop(ue_id, None) if previous is not None else None
        if previous is not None:
            out.touched.append(previous_cell)
        old_site = self.site_of.get(previous_cell) if previous_cell is not None else None
        handed = self.handed_in.pop(ue_id, None)
        if view is None and handed is not None:
            view, previous_cell, old_site = UEView.from_migration(handed), handed["from_cell"], handed["from_site"]
            out.adopted = True
        view = view or UEView(ue_id)
        twin.ues[ue_id] = view
        self.ue_cell[ue_id] = twin.cell_id
        new_site = self.site_of.get(twin.cell_id)
        if old_site is not None and new_site is not None and old_site != new_site:
            out.decisions.append(self._decision(
                "migration", ids, stamps, target=f"site:{new_site}", cell_id=twin.cell_id, ue_id=ue_id,
                parameters={"from_site": float(old_site), "to_site": float(new_site), "from_cell": float(previous_cell),
                            "summaries": float(view.summaries), "handed_over": float(not self.holds(previous_cell))},
                model="twin-migration", version=0, confidence=1.0))
        return view

    def _learn_forecast(self, view: UEView, s: dict, out: EdgeOutput) -> None:
        """Teach the forecaster the forecasts whose horizon has come, each with the SINR its cell has now.

        The forecaster learns at the horizon it is asked for (``handover_horizon_s``, give or take one
        summary), not from one summary to the next: a model taught 0.2 s steps and asked 0.5 s ahead
        is wrong by construction. A forecast of a cell the UE now neither is served by nor sees as its
        best neighbour has no label and is dropped."""
        buffer = getattr(view, "forecasts", None)
        if buffer is None:
            return
        now_ms = s["window_end_ms"]
        serving_now, neighbour_now = summary_sinr(s)
        now_sinr = {s["serving_cell"]: serving_now}
        if s["best_neighbour_cell"] is not None and neighbour_now is not None:
            now_sinr.setdefault(s["best_neighbour_cell"], neighbour_now)
        before = {s["serving_cell"]: view.sinr_db}     # the view still holds the previous summary
        if view.neighbour is not None:
            before.setdefault(view.neighbour[0], view.neighbour[1])
        horizon_ms = self.config.handover_horizon_s * 1000.0
        for t0, (cell, x) in buffer.due(now_ms):
            if cell not in now_sinr:
                continue
            label = now_sinr[cell]
            if cell in before and now_ms > view.ts_ms:   # the SINR at exactly t0 + horizon, between two summaries
                share = min(max((t0 + horizon_ms - view.ts_ms) / (now_ms - view.ts_ms), 0.0), 1.0)
                label = before[cell] + share * (label - before[cell])
            self.slots[self.config.handover_model].learn(x, label)
            out.learned.append(self.config.handover_model)

    def _remember_forecasts(self, view: UEView, features: list[tuple[str, int, dict[str, float]]]) -> None:
        """Keep this summary's forecast features until their horizon comes (see :meth:`_learn_forecast`)."""
        buffer = getattr(view, "forecasts", None)
        if buffer is None:
            buffer = view.forecasts = HorizonBuffer(self.config.handover_horizon_s)
        for _, cell, x in features:
            buffer.push(view.ts_ms, (cell, x))

    def _forecast_features(self, view: UEView, cell_id: int) -> list[tuple[str, int, dict[str, float]]]:
        """:func:`forecast_features` of the view now, with this twin's geometry and its cells' latest loads
        (once per summary: the forecasts remembered and the handover decided share them)."""
        geometry, loads = self.__dict__.get("_geometry"), None
        if geometry is not None:
            loads = self.__dict__.get("_loads")
            if loads is None:       # rebuilt after a cell report changed them
                loads = self._loads = geometry.loads({twin.cell_id: twin.state["prb_utilization"]
                                                      for twin in self.twins.values() if twin.state is not None})
        return forecast_features(view, cell_id, self.config.handover_horizon_s, geometry, loads)

    def _maybe_handover(self, twin: CellTwin, view: UEView, features: list[tuple[str, int, dict[str, float]]], ids,
                        stamps: dict, out: EdgeOutput) -> None:
        c = self.config
        if view.neighbour is None or view.ts_ms - view.last_handover_ms < c.handover_cooldown_ms:
            return
        slot = self.slots[c.handover_model]
        model, version = slot.current()
        (_, _, serving_x), (_, _, neighbour_x) = features
        serving, neighbour = model.predict_one(serving_x), model.predict_one(neighbour_x)
        margin = handover_margin(serving, neighbour, c.hysteresis_db)
        if margin <= 0:
            return
        view.last_handover_ms = view.ts_ms
        parameters = {"serving_forecast_db": serving, "neighbour_forecast_db": neighbour, "margin_db": margin,
                      "hysteresis_db": c.hysteresis_db, **features_to_parameters(serving_x),
                      **{f"neighbour_{k}": v for k, v in features_to_parameters(neighbour_x).items()}}
        out.decisions.append(self._decision(
            "handover", ids, stamps, target=f"cell:{view.neighbour[0]}", cell_id=twin.cell_id, ue_id=view.ue_id,
            parameters=parameters, model=slot.name, version=version, confidence=_sigmoid(margin),
            revision=slot.revision))
        self._maybe_hand_off(twin, view, out, decided_cell=view.neighbour[0])

    def _maybe_hand_off(self, twin: CellTwin, view: UEView, out: EdgeOutput, decided_cell: int | None = None) -> None:
        """Hand the UE's view to the instance of the cell it is about to move to, if that is not this one."""
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
        out.migrations.append(view.to_migration(twin.cell_id, self.site_of.get(twin.cell_id), to_cell, reason))

    # -- migration hand-off --------------------------------------------------------------------
    def export(self, ue_id: str, to_cell: int, reason: str = "handover-decided") -> dict:
        """The UE's twin as a TwinMigration record for the twin of ``to_cell`` (KeyError if the UE is not here).
        The UE stays here until it has been silent for ``ue_timeout_ms``."""
        cell_id = self.ue_cell[ue_id]
        view = self.twins[str(cell_id)].ues[ue_id]
        return view.to_migration(cell_id, self.site_of.get(cell_id), to_cell, reason)

    def adopt(self, migration: dict) -> bool:
        """Take a UE's twin handed over by another instance (a TwinMigration record); it becomes the UE's
        view at its first summary here. False if ignored: not a cell served here, the UE is already here
        (its summaries came first: ours is as new), or a newer hand-over is already kept."""
        ue_id = migration["ue_id"]
        if not self.serves(migration["to_cell"]) or ue_id in self.ue_cell:
            return False
        known = self.handed_in.get(ue_id)
        kept = known is None or migration["ts_ms"] >= known["ts_ms"]
        if kept:
            self.handed_in[ue_id] = migration
            self.handed_in.move_to_end(ue_id)
        while len(self.handed_in) > self.config.pending_handoffs:
            self.handed_in.popitem(last=False)
        return kept

    # -- cell reports: state, forwarding, allocation -------------------------------------------
    def observe_cell_report(self, report: dict, *, decision_ids: Mapping[str, str] | None = None,
                            stamps: dict | None = None) -> EdgeOutput:
        """Take one EdgeState report of a cell: its twin's state and site, the UEs gone silent there for
        ``ue_timeout_ms`` dropped, the report to forward (``attached_ues`` at least the twin's count) and,
        at most every ``allocation_interval_ms``, a ``prb_share`` and a ``mec_share`` decision.

        ``decision_ids``: kind (``prb_share``, ``mec_share``) -> id; ``stamps`` as for :meth:`observe_summary`.
        """
        out = EdgeOutput()
        cell_id = report["cell_id"]
        if not self.serves(cell_id):
            return out
        ids, stamps = self._provenance(report, report["ts_ms"], decision_ids, stamps, f"{cell_id}/{report['ts_ms']}")
        twin = self.cell(cell_id)
        out.touched.append(cell_id)
        if twin.state is not None and report["ts_ms"] < twin.state["ts_ms"]:
            out.replayed = True
            return out
        twin.state, twin.site_id = report, report["site_id"]
        self._loads = None          # the geometry's cell loads (see _forecast_features)
        self.site_of[cell_id] = report["site_id"]
        gone = [ue for ue, view in twin.ues.items() if report["ts_ms"] - view.ts_ms > self.config.ue_timeout_ms]
        for ue in gone:   # left for a cell of another instance (or went quiet)
            del twin.ues[ue]
            if self.ue_cell.get(ue) == cell_id:
                del self.ue_cell[ue]
        out.edge_state = {**report, "attached_ues": max(report["attached_ues"], len(twin.ues)), "emitted_ns": time.time_ns()}
        if report["ts_ms"] - twin.last_allocation_ms >= self.config.allocation_interval_ms:
            twin.last_allocation_ms = report["ts_ms"]
            for kind, model_field in ALLOCATIONS:
                out.decisions.append(self._allocate(twin, kind, getattr(self.config, model_field), ids, stamps, out))
        return out

    def _allocate(self, twin: CellTwin, kind: str, model_name: str, ids, stamps: dict, out: EdgeOutput) -> dict:
        """The next share of ``kind`` for the cell; first rewards the last one with the demands measured since."""
        slot = self.slots[model_name]
        allocator, version = slot.current()
        context = cell_context(twin.state)
        previous = twin.allocations.get(kind)
        if previous is not None and previous[4] > 0:
            _, share, prev_context, met, measured = previous
            # through the slot: a shadow allocator is scored on the same reward (docs/twins/model-lifecycle.md)
            slot.learn({**prev_context, "share": share}, allocation_reward(met / measured, share, self.config.share_cost))
            allocator, version = slot.current()     # a promotion or a rollback may just have happened
            out.learned.append(model_name)
        share = allocator.pull(context)
        expected = allocator.expected_reward(share, context)
        decision = self._decision(kind, ids, stamps, target="", cell_id=twin.cell_id, ue_id=None,
                                  parameters={"share": share, "expected_reward": expected, **features_to_parameters(context)},
                                  model=slot.name, version=version, revision=slot.revision,
                                  confidence=min(1.0, max(0.0, expected + self.config.share_cost * share)))
        twin.allocations[kind] = [decision["decision_id"], share, context, 0, 0]
        return decision

    # -- outcomes: rewards for the bandits -----------------------------------------------------
    def learn(self, outcome: dict) -> list[str]:
        """Reward the allocation bandits from an Outcome; the models that learned from it now.

        A demand's outcome in a cell counts toward that cell's open allocations (the reward, share of
        deadlines met minus ``share_cost`` x share, is learned at the cell's next allocation); a decision
        outcome with ``effect["reward"]`` naming an allocation rewards that one at once, and only once.
        """
        cell_id = outcome.get("cell_id")
        twin = self.twins.get(str(cell_id)) if cell_id is not None else None
        if twin is None:
            return []
        learned = []
        if outcome["kind"] == "demand" and outcome.get("deadline_met") is not None:
            for allocation in twin.allocations.values():
                allocation[3] += int(outcome["deadline_met"])
                allocation[4] += 1
        elif outcome["kind"] == "decision" and "reward" in outcome["effect"]:
            for kind, allocation in list(twin.allocations.items()):
                if allocation[0] == outcome["decision_id"]:
                    model_name = getattr(self.config, dict(ALLOCATIONS)[kind])
                    self.slots[model_name].learn({**allocation[2], "share": allocation[1]}, outcome["effect"]["reward"])
                    allocation[4] = 0   # rewarded directly: do not reward it again from demand outcomes
                    learned.append(model_name)
        return learned


# =============================================================================================
# Communication module: the twin as a Kafka service
# =============================================================================================
class EdgeTwinAgent(TwinAgent):
    """The edge twin deployed as a Kafka service: routes records to an :class:`EdgeTwin` and sends what
    it returns. ``EdgeTwinAgent(EdgeAgentConfig(...)).run(stop_event)``.

    Decision ids and provenance come from the input record's coordinates, so a replay after a crash
    yields the same ids; the cell twins are checkpointed to the changelog (``self.twins`` is the
    EdgeTwin's ``twins``); which cells' summaries reach this instance follows its partitions.
    """

    tier = "edge"
    model_names = (HANDOVER, PRB_SHARE, MEC_SHARE)
    config: EdgeAgentConfig

    def __init__(self, config: EdgeAgentConfig, settings=None):
        self.model_names = (config.handover_model, config.prb_model, config.mec_model)
        super().__init__(config, settings)
        self.cells = set(config.cells)
        self._partitioner = KeyHashCachePartitioner()
        self._summary_partitions = 0
        twin_config = EdgeTwinConfig(**config.model_dump(include=set(EdgeTwinConfig.model_fields)))
        self.edge_twin = EdgeTwin(twin_config, {name: slot.current() for name, slot in self.slots.items()},
                                  holds_cell=self.holds)
        self.slots.update(self.edge_twin.slots)     # hot swaps (offer_model) reach the twin's decisions
        self.edge_twin.twins = self.twins           # checkpointed and restored by TwinAgent

    @property
    def ue_cell(self) -> dict[str, int]:
        return self.edge_twin.ue_cell

    @property
    def site_of(self) -> dict[int, int]:
        return self.edge_twin.site_of

    @property
    def handed_in(self) -> OrderedDict[str, dict]:
        return self.edge_twin.handed_in

    def group_topics(self) -> list[str]:
        return [self.config.summaries_topic, self.config.cell_reports_topic, self.config.migrations_topic]

    def open(self) -> None:
        super().open()
        self._summary_partitions = len(self.source.consumer.partitions_for_topic(self.config.summaries_topic) or ())

    def side_topics(self) -> dict[str, bool]:
        return {self.config.models_topic: True, self.config.outcomes_topic: False}

    def serves(self, cell_id: int) -> bool:
        return self.edge_twin.serves(cell_id)

    def holds(self, cell_id: int) -> bool:
        """Whether this instance gets ``cell_id``'s summaries (its cell list, else its partitions)."""
        if self.cells:
            return cell_id in self.cells
        if not self._summary_partitions:
            return True
        return self._partitioner.key_partition(str(cell_id).encode(), self._summary_partitions) in self._held

    def restore_twin(self, twin: Any) -> Any:
        return self.edge_twin.restore_cell(twin) if isinstance(twin, CellTwin) else twin

    def process(self, batch: list[KafkaRecord], received_ns: int) -> None:
        c = self.config
        counts: dict[str, int] = {}
        handlers = {c.summaries_topic: ("tiertwin.LocalSummary", "serving_cell", self.on_summary),
                    c.cell_reports_topic: ("tiertwin.EdgeState", "cell_id", self.on_cell_report),
                    c.migrations_topic: ("tiertwin.TwinMigration", "to_cell", self.on_migration)}
        for record in batch:
            counts[record.topic] = counts.get(record.topic, 0) + 1
            schema, cell_field, handle = handlers[record.topic]
            if record.schema != schema:
                self.reject(record, "wrong-schema", f"{record.topic} carries {schema}, got {record.schema}")
                continue
            try:
                handle(record, received_ns)
            except Exception as exc:  # one record must not stop the twin: dead-letter it with the cause
                self.reject(record, "processing-error", f"{type(exc).__name__}: {exc}")
                key = str(record.value.get(cell_field))
                if key in self.twins:   # it may have changed before failing: checkpoint it
                    self.touch(key, record.partition)
        for topic, n in counts.items():
            self.metrics.records.labels(self.tier, c.instance_id, topic).inc(n)

    def process_side(self, record: KafkaRecord) -> None:
        if record.topic != self.config.outcomes_topic:
            super().process_side(record)
        elif record.schema != "tiertwin.Outcome":
            self.reject(record, "wrong-schema", f"{record.topic} carries tiertwin.Outcome, got {record.schema}")
        else:
            self.on_outcome(record)

    def on_summary(self, record: KafkaRecord, received_ns: int) -> None:
        out = self.edge_twin.observe_summary(
            record.value, decision_ids={kind: decision_id("edge", kind, record) for kind in SUMMARY_DECISIONS},
            stamps=decision_stamps(record, received_ns))
        self._send(out, record, record.value["serving_cell"])

    def on_cell_report(self, record: KafkaRecord, received_ns: int) -> None:
        out = self.edge_twin.observe_cell_report(
            record.value, decision_ids={kind: decision_id("edge", kind, record) for kind in REPORT_DECISIONS},
            stamps=decision_stamps(record, received_ns))
        self._send(out, record, record.value["cell_id"])

    def on_migration(self, record: KafkaRecord, received_ns: int = 0) -> None:
        """A twin handed over by another instance: the EdgeTwin keeps it until the UE's first summary here
        (not checkpointed: replayed from the last commit after a crash)."""
        self.edge_twin.adopt(record.value)

    def on_outcome(self, record: KafkaRecord) -> None:
        for model_name in self.edge_twin.learn(record.value):
            self.metrics.learned.labels(self.tier, self.config.instance_id, model_name).inc()

    def _send(self, out: EdgeOutput, record: KafkaRecord, cell_id: int) -> None:
        """Checkpoint what changed, send what the twin returned, count it."""
        c, labels = self.config, (self.tier, self.config.instance_id)
        for touched in out.touched:   # the record's cell is on its partition; another keeps its own
            key = str(touched)
            self.touch(key, record.partition if touched == cell_id else self.twin_partition.get(key, record.partition))
        if out.replayed:
            self.metrics.replayed.inc()
        if out.adopted:
            self.metrics.handoffs.labels(*labels, "adopted").inc()
        if out.edge_state is not None:
            self.emit(c.edge_state_topic, "EdgeState", out.edge_state, key=out.edge_state["cell_id"])
        for decision in out.decisions:
            self.emit_decision(c.actions_topic, decision, key=decision["cell_id"])
        for migration in out.migrations:
            self.emit(c.migrations_topic, "TwinMigration", migration, key=migration["to_cell"])
            self.metrics.handoffs.labels(*labels, "sent").inc()
        for model_name in out.learned:
            self.metrics.learned.labels(*labels, model_name).inc()
