"""The cloud twin on Apache Beam: cross-tier fusion, global training, models pushed down.

Read top to bottom, the cloud tier is::

    Kafka (summaries, edge state, actions.*, outcomes)      or   a `tiertwin archive` folder
          │ ReadFromKafka (splittable DoFn)                       │ ReadArchive (bounded)
          ▼                                                       ▼
    SplitBySchema ── summaries / edge_states / decisions / outcomes ──┬─► FuseTiers ─► TwinSnapshot
                                                                      │      (per bundle: one CellAggregate per cell
                                                                      │       and window slice; then event-time windows,
                                                                      │       GroupByKey by cell, early/on-time/late panes)
                                                                      └─► TrainGlobalModels ─► ModelUpdate
                                                                             (per bundle: one list of projected rows per
                                                                              window; Decision ⨝ Outcome by decision_id,
                                                                              one global stateful trainer per model)

Snapshots go to ``tiertwin.cloud.snapshots`` and to Parquet partitioned by date/hour;
model updates go to ``tiertwin.models`` (only when they beat the live version);
records that do not decode go to ``tiertwin.deadletters``.

**Records with no cell.** ``Decision.cell_id`` and ``Outcome.cell_id`` are optional. A
record without a cell is valid but cannot be placed in a per-cell snapshot: fusion
skips it and counts it (Beam counter ``cloud-fusion/records_without_cell``); it is not
a dead letter because nothing is wrong with it, and training still uses it (training
joins by ``decision_id``, not by cell).

**Training examples** are placement decisions joined with the outcome that measured
them in the same training window: ``x = parameters_to_features(decision.parameters)``
plus ``x["tier"] = decision.target``, ``y = outcome.latency_ms``. A pair split by a
window boundary (decision at the very end, outcome just after) is not learned from;
with 10 s windows and latencies of tens of ms that is well under 1 % of the pairs.
"""

from __future__ import annotations

import copy
import math
import pickle
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming, WindowedValue
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tiertwin.connectors.kafka import DEAD_LETTER_TOPIC
from tiertwin.errors import ConfigError, JobFailedError
from tiertwin.pipelines import parquet_log
from tiertwin.pipelines.beam_kafka import (DEAD_LETTERS, RECORDS, ReadFromKafka, ReadSpec, WriteToKafka,
                                           dead_letter_key, decode_record)
from tiertwin.pipelines.models import MODELS_TOPIC, deserialize, parameters_to_features, publish_model
from tiertwin.settings import Settings

SUMMARIES, EDGE_STATES, DECISIONS, OUTCOMES = "summaries", "edge_states", "decisions", "outcomes"
STREAMS = {"LocalSummary": SUMMARIES, "EdgeState": EDGE_STATES, "Decision": DECISIONS, "Outcome": OUTCOMES}
CELL_FIELDS = {SUMMARIES: "serving_cell", EDGE_STATES: "cell_id", DECISIONS: "cell_id", OUTCOMES: "cell_id"}
INPUT_TOPICS = ("tiertwin.edge.summaries", "tiertwin.cloud.edge-state", "tiertwin.actions.local",
                "tiertwin.actions.edge", "tiertwin.actions.cloud", "tiertwin.outcomes")
SNAPSHOTS_TOPIC = "tiertwin.cloud.snapshots"
PANES = {PaneInfoTiming.EARLY: "early", PaneInfoTiming.ON_TIME: "on_time", PaneInfoTiming.LATE: "late",
         PaneInfoTiming.UNKNOWN: "unknown"}
PLACEMENT_TIERS = ("local", "edge", "cloud")


class CloudTwinConfig(BaseModel):
    """What the cloud twin fuses, how it windows, what it trains and where it writes.

    >>> CloudTwinConfig(window_s=10, slide_s=5).windowing()
    <apache_beam.transforms.window.SlidingWindows object at ...>
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_s: float = Field(10.0, gt=0, description="Window size (event time).")
    slide_s: float | None = Field(None, gt=0, description="Slide period; None = fixed windows.")
    allowed_lateness_s: float = Field(30.0, ge=0, description="How long a window accepts late records.")
    # Whole seconds: Beam's portable trigger proto carries this delay in ms but reads it back as s.
    early_firing_s: int | None = Field(2, ge=1, description="Early pane every N s of processing time; None = none.")
    input_topics: tuple[str, ...] = INPUT_TOPICS
    snapshots_topic: str | None = SNAPSHOTS_TOPIC
    snapshots_dir: Path | None = None
    dead_letter_topic: str | None = Field(DEAD_LETTER_TOPIC, description="None: not written by this job (another "
                                                                       "job reading the same topics writes them).")
    models_topic: str | None = MODELS_TOPIC
    fuse: bool = Field(True, description="Fuse the tiers into snapshots.")
    train: bool = Field(True, description="Train the global models and publish the better ones.")
    train_in_own_process: bool = Field(True, description="Where the SDK worker runs in the launching process "
                                       "(LOOPBACK), run training as a second streaming job in a child process.")
    training_topics: tuple[str, ...] | None = Field(None, description="What that training job reads; None: the "
                                                    "input topics, less those the topology gives a schema training "
                                                    "does not use.")
    train_window_s: float = Field(10.0, gt=0, description="Training window (fixed, event time).")
    model_names: tuple[str, ...] = ("demand-latency", "handover-sinr")
    min_examples: int = Field(50, ge=1, description="Examples learned since the last publish before a candidate is judged.")
    min_improvement: float = Field(0.0, ge=0, lt=1, description="Relative MAE gain over the live model needed to publish.")
    eval_examples: int = Field(2000, ge=1, description="Examples of a window (evenly spaced) the candidate and live "
                                                       "models are judged on and the prequential MAE is taken over.")
    start: str = Field("latest", pattern="^(earliest|latest)$")
    max_out_of_order_ms: int = Field(200, ge=0, description="Watermark = newest event time read minus this.")
    idle_after_s: float = Field(0.5, gt=0, description="A partition this long without records is idle.")
    read_interval_s: float = Field(0.15, gt=0, description="A caught-up partition is read again after this long "
                                                           "(every read is a bundle, which costs CPU on Prism).")
    read_max_s: float = Field(0.1, gt=0, description="A partition with a backlog hands its records on this often.")

    @model_validator(mode="after")
    def _trainable_models(self):
        unknown = [name for name in self.model_names if name not in ("demand-latency", "handover-sinr")]
        if unknown:
            raise ValueError(f"model_names: cannot train {unknown}; trainable: demand-latency, handover-sinr")
        return self

    @model_validator(mode="after")
    def _does_something(self):
        if not (self.fuse or self.train):
            raise ValueError("fuse and train are both off: the job would do nothing")
        return self

    @model_validator(mode="after")
    def _slide_within_window(self):
        if self.slide_s is not None and self.slide_s > self.window_s:
            raise ValueError(f"slide_s={self.slide_s} is larger than window_s={self.window_s}")
        return self

    def training_input_topics(self) -> tuple[str, ...]:
        """The input topics a training-only job needs (EdgeState, for one, trains no model).

        >>> CloudTwinConfig().training_input_topics()  # doctest: +NORMALIZE_WHITESPACE
        ('tiertwin.edge.summaries', 'tiertwin.actions.local', 'tiertwin.actions.edge', 'tiertwin.actions.cloud',
         'tiertwin.outcomes')
        """
        if self.training_topics is not None:
            return self.training_topics
        from tiertwin.connectors.topics import load_topology

        used = training_schemas(self.model_names)
        schemas = {t.name: t.schema_ for t in load_topology().topics}
        topics = tuple(t for t in self.input_topics if schemas.get(t) is None or schemas[t] in used)
        if not topics:
            raise ConfigError(f"training {', '.join(self.model_names)} needs {', '.join(sorted(used))} records; "
                              f"no input topic carries them")
        return topics

    def windowing(self) -> window.WindowFn:
        if self.slide_s is None:
            return window.FixedWindows(self.window_s)
        return window.SlidingWindows(self.window_s, self.slide_s)

    def trigger(self) -> trigger.TriggerFn:
        if not self.early_firing_s and not self.allowed_lateness_s:
            # Nothing to fire but the on-time pane: the default trigger, which batch runners
            # execute natively instead of through the (slow) general Python trigger driver.
            return trigger.DefaultTrigger()
        early = trigger.AfterProcessingTime(self.early_firing_s) if self.early_firing_s else None
        return trigger.AfterWatermark(early=trigger.Repeatedly(early) if early else None,
                                      late=trigger.AfterCount(1))


# -- input -------------------------------------------------------------------------------------
class SplitBySchema(beam.PTransform):
    """``(schema, record)`` -> ``{"summaries": …, "edge_states": …, "decisions": …, "outcomes": …}``.

    Records of other contracts (a topic list that includes, say, telemetry) are counted
    under ``cloud-fusion/records_not_fused`` and not fused.
    """

    def expand(self, records):
        def route(element):
            schema, record = element
            stream = STREAMS.get(schema)
            if stream is None:
                Metrics.counter("cloud-fusion", "records_not_fused").inc()
                return
            yield beam.pvalue.TaggedOutput(stream, record)

        outputs = records | "BySchema" >> beam.FlatMap(route).with_outputs(*STREAMS.values())
        return {stream: outputs[stream] for stream in STREAMS.values()}


class ReadArchive(beam.PTransform):
    """Bounded read of a ``tiertwin archive`` folder (``DIR/topic=<t>/date=…/hour=…/*.parquet``).

    Every archived value is decoded exactly as :class:`ReadFromKafka` decodes a live
    one, so the outputs are the same: ``.records`` and ``.dead_letters``.
    """

    def __init__(self, archive_dir: str | Path, stage: str = "cloud-twin/backfill"):
        super().__init__()
        self.paths = sorted(str(p) for p in Path(archive_dir).glob("topic=*/date=*/hour=*/*.parquet"))
        if not self.paths:
            raise ConfigError(f"no archived records under {archive_dir} (expected topic=*/date=*/hour=*/*.parquet)")
        self.stage = stage

    def expand(self, pbegin):
        stage = self.stage

        def read(path: str):
            import pyarrow.parquet as pq

            from tiertwin.schemas import SchemaRegistry

            registry = SchemaRegistry.default()
            topic = Path(path).parents[2].name.removeprefix("topic=")
            table = pq.read_table(path, columns=["partition", "offset", "timestamp_ms", "key", "value"])
            for row in table.to_pylist():
                yield decode_record(registry, value=row["value"], key=row["key"], topic=topic,
                                    partition=row["partition"], offset=row["offset"],
                                    timestamp_ms=row["timestamp_ms"], stage=stage)

        return (pbegin | "Files" >> beam.Create(self.paths)
                | "Decode" >> beam.FlatMap(read).with_outputs(DEAD_LETTERS, main=RECORDS))


# -- fusion ------------------------------------------------------------------------------------
@dataclass
class CellAggregate:
    """What a TwinSnapshot of one cell and window is computed from, as partial sums that merge.

    Each bundle folds its records into one aggregate per (cell, window) before the shuffle,
    so a few aggregates cross it instead of every record; the aggregates of a window merge
    into what folding all its records at once gives. The p95 needs the values themselves,
    so the latencies are kept (one float per outcome), everything else is counts and sums.

    >>> from tiertwin.schemas.examples import example
    >>> a, b = CellAggregate(), CellAggregate()
    >>> a.add_summary(example("LocalSummary", ue_id="ue-1", sinr_db=10.0))
    >>> b.add_summary(example("LocalSummary", ue_id="ue-2", sinr_db=20.0))
    >>> b.add_outcome(example("Outcome", ue_id="ue-1", latency_ms=12.0, deadline_met=False))
    >>> total = a.merge(b)
    >>> total.summaries, total.sinr_sum, sorted(total.ues), total.latencies, total.missed
    (2, 30.0, ['ue-1', 'ue-2'], [12.0], 1)
    """

    summaries: int = 0
    sinr_sum: float = 0.0
    edge_states: int = 0
    prb_sum: float = 0.0
    queue_sum: float = 0.0
    decisions_by_tier: dict = field(default_factory=dict)
    outcomes: int = 0
    latencies: list = field(default_factory=list)
    judged: int = 0
    missed: int = 0
    ues: set = field(default_factory=set)

    def add_summary(self, r: dict) -> None:
        self.summaries += 1
        self.sinr_sum += r["sinr_db"]
        self.ues.add(r["ue_id"])

    def add_edge_state(self, r: dict) -> None:
        self.edge_states += 1
        self.prb_sum += r["prb_utilization"]
        self.queue_sum += r["mec_queue_gcycles"]

    def add_decision(self, r: dict) -> None:
        tier = r["tier"]
        self.decisions_by_tier[tier] = self.decisions_by_tier.get(tier, 0) + 1
        if r.get("ue_id"):
            self.ues.add(r["ue_id"])

    def add_outcome(self, r: dict) -> None:
        self.outcomes += 1
        if r.get("latency_ms") is not None:
            self.latencies.append(r["latency_ms"])
        if r.get("deadline_met") is not None:
            self.judged += 1
            self.missed += not r["deadline_met"]
        if r.get("ue_id"):
            self.ues.add(r["ue_id"])

    def merge(self, other: "CellAggregate") -> "CellAggregate":
        """Add ``other`` into this aggregate (and return it)."""
        self.summaries += other.summaries
        self.sinr_sum += other.sinr_sum
        self.edge_states += other.edge_states
        self.prb_sum += other.prb_sum
        self.queue_sum += other.queue_sum
        for tier, n in other.decisions_by_tier.items():
            self.decisions_by_tier[tier] = self.decisions_by_tier.get(tier, 0) + n
        self.outcomes += other.outcomes
        self.latencies += other.latencies
        self.judged += other.judged
        self.missed += other.missed
        self.ues |= other.ues
        return self


class CellAggregateCoder(beam.coders.Coder):
    """A CellAggregate as a tuple of primitives (Beam's compiled primitives coder), not a pickle."""

    FIELDS = tuple(f.name for f in fields(CellAggregate))

    def __init__(self):
        self._tuple = beam.coders.FastPrimitivesCoder()

    def encode(self, value: CellAggregate) -> bytes:
        return self._tuple.encode(tuple(getattr(value, name) for name in self.FIELDS))

    def decode(self, encoded: bytes) -> CellAggregate:
        return CellAggregate(*self._tuple.decode(encoded))

    def is_deterministic(self) -> bool:
        return False  # a value, never a key

    def to_type_hint(self):
        return CellAggregate

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


beam.coders.registry.register_coder(CellAggregate, CellAggregateCoder)

# How each stream's record is folded into its cell's aggregate.
ADD_TO_AGGREGATE = {SUMMARIES: CellAggregate.add_summary, EDGE_STATES: CellAggregate.add_edge_state,
                    DECISIONS: CellAggregate.add_decision, OUTCOMES: CellAggregate.add_outcome}


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


def _p95(values: list[float]) -> float | None:
    """95th percentile with linear interpolation (numpy's and polars' ``linear``)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = 0.95 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def snapshot(cell: int, window_start_ms: int, window_end_ms: int, total: CellAggregate,
             pane: str = "unknown") -> dict:
    """A TwinSnapshot of one cell over one window from the merged aggregate of its records.

    >>> from tiertwin.schemas.examples import example
    >>> total = CellAggregate()
    >>> total.add_summary(example("LocalSummary")); total.add_decision(example("Decision"))
    >>> total.add_outcome(example("Outcome"))
    >>> s = snapshot(7, 0, 1000, total, "on_time")
    >>> s["ues"], s["summaries"], s["mean_sinr_db"], s["mean_latency_ms"], s["decisions_by_tier"]
    (1, 1, 14.25, 13.25, {'local': 1})
    """
    latencies = total.latencies
    return {
        "cell_id": int(cell), "window_start_ms": int(window_start_ms), "window_end_ms": int(window_end_ms),
        "pane": pane, "ues": len(total.ues), "summaries": total.summaries, "edge_states": total.edge_states,
        "decisions": sum(total.decisions_by_tier.values()), "outcomes": total.outcomes,
        "mean_sinr_db": _mean(total.sinr_sum, total.summaries),
        "mean_prb_utilization": _mean(total.prb_sum, total.edge_states),
        "mean_mec_queue_gcycles": _mean(total.queue_sum, total.edge_states),
        "mean_latency_ms": _mean(sum(latencies), len(latencies)), "p95_latency_ms": _p95(latencies),
        "deadline_miss_rate": _mean(total.missed, total.judged),
        "decisions_by_tier": dict(total.decisions_by_tier), "emitted_ns": time.time_ns(),
    }


def window_slices_us(windowing: window.WindowFn) -> tuple[int, int]:
    """``(length, offset)`` in µs of the slices of time whose instants all lie in the same windows.

    Every boundary of fixed or sliding windows is ``offset`` plus a multiple of the greatest
    common divisor of size and period, so records can be folded per slice and the slices
    windowed afterwards: each lands in exactly the windows of its records.

    >>> window_slices_us(window.FixedWindows(2)), window_slices_us(window.SlidingWindows(10, 4))
    ((2000000, 0), (2000000, 0))
    """
    if isinstance(windowing, window.FixedWindows):
        return windowing.size.micros, windowing.offset.micros % windowing.size.micros
    if isinstance(windowing, window.SlidingWindows):
        length = math.gcd(windowing.size.micros, windowing.period.micros)
        return length, windowing.offset.micros % length
    raise ConfigError(f"fusion needs fixed or sliding windows, not {type(windowing).__name__}")


class _AggregatePerBundle(beam.DoFn):
    """Fold a bundle's records of one stream into one CellAggregate per cell and window slice.

    A slice (:func:`window_slices_us`) is the finest unit of the windowing: folding per slice
    and windowing the aggregates after gives every window exactly the records it would get
    if each record were windowed, at the cost of a WindowInto per aggregate instead of one
    per record (most of the per-record cost in the Python SDK). Each aggregate leaves at the
    end of the bundle timestamped with its earliest record, so it is as late as that record.
    """

    def __init__(self, stream: str, slice_us: int, offset_us: int):
        self.stream, self.slice_us, self.offset_us = stream, slice_us, offset_us
        self.without_cell = Metrics.counter("cloud-fusion", "records_without_cell")

    def setup(self):
        self._cell_field, self._add = CELL_FIELDS[self.stream], ADD_TO_AGGREGATE[self.stream]

    def start_bundle(self):
        self._open: dict[tuple, list] = {}

    def process(self, record: dict, timestamp=beam.DoFn.TimestampParam):
        cell = record.get(self._cell_field)
        if cell is None:
            self.without_cell.inc()
            return
        micros = timestamp.micros
        key = (cell, micros - (micros - self.offset_us) % self.slice_us)
        entry = self._open.get(key)
        if entry is None:
            entry = self._open[key] = [micros, CellAggregate()]
        elif micros < entry[0]:
            entry[0] = micros
        self._add(entry[1], record)

    def finish_bundle(self):
        for (cell, _), (earliest, aggregate) in self._open.items():
            yield WindowedValue((int(cell), aggregate), Timestamp(micros=earliest), (window.GlobalWindow(),))
        self._open = {}


class _ToSnapshot(beam.DoFn):
    def process(self, element, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        cell, partials = element
        total = CellAggregate()
        for partial in partials:
            total.merge(partial)
        yield snapshot(cell, win.start.micros // 1000, win.end.micros // 1000, total,
                       PANES.get(pane.timing, "unknown"))


class FuseTiers(beam.PTransform):
    """Join the four tier streams by cell and event-time window into TwinSnapshot records.

    Input: ``{"summaries", "edge_states", "decisions", "outcomes"}`` PCollections of
    record dicts with event-time timestamps. Output: TwinSnapshot dicts, one per cell,
    window and pane (early panes every ``early_firing_s`` of processing time, the
    on-time pane when the watermark passes the window end, a late pane per late
    bundle within ``allowed_lateness_s``; panes accumulate, so each is the full view).
    Records are folded into :class:`CellAggregate` per bundle before the shuffle.
    """

    def __init__(self, config: CloudTwinConfig = CloudTwinConfig()):
        super().__init__()
        self.config = config

    def expand(self, streams: dict):
        config = self.config
        windowing = config.windowing()
        slice_us, offset_us = window_slices_us(windowing)
        partials = [records | f"Aggregate {stream}" >> beam.ParDo(
                        _AggregatePerBundle(stream, slice_us, offset_us)).with_output_types(tuple[int, CellAggregate])
                    for stream, records in streams.items()]
        return (partials
                | "AllTiers" >> beam.Flatten()
                | "Window" >> beam.WindowInto(windowing, trigger=config.trigger(),
                                              accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                                              allowed_lateness=config.allowed_lateness_s)
                | "ByCellAndWindow" >> beam.GroupByKey()
                | "Snapshot" >> beam.ParDo(_ToSnapshot()))


# -- training ----------------------------------------------------------------------------------
def placement_features(decision: dict) -> tuple[str, dict] | None:
    """``(decision_id, x)`` of a placement decision, ``x["tier"]`` = where it placed; None otherwise."""
    if decision["kind"] != "placement" or decision["target"] not in PLACEMENT_TIERS:
        return None
    x: dict[str, Any] = parameters_to_features(decision["parameters"])
    x["tier"] = decision["target"]
    return decision["decision_id"], x


def measured_latency(outcome: dict) -> tuple[str, float] | None:
    """``(decision_id, latency_ms)`` of an outcome that measured a decision's demand; None otherwise."""
    if outcome.get("decision_id") is None or outcome.get("latency_ms") is None:
        return None
    return outcome["decision_id"], float(outcome["latency_ms"])


def join_examples(placements: Iterable[tuple[str, dict]], latencies: Iterable[tuple[str, float]]) -> list:
    """``(x, y)`` pairs: each placement with the latency measured for the same decision_id."""
    latency = dict(latencies)
    return [(x, latency[did]) for did, x in placements if did in latency]


def forecast_fields(summary: dict) -> tuple:
    """What the SINR forecaster learns from in a LocalSummary."""
    return (summary["ue_id"], summary["serving_cell"], summary["window_end_ms"], summary["sinr_db"],
            summary["sinr_trend_db_per_s"], summary["speed_mps"])


def forecast_examples(summaries: Iterable[tuple]) -> list[tuple[dict, float]]:
    """``(x, y)`` for the handover SINR forecaster, as the edge twin learns it: each UE's
    consecutive summaries in the same cell, 0 < dt <= 5 s apart; x from the earlier one
    (:func:`~tiertwin.pipelines.features.sinr_forecast_features` with horizon dt), y = the later SINR.

    >>> forecast_examples([("ue-1", 3, 1000, 10.0, -2.0, 5.0), ("ue-1", 3, 1500, 9.0, -2.0, 5.0)])
    [({'trend_x_h': -1.0, 'speed_x_h': 2.5, 'horizon_s': 0.5, 'sinr_db': 10.0}, 9.0)]
    """
    from tiertwin.pipelines.features import sinr_forecast_features

    by_ue: dict[str, list[tuple]] = {}
    for summary in summaries:
        by_ue.setdefault(summary[0], []).append(summary)
    examples = []
    for series in by_ue.values():
        series.sort(key=lambda f: f[2])
        for (_, cell, t0, sinr, trend, speed), (_, next_cell, t1, next_sinr, _, _) in zip(series, series[1:]):
            dt = (t1 - t0) / 1000.0
            if next_cell == cell and 0 < dt <= 5.0:
                examples.append((sinr_forecast_features(sinr, trend, speed, dt), float(next_sinr)))
    return examples


# The unit of each model's error, in its metric names (mae_ms, live_mae_db, …).
ERROR_UNITS = {"demand-latency": "ms", "handover-sinr": "db"}
# Which fused streams each trainable model learns from, and how its examples are made.
TRAINING_INPUTS = {
    "demand-latency": {DECISIONS: placement_features, OUTCOMES: measured_latency},
    "handover-sinr": {SUMMARIES: forecast_fields},
}


def training_schemas(model_names: Iterable[str]) -> set[str]:
    """The record schemas the given models learn from.

    >>> sorted(training_schemas(["demand-latency"]))
    ['Decision', 'Outcome']
    """
    return {schema for schema, stream in STREAMS.items() for name in model_names if stream in TRAINING_INPUTS[name]}


TRAINING_EXAMPLES = {
    "demand-latency": lambda groups: join_examples(groups.get(DECISIONS, ()), groups.get(OUTCOMES, ())),
    "handover-sinr": lambda groups: forecast_examples(groups.get(SUMMARIES, ())),
}


def training_examples(decisions: Iterable[dict], outcomes: Iterable[dict]) -> list[tuple[dict, float]]:
    """``(x, y)`` for each placement decision that has a measured outcome (joined by decision_id).

    >>> from tiertwin.schemas.examples import example
    >>> d = example("Decision", parameters={"x_rtt_ms": 8.0, "predicted_latency_ms": 12.5})
    >>> training_examples([d], [example("Outcome")])
    [({'rtt_ms': 8.0, 'tier': 'edge'}, 13.25)]
    """
    placements = [p for p in map(placement_features, decisions) if p is not None]
    return join_examples(placements, [m for m in map(measured_latency, outcomes) if m is not None])


def mean_absolute_error(model, examples: list[tuple[dict, float]]) -> float:
    """MAE of ``model`` on ``examples`` without learning (an untrained model's None counts as 0)."""
    return sum(abs((model.predict_one(x) or 0.0) - y) for x, y in examples) / len(examples)


@dataclass
class Batch:
    """The training examples of one window, pickled once.

    A batch waits in Beam state until the watermark passes its window; as one bytes
    value it is stored and read back without walking (and sizing, for the state cache)
    every example dict.

    >>> Batch.of(0, 1000, [({"rtt_ms": 8.0}, 13.25)]).examples()
    [({'rtt_ms': 8.0}, 13.25)]
    """

    start_ms: int
    end_ms: int
    pickled_examples: bytes

    @classmethod
    def of(cls, start_ms: int, end_ms: int, examples: list) -> "Batch":
        return cls(start_ms, end_ms, pickle.dumps(examples, protocol=pickle.HIGHEST_PROTOCOL))

    def examples(self) -> list:
        return pickle.loads(self.pickled_examples)


@dataclass
class TrainerState:
    """What the global trainer of one model keeps between windows (in Beam state)."""

    name: str
    candidate: Any
    live_model: Any
    live_version: int = 0
    trained_on: int = 0
    learned_since_publish: int = 0
    first_window_start_ms: int | None = None
    prequential_mae: float = float("nan")


class _TrainModel(beam.DoFn):
    """Stateful trainer of one global model (key = model name), windows taken in event-time order.

    Each window's batch waits in a bag until the watermark passes its end (a timer),
    so a bounded backfill, where batches arrive in any order, trains in time order too.
    On each batch: refresh the live model from the models topic, judge the candidate on
    this batch (data it has not seen) against the live model, publish it as
    ``live version + 1`` if it is better, then learn the batch prequentially.
    """

    PENDING = BagStateSpec("pending", PickleCoder())
    TRAINER = ReadModifyWriteStateSpec("trainer", PickleCoder())
    NEXT_FLUSH = ReadModifyWriteStateSpec("next_flush_ms", PickleCoder())
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)

    def __init__(self, config: CloudTwinConfig, settings: Settings):
        self.config, self.settings = config, settings
        self.published = Metrics.counter("cloud-training", "models_published")

    def setup(self):
        # River pulls in scipy (seconds of import): pay it at start-up, not at the first window.
        from tiertwin.pipelines import learners  # noqa: F401

        self._sink = self._models = None
        self._live_updates: dict[str, dict] = {}
        if self.config.models_topic:
            from tiertwin.connectors.kafka import KafkaSink

            self._sink = KafkaSink(self.settings, client_id="tiertwin-cloud-trainer")

    def teardown(self):
        if self._sink is not None:
            self._sink.close()
        if self._models is not None:
            self._models.close()

    def process(self, element, pending=beam.DoFn.StateParam(PENDING), next_flush=beam.DoFn.StateParam(NEXT_FLUSH),
                flush=beam.DoFn.TimerParam(FLUSH)):
        _, batch = element
        pending.add(batch)
        current = next_flush.read()
        if current is None or batch.end_ms < current:
            flush.set(Timestamp.of(batch.end_ms / 1000))
            next_flush.write(batch.end_ms)

    @on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                 pending=beam.DoFn.StateParam(PENDING), trainer=beam.DoFn.StateParam(TRAINER),
                 next_flush=beam.DoFn.StateParam(NEXT_FLUSH), flush=beam.DoFn.TimerParam(FLUSH)):
        fired_ms = fired.micros // 1000
        batches = sorted(pending.read(), key=lambda b: b.end_ms)
        ready, later = [b for b in batches if b.end_ms <= fired_ms], [b for b in batches if b.end_ms > fired_ms]
        pending.clear()
        for b in later:
            pending.add(b)
        state = trainer.read() or self._fresh_state(key)
        for batch in ready:
            yield from self._train(state, batch)
        trainer.write(state)
        if later:
            flush.set(Timestamp.of(later[0].end_ms / 1000))
            next_flush.write(later[0].end_ms)
        else:
            next_flush.clear()

    def _fresh_state(self, name: str) -> TrainerState:
        from tiertwin.pipelines.learners import default_model

        live = self._latest_live(name)
        if live is None:
            return TrainerState(name, candidate=default_model(name), live_model=default_model(name))
        model = deserialize(live["payload"], live["format"])
        return TrainerState(name, candidate=copy.deepcopy(model), live_model=model, live_version=live["version"])

    def _latest_live(self, name: str) -> dict | None:
        """The newest ModelUpdate of ``name`` on the compacted models topic (read on, never re-read)."""
        if not self.config.models_topic:
            return None
        if self._models is None:
            self._models = _models_consumer(self.settings, self.config.models_topic)
        from tiertwin.schemas import SchemaRegistry

        registry = SchemaRegistry.default()
        while True:
            polled = self._models.poll(timeout_ms=200)
            if not polled:
                break
            for messages in polled.values():
                for m in messages:
                    try:
                        _, update = registry.decode(m.value, expect="ModelUpdate")
                    except Exception:  # a bad record on the models topic is the publisher's problem
                        continue
                    seen = self._live_updates.get(update["model_name"])
                    if seen is None or update["version"] > seen["version"]:
                        self._live_updates[update["model_name"]] = update
        return self._live_updates.get(name)

    def _follow_live(self, state: TrainerState) -> None:
        live = self._latest_live(state.name)
        if live is not None and live["version"] > state.live_version:
            # A newer model came from elsewhere (pretrain, another job): continue from it.
            state.live_model = deserialize(live["payload"], live["format"])
            state.live_version = live["version"]
            state.candidate = copy.deepcopy(state.live_model)
            state.learned_since_publish = 0

    def _train(self, state: TrainerState, batch: Batch):
        examples = batch.examples()
        if not examples:
            return
        self._follow_live(state)
        # Judging every example of a busy window costs more than learning them (three predictions
        # each); an evenly spaced sample of eval_examples estimates the errors as well.
        step = -(-len(examples) // self.config.eval_examples)
        judged = examples[::step]
        if state.learned_since_publish >= self.config.min_examples:
            candidate_mae = mean_absolute_error(state.candidate, judged)
            live_mae = mean_absolute_error(state.live_model, judged)
            if candidate_mae < live_mae * (1 - self.config.min_improvement):
                yield self._publish(state, batch, len(judged), candidate_mae, live_mae)
        errors = 0.0
        for i, (x, y) in enumerate(examples):  # prequential: predict (the judged ones), then learn
            if i % step == 0:
                errors += abs((state.candidate.predict_one(x) or 0.0) - y)
            state.candidate.learn_one(x, y)
        state.prequential_mae = errors / len(judged)
        state.trained_on += len(examples)
        state.learned_since_publish += len(examples)
        if state.first_window_start_ms is None:
            state.first_window_start_ms = batch.start_ms

    def _publish(self, state: TrainerState, batch: Batch, evaluated_on: int, candidate_mae: float,
                 live_mae: float) -> dict:
        from tiertwin.pipelines.models import model_update

        version = state.live_version + 1
        unit = ERROR_UNITS.get(state.name, "")
        details = dict(metrics={f"mae_{unit}": candidate_mae, f"live_mae_{unit}": live_mae,
                                f"prequential_mae_{unit}": state.prequential_mae,
                                "live_version": state.live_version, "evaluated_on": evaluated_on},
                       window_start_ms=state.first_window_start_ms or batch.start_ms,
                       window_end_ms=batch.start_ms, trained_on=state.trained_on, producer="cloud-twin")
        if self._sink is not None:
            record = publish_model(self._sink, state.name, state.candidate, version,
                                   topic=self.config.models_topic, **details)
        else:
            record = model_update(state.name, state.candidate, version, **details)
        state.live_model, state.live_version = copy.deepcopy(state.candidate), version
        state.learned_since_publish = 0
        self.published.inc()
        return record


def _models_consumer(settings: Settings, topic: str):
    from kafka import KafkaConsumer, TopicPartition

    from tiertwin.connectors.kafka import kafka_config

    consumer = KafkaConsumer(**kafka_config(settings, "tiertwin-cloud-models", group_id=None,
                                            enable_auto_commit=False))
    partitions = consumer.partitions_for_topic(topic) or {0}
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return consumer


class _ProjectPerBundle(beam.DoFn):
    """What training needs of each record (``project``; None = nothing), one list per bundle and window.

    Keyed ``"all"``: every model sees the whole window. The training window is fixed, so
    each record's window is its timestamp rounded down, computed here rather than by a
    WindowInto per record; each list leaves at the end of the bundle timestamped with its
    earliest record, which lies in the list's window, so a WindowInto of the lists
    puts each one back in it.
    """

    def __init__(self, project, window_s: float):
        self.project, self.window_us = project, round(window_s * 1_000_000)

    def start_bundle(self):
        self._open: dict[int, list] = {}

    def process(self, record: dict, timestamp=beam.DoFn.TimestampParam):
        row = self.project(record)
        if row is None:
            return
        micros = timestamp.micros
        start = micros - micros % self.window_us
        entry = self._open.get(start)
        if entry is None:
            self._open[start] = [micros, [row]]
            return
        entry[1].append(row)
        if micros < entry[0]:
            entry[0] = micros

    def finish_bundle(self):
        for earliest, rows in self._open.values():
            yield WindowedValue(("all", rows), Timestamp(micros=earliest), (window.GlobalWindow(),))
        self._open = {}


class TrainGlobalModels(beam.PTransform):
    """Per training window, update the global models from the fused streams.

    ``demand-latency`` learns from decisions joined with outcomes, ``handover-sinr``
    from each UE's consecutive summaries (:data:`TRAINING_INPUTS`). Input: the stream
    dict of :class:`SplitBySchema`. Output: the ModelUpdate records published.
    """

    def __init__(self, config: CloudTwinConfig = CloudTwinConfig(), settings: Settings | None = None):
        super().__init__()
        self.config, self.settings = config, settings or Settings.from_env()

    def expand(self, streams: dict):
        config = self.config

        def to_batches(element, win=beam.DoFn.WindowParam):
            _, groups = element
            rows = {stream: [row for bundle in bundles for row in bundle] for stream, bundles in groups.items()}
            for name in config.model_names:
                yield name, Batch.of(win.start.micros // 1000, win.end.micros // 1000, TRAINING_EXAMPLES[name](rows))

        projections = {}
        for name in config.model_names:
            projections.update(TRAINING_INPUTS[name])
        training_window = window.FixedWindows(config.train_window_s)
        windowed = {stream: (streams[stream]
                             | f"Project {stream}" >> beam.ParDo(_ProjectPerBundle(project, config.train_window_s))
                             | f"TrainWindow {stream}" >> beam.WindowInto(training_window))
                    for stream, project in projections.items()}
        return (windowed
                | "JoinWindow" >> beam.CoGroupByKey()
                | "Examples" >> beam.FlatMap(to_batches)
                | "AcrossWindows" >> beam.WindowInto(window.GlobalWindows())
                | "Train" >> beam.ParDo(_TrainModel(config, self.settings)))


# -- the whole tier ----------------------------------------------------------------------------
class CloudTwin(beam.PTransform):
    """``(schema, record)`` stream -> ``{"snapshots": …, "model_updates": …}`` (each if fusing / training)."""

    def __init__(self, config: CloudTwinConfig = CloudTwinConfig(), settings: Settings | None = None):
        super().__init__()
        self.config, self.settings = config, settings or Settings.from_env()

    def expand(self, records):
        streams = records | "Split" >> SplitBySchema()
        outputs = {}
        if self.config.fuse:
            outputs["snapshots"] = streams | "Fuse" >> FuseTiers(self.config)
        if self.config.train:
            outputs["model_updates"] = streams | "Train" >> TrainGlobalModels(self.config, self.settings)
        return outputs


class _WriteParquet(beam.DoFn):
    """Buffer a bundle's records and write them as Parquet files partitioned by date/hour."""

    def __init__(self, root: str, schema: str):
        self.root, self.schema = root, schema

    def start_bundle(self):
        self._rows: list[dict] = []

    def process(self, record: dict):
        self._rows.append(record)

    def finish_bundle(self):
        if self._rows:
            parquet_log.write_records(self.root, self.schema, self._rows)
            self._rows = []


def write_outputs(outputs: dict, dead_letters, config: CloudTwinConfig, settings: Settings) -> None:
    """Attach the sinks: snapshots to Kafka and Parquet, dead letters to Kafka."""
    snapshots = outputs.get("snapshots")
    if snapshots is not None and config.snapshots_topic:
        snapshots | "SnapshotsToKafka" >> WriteToKafka(config.snapshots_topic, "TwinSnapshot", "cell_id", settings)
    if snapshots is not None and config.snapshots_dir:
        snapshots | "SnapshotsToParquet" >> beam.ParDo(_WriteParquet(str(config.snapshots_dir), "TwinSnapshot"))
    if config.dead_letter_topic:
        dead_letters | "DeadLettersToKafka" >> WriteToKafka(config.dead_letter_topic, "DeadLetter", dead_letter_key,
                                                            settings)


def build_streaming(pipeline: beam.Pipeline, config: CloudTwinConfig, settings: Settings) -> str:
    """Kafka -> cloud twin -> Kafka (+ Parquet): the streaming job ``tiertwin run cloud`` runs.

    Returns the id of its Kafka read (what :func:`tiertwin.pipelines.beam_kafka.drain` stops).
    """
    reader = ReadFromKafka(list(config.input_topics),
                           ReadSpec(start=config.start, max_out_of_order_ms=config.max_out_of_order_ms,
                                    idle_after_s=config.idle_after_s, poll_interval_s=config.read_interval_s,
                                    max_read_s=config.read_max_s),
                           settings)
    read = pipeline | "ReadTiers" >> reader
    outputs = read[RECORDS] | "CloudTwin" >> CloudTwin(config, settings)
    write_outputs(outputs, read[DEAD_LETTERS], config, settings)
    return reader.read_id


def build_backfill(pipeline: beam.Pipeline, archive_dir: str | Path, config: CloudTwinConfig,
                   settings: Settings) -> dict:
    """A ``tiertwin archive`` folder -> the same cloud twin, bounded (replay / backfill).

    Over an archive every record is on time (the watermark stays back until all are
    read), so early and late firings are switched off; batch runners also have no
    processing-time clock for early firings.
    """
    config = config.model_copy(update={"early_firing_s": None, "allowed_lateness_s": 0})
    read = pipeline | "ReadArchive" >> ReadArchive(archive_dir)
    outputs = read[RECORDS] | "CloudTwin" >> CloudTwin(config, settings)
    write_outputs(outputs, read[DEAD_LETTERS], config, settings)
    return outputs


# -- runners -----------------------------------------------------------------------------------
RUNNERS = ("direct", "prism", "flink", "dataflow")


def prism_binary(settings: Settings) -> Path:
    """``<home>/bin/prism``, or a ConfigError saying how to get it."""
    path = Path(settings.home) / "bin" / "prism"
    if not path.is_file():
        raise ConfigError(f"Prism binary not found at {path}; run `bash scripts/setup` "
                          f"(it builds Beam's Go runner with `go install`)")
    return path


def runner_args(runner: str, settings: Settings, *, streaming: bool, extra: Iterable[str] = ()) -> list[str]:
    """Beam pipeline arguments for one of :data:`RUNNERS` (``extra`` is appended unchanged).

    >>> runner_args("direct", Settings(), streaming=False)
    ['--runner=DirectRunner']
    >>> runner_args("flink", Settings(), streaming=True, extra=["--flink_master=localhost:8081"])[:2]
    ['--runner=FlinkRunner', '--streaming']
    """
    runner = runner.lower()
    if runner == "direct":
        args = ["--runner=DirectRunner"]
    elif runner == "prism":
        args = ["--runner=PrismRunner", f"--prism_location={prism_binary(settings)}", "--environment_type=LOOPBACK"]
    elif runner == "flink":
        # The job-server jar must be given with --flink_job_server_jar (see README, "Cloud twin").
        args = ["--runner=FlinkRunner"]
        if not any(a.startswith("--environment_type") for a in extra):
            args.append("--environment_type=LOOPBACK")
    elif runner == "dataflow":
        args = ["--runner=DataflowRunner"]
    else:
        raise ConfigError(f"runner must be one of {', '.join(RUNNERS)}, not {runner!r}")
    if streaming:
        args.insert(1, "--streaming")
    return args + list(extra)


def backfill(archive_dir: str | Path, config: CloudTwinConfig, settings: Settings | None = None,
             runner: str = "direct", extra_args: Iterable[str] = ()) -> None:
    """Run the cloud twin bounded over an archive folder and wait for it to finish."""
    from apache_beam.options.pipeline_options import PipelineOptions

    settings = settings or Settings.from_env()
    options = PipelineOptions(runner_args(runner, settings, streaming=False, extra=extra_args))
    with beam.Pipeline(options=options) as pipeline:
        build_backfill(pipeline, archive_dir, config, settings)


@dataclass
class StreamingRun:
    """A started streaming cloud twin: its Beam ``PipelineResult``, how to stop it, and the training job
    beside it when training runs in its own process (:class:`TrainerProcess`)."""

    result: Any
    read_id: str
    trainer: "TrainerProcess | None" = None

    def wait_until_finish(self):
        state = self.result.wait_until_finish()
        if self.trainer is not None:
            self.trainer.stop()
        return state

    def ended(self) -> bool:
        from apache_beam.runners.runner import PipelineState

        return PipelineState.is_terminal(self.result.state) or (self.trainer is not None and self.trainer.ended())

    def failure(self) -> str | None:
        """Why the training process ended by itself, if it did (the main job's failures raise)."""
        return self.trainer.failure() if self.trainer is not None else None

    def stop(self, timeout_s: float = 30.0) -> str:
        """Drain the job (the Kafka read finishes, windows fire, the trainer flushes) and wait for it to
        end; cancel it if it has not within ``timeout_s``. Returns ``"drained"`` or ``"cancelled"``
        (``"cancelled"`` if either job had to be).

        Draining reaches the SDK worker only when it runs in this process (LOOPBACK: Prism,
        Flink's default here); a cancel cuts off the bundles in flight, which the worker
        reports as errors (closed state channel, unknown instruction).
        """
        from apache_beam.runners.runner import PipelineState

        from tiertwin.pipelines.beam_kafka import drain

        if self.trainer is not None:
            self.trainer.request_stop()  # both jobs drain at once
        drain(self.read_id)
        try:
            state = self.result.wait_until_finish(duration=int(timeout_s * 1000))
        except RuntimeError:  # ended other than DONE
            state = None
        outcome = "drained"
        if state != PipelineState.DONE:
            self.result.cancel()
            outcome = "cancelled"
        if self.trainer is not None and self.trainer.stop(timeout_s) != "drained":
            outcome = "cancelled"
        return outcome


class TrainerProcess:
    """Training as its own streaming job (fusion off) in a child process, beside the fusing job.

    With LOOPBACK the SDK worker is the launching process: one interpreter, one GIL. Training a
    window takes 0.2–0.7 s of CPU per model in one go, and snapshots waited behind it (at 10k
    records/s, window end -> snapshot p95 1.9–4.3 s with training in the job, 1.1 s without).
    In a child process training has its own worker and GIL, and runs ``nice``d
    (:data:`TRAINER_NICENESS`), so it takes the CPU fusion leaves. It has its own Kafka read of the
    topics training uses (:meth:`CloudTwinConfig.training_input_topics`), in larger bundles
    (:data:`TRAINER_READ_INTERVAL_S`); the fusing job writes the dead letters.
    """

    def __init__(self, config: CloudTwinConfig, settings: Settings, runner: str, extra_args: Iterable[str]):
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads or gRPC state copied
        self._stop = context.Event()
        self._status = context.Queue()
        self._outcome: tuple[str, str | None] | None = None
        self.process = context.Process(target=_trainer_main, name="tiertwin-cloud-trainer", daemon=True,
                                       args=(config, settings, runner, list(extra_args), self._stop, self._status))
        self.process.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def _next_status(self, timeout_s: float) -> tuple[str, str | None] | None:
        import queue

        try:
            return self._status.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def wait_started(self, timeout_s: float = 120.0) -> None:
        status = self._next_status(timeout_s)
        if status is None or status[0] != "started":
            self.process.kill()
            why = status[1] if status else f"not started within {timeout_s:.0f} s"
            raise JobFailedError(f"the cloud twin's training job did not start: {why}")

    def ended(self) -> bool:
        return not self.process.is_alive()

    def failure(self) -> str | None:
        if self.process.is_alive():
            return None
        if self._outcome is None:
            self._outcome = self._next_status(1.0) or ("failed", f"exit code {self.process.exitcode}")
        return self._outcome[1] if self._outcome[0] == "failed" else None

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout_s: float = 30.0) -> str:
        """Drain the training job (cancelled by the child after ``timeout_s``); ``"drained"`` or how it ended."""
        self.request_stop()
        if self._outcome is None:
            self._outcome = self._next_status(timeout_s + 15.0)
        self.process.join(10.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
            return "killed"
        return self._outcome[1] if self._outcome and self._outcome[0] == "stopped" else "failed"


TRAINER_NICENESS = 10
# Training windows last seconds, so the training job reads in fewer, larger bundles: on Prism each
# bundle costs CPU in the runner and the worker whatever it carries.
TRAINER_READ_INTERVAL_S = 1.0


def _trainer_main(config: CloudTwinConfig, settings: Settings, runner: str, extra_args: list[str],
                  stop, status) -> None:
    """The child process of :class:`TrainerProcess`: start the job, report, and drain it when told to."""
    import os
    import signal

    os.nice(TRAINER_NICENESS)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent stops us
    parent = os.getppid()
    try:
        job = run_streaming(config, settings, runner, extra_args)
    except Exception as exc:  # reported to the parent, which raises it
        status.put(("failed", f"{type(exc).__name__}: {exc}"))
        return
    status.put(("started", None))
    while not stop.wait(1.0):
        if os.getppid() != parent:  # the parent died without stopping us
            break
        if job.ended():
            try:
                job.wait_until_finish()
                status.put(("failed", "the training job ended by itself"))
            except Exception as exc:
                status.put(("failed", f"{type(exc).__name__}: {exc}"))
            return
    status.put(("stopped", job.stop()))


def run_streaming(config: CloudTwinConfig, settings: Settings | None = None, runner: str = "prism",
                  extra_args: Iterable[str] = ()) -> StreamingRun:
    """Start the streaming cloud twin; ``stop()`` the returned run to end it.

    With LOOPBACK, a config that fuses and trains (and ``train_in_own_process``) becomes two jobs:
    fusion here, training in a :class:`TrainerProcess`.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    settings = settings or Settings.from_env()
    extra_args = list(extra_args)
    args = runner_args(runner, settings, streaming=True, extra=extra_args)
    loopback = "--environment_type=LOOPBACK" in args
    trainer = None
    if loopback and config.fuse and config.train and config.train_in_own_process:
        trainer = TrainerProcess(config.model_copy(update={
            "fuse": False, "dead_letter_topic": None, "input_topics": config.training_input_topics(),
            "read_interval_s": max(config.read_interval_s, TRAINER_READ_INTERVAL_S),
            "read_max_s": max(config.read_max_s, TRAINER_READ_INTERVAL_S / 2)}), settings, runner, extra_args)
        config = config.model_copy(update={"train": False})
    try:
        pipeline = beam.Pipeline(options=PipelineOptions(args))
        read_id = build_streaming(pipeline, config, settings)
        result = pipeline.run()
        run = StreamingRun(result, read_id, trainer)
        if trainer is not None:
            try:
                trainer.wait_started()
            except BaseException:
                result.cancel()
                raise
    except BaseException:
        if trainer is not None:
            trainer.process.kill()
        raise
    if loopback:
        _tune_gc_for_worker()
    return run


def _tune_gc_for_worker() -> None:
    """With LOOPBACK the SDK worker is this process, and it allocates millions of short-lived objects.

    Measured at 10k records/s: ~15 full collections per minute, each walking the ~250k objects of
    Beam, River, Arrow and the rest for ~140 ms with the GIL held (snapshots wait). Freezing what
    is loaded by now and collecting less often cut the collector's time from 2.1 s to 0.5 s a minute.
    """
    import gc

    gc.freeze()
    gc.set_threshold(20_000, 50, 50)
