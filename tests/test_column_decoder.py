"""The vectorised column decoder reads exactly what fastavro reads, or says which rows it doubts."""

import math
import random

import pytest
from fastavro.utils import generate_many

from tiertwin.schemas import SchemaRegistry
from tiertwin.schemas.column_decoder import NotColumnar, compile_decoder
from tiertwin.schemas.examples import example

REGISTRY = SchemaRegistry.default()


def _columnar():
    out = []
    for name in REGISTRY.names():
        schema = REGISTRY.current(name)
        try:
            out.append((schema, compile_decoder(schema)))
        except NotColumnar:
            pass
    return out


COLUMNAR = _columnar()


def _rows(columns: dict) -> list[dict]:
    import pyarrow as pa

    lists = {name: (col.to_pylist(maps_as_pydicts="lossy") if pa.types.is_map(col.type) else col.to_pylist())
             for name, col in columns.items()}
    return [dict(zip(lists, row)) for row in zip(*lists.values())]


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b and type(a) is type(b)


def test_the_cloud_contracts_compile():
    assert {"tiertwin.Decision", "tiertwin.LocalSummary", "tiertwin.Outcome", "tiertwin.EdgeState"} <= {
        s.name for s, _ in COLUMNAR}


@pytest.mark.parametrize("schema,decode", COLUMNAR, ids=[s.name for s, _ in COLUMNAR])
def test_same_records_as_fastavro(schema, decode):
    records = [example(schema.name.split(".")[-1])] + list(generate_many(schema.parsed, 400))
    values = [REGISTRY.encode_with(schema, r, validate=False) for r in records]
    columns, doubtful = decode(values)
    rows = _rows(columns)
    for i, value in enumerate(values):
        name, expected = REGISTRY.decode(value, validate=False)
        if i in doubtful:  # only a record the contract refuses may be doubted
            with pytest.raises(Exception):
                REGISTRY.decode(value)
            continue
        REGISTRY.current(schema.name).validate(expected)   # what is not doubted passes the contract
        assert list(rows[i]) == list(expected)
        assert all(_same(rows[i][k], expected[k]) for k in expected), (i, rows[i], expected)


@pytest.mark.parametrize("schema,decode", COLUMNAR, ids=[s.name for s, _ in COLUMNAR])
def test_broken_rows_are_doubted_alone(schema, decode):
    good = REGISTRY.encode(schema.name, example(schema.name.split(".")[-1]))
    rng = random.Random(5)
    broken = [good[:-1], good + b"\x00", good[:HEADER] + b"\xff" * 12, good[:HEADER + 1],
              good[:HEADER] + bytes(rng.randrange(256) for _ in range(len(good) - HEADER))]
    values = [good] + broken + [good]
    columns, doubtful = decode(values)
    refused = set()
    for i, value in enumerate(values):
        try:
            REGISTRY.decode(value)
        except Exception:
            refused.add(i)
    assert refused <= set(doubtful) and 0 not in doubtful and len(values) - 1 not in doubtful
    rows = _rows(columns)
    assert rows[0] == REGISTRY.decode(good)[1] == rows[-1]


HEADER = 10


def test_out_of_range_and_non_finite_rows_are_doubted():
    schema = REGISTRY.current("LocalSummary")
    decode = compile_decoder(schema)
    records = [example("LocalSummary"), example("LocalSummary", sinr_db=float("nan")),
               example("LocalSummary", serving_cell=-1), example("LocalSummary", best_neighbour_sinr_db=99.0),
               example("LocalSummary", ue_id="ü" * 10)]
    values = [REGISTRY.encode_with(schema, r, validate=False) for r in records]
    _, doubtful = decode(values)
    assert doubtful == [1, 2, 3]


def test_invalid_utf8_is_doubted():
    schema = REGISTRY.current("EdgeState")
    decision = REGISTRY.current("Decision")
    decode = compile_decoder(decision)
    good = REGISTRY.encode("Decision", example("Decision", decision_id="abc"))
    bad = good.replace(b"abc", b"a\xffc", 1)
    _, doubtful = decode([good, bad, good])
    assert doubtful == [1]
    assert schema is not None
