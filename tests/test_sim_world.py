"""The simulated world without Kafka: determinism, mobility + handover, latency model, decisions, scenarios."""

from __future__ import annotations

import numpy as np
import pytest

from tiertwin.connectors.simulator import MemorySink, Scenario, SimulatorLoop, World, load_scenario, parse_scenario
from tiertwin.connectors.simulator.scenarios import preset_names
from tiertwin.errors import ConfigError, RecordRejected


def _run_bytes(seed: int, seconds: float = 2.0) -> list[tuple]:
    sink = MemorySink()
    SimulatorLoop(World(load_scenario("dense-urban-xr").with_overrides(ues=30), seed=seed), sink).run(seconds)
    return sink.records


def test_same_seed_gives_identical_record_bytes():
    first, second = _run_bytes(5), _run_bytes(5)
    assert len(first) > 500
    assert {r[1] for r in first} == {"Telemetry", "Demand", "EdgeState", "Outcome"}
    assert first == second
    assert _run_bytes(6) != first


def _corridor(**compute) -> Scenario:
    """Omni sites, always LOS, no shadowing: the only thing that changes along the walk is distance."""
    return parse_scenario({
        "ues": 1, "layout": {"rings": 1, "isd_m": 200.0, "sectored": False},
        "radio": {"los_model": "always", "shadowing": False},
        "mobility": [{"model": "linear", "speed_mps": [10.0, 10.0]}],
        "device": {"xr_share": 0.0}, "compute": compute or {},
    })


def test_ue_walking_away_loses_sinr_and_hands_over():
    world = World(_corridor(), seed=1)
    world.mobility.xy[0] = (15.0, 0.0)   # next to site 0 (origin), walking east towards site 1 at (200, 0)
    world.mobility.heading[0] = 0.0
    world.serving[0] = 0
    sinr_on_site0, handed_over_at = [], None
    for _ in range(2000):
        state = world.step()
        sinr_on_site0.append(float(world.sinr_matrix[0, 0]))
        if state.serving[0] != 0:
            handed_over_at = float(state.xy[0, 0])
            break
    assert handed_over_at is not None, "no A3 handover within 200 m"
    assert int(world.serving[0]) == 1
    # A3 needs the neighbour 3 dB + 1 dB hysteresis stronger for 160 ms: past the midpoint, not at it
    assert 100.0 < handed_over_at < 200.0
    assert sinr_on_site0[-1] < sinr_on_site0[0] - 20.0
    assert np.all(np.diff(sinr_on_site0) < 1e-9)  # monotone: nothing but distance changes
    assert world.stats.handovers_a3 == 1


def _demand(world: World, ue_id: str = "ue-0000") -> dict:
    return {"demand_id": f"{ue_id}/d/test", "ue_id": ue_id, "ts_ms": world.now_ms, "kind": "ai_inference",
            "compute_gcycles": 2.0, "input_bytes": 50_000, "output_bytes": 1_000, "deadline_ms": 100.0,
            "priority": 4, "serving_cell": int(world.serving[0]), "emitted_ns": world.clock_ns()}


def test_edge_instead_of_cloud_differs_by_the_backhaul():
    # Same capacity at the (omni, unsliced) MEC and in the cloud, empty queues: only the backhaul differs.
    scenario = _corridor(mec_gcps=1000.0, cloud_gcps=1000.0, backhaul_latency_ms=10.0, backhaul_gbps=10.0)
    edge_world, cloud_world = World(scenario, seed=3), World(scenario, seed=3)
    edge_world.step(), cloud_world.step()
    edge = edge_world.execute_demand(_demand(edge_world), "edge")
    cloud = cloud_world.execute_demand(_demand(cloud_world), "cloud")
    # backhaul = 2 x 10 ms one way + (50 000 + 1 000) bytes * 8 / 10 Gbit/s = 20 ms + 0.0408 ms
    expected = 2 * 10.0 + (50_000 + 1_000) * 8 / 10e9 * 1000
    assert expected == pytest.approx(20.0408)
    assert cloud["latency_ms"] - edge["latency_ms"] == pytest.approx(expected, abs=1e-9)
    assert cloud["components_ms"]["backhaul"] == pytest.approx(expected) and edge["components_ms"]["backhaul"] == 0
    for part in ("uplink", "downlink", "compute", "queue"):
        assert cloud["components_ms"][part] == pytest.approx(edge["components_ms"][part])
    # compute = 2 Gcycles / 1000 Gcycles/s = 2 ms; the queue of the next demand on the edge holds it
    assert edge["components_ms"]["compute"] == pytest.approx(2.0)
    assert edge_world.execute_demand(_demand(edge_world), "edge")["components_ms"]["queue"] == pytest.approx(2.0)


def test_local_placement_has_no_radio_or_backhaul_and_uses_the_device():
    world = World(_corridor(), seed=3)
    world.step()
    local = world.execute_demand(_demand(world), "local")
    assert local["components_ms"]["uplink"] == local["components_ms"]["backhaul"] == 0.0
    assert local["components_ms"]["compute"] == pytest.approx(2.0 / world.scenario.device.compute_gcps * 1000)
    assert local["deadline_met"] == (local["latency_ms"] <= 100.0)


def test_placement_waits_for_its_decision_then_times_out_to_the_default():
    world = World(load_scenario("dense-urban-xr").with_overrides(ues=20), seed=2)
    world.await_decisions = True
    demands = []
    while len(demands) < 2:
        world.step()
        demands += world.demand_records()
    world.outcome_records()
    decided = world.apply_decision({"decision_id": "dec-1", "kind": "placement", "subject_id": demands[0]["demand_id"],
                                    "target": "edge", "parameters": {}})
    assert decided["decision_id"] == "dec-1" and decided["placement"] == "edge"
    assert decided["components_ms"]["decision"] >= 0.0
    redelivered = world.apply_decision({"decision_id": "dec-1", "kind": "placement",
                                        "subject_id": demands[0]["demand_id"], "target": "cloud", "parameters": {}})
    assert redelivered is None and world.stats.duplicate_decisions == 1 and world.stats.late_decisions == 0
    for _ in range(5):  # 50 ms > the 10 ms decision timeout
        world.step()
        world.demand_records()
    outcomes = {o["demand_id"]: o for o in world.outcome_records() if o["kind"] == "demand"}
    timed_out = outcomes[demands[1]["demand_id"]]
    assert timed_out["placement"] == "cloud" and timed_out["decision_id"] is None
    assert timed_out["components_ms"]["decision"] == pytest.approx(10.0)
    late = world.apply_decision({"decision_id": "dec-2", "kind": "placement", "subject_id": demands[1]["demand_id"],
                                 "target": "edge", "parameters": {}})
    assert late["kind"] == "decision" and late["effect"] == {"applied": 0.0, "late": 1.0}
    assert world.stats.late_decisions == 1


def test_resource_decisions_change_the_state():
    world = World(load_scenario("dense-urban-xr").with_overrides(ues=40), seed=4)
    world.step()
    ue = "ue-0007"
    prb = world.apply_decision({"decision_id": "p", "kind": "prb_share", "ue_id": ue, "target": "",
                                "parameters": {"share": 0.9}})
    assert prb["effect"]["throughput_after_mbps"] > prb["effect"]["throughput_before_mbps"]
    cell = int(world.serving[7])
    mec = world.apply_decision({"decision_id": "m", "kind": "mec_share", "cell_id": cell, "target": "",
                                "parameters": {"share": 0.8}})
    # 3 cells a site: 0.8 decided + an equal third claimed by each undecided cell is over the server: scaled
    assert mec["effect"]["capacity_after_gcps"] == pytest.approx(0.8 / (0.8 + 2 / 3) * world.scenario.compute.mec_gcps)
    rate = world.apply_decision({"decision_id": "x", "kind": "xr_bitrate", "ue_id": ue, "target": "",
                                 "parameters": {"bitrate_mbps": 5.0}})
    assert world.xr_bitrate[7] == 5.0 and rate["effect"]["bitrate_after_mbps"] == 5.0
    world.apply_decision({"decision_id": "g", "kind": "migration", "ue_id": ue, "target": "site:2", "parameters": {}})
    assert world.stats.migrations == 1 and world.stats.decisions["prb_share"] == 1
    for bad, reason in [({"kind": "handover", "ue_id": "ue-9999", "target": "cell:1"}, "no UE"),
                        ({"kind": "handover", "ue_id": ue, "target": "cell:999"}, "no cell"),
                        ({"kind": "prb_share", "cell_id": 1, "target": "", "parameters": {"share": 1.5}}, "share"),
                        ({"kind": "placement", "subject_id": "x", "target": "moon"}, "placement target")]:
        with pytest.raises(RecordRejected, match=reason) as info:
            world.apply_decision({"decision_id": "bad", "parameters": {}, **bad})
        assert info.value.reason == "inapplicable-decision"


def test_decided_handover_suspends_a3():
    world = World(_corridor(), seed=1)
    world.mobility.xy[0] = (15.0, 0.0)
    world.mobility.speed[0] = 0.0
    world.serving[0] = 0
    world.step()
    outcome = world.apply_decision({"decision_id": "h", "kind": "handover", "ue_id": "ue-0000", "target": "cell:4",
                                    "parameters": {"hold_ms": 500.0}})
    assert outcome["effect"]["sinr_after_db"] < outcome["effect"]["sinr_before_db"]
    for _ in range(40):  # 400 ms < hold: A3 would move it back at once otherwise
        world.step()
    assert int(world.serving[0]) == 4
    for _ in range(40):
        world.step()
    assert int(world.serving[0]) == 0


def test_presets_load_and_bad_fields_are_named(tmp_path):
    assert {"dense-urban-xr", "highway-vehicles", "stadium-event"} <= set(preset_names())
    for name in ("highway-vehicles", "stadium-event"):
        world = World(load_scenario(name).with_overrides(ues=20))
        sink = MemorySink(keep=False)
        SimulatorLoop(world, sink).run(0.3)
        assert sink.count > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("mobility:\n  - {model: teleport}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: mobility.0.model"):
        load_scenario(bad)


def test_random_default_policy_explores_every_placement_without_changing_the_physics():
    base = load_scenario("dense-urban-xr").with_overrides(ues=30)
    explore = parse_scenario({**base.model_dump(), "compute": {**base.compute.model_dump(), "default_placement": "random"}})
    fixed_world, random_world = World(base, seed=9), World(explore, seed=9)
    SimulatorLoop(fixed_world).run(1.0)
    SimulatorLoop(random_world).run(1.0)
    assert set(random_world.stats.placements) == {"local", "edge", "cloud"}
    assert set(fixed_world.stats.placements) == {"cloud"}
    assert np.array_equal(fixed_world.sinr_db, random_world.sinr_db)


def test_mec_serves_urgent_work_first_and_drains_at_capacity():
    world = World(_corridor(mec_gcps=100.0), seed=3)   # omni: one 100 Gcycles/s slice per site
    world.step()
    bulk = {**_demand(world), "demand_id": "bulk", "compute_gcycles": 50.0, "priority": 2}
    xr = {**_demand(world), "demand_id": "xr", "compute_gcycles": 0.5, "priority": 6}
    assert world.execute_demand(bulk, "edge")["components_ms"]["queue"] == 0.0
    # 50 Gcycles of best-effort work queued: an urgent frame does not wait behind it
    assert world.execute_demand(xr, "edge")["components_ms"]["queue"] == pytest.approx(0.0)
    late_bulk = world.execute_demand({**bulk, "demand_id": "bulk2"}, "edge")
    assert late_bulk["components_ms"]["queue"] == pytest.approx((50.0 + 0.5) / 100.0 * 1000)  # 505 ms
    world.step()  # 10 ms at 100 Gcycles/s = 1 Gcycle done: the urgent 0.5 first, then 0.5 of bulk
    cell = int(world.serving[0])
    assert world.mec_queue_by_priority[cell, 6] == 0.0
    assert world.mec_queue_by_priority[cell, 2] == pytest.approx(100.0 - 0.5)


def test_fast_fading_varies_a_still_ues_sinr():
    still = {"ues": 3, "mobility": [{"model": "linear", "speed_mps": [0.0, 0.0]}], "device": {"xr_share": 0.0}}
    faded = World(parse_scenario({**still, "radio": {"fast_fading": True}}), seed=2)
    calm = World(parse_scenario(still), seed=2)
    faded_sinr = np.array([faded.step().sinr_db.copy() for _ in range(20)])
    calm_sinr = np.array([calm.step().sinr_db.copy() for _ in range(20)])
    assert faded_sinr.std(axis=0).min() > 1.0          # Rayleigh: several dB from step to step
    assert calm_sinr.std(axis=0).max() < 1e-9          # nothing moves, nothing changes


def _local_outcomes(world: World) -> list[dict]:
    return [o for o in world.outcome_records() if o["kind"] == "demand" and o["placement"] == "local"]


def test_device_runs_local_work_earliest_deadline_first():
    world = World(_corridor(), seed=3)      # device: 20 Gcycles/s
    world.step()
    t0 = world.now_ms
    # a critical inference (100 ms of device work, due in 200 ms), then 20 ms later an XR frame due in 20 ms
    slow = {**_demand(world), "demand_id": "slow", "compute_gcycles": 2.0, "deadline_ms": 200.0, "priority": 6}
    assert world.submit_demand(slow, "local", "dec-slow") is None     # its Outcome comes when the work is done
    world.step(), world.step()
    frame = {**_demand(world), "demand_id": "frame", "compute_gcycles": 0.2, "deadline_ms": 20.0, "priority": 6}
    world.submit_demand(frame, "local", "dec-frame", decision_wait_ms=0.25)
    done = []
    while len(done) < 2:
        world.step()
        done += [(world.now_ms, o) for o in _local_outcomes(world)]
    (frame_at, first), (slow_at, second) = done
    assert [first["demand_id"], second["demand_id"]] == ["frame", "slow"]   # arrived later, finished first
    assert first["decision_id"] == "dec-frame" and second["decision_id"] == "dec-slow"
    # the frame preempts: 10 ms of work right away; the inference's 100 ms stretch by those 10 ms
    assert first["components_ms"]["queue"] == pytest.approx(0.0, abs=1e-9)
    assert first["latency_ms"] == pytest.approx(0.25 + 10.0) and first["deadline_met"]
    assert second["components_ms"]["compute"] == pytest.approx(100.0)
    assert second["components_ms"]["queue"] == pytest.approx(10.0)
    assert second["latency_ms"] == pytest.approx(110.0)
    assert frame_at == t0 + 30 and slow_at == t0 + 110     # emitted in the step the work completes
    assert world.device_backlog_ms[0] == 0.0 and not world.device_tasks


def test_not_critical_local_work_waits_behind_critical_work_in_arrival_order():
    world = World(_corridor(), seed=3)
    world.step()
    base = {**_demand(world), "compute_gcycles": 0.2}             # 10 ms each
    for name, priority, deadline in (("bulk-1", 2, 50.0), ("bulk-2", 2, 10.0), ("xr", 6, 1000.0)):
        world.submit_demand({**base, "demand_id": name, "priority": priority, "deadline_ms": deadline}, "local")
    world.finish_local_work()
    order = [(o["demand_id"], o["latency_ms"]) for o in _local_outcomes(world)]
    assert [name for name, _ in order] == ["xr", "bulk-1", "bulk-2"]   # bulk-2's tighter deadline does not count
    assert [latency for _, latency in order] == pytest.approx([10.0, 20.0, 30.0])


def test_device_work_is_conserved_and_the_device_never_idles_while_work_waits():
    scenario = parse_scenario({**_corridor().model_dump(), "ues": 3})
    world = World(scenario, seed=4)
    rng = np.random.default_rng(0)
    submitted = {u: 0.0 for u in world.ue_ids}
    outcomes = []
    for step in range(30):
        before = world.device_backlog_ms.copy()
        world.step()
        # work-conserving: a 10 ms step removes 10 ms of work from every device that has that much
        assert world.device_backlog_ms == pytest.approx(np.maximum(before - 10.0, 0.0), abs=1e-9)
        outcomes += _local_outcomes(world)
        for i in range(int(rng.integers(0, 4))):
            ue_id = world.ue_ids[int(rng.integers(0, 3))]
            gcycles = float(rng.uniform(0.1, 1.0))
            world.submit_demand({**_demand(world, ue_id), "demand_id": f"{ue_id}/{step}/{i}", "compute_gcycles": gcycles,
                                 "deadline_ms": float(rng.choice([20.0, 100.0, 2000.0])),
                                 "priority": int(rng.choice([2, 4, 6]))}, "local")
            submitted[ue_id] += gcycles / scenario.device.compute_gcps * 1000.0
    assert world.device_backlog_ms.sum() > 0           # some work is still queued at the end of the run
    world.finish_local_work()
    outcomes += _local_outcomes(world)
    assert len({o["demand_id"] for o in outcomes}) == len(outcomes) == world.stats.placements["local"]
    for ue_id, work in submitted.items():            # every submitted millisecond of work ran, once
        assert sum(o["components_ms"]["compute"] for o in outcomes if o["ue_id"] == ue_id) == pytest.approx(work)
    assert world.device_backlog_ms.sum() == 0.0 and not world.device_tasks
    assert all(o["latency_ms"] >= o["components_ms"]["compute"] - 1e-9 for o in outcomes)


def test_no_control_baseline_is_the_same_world_with_nobody_deciding():
    from tiertwin.connectors.simulator import no_control

    spec = load_scenario("dense-urban-xr").with_overrides(ues=30)
    baseline = no_control(spec, seconds=3.0, seed=12)
    loop = SimulatorLoop(World(spec, seed=12)).run(3.0)   # the full loop, every record built and encoded
    assert baseline.steps == loop.steps == 300 and baseline.demands_by_placement == loop.demands_by_placement
    assert baseline.demands_by_placement["cloud"] > 100
    assert (baseline.deadline_miss_rate, baseline.latency_mean_ms, baseline.latency_p99_ms) == \
        (loop.deadline_miss_rate, loop.latency_mean_ms, loop.latency_p99_ms)
    assert no_control(spec, seconds=3.0, seed=13).latency_mean_ms != baseline.latency_mean_ms
    # no control means the cloud, whatever the scenario's default policy explores
    explore = parse_scenario({**spec.model_dump(), "compute": {**spec.compute.model_dump(), "default_placement": "random"}})
    assert no_control(explore, seconds=1.0, seed=12).demands_by_placement.keys() == {"cloud"}


def test_mec_shares_that_fit_are_granted_and_undecided_cells_never_starve():
    world = World(load_scenario("dense-urban-xr").with_overrides(ues=10), seed=4)   # 3 sectors a site
    a, b, c = (int(x) for x in np.flatnonzero(world.layout.cell_site == 0))
    mec = world.scenario.compute.mec_gcps
    assert world.mec_capacity_gcps[[a, b, c]] == pytest.approx([mec / 3] * 3)
    world.apply_decision({"decision_id": "m1", "kind": "mec_share", "cell_id": a, "target": "", "parameters": {"share": 0.2}})
    assert world.mec_capacity_gcps[[a, b, c]] == pytest.approx([0.2 * mec, 0.4 * mec, 0.4 * mec])   # fits: granted
    for i, cell in enumerate((a, b)):
        world.apply_decision({"decision_id": f"m{i + 2}", "kind": "mec_share", "cell_id": cell, "target": "",
                              "parameters": {"share": 1.0}})
    # 1 + 1 + the undecided cell's third: over the server, scaled together; cell c keeps a slice
    assert world.mec_capacity_gcps[[a, b, c]] == pytest.approx(np.array([1.0, 1.0, 1 / 3]) / (7 / 3) * mec)
    assert world.mec_capacity_gcps[world.layout.cell_site == 0].sum() == pytest.approx(mec)


def test_the_device_twin_predicts_the_wait_the_simulated_device_gives():
    from tiertwin.pipelines.local_twin import LocalTwin, LocalTwinConfig

    world = World(_corridor(), seed=3)                 # device 20 Gcycles/s, as the twin's features assume
    twin = LocalTwin(LocalTwinConfig(tier_costs={"local": 0.1, "edge": 5.0, "cloud": 5.0}))   # keep it all local
    world.step()
    predicted, outcomes = {}, {}
    plan = [("bulk", 1.0, 2, 1000.0), ("frame", 0.4, 6, 100.0), ("infer", 0.2, 6, 300.0), ("late-bulk", 0.2, 2, 1000.0)]
    for name, gcycles, priority, deadline in plan:    # one arrival per 10 ms step
        demand = {**_demand(world), "demand_id": name, "compute_gcycles": gcycles, "priority": priority,
                  "deadline_ms": deadline}
        decision = twin.place(demand)
        assert decision["target"] == "local"
        predicted[name] = decision["parameters"]["edf_wait_ms"]
        world.submit_demand(demand, "local", decision["decision_id"])
        world.step()
        outcomes.update({o["demand_id"]: o for o in _local_outcomes(world)})
    world.finish_local_work()
    outcomes.update({o["demand_id"]: o for o in _local_outcomes(world)})
    queue = {name: o["components_ms"]["queue"] for name, o in outcomes.items()}
    # the frame preempts the bulk job; the inference queues behind the frame only; the late bulk behind all
    assert predicted == pytest.approx({"bulk": 0.0, "frame": 0.0, "infer": 10.0, "late-bulk": 50.0})
    for name in ("frame", "infer", "late-bulk"):      # nothing more urgent arrived after them: the twin was exact
        assert queue[name] == pytest.approx(predicted[name], abs=1e-9)
    assert queue["bulk"] == pytest.approx(20.0 + 10.0)   # preempted by the frame and the inference that came later


def test_a_running_loop_goes_on_while_the_broker_fails_over_and_commits_after():
    """While a dead leader is replaced the sink's records wait seconds for their acknowledgements, and
    the decision consumer's poll blocks until it finds its group's coordinator again; the loop must not
    stop the world (and the device twins deciding in it) for either. It polls decisions off the world's
    thread, leaves the offset commit to a later interval, and commits once what it produced is
    acknowledged: never before."""
    import time

    from tiertwin.errors import NotYetAcknowledged

    class FailingOver(MemorySink):     # acknowledgements stall for the first `stall_s` of wall time
        def __init__(self, stall_s):
            super().__init__(keep=False)
            self.until = time.monotonic() + stall_s
            self.acknowledged_at = []

        def flush(self, timeout_s=None):
            left = self.until - time.monotonic()
            if left > 0:
                if timeout_s is not None and timeout_s < left:
                    time.sleep(timeout_s)
                    raise NotYetAcknowledged(f"not acknowledged within {timeout_s}s")
                time.sleep(left)
            self.acknowledged_at.append(time.monotonic())

    class Decisions:                   # a source with no decisions to apply; records its commits
        consumer = type("Consumer", (), {"assignment": staticmethod(lambda: {"p0"}),
                                         "partitions_for_topic": staticmethod(lambda topic: {0})})()

        def __init__(self, sink):
            self.sink, self.commits = sink, []

        def poll(self, timeout_ms):     # kafka-python's poll ignores its timeout while the coordinator is unknown
            time.sleep(max(self.sink.until - time.monotonic(), timeout_ms / 1000))
            return []

        def commit(self, offsets=None):
            assert self.sink.acknowledged_at and self.sink.acknowledged_at[-1] >= self.sink.until, \
                "committed before the outputs were acknowledged"
            self.commits.append(time.monotonic())

    sink = FailingOver(stall_s=1.5)
    source = Decisions(sink)
    world = World(load_scenario("dense-urban-xr").with_overrides(ues=10), seed=3)
    stepped, step = [], world.step
    world.step = lambda: (stepped.append(time.monotonic()), step())[1]
    summary = SimulatorLoop(world, sink, source, realtime=True).run(2.5)
    assert summary.steps == 250
    # the world kept its pace through the stall (a loop waiting on the flush stopped it for 1.3 s)
    assert max(b - a for a, b in zip(stepped, stepped[1:])) < 0.5
    assert summary.commits_deferred >= 3
    assert source.commits and min(source.commits) >= sink.until
