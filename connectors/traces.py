"""Import real measurement traces (CSV or Parquet) as Telemetry records.

The column mapping is a small YAML (``connectors/trace_mappings/lumos5g.yaml``, ``raca5g.yaml``,
``berlin-v2x.yaml``, or your own), validated by pydantic::

    name: lumos5g
    ue_id: {column: run_num, prefix: "lumos5g-run-"}   # or {from_file: true} / {value: "ue-1"}
    time: {column: seq_num, unit: s}                    # numbers x unit (+ start_ms), datetimes, or strings with format
    position: {latitude: latitude, longitude: longitude}
    fields:                                             # Telemetry field -> first non-null of these columns
      serving_cell: {columns: [tower_id]}
      rsrp_dbm: {columns: [nr_ssRsrp, lte_rsrp]}
      throughput_dl_mbps: {columns: [DL_bitrate], scale: 0.001}   # kbit/s -> Mbit/s
    required: [serving_cell, rsrp_dbm, sinr_db]

Fields a trace does not measure take the mapping's ``defaults`` (e.g. ``cpu_util: 0``);
``cqi`` is derived from the SINR when not mapped; x/y are metres east/north of the
first position (equirectangular). A row whose required value is missing or NaN, or
whose record fails the Telemetry contract (out of range), is never dropped silently:
it goes to the dead-letter topic (original row as JSON, offset = row number, reason
``unmappable-row`` or the contract's reason) or, without a dead-letter sink, is
counted in :attr:`ImportReport.rejected`.

>>> import polars as pl, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
>>> pl.DataFrame({"run_num": [1, 1], "seq_num": [0, 1], "latitude": [44.97, 44.9701],
...     "longitude": [-93.26, -93.26], "nr_ssRsrp": [-90.0, None], "lte_rsrp": [-95.0, None],
...     "nr_ssSinr": [12.0, 3.0], "lte_rssnr": [9.0, 1.0], "tower_id": [17, 17], "Throughput": [310.0, 90.0],
...     "movingSpeed": [1.2, 1.3], "compassDirection": [90, 91]}).write_csv(path)
>>> report = import_trace(path, load_mapping("lumos5g"))
>>> report.rows, report.published, dict(report.rejected)
(2, 1, {'unmappable-row': 1})
>>> r = report.records[0]
>>> r["ue_id"], r["serving_cell"], r["rsrp_dbm"], r["cqi"]
('lumos5g-run-1', 17, -90.0, 12)
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tiertwin.connectors.simulator.radio import cqi_from_sinr
from tiertwin.errors import ConfigError, RecordRejected, config_error
from tiertwin.schemas import SchemaRegistry
from tiertwin.topics import TELEMETRY

MAPPING_DIR = Path(__file__).resolve().parent / "trace_mappings"
TELEMETRY_TOPIC = TELEMETRY
EARTH_RADIUS_M = 6_371_000.0
NUMERIC_FIELDS = ("serving_cell", "rsrp_dbm", "sinr_db", "cqi", "throughput_dl_mbps", "throughput_ul_mbps",
                  "rtt_ms", "cpu_util", "memory_util", "battery_pct", "speed_mps", "heading_deg",
                  "frame_rate_fps", "xr_bitrate_mbps")
INT_FIELDS = {"serving_cell", "cqi", "frame_rate_fps"}
UNIT_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1000.0}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnMap(_Strict):
    columns: list[str] = Field(min_length=1, description="first non-null wins")
    scale: float = 1.0
    offset: float = 0.0


class UeIdMap(_Strict):
    column: str | None = None
    value: str | None = None
    from_file: bool = False
    prefix: str = ""


class TimeMap(_Strict):
    column: str
    unit: Literal["ns", "us", "ms", "s"] = "ms"
    format: str | None = Field(None, description="strptime format for string timestamps")
    start_ms: int = Field(1_767_225_600_000, description="added to relative numeric times below 1e11 ms")


class PositionMap(_Strict):
    latitude: str | None = None
    longitude: str | None = None
    x_m: str | None = None
    y_m: str | None = None


class TraceMapping(_Strict):
    """How the columns of one trace format become Telemetry fields."""

    name: str
    ue_id: UeIdMap
    time: TimeMap
    position: PositionMap = PositionMap()
    fields: dict[Literal[NUMERIC_FIELDS], ColumnMap]  # type: ignore[valid-type]
    required: list[str] = Field(default_factory=lambda: ["serving_cell", "rsrp_dbm", "sinr_db"])
    defaults: dict[str, float] = Field(default_factory=lambda: {
        "throughput_dl_mbps": 0.0, "throughput_ul_mbps": 0.0, "rtt_ms": 0.0, "cpu_util": 0.0, "memory_util": 0.0,
        "battery_pct": 100.0, "speed_mps": 0.0, "heading_deg": 0.0, "frame_rate_fps": 0, "xr_bitrate_mbps": 0.0})


def load_mapping(name_or_path: str | Path) -> TraceMapping:
    """A shipped mapping by format name (``lumos5g``, ``raca5g``, ``berlin-v2x``) or a YAML file."""
    path = Path(name_or_path)
    if not path.suffix and (MAPPING_DIR / f"{name_or_path}.yaml").exists():
        path = MAPPING_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in MAPPING_DIR.glob("*.yaml")))
        raise ConfigError(f"trace format {name_or_path!s}: no such mapping file or format (formats: {known})")
    try:
        return TraceMapping.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as exc:
        raise config_error(exc, path.name) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not valid YAML ({exc})") from None


@dataclass
class ImportReport:
    rows: int = 0
    published: int = 0
    rejected: Counter = field(default_factory=Counter)
    records: list[dict] = field(default_factory=list)


def read_trace(path: Path) -> pl.DataFrame:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"trace {path}: no such file")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pl.read_parquet(path)
    return pl.read_csv(path, infer_schema_length=10_000, null_values=["", "-", "NA", "NaN", "nan"])


def _check_columns(df: pl.DataFrame, mapping: TraceMapping) -> None:
    wanted = [mapping.time.column] + ([mapping.ue_id.column] if mapping.ue_id.column else [])
    wanted += [c for c in (mapping.position.latitude, mapping.position.longitude, mapping.position.x_m,
                           mapping.position.y_m) if c]
    missing = [c for c in wanted if c not in df.columns]
    for name, spec in mapping.fields.items():
        if not any(c in df.columns for c in spec.columns):
            missing.append(f"{name} <- {'|'.join(spec.columns)}")
    if missing:
        raise ConfigError(f"mapping {mapping.name}: trace has no column(s) {', '.join(missing)}")


def _time_ms(df: pl.DataFrame, spec: TimeMap) -> pl.Series:
    col = df[spec.column]
    if col.dtype == pl.String:
        numeric = col.cast(pl.Float64, strict=False)
        if spec.format:
            col = col.str.strptime(pl.Datetime("ms"), spec.format, strict=False)
        elif numeric.null_count() > col.null_count():  # not numbers: ISO-8601 text
            col = col.str.to_datetime(strict=False, time_unit="ms")
    if col.dtype.is_temporal():
        return col.cast(pl.Datetime("ms")).dt.epoch("ms").cast(pl.Float64)
    values = (col.cast(pl.Float64, strict=False) * UNIT_MS[spec.unit]).fill_nan(None).to_frame("v")
    # relative times (sequence numbers, seconds since start) are shifted to start_ms
    return values.select(pl.when(pl.col("v") < 1e11).then(pl.col("v") + spec.start_ms)
                         .otherwise(pl.col("v"))).to_series()


def map_frame(df: pl.DataFrame, mapping: TraceMapping, source_name: str = "trace") -> pl.DataFrame:
    """The trace as a frame of Telemetry-named columns (nulls where a value is missing)."""
    _check_columns(df, mapping)
    out: dict[str, Any] = {}
    for name, spec in mapping.fields.items():
        present = [pl.col(c).cast(pl.Float64, strict=False) for c in spec.columns if c in df.columns]
        out[name] = pl.coalesce(present).fill_nan(None) * spec.scale + spec.offset
    frame = df.select(**out) if out else pl.DataFrame({"_": [None] * df.height}).select()
    u = mapping.ue_id
    if u.column:
        ue = df[u.column].cast(pl.String)
        ue = pl.Series("ue_id", [None if v is None else f"{u.prefix}{v}" for v in ue.to_list()])
    else:
        ue = pl.Series("ue_id", [f"{u.prefix}{u.value if u.value is not None else source_name}"] * df.height)
    frame = frame.with_columns(ue, _time_ms(df, mapping.time).alias("ts_ms"))
    p = mapping.position
    if p.latitude and p.longitude:
        lat = df[p.latitude].cast(pl.Float64, strict=False).fill_nan(None)
        lon = df[p.longitude].cast(pl.Float64, strict=False).fill_nan(None)
        frame = frame.with_columns(lat.alias("latitude"), lon.alias("longitude"))
    elif p.x_m and p.y_m:
        frame = frame.with_columns(df[p.x_m].cast(pl.Float64, strict=False).alias("x_m"),
                                   df[p.y_m].cast(pl.Float64, strict=False).alias("y_m"))
    return frame


def _finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def import_trace(path: str | Path, mapping: TraceMapping, sink: Any = None, topic: str = TELEMETRY_TOPIC,
                 dead_letters: Any = None, registry: SchemaRegistry | None = None,
                 clock_ns: Callable[[], int] = time.time_ns) -> ImportReport:
    """Map every row of ``path`` to a Telemetry record and send it to ``topic`` (or keep it, without a sink)."""
    path = Path(path)
    registry = registry or SchemaRegistry.default()
    raw = read_trace(path)
    frame = map_frame(raw, mapping, path.stem)
    report = ImportReport(rows=frame.height)
    origin: tuple[float, float] | None = None
    seq: Counter = Counter()
    raw_rows = raw.iter_rows(named=True)
    for offset, row in enumerate(frame.iter_rows(named=True)):
        original = next(raw_rows)
        missing = [f for f in ["ue_id", "ts_ms", *mapping.required] if not _finite(row.get(f))]
        try:
            if missing:
                raise RecordRejected(f"row {offset}: no value for {', '.join(missing)}", reason="unmappable-row")
            if origin is None and _finite(row.get("latitude")) and _finite(row.get("longitude")):
                origin = (row["latitude"], row["longitude"])
            record = _telemetry(row, mapping, origin, seq, clock_ns)
            data = registry.encode("Telemetry", record)
        except RecordRejected as exc:
            report.rejected[exc.reason] += 1
            if dead_letters is not None:
                dead_letters.reject(value=json.dumps(original, default=str).encode(), key=None,
                                    topic=f"file:{path.name}", partition=0, offset=offset, error=exc)
            continue
        if sink is None:
            report.records.append(record)
        else:
            sink.send_raw(topic, data, key=record["ue_id"])
        report.published += 1
    if sink is not None:
        sink.flush()
    return report


def _telemetry(row: dict, mapping: TraceMapping, origin: tuple[float, float] | None, seq: Counter,
               clock_ns: Callable[[], int]) -> dict:
    value = lambda f: row[f] if _finite(row.get(f)) else mapping.defaults.get(f, 0.0)
    ue = row["ue_id"]
    seq[ue] += 1
    lat, lon = row.get("latitude"), row.get("longitude")
    has_position = _finite(lat) and _finite(lon) and origin is not None
    if has_position:
        x = EARTH_RADIUS_M * math.radians(lon - origin[1]) * math.cos(math.radians(origin[0]))
        y = EARTH_RADIUS_M * math.radians(lat - origin[0])
    else:
        x, y = float(value("x_m")), float(value("y_m"))
    sinr = float(row["sinr_db"]) if _finite(row.get("sinr_db")) else float(mapping.defaults.get("sinr_db", 0.0))
    cqi = row.get("cqi")
    record = {
        "ue_id": str(ue), "ts_ms": int(row["ts_ms"]), "seq": seq[ue] - 1,
        "serving_cell": int(value("serving_cell")), "rsrp_dbm": float(value("rsrp_dbm")), "sinr_db": sinr,
        "cqi": int(cqi) if _finite(cqi) else int(cqi_from_sinr(np.array([sinr]))[0]),
        "neighbours": [], "latitude": float(lat) if has_position else None,
        "longitude": float(lon) if has_position else None, "x_m": x, "y_m": y,
        "xr_active": False, "emitted_ns": clock_ns(),
    }
    for f in ("throughput_dl_mbps", "throughput_ul_mbps", "rtt_ms", "cpu_util", "memory_util", "battery_pct",
              "speed_mps", "xr_bitrate_mbps"):
        record[f] = float(value(f))
    record["heading_deg"] = float(value("heading_deg")) % 360.0
    record["frame_rate_fps"] = int(value("frame_rate_fps"))
    return record
