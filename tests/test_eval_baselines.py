"""``bench tiers`` baselines: fixed policies on the offline simulator, no broker, compared round by round."""

import json

import pytest

from tiertwin.jobs.experiments.evaluation import BASELINES, EvalConfig, run_evaluation


def test_baselines_run_offline_every_round_on_its_seed_with_misses_per_kind(tmp_path):
    config = EvalConfig(seconds=6.0, warmup_s=1.0, rounds=2, modes=BASELINES)
    results = run_evaluation(config, tmp_path, on_progress=lambda _: None)
    modes = results["modes"]
    assert list(modes) == list(BASELINES) and results["config"]["seeds"] == [7, 8]
    placed = {m: set(s["placements"]) for m, s in modes.items()}
    assert placed == {"no-control": {"cloud"}, "always-edge": {"edge"}, "always-local": {"local"}}
    # Same seed in a round: every policy sees the same demands.
    for r in range(2):
        assert len({s["rounds"][r]["demands"] for s in modes.values()}) == 1
    assert modes["no-control"]["rounds"][0]["demands"] != modes["no-control"]["rounds"][1]["demands"]
    assert len({s["demands"] for s in modes.values()}) == 1 and modes["no-control"]["demands"] > 100
    for s in modes.values():
        assert s["decided"] == 0 and not s["decision_latency_ms"]
        assert {"xr_frame", "ai_inference"} <= set(s["by_kind"])
        assert sum(k["misses"] for k in s["by_kind"].values()) == round(s["deadline_miss_rate"] * s["demands"])
        spread = s["spread"]["mean_ms"]
        assert spread["min"] <= s["demand_latency_ms"]["mean"] <= spread["max"] and len(spread["values"]) == 2
    # Everything in the cloud: a 20 ms XR frame cannot make it over a 20 ms one-way backhaul.
    assert modes["no-control"]["by_kind"]["xr_frame"]["deadline_miss_rate"] == 1.0
    assert modes["always-edge"]["deadline_miss_rate"] < modes["no-control"]["deadline_miss_rate"]
    report = (tmp_path / "report.md").read_text()
    assert "| always-local |" in report and "## Deadline misses per demand kind" in report
    assert json.loads((tmp_path / "results.json").read_text())["modes"]["no-control"]["demands"] > 100


def test_a_fixed_seed_repeats_the_baselines_exactly(tmp_path):
    config = EvalConfig(seconds=4.0, warmup_s=1.0, rounds=2, fixed_seed=True, modes=("no-control",))
    s = run_evaluation(config, tmp_path, on_progress=lambda _: None)["modes"]["no-control"]
    assert s["spread"]["mean_ms"]["stdev"] == 0.0 and s["spread"]["deadline_miss_rate"]["stdev"] == 0.0


def _run(mode, round_index, latencies, missed, start_ms=1_000_000):
    """A synthetic run: one XR frame per latency, the first ``missed`` of them late."""
    from tiertwin.jobs.experiments.evaluation import ModeRun

    demands, outcomes = [], []
    for i, latency in enumerate(latencies):
        demand_id = f"ue-0000/d/{i}"
        demands.append({"demand_id": demand_id, "kind": "xr_frame", "ts_ms": start_ms + 1000 + i,
                        "emitted_ns": (start_ms + 1000 + i) * 1_000_000})
        outcomes.append({"kind": "demand", "demand_id": demand_id, "latency_ms": latency, "deadline_met": i >= missed,
                         "placement": "edge", "decision_id": None, "components_ms": {"decision": 0.0}})
    return ModeRun(mode, demands, outcomes, [], {}, start_ms, 1.0, 1.0, round=round_index, seed=7 + round_index)


def test_targets_are_judged_pooled_and_within_each_round():
    from tiertwin.jobs.experiments.evaluation import compare, mode_summary, targets

    runs = {"no-control": [_run("no-control", 0, [40.0] * 10, 8), _run("no-control", 1, [50.0] * 10, 10)],
            "cloud": [_run("cloud", 0, [100.0] * 10, 10), _run("cloud", 1, [100.0] * 10, 10)],
            # round 0: 2 misses of 10 (0.25 of no control's 0.8), 20 ms; round 1: 6 of 10 (0.6 of 1.0), 38 ms
            "device": [_run("device", 0, [20.0] * 10, 2), _run("device", 1, [38.0] * 10, 6)]}
    metrics = {m: mode_summary(r, warmup_s=0.5)[0] for m, r in runs.items()}
    comparison = compare(metrics, runs, warmup_s=0.5)
    assert [r["miss_ratio"] for r in comparison["device_vs_no-control"]["rounds"]] == [0.25, 0.6]
    assert comparison["device_vs_no-control"]["miss_ratio"] == pytest.approx(8 / 18)   # pooled: 8/20 over 18/20
    assert [round(r["mean_reduction"], 6) for r in comparison["device_vs_cloud"]["rounds"]] == [0.8, 0.62]
    judged = targets(comparison)
    assert judged["misses_vs_no_control"]["met"] and judged["misses_vs_no_control"]["rounds_met"] == 1
    assert judged["mean_vs_cloud"]["value"] == pytest.approx(0.71) and judged["mean_vs_cloud"]["met"]   # 29 vs 100 ms
    assert judged["mean_vs_cloud"]["rounds_met"] == 1 and judged["mean_vs_cloud"]["rounds"] == 2
    assert not judged["mean_vs_no_control"]["met"]      # 29 ms vs 45 ms: a third lower


def test_bench_tiers_cli_runs_the_baselines_alone_and_names_a_bad_mode(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tiertwin.jobs.cli.main import app

    monkeypatch.chdir(tmp_path)   # bench results are written under the working directory
    args = ["bench", "tiers", "--seconds", "3", "--warmup", "1", "--rounds", "1", "--out", str(tmp_path / "tiers")]
    result = CliRunner().invoke(app, [*args, "--mode", "no-control", "--mode", "always-edge"])
    assert result.exit_code == 0, result.output
    assert "no-control:" in result.output and "always-edge:" in result.output and "device:" not in result.output
    assert json.loads((tmp_path / "bench-results" / "tiers.json").read_text())["results"]["modes"].keys() == {
        "no-control", "always-edge"}
    bad = CliRunner().invoke(app, [*args, "--mode", "hierarchical"])
    assert bad.exit_code != 0 and "hierarchical" in bad.output and "device" in bad.output
