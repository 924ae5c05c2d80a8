"""Subscribe to tiertwin topics from Python: typed decisions, decoded records.

>>> from tiertwin.schemas.examples import example
>>> decision = Decision.from_record(example("Decision"))
>>> decision.tier, decision.target, decision.decision_latency_ms
('local', 'edge', 1.2)
>>> matches({"ue_id": "ue-0001", "kind": "placement"}, parse_filters(["ue=ue-0001", "kind=placement"]))
True
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Iterator

from tiertwin.connectors.kafka import KafkaRecord, TopicReader
from tiertwin.errors import ConfigError
from tiertwin.settings import Settings
from tiertwin.topics import ACTIONS_LOCAL

FILTER_ALIASES = {"ue": "ue_id", "cell": "cell_id", "model": "model_name", "version": "model_version"}


@dataclass(frozen=True, slots=True)
class Decision:
    """A decision as subscribers see it (fields of schemas/Decision.avsc)."""

    decision_id: str
    tier: str
    kind: str
    ue_id: str | None
    cell_id: int | None
    subject_id: str | None
    target: str
    parameters: dict[str, float]
    model_name: str
    model_version: int
    confidence: float
    source_topic: str
    source_partition: int
    source_offset: int
    source_ts_ms: int
    source_emitted_ns: int
    received_ns: int
    decided_ns: int
    twin_site: str = "edge"     # Decision v2: where the deciding twin ran (device / edge / cloud)

    @classmethod
    def from_record(cls, record: dict) -> "Decision":
        return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls)
                      if f.name in record or f.default is dataclasses.MISSING})

    @property
    def decision_latency_ms(self) -> float:
        """From the answered record's production to the decision (both wall clock)."""
        return (self.decided_ns - self.source_emitted_ns) / 1e6


def parse_filters(expressions: list[str] | None) -> dict[str, str]:
    """``["ue=ue-1", "kind=handover"]`` -> ``{"ue_id": "ue-1", "kind": "handover"}``."""
    filters = {}
    for expr in expressions or ():
        field, sep, value = expr.partition("=")
        if not sep or not field:
            raise ConfigError(f"filter {expr!r} is not FIELD=VALUE (e.g. ue=ue-0001, kind=handover, tier=edge)")
        filters[FILTER_ALIASES.get(field, field)] = value
    return filters


def matches(record: dict, filters: dict[str, str]) -> bool:
    return all(field in record and str(record[field]) == value for field, value in filters.items())


def subscribe(topic: str, *, from_beginning: bool = False, follow: bool = True,
              filters: dict[str, str] | None = None, settings: Settings | None = None,
              idle_timeout_s: float | None = None) -> Iterator[KafkaRecord]:
    """Yield decoded records of ``topic`` (all partitions, no consumer group).

    ``from_beginning`` starts at the earliest offset, else at the end. Without
    ``follow`` it stops at the end offsets it saw when it started. Undecodable
    records are skipped here (consumers of the pipeline dead-letter them).
    """
    filters = filters or {}
    reader = TopicReader([topic], settings, on_undecodable="skip", client_id="tiertwin-subscribe",
                         start="beginning" if from_beginning else "end")
    try:
        last_record = time.monotonic()
        while True:
            if not follow and reader.at_end():
                return
            batch = reader.poll(200)
            if batch:
                last_record = time.monotonic()
            elif idle_timeout_s is not None and time.monotonic() - last_record > idle_timeout_s:
                return
            for rec in batch:
                if matches(rec.value, filters):
                    yield rec
    finally:
        reader.close()


def subscribe_decisions(topic: str = ACTIONS_LOCAL, **kwargs: Any) -> Iterator[Decision]:
    """Like :func:`subscribe`, yielding typed :class:`Decision` objects."""
    for rec in subscribe(topic, **kwargs):
        if rec.schema == "tiertwin.Decision":
            yield Decision.from_record(rec.value)
