"""Each contract's event time: the instant a record is about, in ms since the epoch.

The cloud twin's watermarks and windows, the Beam Kafka read's record timestamps and the
archive's date/hour partitions are all in this time.
"""

from __future__ import annotations

from tiertwin.errors import ConfigError

# The field that carries each contract's event time.
EVENT_TIME_FIELDS: dict[str, str] = {
    "Telemetry": "ts_ms", "Demand": "ts_ms", "LocalSummary": "window_end_ms", "EdgeState": "ts_ms",
    "Decision": "source_ts_ms", "Outcome": "ts_ms", "TwinSnapshot": "window_start_ms",
    "ModelUpdate": "created_ms", "DeadLetter": "failed_at_ms",
}


def short_name(schema: str) -> str:
    """``"tiertwin.Decision"`` -> ``"Decision"``."""
    return schema.rsplit(".", 1)[-1]


def event_time_ms(schema: str, record: dict, default: int | None = None) -> int:
    """The event time of ``record`` (a ``schema`` record), or ``default`` if it has none.

    >>> event_time_ms("Outcome", {"ts_ms": 1500})
    1500
    """
    field = EVENT_TIME_FIELDS.get(short_name(schema))
    value = record.get(field) if field else None
    if value is None:
        if default is None:
            raise ConfigError(f"{schema} record has no event time field and no default was given")
        return int(default)
    return int(value)
