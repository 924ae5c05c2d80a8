"""Twin fidelity (issue #19): the benchmark's table, and the models' properties against their baselines (no broker)."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from tiertwin.jobs.experiments.fidelity import (LATENCY_BASELINES, LATENCY_TARGETS, SINR_BASELINES, SINR_TARGETS,
                                                FidelityConfig, run_fidelity)
from tiertwin.pipelines.forecasting import SinrForecaster
from tiertwin.pipelines.latency import ResidualLatencyModel

TINY = FidelityConfig(scenarios=("dense-urban-xr", "highway-vehicles"), seeds=(2024,), seconds=3.0, ues=8, draws=4,
                      warmup_s=0.5)


def test_fidelity_has_a_row_per_scenario_target_model_and_baseline():
    latency = {"residual": ResidualLatencyModel()}
    sinr = {"rls": (SinrForecaster(), "horizon")}
    results = run_fidelity(TINY, latency, sinr)
    rows = {(r["scenario"], r["target"], r["name"]): r for r in results["rows"]}
    for scenario in TINY.scenarios:
        for target in LATENCY_TARGETS:
            for name in (*LATENCY_BASELINES, "residual, frozen", "residual, prequential"):
                assert (scenario, target, name) in rows, (scenario, target, name)
        for target in SINR_TARGETS:
            for name in (*SINR_BASELINES, "rls, frozen", "rls, prequential"):
                row = rows[(scenario, target, name)]
                assert row["n"] > 0 and math.isfinite(row["mae"]) and row["median_ae"] <= row["mae"] * 10
    assert {r["kind"] for r in results["rows"]} == {"baseline", "model"}
    # an untrained residual model frozen is the physics + queue estimate, an untrained forecaster is persistence
    for scenario in TINY.scenarios:
        assert rows[(scenario, "latency edge", "residual, frozen")]["mae"] == rows[(scenario, "latency edge", "physics + queue")]["mae"]
        assert rows[(scenario, "sinr serving", "rls, frozen")]["mae"] == rows[(scenario, "sinr serving", "persistence")]["mae"]


def test_bench_fidelity_writes_its_results(tmp_path, monkeypatch):
    from tiertwin.jobs.cli.main import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["bench", "fidelity", "--scenario", "stadium-event", "--seconds", "2",
                                      "--ues", "6", "--draws", "2", "--warmup", "0.5"])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "bench-results" / "fidelity.json").read_text())
    targets = {r["target"] for r in doc["results"]["rows"]}
    assert targets == set(LATENCY_TARGETS) | set(SINR_TARGETS)
    assert "oracle" in result.output and "persistence" in result.output
