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
