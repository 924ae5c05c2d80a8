"""Records decoded a batch at a time: one :class:`RecordBatch` per contract, with Arrow columns, validated
column-wise.

A Kafka fetch of one partition (or a Parquet row group of the archive) is decoded in one call,
:func:`decode_batch`. Each body is read by fastavro, exactly as :meth:`SchemaRegistry.decode` reads it
(the same call, so a record that does not decode is refused for the same reason). The range checks then
run on the columns instead of record by record: every top-level scalar field becomes an Arrow column, and
a float column is checked for NaN/inf, every bounded column against its ``range``, every string column
against its length limit, in a few vectorised comparisons (for batches of at least
:data:`COLUMN_CHECKS_MIN_ROWS` rows; smaller ones go through the contract's compiled predicate, the same
rules, which costs less there). Rows that fail are checked again by the record's own validator
(:meth:`Schema.validate`), which gives the precise reason and message, and leave as dead letters; the
other rows stay in the batch.

>>> registry = SchemaRegistry.default()
>>> from tiertwin.schemas.examples import example
>>> values = [registry.encode("EdgeState", example("EdgeState", cell_id=i, ts_ms=1000 + i)) for i in range(3)]
>>> values.insert(1, b"garbage")
>>> batches, letters = decode_batch(registry, values, topic="t", partition=0, offsets=range(4),
...                                 timestamps_ms=[0] * 4, stage="doc")
>>> [(b.schema, len(b), b.event_ms) for b in batches]
[('EdgeState', 3, [1000, 1001, 1002])]
>>> [(d["offset"], d["reason"]) for d in letters]
[(1, 'truncated')]
>>> batches[0].columns.column("cell_id").to_pylist()
[0, 1, 2]
"""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass, field
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from tiertwin.errors import RecordRejected
from tiertwin.schemas.codec import DEFAULT_MAX_STRING, HEADER_SIZE, Schema, SchemaRegistry
from tiertwin.schemas.event_time import EVENT_TIME_FIELDS, short_name

EVENT_MS = "_event_ms"  # the column of each row's event time (its contract's event-time field, else Kafka's)

_ARROW_TYPES = {"int": pa.int64(), "long": pa.int64(), "float": pa.float64(), "double": pa.float64(),
                "boolean": pa.bool_(), "string": pa.string()}


@dataclass
class RecordBatch:
    """Decoded, valid records of one contract from one fetch: the dicts and their Arrow columns.

    ``records`` are the dicts fastavro decoded (what the record-by-record path carries, so
    a step that needs a whole record, such as training, still has it); ``event_ms`` their event
    times; :attr:`columns` every top-level scalar field (enums as strings, maps and arrays left
    out) plus :data:`EVENT_MS`, built on first use when the batch was small enough to be
    validated record by record.
    """

    schema: str
    records: list[dict]
    event_ms: list[int]
    _columns: pa.RecordBatch | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def columns(self) -> pa.RecordBatch:
        if self._columns is None:
            self._columns = _columns(plan_of(SchemaRegistry.default().current(self.schema)), self.records,
                                     self.event_ms)
        return self._columns

    def timestamped(self):
        """``(record, event_ms)`` pairs, in fetch order."""
        return zip(self.records, self.event_ms)

    def field_values(self, *names: str) -> list[list]:
        """The values of the named fields, one list per field in row order (``None`` where a record lacks one):
        from the record dicts, or, for a batch that crossed a stage as columns and has not rebuilt them, from
        the columns and the fields they leave out, without rebuilding the dicts (what training projects)."""
        records = self.records if type(self) is RecordBatch else self._records
        if records is not None:
            return [[r.get(name) for r in records] for name in names]
        columns, rest = self._columns, self._rest_values()
        return [rest[name] if name in rest else _pylist(columns.column(name)) for name in names]

    def __reduce__(self):
        # A batch whose columns are built crosses a Beam stage boundary as those columns (Arrow buffers) and
        # the fields they leave out (pickled apart); the records are rebuilt only where a step asks for them.
        # Pickling the record dicts cost 1.5-9.8 us a row each way (a Decision's parameter map most), the
        # columns 0.1-0.4 us (measured here, 2,000-row batches of each contract).
        if self._columns is None:
            return RecordBatch, (self.schema, self.records, self.event_ms)
        return _ColumnarBatch, (self.schema, self._columns, _rest_of(self), self.event_ms)


class _ColumnarBatch(RecordBatch):
    """A :class:`RecordBatch` unpickled from its columns: its record dicts are rebuilt on first use, from the
    columns and the fields they leave out, in the contract's field order (the same dicts fastavro decoded).

    >>> registry = SchemaRegistry.default()
    >>> from tiertwin.schemas.examples import example
    >>> records = [example("Decision", cell_id=i, source_ts_ms=1000 + i) for i in range(3)]
    >>> batch = decode_batch(registry, [registry.encode("Decision", r) for r in records], topic="t", partition=0,
    ...                      offsets=range(3), timestamps_ms=[0] * 3, stage="doc")[0][0]
    >>> batch.columns.num_rows   # built, so the batch crosses as columns
    3
    >>> import pickle
    >>> copy = pickle.loads(pickle.dumps(batch))
    >>> type(copy).__name__, len(copy), copy.records == batch.records, list(copy.records[0]) == list(records[0])
    ('_ColumnarBatch', 3, True, True)
    """

    def __init__(self, schema: str, columns: pa.RecordBatch, rest: bytes | None, event_ms: list[int]):
        self.schema, self._columns, self._rest, self.event_ms = schema, columns, rest, event_ms
        self._records = None

    @property
    def records(self) -> list[dict]:
        if self._records is None:
            self._records = _rebuilt(self.schema, self._columns, self._rest)
        return self._records

    @records.setter
    def records(self, value: list[dict]) -> None:
        self._records = value

    def __len__(self) -> int:
        return len(self.event_ms)

    def _rest_values(self) -> dict[str, list]:
        import pickle

        if self._rest is None:
            return {}
        values = self.__dict__.get("_rest_cache")
        if values is None:
            values = self._rest_cache = dict(zip(_fields(self.schema)[1], pickle.loads(self._rest)))
        return values

    def __reduce__(self):
        rest = self._rest if self._records is None else _rest_of(self)
        return _ColumnarBatch, (self.schema, self._columns, rest, self.event_ms)


_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _fields(schema: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A contract's field names in order, and those its columns leave out."""
    found = _FIELDS.get(schema)
    if found is None:
        current = SchemaRegistry.default().current(schema)
        names = tuple(f["name"] for f in current.raw["fields"])
        in_columns = {name for name, _ in plan_of(current).columns}
        found = _FIELDS[schema] = (names, tuple(n for n in names if n not in in_columns))
    return found


def _rest_of(batch: RecordBatch) -> bytes | None:
    """The fields the columns leave out (maps, arrays, several-type unions), a list per field, pickled."""
    import pickle

    _, rest = _fields(batch.schema)
    if not rest:
        return None
    return pickle.dumps([[r.get(name) for r in batch.records] for name in rest], protocol=pickle.HIGHEST_PROTOCOL)


def _pylist(column: pa.Array) -> list:
    """A column's values as Python objects; a map column's as dicts (batches the column decoder read carry
    their maps as columns)."""
    return _map_pylist(column) if pa.types.is_map(column.type) else column.to_pylist()


def _map_pylist(column: pa.MapArray) -> list:
    """``column.to_pylist(maps_as_pydicts="lossy")`` (a dict per row, None for a null row, a repeated key's last
    value), built from the flattened keys and items: 3.7-6.5 us a row for a Decision's 15-entry parameter map against
    18-25 us through pyarrow's own conversion (training projects every Decision's parameters).

    >>> m = pa.array([[("a", 1.0), ("b", 2.0)], None, [], [("c", 3.0)]], pa.map_(pa.string(), pa.float64()))
    >>> _map_pylist(m) == m.to_pylist(maps_as_pydicts="lossy"), _map_pylist(m.slice(1)) == m.slice(1).to_pylist(
    ...     maps_as_pydicts="lossy")
    (True, True)
    >>> _map_pylist(pa.array([[("a", 3.0), ("a", 4.0)]], m.type))
    [{'a': 4.0}]
    """
    offsets = column.offsets.to_pylist()
    keys, items = column.keys.to_pylist(), column.items.to_pylist()
    rows = [dict(zip(keys[a:b], items[a:b])) for a, b in zip(offsets, offsets[1:])]
    if column.null_count:
        rows = [row if valid else None for row, valid in zip(rows, column.is_valid().to_pylist())]
    return rows


def _rebuilt(schema: str, columns: pa.RecordBatch, rest: bytes | None) -> list[dict]:
    import pickle

    names, rest_names = _fields(schema)
    values = dict(zip(rest_names, pickle.loads(rest))) if rest is not None else {}
    for name in names:
        if name not in values:
            values[name] = _pylist(columns.column(name))
    return [dict(zip(names, row)) for row in zip(*(values[name] for name in names))]


@dataclass(frozen=True)
class _Plan:
    """How one contract's records become columns and how those columns are checked."""

    columns: tuple[tuple[str, pa.DataType], ...]
    floats: tuple[str, ...]                                # NaN / inf refused
    bounded: tuple[tuple[str, float, float], ...]          # outside [lo, hi] refused
    strings: tuple[tuple[str, int], ...]                   # longer than the limit refused
    nested: bool                                           # arrays of records: checked record by record
    event_field: str | None


def _plan(schema: Schema) -> _Plan:
    columns, floats, bounded, strings, nested = [], [], [], [], False
    for f in schema.raw["fields"]:
        branches = f["type"] if isinstance(f["type"], list) else [f["type"]]
        kinds = [b for b in branches if b != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
        if isinstance(kind, dict) and kind.get("type") == "enum":
            columns.append((f["name"], pa.string()))
        elif isinstance(kind, str) and kind in _ARROW_TYPES:
            columns.append((f["name"], _ARROW_TYPES[kind]))
        is_float = any(b in ("float", "double") for b in branches)
        if any(isinstance(b, dict) and b.get("type") == "array" and isinstance(b["items"], dict)
               and b["items"].get("type") == "record" for b in branches):
            nested = True
        checked = [name for name, _ in columns]
        if f["name"] not in checked and (is_float or f.get("range") is not None or "string" in branches):
            nested = True  # a checked field that is not a plain column (a union of several types): per record
            continue
        if is_float:
            floats.append(f["name"])
        if f.get("range") is not None:
            bounded.append((f["name"], float(f["range"][0]), float(f["range"][1])))
        if "string" in branches:
            strings.append((f["name"], int(f.get("maxLength", DEFAULT_MAX_STRING))))
    return _Plan(tuple(columns), tuple(floats), tuple(bounded), tuple(strings), nested,
                 EVENT_TIME_FIELDS.get(short_name(schema.name)))


_PLANS: dict[bytes, _Plan] = {}

# From this many rows a contract's part of a batch is checked on Arrow columns, below it by the contract's
# compiled predicate record by record (Schema.passes). Measured here (CPU time, LocalSummary, 23 fields):
# building the columns costs ~1.2 us a row and the checks ~0.7 ms a call at any size up to 1,000 rows,
# against 1.65 us a row for the predicate; columns win only once the fixed cost is spread thin.
COLUMN_CHECKS_MIN_ROWS = 2000


def plan_of(schema: Schema) -> _Plan:
    plan = _PLANS.get(schema.fingerprint)
    if plan is None:
        plan = _PLANS[schema.fingerprint] = _plan(schema)
    return plan


def _doubtful_rows(plan: _Plan, columns: pa.RecordBatch) -> list[int]:
    """Rows a vectorised check refuses (the same rules as :meth:`Schema.validate`; nulls pass)."""
    bad = None

    def either(mask):
        nonlocal bad
        mask = pc.fill_null(mask, False)
        bad = mask if bad is None else pc.or_(bad, mask)

    for name in plan.floats:
        either(pc.invert(pc.is_finite(columns.column(name))))
    for name, lo, hi in plan.bounded:
        col = columns.column(name)
        if pa.types.is_boolean(col.type):
            continue  # booleans are never range-checked (Schema.validate skips them)
        either(pc.or_(pc.less(col, lo), pc.greater(col, hi)))
    for name, limit in plan.strings:
        either(pc.greater(pc.utf8_length(columns.column(name)), limit))
    if bad is None or not pc.any(bad).as_py():
        return []
    return pc.indices_nonzero(bad).to_pylist()


def dead_letter(value: bytes | None, key, topic: str, partition: int, offset: int, error: RecordRejected,
                stage: str) -> dict:
    """The DeadLetter record of one refused Kafka (or archived) record: its bytes, coordinates and reason."""
    return {"original": value or b"", "original_key": key, "topic": topic, "partition": partition,
            "offset": offset, "reason": error.reason, "detail": str(error)[:2000], "stage": stage,
            "failed_at_ms": int(time.time() * 1000)}


def decode_batch(registry: SchemaRegistry, values: Sequence[bytes | None], *, topic: str,
                 partition: int | Sequence[int], offsets: Sequence[int], timestamps_ms: Sequence[int],
                 keys: Sequence | None = None, stage: str) -> tuple[list[RecordBatch], list[dict]]:
    """Decode and validate a batch of single-object encoded values.

    Returns one :class:`RecordBatch` per contract found (rows in input order) and the
    DeadLetter records of the values refused (decoding or validation), in input order.
    ``partition`` is one partition for the whole batch or one per value.
    """
    decode = registry.decode
    groups: dict[str, tuple[list, list]] = {}
    refused: list[tuple[int, RecordRejected]] = []
    batches = []
    slow: Sequence[int] = range(len(values))
    if len(values) >= COLUMNAR_MIN_ROWS:
        batches, slow = _decode_columnar(registry, values, timestamps_ms, refused)
    for i in slow:
        value = values[i]
        try:
            name, record = decode(value, False)
        except RecordRejected as exc:
            refused.append((i, exc))
            continue
        group = groups.get(name)
        if group is None:
            group = groups[name] = ([], [])
        group[0].append(record)
        group[1].append(i)
    for name, (records, rows) in groups.items():
        schema = registry.current(name)
        plan = plan_of(schema)
        if plan.event_field is None:
            event_ms = [int(timestamps_ms[i]) for i in rows]
        else:
            event_field = plan.event_field
            event_ms = [int(t) if (t := r.get(event_field)) is not None else int(timestamps_ms[i])
                        for r, i in zip(records, rows)]
        if len(records) >= COLUMN_CHECKS_MIN_ROWS and not plan.nested:
            columns = _columns(plan, records, event_ms)
            doubtful = _doubtful_rows(plan, columns)
        else:
            columns, passes = None, schema.passes
            doubtful = [j for j, r in enumerate(records) if not passes(r)]
        if doubtful:
            rejected = set()
            for j in doubtful:
                try:
                    schema.validate(records[j])
                except RecordRejected as exc:
                    refused.append((rows[j], exc))
                    rejected.add(j)
            if rejected:
                keep = [j for j in range(len(records)) if j not in rejected]
                records = [records[j] for j in keep]
                event_ms = [event_ms[j] for j in keep]
                columns = None if columns is None else columns.take(pa.array(keep, pa.int64()))
        if records:
            batches.append(RecordBatch(short_name(name), records, event_ms, columns))
    refused.sort(key=lambda pair: pair[0])
    letters = [dead_letter(values[i], keys[i] if keys is not None else None, topic,
                           partition if isinstance(partition, int) else partition[i], offsets[i], exc, stage)
               for i, exc in refused]
    return batches, letters


# From this many values of one writer schema (the current one) a fetch is decoded column-wise
# (schemas/column_decoder.py); below it record by record with fastavro. The column decoder costs a fixed few
# numpy calls per field and batch, so it pays off only once they are shared by enough rows: measured here
# (CPU time per record, whole decode_batch) it breaks even near 128 rows for the flat contracts and 256 for
# a Decision (its parameter map), e.g. at 64 rows LocalSummary 17.4 vs 14.4 us, Decision 40.4 vs 14.1; at
# 256 rows 3.8 vs 8.9 and 14.8 vs 15.7.
COLUMNAR_MIN_ROWS = 256

_DECODERS: dict[bytes, object] = {}
_HEAD = operator.itemgetter(slice(0, HEADER_SIZE))


def _column_decoder(schema: Schema):
    found = _DECODERS.get(schema.fingerprint, False)
    if found is False:
        from tiertwin.schemas.column_decoder import NotColumnar, compile_decoder

        try:
            found = compile_decoder(schema)
        except NotColumnar:
            found = None
        _DECODERS[schema.fingerprint] = found
    return found


def _decode_columnar(registry: SchemaRegistry, values: Sequence[bytes | None], timestamps_ms: Sequence[int],
                     refused: list) -> tuple[list[RecordBatch], list[int]]:
    """The values written with a current schema that the column decoder reads, decoded column-wise into one
    batch per contract (the rows it doubts are decoded by fastavro: refused with fastavro's reason, into
    ``refused``); returns those batches and the indices of the values left to decode record by record
    (older writer schemas, headers that name no schema, contracts the decoder does not take, and every value
    of a contract where it doubted a row fastavro accepts)."""
    import numpy as np

    by_header: dict[bytes, list[int]] = {}
    slow: list[int] = []
    heads = set(map(_HEAD, values)) if None not in values else ()
    if len(heads) == 1:  # one writer schema, as a fetch of one partition has as a rule: no loop per record
        by_header[heads.pop()] = range(len(values))
    else:
        for i, value in enumerate(values):
            if value is None or len(value) < HEADER_SIZE:
                slow.append(i)
                continue
            rows = by_header.get(value[:HEADER_SIZE])
            if rows is None:
                rows = by_header[value[:HEADER_SIZE]] = []
            rows.append(i)
    batches = []
    for header, rows in by_header.items():
        schema = registry.writer_of(header)
        decode = None if schema is None or registry.current(schema.name) is not schema else _column_decoder(schema)
        if decode is None or len(rows) < COLUMNAR_MIN_ROWS:
            slow += rows
            continue
        whole = isinstance(rows, range)
        columns, doubtful = decode(values if whole else [values[i] for i in rows])
        letters = []
        for j in doubtful:
            try:
                registry.decode(values[rows[j]])
            except RecordRejected as exc:
                letters.append((rows[j], exc))
                continue
            break  # a valid record the decoder does not read: this contract goes record by record
        else:
            refused += letters
            plan = plan_of(schema)
            names = [name for name, _ in plan.columns] + [f["name"] for f in schema.raw["fields"]
                                                          if pa.types.is_map(columns[f["name"]].type)]
            event = columns[plan.event_field] if plan.event_field is not None else None
            if event is None:
                event_ms = np.fromiter((timestamps_ms[i] for i in rows), dtype=np.int64, count=len(rows))
            else:
                event_ms = event.to_numpy(zero_copy_only=False)
                if event.null_count:
                    kafka_ms = np.fromiter((timestamps_ms[i] for i in rows), dtype=np.int64, count=len(rows))
                    event_ms = np.where(np.asarray(event.is_null()), kafka_ms, np.nan_to_num(event_ms)).astype(np.int64)
            arrays = [columns[name] for name in names] + [pa.array(event_ms, pa.int64())]
            table = pa.RecordBatch.from_arrays(arrays, names=names + [EVENT_MS])
            if doubtful:
                keep = np.ones(len(rows), dtype=bool)
                keep[doubtful] = False
                table, event_ms = table.filter(pa.array(keep)), event_ms[keep]
            if table.num_rows:
                batches.append(_ColumnarBatch(short_name(schema.name), table, None, event_ms.tolist()))
            continue
        slow += rows
    slow.sort()
    return batches, slow


def _columns(plan: _Plan, records: list[dict], event_ms: list[int]) -> pa.RecordBatch:
    arrays = [pa.array([r.get(name) for r in records], type=kind) for name, kind in plan.columns]
    arrays.append(pa.array(event_ms, type=pa.int64()))
    names = [name for name, _ in plan.columns] + [EVENT_MS]
    return pa.RecordBatch.from_arrays(arrays, names=names)


def event_micros(event_ms: int) -> int:
    """The Beam timestamp, in µs, of an element timestamped ``event_ms / 1000`` s (Beam truncates
    ``seconds * 1e6``; the batch path must put each record in the same window slice as the record path).

    >>> event_micros(1_767_225_600_123)
    1767225600123000
    """
    return int(event_ms / 1000 * 1000000)


__all__ = ["COLUMN_CHECKS_MIN_ROWS", "EVENT_MS", "RecordBatch", "dead_letter", "decode_batch", "event_micros"]
