"""Avro single-object encoding for every record on tiertwin's topics.

Wire format (Avro specification, "Single object encoding")::

    0xC3 0x01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema | Avro binary body

The :class:`SchemaRegistry` loads the ``.avsc`` contracts in this folder (the
current versions) and ``history/`` (older versions still on the wire). Readers
resolve the writer schema by fingerprint and read into the current version of
the same record, so records written before a backward-compatible change still
decode. Registering a version that cannot read the previous one is refused.

>>> registry = SchemaRegistry.default()
>>> data = registry.encode("Demand", {"demand_id": "d1", "ue_id": "ue-1", "ts_ms": 0,
...     "kind": "xr_frame", "compute_gcycles": 0.5, "input_bytes": 2000,
...     "output_bytes": 50000, "deadline_ms": 20.0, "priority": 6,
...     "serving_cell": 3, "emitted_ns": 0})
>>> data[:2]
b'\\xc3\\x01'
>>> name, record = registry.decode(data)
>>> name, record["kind"], record["deadline_ms"]
('tiertwin.Demand', 'xr_frame', 20.0)
"""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.utils import generate_many

from tiertwin.errors import DecodeError, IncompatibleSchemaError, SchemaError, ValidationError

MAGIC = b"\xc3\x01"
# Strings longer than this are rejected unless the field declares its own "maxLength":
# ids and names are short, and an oversized string is garbage or an attack, not telemetry.
DEFAULT_MAX_STRING = 256
HEADER_SIZE = 10
SCHEMA_DIR = Path(__file__).resolve().parent
NAMESPACE = "tiertwin"

Check = Callable[[dict], None]


def full_name(name: str) -> str:
    """``"Demand"`` -> ``"tiertwin.Demand"``; full names pass through."""
    return name if "." in name else f"{NAMESPACE}.{name}"


def schema_fingerprint(schema: dict | str) -> bytes:
    """The 8 bytes of the CRC-64-AVRO fingerprint, in the little-endian order the wire uses."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


@dataclass(frozen=True)
class Schema:
    """One version of one record contract."""

    name: str
    raw: dict
    parsed: Any
    fingerprint: bytes
    checks: tuple[Check, ...] = field(default=(), repr=False)
    passes: Callable[[dict], bool] | None = field(default=None, repr=False)

    @property
    def header(self) -> bytes:
        return MAGIC + self.fingerprint

    def validate(self, record: dict) -> None:
        """Raise :class:`ValidationError` if a field is NaN, infinite or outside its documented range."""
        # One generated predicate clears good records in a single call (the hot path); only a
        # record it doubts goes through the per-field checks, which raise the precise error.
        if self.passes is not None and self.passes(record):
            return
        for check in self.checks:
            check(record)


def _range_checks(fields: list[dict], prefix: str = "") -> list[Check]:
    """Checks built from the contract's own ``range`` attributes and float types."""
    checks: list[Check] = []
    for f in fields:
        name, ftype = f["name"], f["type"]
        label = prefix + name
        branches = ftype if isinstance(ftype, list) else [ftype]
        is_float = any(b in ("float", "double") for b in branches)
        bounds = f.get("range")
        if is_float or bounds is not None:
            checks.append(_scalar_check(name, label, is_float, bounds))
        if "string" in branches:
            checks.append(_length_check(name, label, f.get("maxLength", DEFAULT_MAX_STRING)))
        for b in branches:
            if isinstance(b, dict) and b.get("type") == "array" and isinstance(b["items"], dict) \
                    and b["items"].get("type") == "record":
                checks.append(_array_check(name, _range_checks(b["items"]["fields"], label + "[].")))
    return checks


def _scalar_check(name: str, label: str, is_float: bool, bounds: list | None) -> Check:
    lo, hi = (bounds if bounds is not None else (-math.inf, math.inf))

    def check(record: dict) -> None:
        value = record.get(name)
        if value is None or isinstance(value, bool):
            return
        if is_float and isinstance(value, float) and not math.isfinite(value):
            raise ValidationError(f"field {label} is {value}", reason="non-finite-field")
        if not lo <= value <= hi:
            raise ValidationError(f"field {label}={value} outside [{lo:g}, {hi:g}]",
                                  reason="out-of-range-field")

    return check


def _length_check(name: str, label: str, max_length: int) -> Check:
    def check(record: dict) -> None:
        value = record.get(name)
        if isinstance(value, str) and len(value) > max_length:
            raise ValidationError(f"field {label} is {len(value)} characters long (max {max_length})",
                                  reason="oversized-field")

    return check


def _compile_passes(fields: list[dict]) -> Callable[[dict], bool]:
    """One generated function that is True when every check of ``_range_checks(fields)`` passes.

    Generated from our own ``.avsc`` files, never from input data.
    """
    lines, namespace = ["def passes(r):"], {"isfinite": math.isfinite}

    def emit(fields: list[dict], record: str, indent: int) -> None:
        pad = " " * indent
        for i, f in enumerate(fields):
            branches = f["type"] if isinstance(f["type"], list) else [f["type"]]
            is_float = any(b in ("float", "double") for b in branches)
            bounds, var = f.get("range"), f"v{indent}_{i}"
            if is_float or bounds is not None:
                lines.append(f"{pad}{var} = {record}.get({f['name']!r})")
                tests = []
                if bounds is not None:
                    tests.append(f"not ({float(bounds[0])!r} <= {var} <= {float(bounds[1])!r})")
                if is_float:
                    tests.append(f"not isfinite({var})")
                lines.append(f"{pad}if {var} is not None and not isinstance({var}, bool) and ({' or '.join(tests)}):"
                             " return False")
            if "string" in branches:
                limit = int(f.get("maxLength", DEFAULT_MAX_STRING))
                lines.append(f"{pad}{var}s = {record}.get({f['name']!r})")
                lines.append(f"{pad}if isinstance({var}s, str) and len({var}s) > {limit}: return False")
            for b in branches:
                if isinstance(b, dict) and b.get("type") == "array" and isinstance(b["items"], dict) \
                        and b["items"].get("type") == "record":
                    lines.append(f"{pad}for item{indent}_{i} in {record}.get({f['name']!r}) or ():")
                    emit(b["items"]["fields"], f"item{indent}_{i}", indent + 4)

    emit(fields, "r", 4)
    lines.append("    return True")
    exec("\n".join(lines), namespace)  # noqa: S102
    return namespace["passes"]


def _array_check(name: str, item_checks: list[Check]) -> Check:
    def check(record: dict) -> None:
        for item in record.get(name) or ():
            for item_check in item_checks:
                item_check(item)

    return check


class SchemaRegistry:
    """Writer schemas by fingerprint, current reader schema by record name."""

    def __init__(self) -> None:
        self._by_fingerprint: dict[bytes, Schema] = {}
        self._current: dict[str, Schema] = {}

    @classmethod
    def from_directory(cls, directory: Path = SCHEMA_DIR) -> "SchemaRegistry":
        """Load ``history/*.avsc`` (oldest first by file name) then the current ``*.avsc``."""
        registry = cls()
        history = sorted((directory / "history").glob("*.avsc")) if (directory / "history").is_dir() else []
        for path in history + sorted(directory.glob("*.avsc")):
            try:
                raw = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise SchemaError(f"{path.name}: not valid JSON ({exc})") from exc
            registry.register(raw)
        return registry

    _default: "SchemaRegistry | None" = None

    @classmethod
    def default(cls) -> "SchemaRegistry":
        """The registry of the contracts shipped with tiertwin (loaded once per process)."""
        if cls._default is None:
            cls._default = cls.from_directory()
        return cls._default

    # -- registration --------------------------------------------------------------------------
    def register(self, raw: dict) -> Schema:
        """Add a schema version; it becomes the current one for its name.

        Raises :class:`IncompatibleSchemaError` if it cannot read records written
        with the version it replaces (backward compatibility).
        """
        try:
            # Parsed once, with fastavro's hint that it is parsed: without it fastavro re-parses
            # the schema on every read and write (about 3x the cost of the record itself).
            parsed = parse_schema(raw)
        except Exception as exc:  # fastavro raises several exception types for bad schemas
            raise SchemaError(f"schema {raw.get('name', '?')}: {exc}") from exc
        name = full_name(raw["name"] if "namespace" not in raw else f"{raw['namespace']}.{raw['name']}")
        schema = Schema(name, raw, parsed, schema_fingerprint(raw), tuple(_range_checks(raw["fields"])),
                        _compile_passes(raw["fields"]))
        previous = self._current.get(name)
        if previous is not None and previous.fingerprint != schema.fingerprint:
            self._check_can_read(reader=schema, writer=previous)
        self._by_fingerprint[schema.fingerprint] = schema
        self._current[name] = schema
        return schema

    @staticmethod
    def _check_can_read(reader: Schema, writer: Schema, samples: int = 5) -> None:
        """Resolve sample records of ``writer`` with ``reader`` (fastavro's own resolution rules)."""
        for record in generate_many(writer.parsed, samples):
            buf = io.BytesIO()
            schemaless_writer(buf, writer.parsed, record)
            buf.seek(0)
            try:
                schemaless_reader(buf, writer.parsed, reader.parsed)
            except SchemaResolutionError as exc:
                raise IncompatibleSchemaError(
                    f"{reader.name}: new version cannot read records of the previous one ({exc})") from exc

    # -- lookup --------------------------------------------------------------------------------
    def current(self, name: str) -> Schema:
        try:
            return self._current[full_name(name)]
        except KeyError:
            raise SchemaError(f"no schema named {full_name(name)!r}; known: {sorted(self._current)}") from None

    def names(self) -> list[str]:
        return sorted(self._current)

    def writer_of(self, header: bytes) -> Schema | None:
        """The writer schema a 10-byte single-object header names (None: not such a header, or unknown)."""
        if len(header) != HEADER_SIZE or header[:2] != MAGIC:
            return None
        return self._by_fingerprint.get(bytes(header[2:]))

    def versions(self, name: str) -> list[Schema]:
        target = full_name(name)
        return [s for s in self._by_fingerprint.values() if s.name == target]

    # -- encoding ------------------------------------------------------------------------------
    def encode(self, name: str, record: dict, validate: bool = True) -> bytes:
        """Encode ``record`` with the current version of ``name`` (validated first by default)."""
        return self.encode_with(self.current(name), record, validate)

    @staticmethod
    def encode_with(schema: Schema, record: dict, validate: bool = True) -> bytes:
        if validate:
            schema.validate(record)
        buf = io.BytesIO()
        buf.write(schema.header)
        try:
            schemaless_writer(buf, schema.parsed, record)
        except (TypeError, ValueError, KeyError, AttributeError, struct.error) as exc:
            raise ValidationError(f"{schema.name}: cannot encode record ({exc!r})", reason="type-mismatch") from exc
        return buf.getvalue()

    def decode(self, data: bytes, validate: bool = True, expect: str | None = None) -> tuple[str, dict]:
        """Decode one single-object record into the current version of its schema.

        Returns ``(full record name, record)``. Raises :class:`DecodeError` (bad magic,
        unknown fingerprint, truncated body, wrong record type) or
        :class:`ValidationError` (NaN / out-of-range field).
        """
        if data is None or len(data) < HEADER_SIZE:
            raise DecodeError(f"{0 if data is None else len(data)} bytes is shorter than the 10-byte header",
                              reason="truncated")
        if data[:2] != MAGIC:
            raise DecodeError(f"magic {bytes(data[:2]).hex()} is not c301 (Avro single-object encoding)",
                              reason="bad-magic")
        writer = self._by_fingerprint.get(bytes(data[2:HEADER_SIZE]))
        if writer is None:
            raise DecodeError(f"unknown schema fingerprint {bytes(data[2:HEADER_SIZE]).hex()}",
                              reason="unknown-fingerprint")
        if expect is not None and writer.name != full_name(expect):
            raise DecodeError(f"expected {full_name(expect)}, got {writer.name}", reason="wrong-schema")
        reader = self._current[writer.name]
        buf = io.BytesIO(data)
        buf.seek(HEADER_SIZE)
        try:
            record = schemaless_reader(buf, writer.parsed, None if reader is writer else reader.parsed)
        except (EOFError, StopIteration, IndexError, ValueError, UnicodeDecodeError, OverflowError,
                MemoryError, struct.error) as exc:
            raise DecodeError(f"{writer.name}: body does not decode ({exc!r})", reason="truncated") from exc
        if buf.tell() != len(data):
            raise DecodeError(f"{writer.name}: {len(data) - buf.tell()} trailing bytes after the record",
                              reason="trailing-bytes")
        if validate:
            reader.validate(record)
        return writer.name, record

    def decode_many(self, values: Iterable[bytes], validate: bool = True):
        """Yield ``(name, record)`` or the :class:`~tiertwin.errors.RecordRejected` error, per value."""
        for value in values:
            try:
                yield self.decode(value, validate)
            except (DecodeError, ValidationError) as exc:
                yield exc
