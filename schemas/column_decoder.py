"""A vectorised Avro decoder for flat records: a batch of bodies straight into Arrow columns, no dict per record.

The cloud twin's Kafka read decodes every record it fuses. fastavro builds a dict per record (3.8 µs
an EdgeState, 7.5 a LocalSummary, 17 a Decision with its parameter map, measured here) and the batch
path then copied those dicts into Arrow columns (another 0.7-2 µs a record). :func:`compile_decoder`
instead decodes a whole batch field by field with numpy: every record's offset is one entry of an array,
and a field is read for all records at once (a varint is ten gathered bytes per record, a float four
bytes viewed as ``<f4``, a string a gather of its bytes into one Arrow buffer), so a record costs a few
numpy operations per field shared by the whole batch instead of Python work per field.

It takes records whose fields are scalars, enums, ``["null", scalar]`` unions and maps of
float/double (in one block, as fastavro and tiertwin's compiled encoder write them); any other schema
raises :class:`NotColumnar` when compiled. Rows it cannot vouch for (they end early or late, a union
or enum index out of range, a map in several blocks, invalid UTF-8) come back as *doubtful*: the
caller decodes those with fastavro, which refuses them with the precise reason (or, for a valid
row this decoder does not take, decodes it). The same goes for the contract's range checks,
vectorised here: a row that fails one is doubtful and the record's own validator gives the verdict.

>>> from tiertwin.schemas import SchemaRegistry
>>> from tiertwin.schemas.examples import example
>>> registry = SchemaRegistry.default()
>>> schema = registry.current("EdgeState")
>>> decode = compile_decoder(schema)
>>> values = [registry.encode("EdgeState", example("EdgeState", cell_id=i)) for i in range(3)]
>>> columns, doubtful = decode(values[:1] + [values[1][:-3]] + values[2:])
>>> columns["cell_id"].to_pylist(), doubtful
([0, 1, 2], [1])
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from tiertwin.schemas.codec import DEFAULT_MAX_STRING, HEADER_SIZE, Schema


class NotColumnar(Exception):
    """This schema has a field the vectorised decoder does not read: decode it with fastavro."""


_TEN = np.arange(10, dtype=np.int64)
_SHIFTS = (7 * _TEN).astype(np.uint64)
_PAD = 64   # bytes after the last record, so a garbled record's reads stay inside the buffer


class _Batch:
    """The state of one decode: the bytes, each row's position and end, and the rows gone wrong."""

    def __init__(self, values: Sequence[bytes]):
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        self.ends = np.cumsum(lengths)
        self.pos = self.ends - lengths + HEADER_SIZE
        self.buf = np.frombuffer(b"".join(values) + bytes(_PAD), dtype=np.uint8)
        self.limit = len(self.buf) - _PAD
        self.bad = np.zeros(len(values), dtype=bool)

    def clamp(self) -> None:
        """Rows read past their end are bad; keep their positions inside the buffer."""
        over = self.pos > self.ends
        if over.any():
            self.bad |= over
            self.pos = np.where(over, self.ends, self.pos)

    def varint(self, present=None) -> np.ndarray:
        """The zigzag varint (Avro int/long) at each row's position, which moves past it."""
        raw = self.buf[self.pos[:, None] + _TEN]
        more = raw >= 0x80
        size = np.argmin(more, axis=1) + 1
        self.bad |= more.all(axis=1)
        groups = (raw & 0x7F).astype(np.uint64) << _SHIFTS
        groups[_TEN[None, :] >= size[:, None]] = 0
        n = groups.sum(axis=1, dtype=np.uint64)
        value = (n >> np.uint64(1)).astype(np.int64) ^ -(n & np.uint64(1)).astype(np.int64)
        self.pos = self.pos + (size if present is None else np.where(present, size, 0))
        return value

    def fixed(self, width: int, kind: str, present=None) -> np.ndarray:
        raw = self.buf[self.pos[:, None] + np.arange(width)]
        self.pos = self.pos + (width if present is None else np.where(present, width, 0))
        return raw.view(kind).reshape(len(raw))

    def string(self, present=None) -> tuple[pa.Array, np.ndarray]:
        """A string column (None where not ``present``) and each row's length in bytes."""
        n = self.varint(present)
        if present is not None:
            n = np.where(present, n, 0)
        self.bad |= n < 0
        n = np.clip(n, 0, self.limit)
        starts = self.pos
        self.pos = self.pos + n
        self.clamp()
        n = np.where(self.bad, 0, n)
        offsets = np.zeros(len(n) + 1, dtype=np.int64)
        np.cumsum(n, out=offsets[1:])
        total = int(offsets[-1])
        data = self.buf[np.repeat(starts - offsets[:-1], n) + np.arange(total)] if total else np.empty(0, np.uint8)
        validity = None if present is None else pa.py_buffer(np.packbits(present, bitorder="little"))
        if total > 2**31 - 1:
            raise NotColumnar("more than 2 GiB of strings in one batch")
        array = pa.StringArray.from_buffers(len(n), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data),
                                            validity)
        self.bad |= _invalid_utf8(array)
        return array, n

    def union_branch(self) -> np.ndarray:
        """``["null", X]``: True where the row holds an X (a one-byte branch index, 0 or 1)."""
        index = self.buf[self.pos]
        self.bad |= index > 2
        self.bad |= index == 1  # zigzag: 0 -> null, 2 -> branch 1; anything else is not this union
        self.pos = self.pos + 1
        return index == 2


def _invalid_utf8(array: pa.Array) -> np.ndarray:
    """Which entries of a string array built from raw bytes are not UTF-8 (all False, in one check, as a rule)."""
    try:
        array.validate(full=True)
        return np.zeros(len(array), dtype=bool)
    except pa.ArrowInvalid:
        pass
    out = np.zeros(len(array), dtype=bool)
    for i, value in enumerate(array.cast(pa.binary()).to_pylist()):
        try:
            value is None or value.decode()
        except UnicodeDecodeError:
            out[i] = True
    return out


def _scalar(batch: _Batch, kind: str, present=None):
    """``(arrow array, numpy values or None)`` of one scalar field."""
    mask = None if present is None else ~present
    if kind in ("int", "long"):
        values = batch.varint(present)
        return pa.array(values, pa.int64(), mask=mask), values
    if kind in ("float", "double"):
        values = batch.fixed(4, "<f4", present) if kind == "float" else batch.fixed(8, "<f8", present)
        with np.errstate(invalid="ignore"):     # a null row's bytes are not a float
            values = values.astype(np.float64)
        return pa.array(values, pa.float64(), mask=mask), values
    if kind == "boolean":
        raw = batch.fixed(1, "u1", present)
        batch.bad |= (raw > 1) if present is None else ((raw > 1) & present)
        return pa.array(raw.astype(bool), pa.bool_(), mask=mask), None
    if kind == "string":
        array, _ = batch.string(present)
        return array, None
    raise NotColumnar(kind)


def _map(batch: _Batch, kind: str) -> pa.Array:
    """A ``map<float|double>`` written as one block (count, entries, 0), as a MapArray."""
    count = batch.varint()
    batch.bad |= count < 0                      # a block with its byte size: valid Avro, but fastavro's job
    count = np.where(batch.bad, 0, np.clip(count, 0, 1 << 20))
    offsets = np.zeros(len(count) + 1, dtype=np.int64)
    np.cumsum(count, out=offsets[1:])
    total = int(offsets[-1])
    key_starts, key_lengths = np.zeros(total, np.int64), np.zeros(total, np.int64)
    values = np.zeros(total, np.float64)
    width, view = (4, "<f4") if kind == "float" else (8, "<f8")
    for k in range(int(count.max()) if len(count) else 0):
        rows = np.nonzero(count > k)[0]
        pos = batch.pos[rows]
        raw = batch.buf[pos[:, None] + _TEN]
        more = raw >= 0x80
        size = np.argmin(more, axis=1) + 1
        groups = (raw & 0x7F).astype(np.uint64) << _SHIFTS
        groups[_TEN[None, :] >= size[:, None]] = 0
        n = groups.sum(axis=1, dtype=np.uint64)
        length = (n >> np.uint64(1)).astype(np.int64) ^ -(n & np.uint64(1)).astype(np.int64)
        broken = more.all(axis=1) | (length < 0)
        length = np.clip(length, 0, batch.limit)
        at = offsets[rows] + k
        key_starts[at], key_lengths[at] = pos + size, np.where(broken, 0, length)
        pos = np.minimum(pos + size + length, batch.limit)
        values[at] = batch.buf[pos[:, None] + np.arange(width)].view(view).reshape(len(rows))
        batch.pos[rows] = pos + width
        batch.bad[rows] |= broken
        batch.clamp()
    some = count > 0                            # an empty map is its count alone (0); a full one ends with a 0
    end = batch.varint(some)
    batch.bad |= some & (end != 0)              # a second block: fastavro reads it
    key_lengths = np.where(np.repeat(batch.bad, count), 0, key_lengths)
    key_offsets = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(key_lengths, out=key_offsets[1:])
    size = int(key_offsets[-1])
    data = (batch.buf[np.repeat(key_starts - key_offsets[:-1], key_lengths) + np.arange(size)] if size
            else np.empty(0, np.uint8))
    keys = pa.StringArray.from_buffers(total, pa.py_buffer(key_offsets.astype(np.int32)), pa.py_buffer(data))
    broken_keys = _invalid_utf8(keys)
    if broken_keys.any():
        batch.bad[np.repeat(np.arange(len(count)), count)[broken_keys]] = True
    return pa.MapArray.from_arrays(pa.array(offsets.astype(np.int32)), keys, pa.array(values, pa.float64()))


def _check(bad: np.ndarray, values: np.ndarray | None, present, field: dict, is_float: bool) -> np.ndarray:
    """Rows of one numeric column that break the contract's checks (Schema.validate; nulls pass)."""
    if values is None:
        return bad
    failed = np.zeros(len(values), dtype=bool)
    if is_float:
        failed |= ~np.isfinite(values)
    bounds = field.get("range")
    if bounds is not None:
        with np.errstate(invalid="ignore"):
            failed |= (values < float(bounds[0])) | (values > float(bounds[1]))
    return bad | (failed if present is None else failed & present)


def compile_decoder(schema: Schema) -> Callable[[Sequence[bytes]], tuple[dict[str, pa.Array], list[int]]]:
    """``decode(values) -> (columns by field name, doubtful row indices)`` for values written with ``schema``.

    ``values`` are single-object encoded records whose 10-byte header names ``schema`` (the caller
    checked it). A doubtful row's column entries are meaningless: the caller drops or re-decodes it.
    Raises :class:`NotColumnar` for a schema with fields it does not read.
    """
    plan = []
    for f in schema.raw["fields"]:
        ftype = f["type"]
        is_float = any(b in ("float", "double") for b in (ftype if isinstance(ftype, list) else [ftype]))
        limit = int(f.get("maxLength", DEFAULT_MAX_STRING))
        if isinstance(ftype, str) and ftype in ("int", "long", "float", "double", "boolean", "string"):
            plan.append(("scalar", f, ftype, is_float, limit))
        elif isinstance(ftype, list) and len(ftype) == 2 and ftype[0] == "null" and isinstance(ftype[1], str) \
                and ftype[1] in ("int", "long", "float", "double", "boolean", "string"):
            plan.append(("optional", f, ftype[1], is_float, limit))
        elif isinstance(ftype, dict) and ftype.get("type") == "enum":
            plan.append(("enum", f, pa.array(ftype["symbols"], pa.string()), False, limit))
        elif isinstance(ftype, dict) and ftype.get("type") == "map" and ftype.get("values") in ("float", "double"):
            plan.append(("map", f, ftype["values"], False, limit))
        else:
            raise NotColumnar(f"field {f['name']}: {ftype!r}")

    def decode(values: Sequence[bytes]) -> tuple[dict[str, pa.Array], list[int]]:
        batch = _Batch(values)
        columns: dict[str, pa.Array] = {}
        for how, f, kind, is_float, limit in plan:
            name = f["name"]
            if how == "enum":
                index = batch.varint()
                batch.bad |= (index < 0) | (index >= len(kind))
                columns[name] = kind.take(pa.array(np.where(batch.bad, 0, index)))
                continue
            if how == "map":
                columns[name] = _map(batch, kind)
                continue
            present = batch.union_branch() if how == "optional" else None
            if kind == "string":
                array, nbytes = batch.string(present)
                batch.bad |= nbytes > limit     # too many bytes: maybe too many characters (the validator says)
                columns[name] = array
                continue
            columns[name], numbers = _scalar(batch, kind, present)
            batch.bad = _check(batch.bad, numbers, present, f, is_float)
        batch.clamp()
        batch.bad |= batch.pos != batch.ends    # ends early or late (truncated, trailing bytes)
        return columns, np.nonzero(batch.bad)[0].tolist()

    return decode


__all__ = ["NotColumnar", "compile_decoder"]
