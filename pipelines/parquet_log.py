"""Archived tiertwin records as Parquet, partitioned by event date and hour.

Layout (Hive-style, readable by polars / pyarrow / Spark with partition discovery)::

    <root>/<Schema>/date=YYYY-MM-DD/hour=HH/<part>.parquet

Each file holds records of one contract; the Arrow schema is derived from the Avro
contract (enums as strings, maps as ``map<string, double|long>``, nullable unions as
nullable columns), so a record read back equals the record written. The partition
is the record's *event time* (:func:`event_time_ms`), which is also the timestamp
the cloud twin windows on, so a backfill of one hour reads one folder.

>>> import tempfile
>>> from tiertwin.schemas.examples import example
>>> root = tempfile.mkdtemp()
>>> paths = write_records(root, "EdgeState", [example("EdgeState")])
>>> [p.relative_to(root).parent.as_posix() for p in paths]
['EdgeState/date=2026-01-01/hour=00']
>>> list(read_records(root, "EdgeState")) == [example("EdgeState")]
True
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from tiertwin.errors import ConfigError
from tiertwin.schemas import SchemaRegistry
from tiertwin.schemas.event_time import EVENT_TIME_FIELDS, event_time_ms, short_name  # noqa: F401 (EVENT_TIME_FIELDS re-exported)

_PRIMITIVES = {"string": pa.string(), "int": pa.int32(), "long": pa.int64(), "float": pa.float32(),
               "double": pa.float64(), "boolean": pa.bool_(), "bytes": pa.binary()}


def _arrow_type(avro_type) -> tuple[pa.DataType, bool]:
    """``(arrow type, nullable)`` for one Avro field type."""
    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"]
        if len(branches) != 1:
            raise ConfigError(f"union {avro_type} has no single Arrow type")
        return _arrow_type(branches[0])[0], True
    if isinstance(avro_type, str):
        return _PRIMITIVES[avro_type], False
    kind = avro_type["type"]
    if kind == "enum":
        return pa.string(), False
    if kind == "map":
        return pa.map_(pa.string(), _arrow_type(avro_type["values"])[0]), False
    if kind == "array":
        return pa.list_(_arrow_type(avro_type["items"])[0]), False
    if kind == "record":
        return pa.struct([pa.field(f["name"], *_arrow_type(f["type"])) for f in avro_type["fields"]]), False
    raise ConfigError(f"no Arrow type for Avro type {avro_type!r}")


def arrow_schema(schema: str, registry: SchemaRegistry | None = None) -> pa.Schema:
    """The Arrow schema of the current version of an Avro contract."""
    raw = (registry or SchemaRegistry.default()).current(schema).raw
    return pa.schema([pa.field(f["name"], *_arrow_type(f["type"])) for f in raw["fields"]])


def partition_of(ts_ms: int) -> str:
    """``date=YYYY-MM-DD/hour=HH`` of an event time (UTC).

    >>> partition_of(1_767_225_600_000 + 3_600_000)
    'date=2026-01-01/hour=01'
    """
    t = dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.timezone.utc)
    return f"date={t:%Y-%m-%d}/hour={t:%H}"


def write_records(root: str | Path, schema: str, records: Iterable[dict], part: str | None = None) -> list[Path]:
    """Write ``records`` of ``schema`` into their date/hour partitions; one new file per partition."""
    name = short_name(schema)
    by_partition: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_partition[partition_of(event_time_ms(name, record))].append(record)
    if not by_partition:
        return []
    arrow = arrow_schema(name)
    part = part or uuid.uuid4().hex
    paths = []
    for partition, rows in sorted(by_partition.items()):
        folder = Path(root) / name / partition
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{part}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=arrow), tmp)
        tmp.rename(path)  # readers globbing *.parquet never see a half-written file
        paths.append(path)
    return paths


def files(root: str | Path, schema: str) -> list[Path]:
    """Every Parquet file of ``schema`` under ``root``, in partition order."""
    return sorted((Path(root) / short_name(schema)).glob("date=*/hour=*/*.parquet"))


def _plain(value):
    """Arrow maps come back as lists of pairs; make them dicts again."""
    if isinstance(value, list) and value and isinstance(value[0], tuple) and len(value[0]) == 2:
        return dict(value)
    return value


def read_file(path: str | Path, schema: str) -> list[dict]:
    """The records of one file, with map fields as dicts (as the Avro codec returns them)."""
    table = pq.read_table(path, schema=arrow_schema(schema))
    map_fields = [f.name for f in table.schema if pa.types.is_map(f.type)]
    rows = table.to_pylist()
    for row in rows:
        for name in map_fields:
            row[name] = dict(row[name] or [])
    return rows


def read_records(root: str | Path, schema: str) -> Iterator[dict]:
    """Every archived record of ``schema`` under ``root``."""
    for path in files(root, schema):
        yield from read_file(path, schema)
