"""The Avro contracts and the single-object codec (no broker needed)."""

import copy
import io
import json
import math

import pytest
from fastavro import parse_schema, schemaless_writer

from tiertwin.errors import DecodeError, IncompatibleSchemaError, ValidationError
from tiertwin.schemas import MAGIC, SCHEMA_DIR, SchemaRegistry, schema_fingerprint
from tiertwin.schemas.examples import EXAMPLE_NAMES, example


@pytest.fixture(scope="module")
def registry():
    return SchemaRegistry.default()


def test_every_contract_has_an_example_and_documents_every_field():
    names = {p.stem for p in SCHEMA_DIR.glob("*.avsc")}
    assert names == set(EXAMPLE_NAMES)
    for path in SCHEMA_DIR.glob("*.avsc"):
        for field in json.loads(path.read_text())["fields"]:
            assert field.get("doc"), f"{path.name}: {field['name']} has no doc"


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_round_trip_keeps_every_field(registry, name):
    record = example(name)
    data = registry.encode(name, record)
    assert data[:2] == MAGIC
    assert data[2:10] == registry.current(name).fingerprint
    assert registry.decode(data) == (f"tiertwin.{name}", record)


def test_fingerprint_matches_avro_reference_value():
    # Avro's Java SchemaNormalization.parsingFingerprint64("null") = 7195948357588979594, little-endian on the wire.
    assert schema_fingerprint("null") == (7195948357588979594).to_bytes(8, "little")


def _old_and_new(add_field: dict):
    old = json.loads((SCHEMA_DIR / "Demand.avsc").read_text())
    new = copy.deepcopy(old)
    new["fields"].append(add_field)
    return old, new


def test_backward_compatible_evolution_reads_old_records_with_defaults():
    old, new = _old_and_new({"name": "energy_budget_j", "type": "float", "default": 1.5, "doc": "added later"})
    registry = SchemaRegistry()
    registry.register(old)
    old_bytes = registry.encode("Demand", example("Demand"))
    registry.register(new)
    name, record = registry.decode(old_bytes)
    assert record["energy_budget_j"] == 1.5
    assert registry.decode(registry.encode("Demand", {**example("Demand"), "energy_budget_j": 2.5}))[1][
        "energy_budget_j"] == 2.5


def test_incompatible_evolution_is_rejected():
    old, new = _old_and_new({"name": "energy_budget_j", "type": "float", "doc": "no default"})
    registry = SchemaRegistry()
    registry.register(old)
    with pytest.raises(IncompatibleSchemaError):
        registry.register(new)
    retyped = copy.deepcopy(old)
    next(f for f in retyped["fields"] if f["name"] == "demand_id")["type"] = "int"
    with pytest.raises(IncompatibleSchemaError):
        registry.register(retyped)


def test_history_versions_are_loaded(registry):
    # Telemetry v1 (history/) lacked heading_deg; both versions are known and v1 records still decode.
    versions = registry.versions("Telemetry")
    assert len(versions) >= 2
    v1 = next(v for v in versions if v is not registry.current("Telemetry"))
    old = {k: v for k, v in example("Telemetry").items() if k in {f["name"] for f in v1.raw["fields"]}}
    _, record = registry.decode(registry.encode_with(v1, old))
    assert record["heading_deg"] == 0.0


def test_local_summary_v1_decodes_with_no_raw_samples(registry):
    # LocalSummary v2 added the window's latest raw SINR samples; a v1 summary reads them as unknown (null),
    # and the edge then forecasts from the denoised values as before.
    from tiertwin.pipelines.edge_twin import summary_sinr

    v1 = next(v for v in registry.versions("LocalSummary") if "sinr_last_db" not in _fields(v))
    old = {k: v for k, v in example("LocalSummary").items() if k in _fields(v1)}
    _, record = registry.decode(registry.encode_with(v1, old))
    assert record["sinr_last_db"] is None and record["best_neighbour_sinr_last_db"] is None
    assert summary_sinr(record) == (old["sinr_db"], old["best_neighbour_sinr_db"])
    assert summary_sinr(example("LocalSummary", sinr_last_db=14.5, best_neighbour_sinr_last_db=6.0)) == (14.5, 6.0)


def _fields(schema) -> list[str]:
    return [f["name"] for f in schema.raw["fields"]]


def test_decision_v1_decodes_as_v3_with_the_default_twin_site(registry):
    # Decision v2 added twin_site; a v1 record (a service twin's, before the field) reads as made at the edge.
    current = registry.current("Decision")
    v1 = next(v for v in registry.versions("Decision") if "twin_site" not in _fields(v))
    assert _fields(current) == _fields(v1) + ["twin_site", "model_revision"]
    old = {k: v for k, v in example("Decision").items() if k not in ("twin_site", "model_revision")}
    name, record = registry.decode(registry.encode_with(v1, old))
    assert name == "tiertwin.Decision" and record == {**old, "twin_site": "edge", "model_revision": 0}
    for site in ("device", "edge", "cloud"):
        assert registry.decode(registry.encode("Decision", {**old, "twin_site": site}))[1]["twin_site"] == site


def test_decision_v2_decodes_as_v3_at_revision_0(registry):
    # Decision v3 added model_revision (online updates since the version); a v2 record reads as revision 0.
    current = registry.current("Decision")
    v2 = next(v for v in registry.versions("Decision") if _fields(v) == _fields(current)[:-1])
    old = {k: v for k, v in example("Decision").items() if k != "model_revision"}
    assert registry.decode(registry.encode_with(v2, old))[1] == {**old, "model_revision": 0}
    assert registry.decode(registry.encode("Decision", {**old, "model_revision": 41}))[1]["model_revision"] == 41


def test_model_update_v1_decodes_unsigned(registry):
    # ModelUpdate v2 added digest, signature and action; a v1 record reads as an unsigned publish (refused on load).
    current = registry.current("ModelUpdate")
    v1 = next(v for v in registry.versions("ModelUpdate") if v is not current)
    assert _fields(current) == _fields(v1) + ["digest", "signature", "action"]
    old = {k: v for k, v in example("ModelUpdate").items() if k in _fields(v1)}
    assert registry.decode(registry.encode_with(v1, old))[1] == {**old, "digest": "", "signature": "",
                                                                 "action": "publish"}


@pytest.mark.parametrize("data,reason", [
    (b"\x01\x02", "truncated"),
    (b"\x00\x01" + b"\x00" * 30, "bad-magic"),
    (MAGIC + b"\xde\xad\xbe\xef\x00\x00\x00\x01" + b"\x02", "unknown-fingerprint"),
])
def test_malformed_bytes_are_rejected_with_reason(registry, data, reason):
    with pytest.raises(DecodeError) as err:
        registry.decode(data)
    assert err.value.reason == reason


def test_truncated_body_is_rejected(registry):
    data = registry.encode("Telemetry", example("Telemetry"))
    with pytest.raises(DecodeError) as err:
        registry.decode(data[:25])
    assert err.value.reason == "truncated"


def _raw_encode(registry, name, record):
    schema = registry.current(name)
    buf = io.BytesIO(schema.header)
    buf.seek(0, 2)
    schemaless_writer(buf, parse_schema(schema.raw), record)
    return buf.getvalue()


def test_valid_avro_carrying_nan_is_rejected(registry):
    data = _raw_encode(registry, "Telemetry", example("Telemetry", sinr_db=math.nan))
    with pytest.raises(ValidationError) as err:
        registry.decode(data)
    assert err.value.reason == "non-finite-field"
    assert "sinr_db" in str(err.value)


def test_out_of_range_fields_are_rejected_on_both_sides(registry):
    with pytest.raises(ValidationError) as err:
        registry.encode("Telemetry", example("Telemetry", cqi=16))
    assert err.value.reason == "out-of-range-field"
    neighbours = [{"cell_id": 1, "rsrp_dbm": -20.0, "sinr_db": 3.0}]
    data = _raw_encode(registry, "Telemetry", example("Telemetry", neighbours=neighbours))
    with pytest.raises(ValidationError, match=r"neighbours\[\]\.rsrp_dbm"):
        registry.decode(data)


def test_wrong_type_is_a_validation_error(registry):
    with pytest.raises(ValidationError) as err:
        registry.encode("Demand", example("Demand", kind="teleport"))
    assert err.value.reason == "type-mismatch"


def test_oversized_strings_are_rejected(registry):
    with pytest.raises(ValidationError) as err:
        registry.encode("Telemetry", example("Telemetry", ue_id="u" * 10_000))
    assert err.value.reason == "oversized-field"
    assert registry.encode("DeadLetter", example("DeadLetter", detail="d" * 2000))


from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402

from tiertwin.errors import RecordRejected  # noqa: E402


@hsettings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_decoding_arbitrary_bytes_never_raises_anything_but_a_rejection(data):
    registry = SchemaRegistry.default()
    try:
        registry.decode(data)
    except RecordRejected as exc:
        assert exc.reason and str(exc)


@hsettings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=8))
def test_corrupted_valid_records_are_rejected_or_decode_cleanly(cut, noise):
    registry = SchemaRegistry.default()
    data = bytearray(registry.encode("Telemetry", example("Telemetry")))
    position = 10 + cut % (len(data) - 10)
    data[position:position + len(noise)] = noise
    try:
        name, record = registry.decode(bytes(data))
    except RecordRejected:
        return
    assert name == "tiertwin.Telemetry" and set(record) == set(example("Telemetry"))
