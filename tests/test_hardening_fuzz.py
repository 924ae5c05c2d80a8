"""Fuzz: 10,000 malformed records among good ones through a running local agent (real broker).

Every malformed record must land in the dead-letter topic with a reason, the agent must stay
alive, and the good records among them must be handled as if the garbage were not there.
"""

from __future__ import annotations

import io
import math
import random
from collections import Counter

import pytest
from fastavro import schemaless_writer

from tiertwin.connectors.kafka import KafkaSink
from tiertwin.connectors.kafka import read_topic
from tiertwin.pipelines.local_twin import LocalTwinAgent
from tiertwin.pipelines.pretrain import SyntheticFleet
from tiertwin.schemas import MAGIC, SchemaRegistry
from tiertwin.schemas.examples import example

from tests.agent_support import Running, local_agent_config
from tests.test_agents_local import fleet_records

pytestmark = pytest.mark.broker
MALFORMED = 10_000


def _raw(schema, record) -> bytes:
    """Valid Avro for ``record`` under ``schema``, bypassing tiertwin's validation (as a buggy producer would)."""
    buf = io.BytesIO()
    buf.write(schema.header)
    schemaless_writer(buf, schema.parsed, record)
    return buf.getvalue()


def malformed_values(n: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    registry = SchemaRegistry.default()
    telemetry = registry.current("Telemetry")
    good = registry.encode("Telemetry", example("Telemetry"))
    makers = [
        lambda: rng.randbytes(rng.randint(0, 200)),                                     # random bytes
        lambda: good[:rng.randint(10, len(good) - 1)],                                  # truncated Avro
        lambda: MAGIC + rng.randbytes(8) + good[10:],                                   # unknown fingerprint
        lambda: b"\x00" + rng.randbytes(60),                                            # wrong magic
        lambda: _raw(telemetry, example("Telemetry", sinr_db=rng.choice([math.nan, math.inf, -math.inf]))),
        lambda: _raw(telemetry, example("Telemetry", rsrp_dbm=rng.uniform(10, 1e6))),   # out of range
        lambda: _raw(telemetry, example("Telemetry", cqi=rng.randint(16, 10_000))),    # out of range int
        lambda: _raw(telemetry, example("Telemetry", ue_id="x" * rng.randint(300, 50_000))),  # oversized string
        lambda: good + rng.randbytes(rng.randint(1, 20)),                               # trailing garbage
    ]
    values = []
    while len(values) < n:
        value = makers[len(values) % len(makers)]()
        try:
            registry.decode(value)
        except Exception:
            values.append(value)  # keep only what really is malformed (a random mutation may be valid)
    return values


@pytest.fixture
def fuzz_config(new_topic, group_id):
    return local_agent_config(new_topic, group_id, prefix="test.fuzz", profile="throughput")


def test_ten_thousand_malformed_records_are_dead_lettered_and_good_ones_decided(fuzz_config, settings):
    registry = SchemaRegistry.default()
    bad = malformed_values(MALFORMED)
    telemetry, demands = fleet_records(SyntheticFleet(n_ues=6, n_cells=3, seed=3, demand_every=2), 20)
    rng = random.Random(11)
    with KafkaSink(settings, profile="throughput") as sink:
        good_telemetry = [registry.encode("Telemetry", t) for t in telemetry]
        stream = [(v, False) for v in bad] + [(v, True) for v in good_telemetry]
        rng.shuffle(stream)
        for value, _ in stream:
            sink.send_raw(fuzz_config.telemetry_topic, value, key=f"ue-{rng.randint(0, 5)}")
        half = MALFORMED // 2
        for value in bad[:half]:  # garbage on the demand topic too, around the real demands
            sink.send_raw(fuzz_config.demands_topic, value, key="fuzz")
        for d in demands:
            sink.send(fuzz_config.demands_topic, "Demand", d, key=d["ue_id"])
    running = Running(LocalTwinAgent(fuzz_config, settings))
    with running:
        letters = read_topic(fuzz_config.dead_letter_topic, settings, expect=MALFORMED + half, timeout_s=180)
        decisions = read_topic(fuzz_config.actions_topic, settings, expect=len(demands), timeout_s=60)
        assert running.thread.is_alive()
    assert len(letters) == MALFORMED + half
    originals = Counter(l.value["original"] for l in letters)
    assert originals == Counter(bad) + Counter(bad[:half])
    reasons = Counter(l.value["reason"] for l in letters)
    assert {"truncated", "unknown-fingerprint", "bad-magic", "non-finite-field", "out-of-range-field",
            "oversized-field", "trailing-bytes"} <= set(reasons), reasons
    assert all(l.value["detail"] and l.value["topic"] in (fuzz_config.telemetry_topic, fuzz_config.demands_topic)
               for l in letters)
    assert sorted(d.value["subject_id"] for d in decisions) == sorted(d["demand_id"] for d in demands)
