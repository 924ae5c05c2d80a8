"""Cross-tier fusion: the four tier streams joined by cell and event-time window into TwinSnapshot records.

Each bundle folds its records into one :class:`CellAggregate` per cell and window slice before
the shuffle; the aggregates are then windowed, grouped by cell and turned into snapshots with
early, on-time and late panes (:class:`FuseTiers`).

**Records with no cell.** ``Decision.cell_id`` and ``Outcome.cell_id`` are optional. A
record without a cell is valid but cannot be placed in a per-cell snapshot: fusion
skips it and counts it (Beam counter ``cloud-fusion/records_without_cell``); it is not
a dead letter because nothing is wrong with it, and training still uses it (training
joins by ``decision_id``, not by cell).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming, WindowedValue

from tiertwin.errors import ConfigError
from tiertwin.pipelines.cloud.config import CloudTwinConfig
from tiertwin.pipelines.cloud.streams import CELL_FIELDS, DECISIONS, EDGE_STATES, OUTCOMES, STREAMS, SUMMARIES
from tiertwin.schemas.batches import EVENT_MS, RecordBatch, event_micros

PANES = {PaneInfoTiming.EARLY: "early", PaneInfoTiming.ON_TIME: "on_time", PaneInfoTiming.LATE: "late",
         PaneInfoTiming.UNKNOWN: "unknown"}


@dataclass
class CellAggregate:
    """What a TwinSnapshot of one cell and window is computed from, as partial sums that merge.

    Each bundle folds its records into one aggregate per (cell, window) before the shuffle,
    so a few aggregates cross it instead of every record; the aggregates of a window merge
    into what folding all its records at once gives. The p95 needs the values themselves,
    so the latencies are kept (one float per outcome), everything else is counts and sums.

    The sums are exact: integers in millionths (:func:`fixed`), so they add up to the same
    value whatever the order the runner merges the partial aggregates in, and a window computed
    twice from the same records (after a restart, see connectors/beam_resume.py) gives the same
    snapshot to the bit.

    >>> from tiertwin.schemas.examples import example
    >>> a, b = CellAggregate(), CellAggregate()
    >>> a.add_summary(example("LocalSummary", ue_id="ue-1", sinr_db=10.0))
    >>> b.add_summary(example("LocalSummary", ue_id="ue-2", sinr_db=20.0))
    >>> b.add_outcome(example("Outcome", ue_id="ue-1", latency_ms=12.0, deadline_met=False))
    >>> total = a.merge(b)
    >>> total.summaries, total.sinr_sum, sorted(total.ues), total.latencies, total.missed
    (2, 30000000, ['ue-1', 'ue-2'], [12.0], 1)
    """

    summaries: int = 0
    sinr_sum: int = 0      # millionths of a dB
    edge_states: int = 0
    prb_sum: int = 0       # millionths
    queue_sum: int = 0     # millionths of a Gcycle
    decisions_by_tier: dict = field(default_factory=dict)
    outcomes: int = 0
    latencies: list = field(default_factory=list)
    judged: int = 0
    missed: int = 0
    ues: set = field(default_factory=set)

    def add_summary(self, r: dict) -> None:
        self.summaries += 1
        self.sinr_sum += fixed(r["sinr_db"])
        self.ues.add(r["ue_id"])

    def add_edge_state(self, r: dict) -> None:
        self.edge_states += 1
        self.prb_sum += fixed(r["prb_utilization"])
        self.queue_sum += fixed(r["mec_queue_gcycles"])

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


FIXED_POINT = 1_000_000


def fixed(value: float) -> int:
    """``value`` in millionths, rounded half up (the polars path rounds the same way: the same float operations).

    >>> fixed(14.25), fixed(-0.0000005), fixed(0.1)
    (14250000, 0, 100000)
    """
    return math.floor(value * FIXED_POINT + 0.5)


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

# How each stream's record is folded into its cell's aggregate, and the fields that reads.
ADD_TO_AGGREGATE = {SUMMARIES: CellAggregate.add_summary, EDGE_STATES: CellAggregate.add_edge_state,
                    DECISIONS: CellAggregate.add_decision, OUTCOMES: CellAggregate.add_outcome}
FOLDED_FIELDS = {SUMMARIES: ("serving_cell", "sinr_db", "ue_id"),
                 EDGE_STATES: ("cell_id", "prb_utilization", "mec_queue_gcycles"),
                 DECISIONS: ("cell_id", "tier", "ue_id"),
                 OUTCOMES: ("cell_id", "latency_ms", "deadline_met", "ue_id")}


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


def _fixed_mean(total: int, n: int) -> float | None:
    return total / (n * FIXED_POINT) if n else None


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
        "mean_sinr_db": _fixed_mean(total.sinr_sum, total.summaries),
        "mean_prb_utilization": _fixed_mean(total.prb_sum, total.edge_states),
        "mean_mec_queue_gcycles": _fixed_mean(total.queue_sum, total.edge_states),
        # fsum: correctly rounded, so the same whatever order the partial aggregates merged in
        "mean_latency_ms": _mean(math.fsum(latencies), len(latencies)), "p95_latency_ms": _p95(latencies),
        "deadline_miss_rate": _mean(total.missed, total.judged),
        "decisions_by_tier": dict(sorted(total.decisions_by_tier.items())), "emitted_ns": time.time_ns(),
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

    Elements are record dicts (timestamped with their event time) or
    :class:`~tiertwin.schemas.batches.RecordBatch` es: a batch of at least
    :data:`POLARS_MIN_ROWS` rows is aggregated by polars on its Arrow columns
    (:func:`batch_aggregates`), a smaller one record by record in this loop (polars costs a fixed
    0.5-1 ms a call, more than folding a thousand records in Python); both give the same aggregates.
    """

    def __init__(self, stream: str, slice_us: int, offset_us: int):
        self.stream, self.slice_us, self.offset_us = stream, slice_us, offset_us
        self.without_cell = Metrics.counter("cloud-fusion", "records_without_cell")
        self.aggregated = Metrics.counter("cloud-fusion", "records_aggregated")

    def setup(self):
        self._cell_field, self._add = CELL_FIELDS[self.stream], ADD_TO_AGGREGATE[self.stream]

    def start_bundle(self):
        self._open: dict[tuple, list] = {}
        self._records = 0

    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        if isinstance(element, RecordBatch):
            self._records += len(element)
            without_cell = fold_batch(self._open, self.stream, element, self.slice_us, self.offset_us)
            if without_cell:
                self.without_cell.inc(without_cell)
            return
        self._records += 1
        if not _fold(self._open, self._add, element.get(self._cell_field), element, timestamp.micros,
                     self.slice_us, self.offset_us):
            self.without_cell.inc()

    def finish_bundle(self):
        if self._records:
            self.aggregated.inc(self._records)  # one counter update a bundle
            self._records = 0
        for (cell, _), (earliest, aggregate) in self._open.items():
            yield WindowedValue((int(cell), aggregate), Timestamp(micros=earliest), (window.GlobalWindow(),))
        self._open = {}


def _fold(open_: dict, add, cell, record: dict, micros: int, slice_us: int, offset_us: int) -> bool:
    """Fold one record into ``open_[(cell, slice start)] = [earliest µs, CellAggregate]``; False: no cell."""
    if cell is None:
        return False
    key = (cell, micros - (micros - offset_us) % slice_us)
    entry = open_.get(key)
    if entry is None:
        entry = open_[key] = [micros, CellAggregate()]
    elif micros < entry[0]:
        entry[0] = micros
    add(entry[1], record)
    return True


def fold_batch(open_: dict, stream: str, batch: RecordBatch, slice_us: int, offset_us: int) -> int:
    """Fold a batch of one stream into ``open_`` (as :func:`_fold` does record by record); the rows without a
    cell. A batch of at least :data:`POLARS_MIN_ROWS` rows is aggregated by polars on its columns."""
    if len(batch) < POLARS_MIN_ROWS:
        return _fold_columns(open_, stream, batch, slice_us, offset_us)
    aggregates, without_cell = batch_aggregates(stream, batch, slice_us, offset_us)
    for key, earliest, aggregate in aggregates:
        entry = open_.get(key)
        if entry is None:
            open_[key] = [earliest, aggregate]
        else:
            entry[0] = min(entry[0], earliest)
            entry[1].merge(aggregate)
    return without_cell


def _fold_columns(open_: dict, stream: str, batch: RecordBatch, slice_us: int, offset_us: int) -> int:
    """:func:`fold_batch` of a small batch, row by row from its columns: what :data:`ADD_TO_AGGREGATE` does to
    each record, written out per stream over the folded fields only. Neither a dict nor a call per row: folding
    that way cost 2.1-2.4 us a row, a third of what the read spends on a record beside its decoding."""
    cells, *values = batch.field_values(*FOLDED_FIELDS[stream])
    aggregates = _aggregates_of_rows(open_, cells, batch.event_ms, slice_us, offset_us)
    if stream == SUMMARIES:
        for a, sinr, ue in zip(aggregates, *values):
            if a is not None:
                a.summaries += 1
                a.sinr_sum += math.floor(sinr * FIXED_POINT + 0.5)
                a.ues.add(ue)
    elif stream == EDGE_STATES:
        for a, prb, queue in zip(aggregates, *values):
            if a is not None:
                a.edge_states += 1
                a.prb_sum += math.floor(prb * FIXED_POINT + 0.5)
                a.queue_sum += math.floor(queue * FIXED_POINT + 0.5)
    elif stream == DECISIONS:
        for a, tier, ue in zip(aggregates, *values):
            if a is not None:
                a.decisions_by_tier[tier] = a.decisions_by_tier.get(tier, 0) + 1
                if ue:
                    a.ues.add(ue)
    elif stream == OUTCOMES:
        for a, latency, met, ue in zip(aggregates, *values):
            if a is not None:
                a.outcomes += 1
                if latency is not None:
                    a.latencies.append(latency)
                if met is not None:
                    a.judged += 1
                    a.missed += not met
                if ue:
                    a.ues.add(ue)
    else:
        raise ConfigError(f"no aggregate for stream {stream!r}")
    return cells.count(None)


def _aggregates_of_rows(open_: dict, cells: list, event_ms: list, slice_us: int, offset_us: int):
    """For each row, the CellAggregate of its cell and window slice in ``open_`` (made, or its earliest µs moved,
    as :func:`_fold` does); None for a row without a cell."""
    get = open_.get
    for cell, ms in zip(cells, event_ms):
        if cell is None:
            yield None
            continue
        micros = int(ms / 1000 * 1000000)  # event_micros, inline: once per row
        key = (cell, micros - (micros - offset_us) % slice_us)
        entry = get(key)
        if entry is None:
            entry = open_[key] = [micros, CellAggregate()]
        elif micros < entry[0]:
            entry[0] = micros
        yield entry[1]


# Below this many rows a batch is folded row by row from its columns (_fold_columns). Measured here (CPU time
# of the process, 2026-12-03, one stream per batch): polars costs 2-4.5 ms a call for up to 4,000 rows, whatever
# the size; folding from the columns 0.65-1.2 us a row (0.6-0.8 ms for the ~650 rows of a live fetch at
# 30k records/s, 1.3-2.3 ms for a full 2,000-row fetch). Polars pays off only past about 4,000 rows (an
# archive batch), not for the Kafka read, whose fetches stop at max_poll_records (2,000).
POLARS_MIN_ROWS = 4000


def batch_aggregates(stream: str, batch: RecordBatch, slice_us: int, offset_us: int
                     ) -> tuple[list[tuple[tuple, int, CellAggregate]], int]:
    """One batch of one stream -> ``[((cell, slice start µs), earliest µs, CellAggregate)]`` and the number of
    rows without a cell, computed by polars on the batch's Arrow columns.

    The same aggregates as folding each record with :data:`ADD_TO_AGGREGATE` (sums are exact integers:
    :func:`fixed`).
    """
    import polars as pl

    cell_field = CELL_FIELDS[stream]
    df = pl.from_arrow(batch.columns)
    with_cell = df.filter(pl.col(cell_field).is_not_null())
    without_cell = df.height - with_cell.height
    if with_cell.height == 0:
        return [], without_cell
    us = ((pl.col(EVENT_MS) / 1000) * 1000000).cast(pl.Int64)  # as Beam turns event_ms / 1000 s into µs
    df = with_cell.with_columns(us.alias("_us")).with_columns(
        (pl.col("_us") - (pl.col("_us") - offset_us) % slice_us).alias("_slice"))
    key = [cell_field, "_slice"]
    has_ue = pl.col("ue_id").filter(pl.col("ue_id").is_not_null() & (pl.col("ue_id") != ""))
    if stream == SUMMARIES:
        aggs = [pl.len().alias("n"), _fixed_col("sinr_db").sum().alias("sinr_sum"),
                pl.col("ue_id").unique().alias("ues")]
    elif stream == EDGE_STATES:
        aggs = [pl.len().alias("n"), _fixed_col("prb_utilization").sum().alias("prb_sum"),
                _fixed_col("mec_queue_gcycles").sum().alias("queue_sum")]
    elif stream == DECISIONS:
        aggs = [pl.col("tier").value_counts().alias("tiers"), has_ue.unique().alias("ues")]
    elif stream == OUTCOMES:
        met = pl.col("deadline_met")
        aggs = [pl.len().alias("n"), pl.col("latency_ms").drop_nulls().alias("latencies"),
                met.count().alias("judged"), (~met).sum().alias("missed"), has_ue.unique().alias("ues")]
    else:
        raise ConfigError(f"no aggregate for stream {stream!r}")
    grouped = df.group_by(key).agg(pl.col("_us").min().alias("_earliest"), *aggs)
    out = []
    for row in grouped.iter_rows(named=True):
        a = CellAggregate()
        if stream == SUMMARIES:
            a.summaries, a.sinr_sum, a.ues = row["n"], row["sinr_sum"], set(row["ues"])
        elif stream == EDGE_STATES:
            a.edge_states, a.prb_sum, a.queue_sum = row["n"], row["prb_sum"], row["queue_sum"]
        elif stream == DECISIONS:
            a.decisions_by_tier = {t["tier"]: t["count"] for t in row["tiers"]}
            a.ues = set(row["ues"])
        else:
            a.outcomes, a.latencies, a.judged, a.missed = row["n"], row["latencies"], row["judged"], row["missed"]
            a.ues = set(row["ues"])
        out.append(((row[cell_field], row["_slice"]), row["_earliest"], a))
    return out, without_cell


def _fixed_col(name: str):
    import polars as pl

    return (pl.col(name) * FIXED_POINT + 0.5).floor().cast(pl.Int64)


class _ToSnapshot(beam.DoFn):
    """The snapshot of a cell and window pane; none for a window that starts before ``emitted_before_ms``
    (emitted before the job restarted: connectors/beam_resume.py), counted as
    ``cloud-fusion/windows_emitted_before_restart``."""

    def __init__(self, emitted_before_ms: int | None = None):
        self.emitted_before_ms = emitted_before_ms
        self.skipped = Metrics.counter("cloud-fusion", "windows_emitted_before_restart")

    def process(self, element, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        cell, partials = element
        if self.emitted_before_ms is not None and win.start.micros // 1000 < self.emitted_before_ms:
            self.skipped.inc()
            return
        total = CellAggregate()
        for partial in partials:
            total.merge(partial)
        yield snapshot(cell, win.start.micros // 1000, win.end.micros // 1000, total,
                       PANES.get(pane.timing, "unknown"))


class FoldInRead:
    """The first half of fusion inside the Kafka read's own DoFn (``ReadFromKafka(fold=...)``): each read step
    folds the batches it decoded into one CellAggregate per cell and window slice, all four streams together, and
    hands on only those ``(cell, CellAggregate)`` partials, timestamped with their earliest record, as
    :class:`AggregateTiers` would have from the same batches.

    Prism does not fuse the splittable read with the steps after it: every batch crossed a stage (its columns
    pickled, a second bundle per read bundle, Prism handling the bytes). A job that only fuses (training in its
    own process, as ``run cloud`` does) needs nothing else of the records, so they stay in the read.
    Records of other contracts are counted under ``cloud-fusion/records_not_fused``.
    """

    def __init__(self, config: CloudTwinConfig = CloudTwinConfig()):
        self.slice_us, self.offset_us = window_slices_us(config.windowing())
        self.without_cell = Metrics.counter("cloud-fusion", "records_without_cell")
        self.aggregated = Metrics.counter("cloud-fusion", "records_aggregated")
        self.not_fused = Metrics.counter("cloud-fusion", "records_not_fused")

    def start(self) -> None:
        self._open: dict[tuple, list] = {}
        self._records = self._without_cell = 0

    def add(self, batch: RecordBatch) -> None:
        stream = STREAMS.get(batch.schema)
        if stream is None:
            self.not_fused.inc(len(batch))
            return
        self._records += len(batch)
        self._without_cell += fold_batch(self._open, stream, batch, self.slice_us, self.offset_us)

    def finish(self):
        """The partials of what was added since :meth:`start`, as timestamped outputs."""
        if self._records:
            self.aggregated.inc(self._records)
        if self._without_cell:
            self.without_cell.inc(self._without_cell)
        for (cell, _), (earliest, aggregate) in self._open.items():
            yield beam.window.TimestampedValue((int(cell), aggregate), Timestamp(micros=earliest))
        self.start()


class AggregateTiers(beam.PTransform):
    """The four tier streams -> one PCollection of ``(cell, CellAggregate)`` partials, folded per bundle and
    window slice (:class:`_AggregatePerBundle`), not yet windowed: the first half of :class:`FuseTiers`,
    which runs beside the Kafka read (in each SDK worker when there are several)."""

    def __init__(self, config: CloudTwinConfig = CloudTwinConfig()):
        super().__init__()
        self.config = config

    def expand(self, streams: dict):
        slice_us, offset_us = window_slices_us(self.config.windowing())
        partials = [records | f"Aggregate {stream}" >> beam.ParDo(
                        _AggregatePerBundle(stream, slice_us, offset_us)).with_output_types(tuple[int, CellAggregate])
                    for stream, records in streams.items()]
        return partials | "AllTiers" >> beam.Flatten()


class SnapshotAggregates(beam.PTransform):
    """``(cell, CellAggregate)`` partials -> TwinSnapshots: windowed, grouped by cell, one per pane
    (the second half of :class:`FuseTiers`)."""

    def __init__(self, config: CloudTwinConfig = CloudTwinConfig()):
        super().__init__()
        self.config = config

    def expand(self, partials):
        config = self.config
        return (partials
                | "Window" >> beam.WindowInto(config.windowing(), trigger=config.trigger(),
                                              accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                                              allowed_lateness=config.allowed_lateness_s)
                | "ByCellAndWindow" >> beam.GroupByKey()
                | "Snapshot" >> beam.ParDo(_ToSnapshot(config.emitted_before_ms)))


class FuseTiers(beam.PTransform):
    """Join the four tier streams by cell and event-time window into TwinSnapshot records.

    Input: ``{"summaries", "edge_states", "decisions", "outcomes"}`` PCollections of
    record dicts with event-time timestamps. Output: TwinSnapshot dicts, one per cell,
    window and pane (early panes every ``early_firing_s`` of processing time, the
    on-time pane when the watermark passes the window end, a late pane per late
    bundle within ``allowed_lateness_s``; panes accumulate, so each is the full view).
    Records are folded into :class:`CellAggregate` per bundle before the shuffle
    (:class:`AggregateTiers`, then :class:`SnapshotAggregates`).
    """

    def __init__(self, config: CloudTwinConfig = CloudTwinConfig()):
        super().__init__()
        self.config = config

    def expand(self, streams: dict):
        return (streams | "Partials" >> AggregateTiers(self.config)
                | "Snapshots" >> SnapshotAggregates(self.config))
