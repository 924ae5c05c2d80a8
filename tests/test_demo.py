"""The quickstart's main job, shortened: the live three-tier demo on the managed broker."""

import pytest

from tiertwin.jobs.ops.demo import run_demo
from tiertwin.jobs.ops.launcher import status_of

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_live_demo_makes_decisions_at_every_agent_tier_and_stops_cleanly(broker, settings):
    lines = []
    summary = run_demo(seconds=20, ues=30, with_cloud=True, settings=settings, on_progress=lines.append, seed=7)
    tiers = {tier for tier, _ in summary.decisions}
    assert {"local", "edge"} <= tiers, summary.decisions
    assert summary.records["tiertwin.local.telemetry"] > 0 and summary.records["tiertwin.outcomes"] > 0
    assert summary.records["tiertwin.edge.summaries"] > 0 and summary.records["tiertwin.cloud.snapshots"] > 0
    assert sum(summary.placements.values()) > 0
    assert not any(line.startswith("deployed local") for line in lines)   # the local twins ran on the device
    assert any("deployed simulator" in line and "seed 7" in line for line in lines)
    # every local placement was made in the simulator's process, and the run is set beside no control
    assert len(summary.place_us) == summary.decisions[("local", "placement")] > 0
    assert summary.baseline is not None and summary.baseline.seed == 7 and summary.baseline.ues == 30
    assert summary.simulator is not None and summary.simulator["local_twin"] == "device"
    assert summary.simulator["late_decisions"] == 0 and summary.simulator["demands_defaulted"] == 0
    assert summary.baseline.sim_seconds == pytest.approx(summary.simulator["sim_seconds"], abs=0.01)
    assert summary.baseline.demands_by_placement.keys() == {"cloud"}
    for name in ("simulator", "edge", "cloud"):
        assert status_of(name, settings)["running"] == 0


def test_a_short_demo_runs_its_seconds_of_network_after_the_simulator_started(broker, settings):
    # The run's seconds once counted the simulator's start-up too: on a loaded machine `--seconds 5` stopped it
    # after a fraction of a simulated second, or before it had sent anything ("no decisions were made").
    summary = run_demo(seconds=3, ues=10, with_cloud=False, settings=settings, on_progress=lambda _: None,
                       seed=7, baseline=False)
    assert summary.decisions[("local", "placement")] > 0, summary.decisions
    assert summary.simulator is not None and summary.simulator["sim_seconds"] >= 1.5, summary.simulator
