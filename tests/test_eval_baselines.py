"""``bench tiers`` baselines: fixed policies on the offline simulator, no broker, compared round by round."""

import json

from tiertwin.jobs.evaluation import BASELINES, EvalConfig, run_evaluation


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
