"""The trace importer on small generated files shaped like Lumos5G, Raca et al. 5G and Berlin V2X."""

from __future__ import annotations

import math
import time
import uuid
from datetime import datetime, timezone

import polars as pl
import pytest

from tiertwin.connectors.kafka import DeadLetterSink, KafkaSink, KafkaSource
from tiertwin.connectors.traces import import_trace, load_mapping
from tiertwin.errors import ConfigError


def _lumos(path, rows: int = 6):
    pl.DataFrame({
        "run_num": [3] * rows, "seq_num": list(range(rows)),
        "latitude": [44.9740 + 0.0001 * i for i in range(rows)], "longitude": [-93.2277] * rows,
        "movingSpeed": [1.4] * rows, "compassDirection": [0.0] * rows, "nrStatus": ["CONNECTED"] * rows,
        "lte_rssi": [-60.0] * rows, "lte_rsrp": [-95.0] * rows, "lte_rsrq": [-10.0] * rows, "lte_rssnr": [8.0] * rows,
        "nr_ssRsrp": [-88.0, None, -90.0, -91.0, float("nan"), -200.0][:rows],
        "nr_ssRsrq": [-11.0] * rows, "nr_ssSinr": [15.0, None, 12.0, 11.0, None, 10.0][:rows],
        "Throughput": [812.0, 20.0, 700.0, 650.0, 10.0, 600.0][:rows], "mobility_mode": ["walking"] * rows,
        "trajectory_direction": ["CW"] * rows, "tower_id": [21, 21, 21, None, 21, 21][:rows],
    }).write_csv(path)


def test_lumos5g_rows_map_and_bad_rows_are_counted(tmp_path):
    path = tmp_path / "lumos.csv"
    _lumos(path)
    report = import_trace(path, load_mapping("lumos5g"), clock_ns=lambda: 7)
    # row 1: NR values missing -> LTE fallback (-95 dBm, 8 dB); row 3: no tower -> unmappable;
    # row 4: NaN NR RSRP falls back to LTE; row 5: -200 dBm is outside the contract's [-156, -31]
    assert report.rows == 6 and report.published == 4
    assert dict(report.rejected) == {"unmappable-row": 1, "out-of-range-field": 1}
    first, fallback = report.records[0], report.records[1]
    assert (first["ue_id"], first["serving_cell"], first["rsrp_dbm"], first["sinr_db"]) == ("lumos5g-run-3", 21, -88.0, 15.0)
    assert (fallback["rsrp_dbm"], fallback["sinr_db"]) == (-95.0, 8.0)
    assert first["ts_ms"] == 1_767_225_600_000 and fallback["ts_ms"] == 1_767_225_601_000  # seq_num at 1 Hz
    assert [r["seq"] for r in report.records] == [0, 1, 2, 3]
    assert first["throughput_dl_mbps"] == 812.0 and first["speed_mps"] == 1.4 and first["emitted_ns"] == 7
    # 0.0001 degree of latitude north of the first point = 6371 km * pi / 180 * 1e-4 = 11.12 m
    assert fallback["y_m"] == pytest.approx(6_371_000 * math.radians(0.0001), rel=1e-6) and fallback["x_m"] == 0.0


def test_raca5g_strings_units_and_missing_marks(tmp_path):
    path = tmp_path / "B_2019.12.16_13.40.04.csv"
    pl.DataFrame({
        "Timestamp": ["2019.12.16_13.40.04", "2019.12.16_13.40.05"], "Longitude": [-8.48, -8.48],
        "Latitude": [51.89, 51.89], "Speed": [36, 0], "Operatorname": ["A", "A"], "CellID": [12, 12],
        "NetworkMode": ["5G", "5G"], "RSRP": ["-95", "-"], "RSRQ": [-12, -12], "SNR": [9.0, 4.0], "CQI": [11, 9],
        "RSSI": [-70, -70], "DL_bitrate": [52_000, 0], "UL_bitrate": [1_200, 0], "State": ["D", "I"],
        "PINGAVG": [31.5, 40.0],
    }).write_csv(path)
    report = import_trace(path, load_mapping("raca5g"))
    assert report.published == 1 and dict(report.rejected) == {"unmappable-row": 1}  # '-' RSRP is missing
    r = report.records[0]
    expected_ts = int(datetime(2019, 12, 16, 13, 40, 4, tzinfo=timezone.utc).timestamp() * 1000)
    assert r["ue_id"] == "raca5g-B_2019.12.16_13.40.04" and r["ts_ms"] == expected_ts
    assert (r["throughput_dl_mbps"], r["throughput_ul_mbps"], r["rtt_ms"], r["cqi"]) == (52.0, 1.2, 31.5, 11)
    assert r["speed_mps"] == pytest.approx(10.0)  # 36 km/h


def test_berlin_v2x_parquet_to_kafka_with_dead_letters(broker, settings, new_topic, tmp_path):
    path = tmp_path / "berlin.parquet"
    start = datetime(2021, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
    pl.DataFrame({
        "timestamp": [start.replace(second=s) for s in range(4)], "ping_ms": [22.0, 25.0, 30.0, 28.0],
        "datarate": [80e6, 60e6, 40e6, 70e6], "jitter": [1.0] * 4, "Latitude": [52.51] * 4,
        "Longitude": [13.32] * 4, "speed_kmh": [54.0] * 4, "PCell_RSRP": [-90.0, -92.0, None, -93.0],
        "PCell_RSRQ": [-10.0] * 4, "PCell_RSSI": [-60.0] * 4, "PCell_SNR": [18.0, 15.0, 12.0, 14.0],
        "PCell_Cell_ID": [301, 301, 301, 302],
    }).write_parquet(path)
    telemetry, letters = new_topic(1), new_topic(1)
    with KafkaSink(settings, client_id="test-trace") as sink:
        report = import_trace(path, load_mapping("berlin-v2x"), sink, telemetry,
                              DeadLetterSink(sink, stage="trace-import/map", topic=letters))
    assert report.published == 3 and dict(report.rejected) == {"unmappable-row": 1}
    got = {"t": [], "d": []}
    with KafkaSource([telemetry, letters], f"g-{uuid.uuid4().hex[:8]}", settings, on_undecodable="raise", client_id="test-trace",
                     metadata_max_age_ms=1000) as src:  # fresh topics: refresh metadata until they appear
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (len(got["t"]) < 3 or len(got["d"]) < 1):
            for rec in src.poll(200):
                got["t" if rec.topic == telemetry else "d"].append(rec)
    assert [r.value["serving_cell"] for r in got["t"]] == [301, 301, 302]
    assert got["t"][0].key == b"berlin-v2x-berlin"
    assert got["t"][0].value["throughput_dl_mbps"] == pytest.approx(80.0) and got["t"][0].value["speed_mps"] == pytest.approx(15.0)
    assert got["t"][0].value["ts_ms"] == int(start.timestamp() * 1000)
    letter = got["d"][0].value
    assert letter["reason"] == "unmappable-row" and letter["offset"] == 2 and b"PCell_SNR" in letter["original"]


def test_mapping_errors_name_the_problem(tmp_path):
    path = tmp_path / "lumos.csv"
    _lumos(path, rows=2)
    with pytest.raises(ConfigError, match="raca5g: trace has no column"):
        import_trace(path, load_mapping("raca5g"))
    bad = tmp_path / "m.yaml"
    bad.write_text("name: x\nue_id: {value: a}\ntime: {column: t}\nfields: {rsrp: {columns: [a]}}\n")
    with pytest.raises(ConfigError, match=r"m.yaml: fields.rsrp"):
        load_mapping(bad)
