"""`tiertwin sim` and `tiertwin import-trace` from the command line (offline / dry run: no broker needed)."""

from __future__ import annotations

import json

import polars as pl
import typer
from typer.testing import CliRunner

from tiertwin.jobs.bench import sim as bench_sim
from tiertwin.jobs.cli import sim


def _app() -> typer.Typer:
    app, bench = typer.Typer(), typer.Typer()
    app.add_typer(sim.commands)
    bench.add_typer(bench_sim.bench_commands)
    app.add_typer(bench, name="bench")
    return app


def test_sim_offline_prints_the_summary():
    result = CliRunner().invoke(_app(), ["sim", "--offline", "--seconds", "0.5", "--ues", "8", "--seed", "3",
                                         "--telemetry-hz", "4"])
    assert result.exit_code == 0, result.output
    assert "8 UEs" in result.output and "seed 3" in result.output
    assert "Telemetry 16" in result.output          # 8 UEs x 4 Hz x 0.5 s
    assert "deadline-miss rate" in result.output and "latency mean / p99" in result.output


def test_sim_errors_are_one_line():
    result = CliRunner().invoke(_app(), ["sim", "--offline", "--scenario", "no-such-preset"])
    assert result.exit_code == 1
    assert "no such file or preset" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(_app(), ["sim", "--offline", "--ues", "0"])
    assert result.exit_code == 1 and "ues" in result.output


def test_import_trace_dry_run(tmp_path):
    path = tmp_path / "drive.csv"
    pl.DataFrame({"run_num": [1, 1], "seq_num": [0, 1], "latitude": [44.97, 44.97], "longitude": [-93.2, -93.2],
                  "nr_ssRsrp": [-90.0, -91.0], "lte_rsrp": [-95.0, -95.0], "nr_ssSinr": [12.0, None],
                  "lte_rssnr": [9.0, None], "tower_id": [5, 5], "Throughput": [300.0, 200.0],
                  "movingSpeed": [1.0, 1.0], "compassDirection": [10.0, 10.0]}).write_csv(path)
    result = CliRunner().invoke(_app(), ["import-trace", str(path), "--format", "lumos5g", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "2 rows, 1 Telemetry mapped" in result.output and "unmappable-row: 1" in result.output


def test_sim_offline_with_the_local_twins_on_the_device(tmp_path):
    result = CliRunner().invoke(_app(), ["sim", "--offline", "--local-twin", "device", "--seconds", "1", "--ues", "10",
                                         "--seed", "3", "--summary-json", str(tmp_path / "run" / "summary.json")])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["local_twin"] == "device" and written["seed"] == 3 and written["sim_seconds"] == 1.0
    assert written["device"]["placements"] == written["demands_decided"] > 0 and written["demands_defaulted"] == 0
    assert "local twins: device" in result.output and "place() p50 / p99" in result.output
    decided = next(line for line in result.output.splitlines() if "demands decided / default policy" in line)
    assert decided.split("│")[2].split("/")[1].strip() == "0"       # every demand placed by its twin, none defaulted
    result = CliRunner().invoke(_app(), ["sim", "--offline", "--local-twin", "phone"])
    assert result.exit_code == 1 and "--local-twin" in result.output
