"""The compiled encoder of the device uplink writes exactly fastavro's bytes, or steps aside (NotFlat)."""

import random

import pytest
from fastavro.utils import generate_many

from tiertwin.schemas import SchemaRegistry
from tiertwin.schemas.examples import example
from tiertwin.schemas.flat_encoder import NotFlat, compile_encoder

REGISTRY = SchemaRegistry.default()


def _flat_schemas():
    out = []
    for name in REGISTRY.names():
        schema = REGISTRY.current(name)
        try:
            out.append((schema, compile_encoder(schema.raw, schema.header)))
        except NotFlat:
            pass
    return out


FLAT = _flat_schemas()


def test_the_uplink_schemas_compile():
    assert {"tiertwin.Decision", "tiertwin.LocalSummary", "tiertwin.Outcome"} <= {s.name for s, _ in FLAT}


@pytest.mark.parametrize("schema,encode", FLAT, ids=[s.name for s, _ in FLAT])
def test_same_bytes_as_fastavro_for_random_records(schema, encode):
    records = [example(schema.name.split(".")[-1])] + list(generate_many(schema.parsed, 300))
    for record in records:
        assert encode(record) == REGISTRY.encode_with(schema, record, validate=False)


def test_nulls_defaults_extremes_and_new_map_keys():
    schema = REGISTRY.current("Decision")
    encode = compile_encoder(schema.raw, schema.header)
    rng = random.Random(3)
    for _ in range(200):
        record = example("Decision")
        record.update(ue_id=rng.choice([None, "ue-7", "ü" * rng.randint(0, 40)]), cell_id=rng.choice([None, 0, -1, 2**31 - 1]),
                      source_offset=rng.choice([0, -2**63, 2**63 - 1, rng.randint(-10**12, 10**12)]),
                      parameters={f"k{rng.randint(0, 30)}": rng.uniform(-1e9, 1e9) for _ in range(rng.randint(0, 25))})
        record["parameters"]["int_valued"] = 3
        if rng.random() < 0.5:
            record.pop("twin_site")          # a field with a default may be absent
        assert encode(record) == REGISTRY.encode_with(schema, record, validate=False)


@pytest.mark.parametrize("change", [{"cell_id": 3.5}, {"target": b"edge"}, {"tier": "nowhere"},
                                    {"parameters": {"x": "1"}}, {"parameters": {1: 1.0}}, {"source_offset": 2**63}])
def test_a_value_it_does_not_take_is_not_flat(change):
    schema = REGISTRY.current("Decision")
    with pytest.raises(NotFlat):
        compile_encoder(schema.raw, schema.header)({**example("Decision"), **change})


@pytest.mark.parametrize("schema,encode", FLAT, ids=[s.name for s, _ in FLAT])
def test_checked_encoder_takes_only_what_validate_passes(schema, encode):
    """checked=True: a record it encodes passes Schema.validate and has fastavro's bytes; one that fails the
    contract's checks (random values: out of range, NaN, long strings) is NotFlat."""
    checked = compile_encoder(schema.raw, schema.header, checked=True)
    rng = random.Random(5)
    records = [example(schema.name.split(".")[-1])] + list(generate_many(schema.parsed, 300))
    for record in records[1:60]:    # push some values onto the edges and beyond
        for f in schema.raw["fields"]:
            if f.get("range") and rng.random() < 0.3:
                lo, hi = f["range"]
                record[f["name"]] = rng.choice([lo, hi, lo - 1, hi + 1, float("nan"), float("inf"), (lo + hi) / 2])
    encoded = 0
    for record in records:
        try:
            value = checked(record)
        except NotFlat:
            continue
        schema.validate(record)     # raises if the checked encoder let an invalid record through
        assert value == REGISTRY.encode_with(schema, record, validate=False)
        encoded += 1
    assert encoded >= 1


def test_checked_encoder_refuses_out_of_range_and_long_strings():
    schema = REGISTRY.current("LocalSummary")
    checked = compile_encoder(schema.raw, schema.header, checked=True)
    good = example("LocalSummary")
    assert checked(good) == REGISTRY.encode("LocalSummary", good)
    for change in ({"sinr_db": 51.0}, {"cpu_util": float("nan")}, {"x_m": float("inf")}, {"ue_id": "u" * 257},
                   {"best_neighbour_sinr_db": -31.0}, {"samples": -1}):
        with pytest.raises(NotFlat):
            checked({**good, **change})


def _fleet_records(ues: int = 300, steps: int = 40) -> dict[int, list[dict]]:
    """The Decisions and LocalSummary records a device runtime sends for a simulated fleet (offline)."""
    from tiertwin.connectors.simulator.scenarios import load_scenario
    from tiertwin.connectors.simulator.world import World
    from tiertwin.pipelines.device import DeviceConfig, DeviceRuntime

    world = World(load_scenario("dense-urban-xr").with_overrides(ues=ues), seed=11)
    runtime = DeviceRuntime(DeviceConfig(device_id="flat-encoder-test", offline_uplink="keep"), connect=False)
    with runtime:
        for _ in range(steps):
            world.step()
            for t in world.telemetry_records():
                runtime.observe(t)
            for d in world.demand_records():
                runtime.place(d)
            world.outcome_records()
        records: dict[int, list[dict]] = {}
        for kind, record, _ in runtime._outbox:
            records.setdefault(kind, []).append(record)
    return records


def test_the_uplink_records_of_a_fleet_encode_as_fastavro_does():
    """What the uplink sends, field by field: the checked compiled encoder's bytes are fastavro's for every
    Decision and LocalSummary of a simulated fleet (ns timestamps, 300 UE ids, map key sets, nulls), they
    decode to the record, and one encoder instance stays right as its caches fill and empty."""
    from tiertwin.schemas import flat_encoder

    records = _fleet_records()
    names = {0: "Decision", 1: "LocalSummary"}
    assert set(names) <= set(records) and len(records[0]) > 500 and len(records[1]) > 500
    saved = flat_encoder._STRING_CACHE
    flat_encoder._STRING_CACHE = 64      # the string caches fill and empty many times over
    try:
        for kind, name in names.items():
            schema = REGISTRY.current(name)
            encode = compile_encoder(schema.raw, schema.header, checked=True)
            for _ in range(2):     # cold caches, then warm
                for record in records[kind]:
                    value = encode(record)
                    assert value == REGISTRY.encode_with(schema, record, validate=True)
            decoded = REGISTRY.decode(value)[1]
            assert decoded.keys() == record.keys()
    finally:
        flat_encoder._STRING_CACHE = saved


def test_timestamps_and_ints_encode_as_fastavro_does():
    """The int/long paths (small-int table, timestamps from a cache of their high bits, the generic varint)
    against fastavro over the whole long range."""
    schema = REGISTRY.current("Decision")
    encode = compile_encoder(schema.raw, schema.header)
    rng = random.Random(13)
    values = [0, 1, -1, 8191, 8192, 2**41 - 1, 2**41, 2**42, 2**56, 2**62 - 1, 2**62, 2**63 - 1, -2**63]
    values += [rng.randint(-2**63, 2**63 - 1) for _ in range(300)]
    values += [1_796_279_942_009_148_102 + rng.randint(0, 10**12) for _ in range(300)]   # ns timestamps
    values += [1_767_225_600_210 + rng.randint(0, 10**11) for _ in range(300)]          # ms timestamps
    for v in values:
        record = {**example("Decision"), "decided_ns": v, "source_offset": v, "received_ns": -v if v > -2**63 else 0}
        assert encode(record) == REGISTRY.encode_with(schema, record, validate=False), v


def test_missing_fields_and_other_types_are_not_flat():
    schema = REGISTRY.current("Decision")
    encode = compile_encoder(schema.raw, schema.header, checked=True)
    record = example("Decision")
    for broken in ({k: v for k, v in record.items() if k != "decision_id"}, {**record, "decided_ns": 1.5},
                   {**record, "decided_ns": True}, {**record, "parameters": [("a", 1.0)]}, {**record, "ue_id": b"ue"},
                   {**record, "confidence": 1.5}, {**record, "confidence": float("nan")}, None, []):
        with pytest.raises(NotFlat):
            encode(broken)
