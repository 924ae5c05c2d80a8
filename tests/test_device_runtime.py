"""The device runtime: decides in the caller's thread with or without a broker; the uplink loses nothing.

Kafka tests use fresh topics; the broker-loss test runs on a private broker (ManagedBroker.private)
that it stops and restarts: the shared dev broker is never touched.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict

import pytest

from tiertwin.connectors.kafka import KafkaSink, TopicReader, admin_client, read_topic
from tiertwin.connectors.topics import wait_for_leaders
from tiertwin.errors import RecordRejected
from tiertwin.jobs.bench.local import GcPauses
from tiertwin.pipelines.device import DeviceConfig, DeviceRuntime, DeviceTopics, SpillFile
from tiertwin.pipelines.pretrain import SyntheticFleet
from tiertwin.procs import free_ports
from tests.agent_support import wait_until_or_fail

START_MS = 1_767_225_600_000


def fleet_records(n_ues: int, ticks: int, seed: int = 3, start_tick: int = 0):
    """(kind, record) of a synthetic fleet, one tick per 10 ms of event time (telemetry + demands)."""
    fleet = SyntheticFleet(n_ues=n_ues, n_cells=4, seed=seed, demand_every=2)
    for tick in range(start_tick, start_tick + ticks):
        for kind, record in fleet.step(START_MS + tick * 10):
            if kind in ("telemetry", "demand"):
                yield kind, record


def feed(device: DeviceRuntime, records, pump_every: int = 0) -> list[dict]:
    """Observe and place ``records``; ``pump_every``: call ``device.pump()`` after every this many records, as a
    host that steps would (0: never)."""
    decisions = []
    for i, (kind, record) in enumerate(records, 1):
        if kind == "telemetry":
            device.observe(record)
        else:
            decisions.append(device.place(record))
        if pump_every and i % pump_every == 0:
            device.pump()
    return decisions


def make_topics(settings, prefix: str) -> DeviceTopics:
    names = {field: f"{prefix}.{field}.{uuid.uuid4().hex[:10]}" for field in DeviceTopics.model_fields}
    admin = admin_client(settings)
    try:
        admin.create_topics({name: {"num_partitions": 1 if field == "models" else 3, "replication_factor": 1}
                             for field, name in names.items()}, timeout_ms=30_000)
        wait_for_leaders(admin, list(names.values()))
    finally:
        admin.close()
    return DeviceTopics(**names)


# -- no Kafka ------------------------------------------------------------------------------------
def test_decides_with_no_broker_at_all_and_keeps_or_counts_the_uplink(tmp_path):
    kept = DeviceRuntime(DeviceConfig(device_id="offline-keep", offline_uplink="keep", spill_dir=tmp_path),
                         connect=False)
    counted = DeviceRuntime(DeviceConfig(device_id="offline-count", spill_dir=tmp_path), connect=False)
    with kept, counted:
        records = list(fleet_records(5, 200))
        decisions = feed(kept, records)
        same = feed(counted, records)
    assert [d["target"] for d in same] == [d["target"] for d in decisions]
    demands = sum(1 for kind, _ in records if kind == "demand")
    assert len(decisions) == demands > 50
    assert {d["twin_site"] for d in decisions} == {"device"}
    assert len({d["decision_id"] for d in decisions}) == demands
    pending = kept.pending_records()
    topics = Counter(topic for topic, _ in pending)
    assert topics["tiertwin.actions.local"] == demands
    assert topics["tiertwin.edge.summaries"] == kept.stats.summaries > 0
    assert counted.pending_records() == [] and counted.stats.decisions == demands
    assert not list(tmp_path.iterdir())   # offline: no spill file, no threads


def test_report_learns_from_the_outcome_of_its_own_decision_and_sends_it_up():
    from tiertwin.schemas import SchemaRegistry
    from tiertwin.schemas.examples import example

    device = DeviceRuntime(DeviceConfig(device_id="offline-report", offline_uplink="keep"), connect=False)
    decisions = feed(device, fleet_records(2, 40))
    first = decisions[0]
    outcome = example("Outcome", decision_id=first["decision_id"], demand_id=first["subject_id"],
                      ue_id=first["ue_id"], placement=first["target"], latency_ms=12.5)
    device.report(outcome)
    device.report(example("Outcome", decision_id="local/placement/someone-else", demand_id="x/d/1"))
    assert (device.stats.outcomes, device.stats.learned) == (2, 1)
    sent = [record for topic, record in device.pending_records() if topic == "tiertwin.outcomes"]
    assert [o["decision_id"] for o in sent] == [first["decision_id"], "local/placement/someone-else"]
    registry = SchemaRegistry.default()   # what the uplink will encode: every queued record is valid
    for topic, record in device.pending_records():
        schema = {"tiertwin.actions.local": "Decision", "tiertwin.edge.summaries": "LocalSummary",
                  "tiertwin.outcomes": "Outcome"}[topic]
        registry.encode(schema, record)


def test_rejected_telemetry_raises_and_is_counted_and_dead_lettered():
    device = DeviceRuntime(DeviceConfig(device_id="offline-bad", offline_uplink="keep"), connect=False)
    _, telemetry = next(fleet_records(1, 1))
    bad = {**telemetry, "neighbours": [{"cell_id": telemetry["serving_cell"], "rsrp_dbm": -90.0, "sinr_db": 3.0}]}
    with pytest.raises(RecordRejected) as error:
        device.observe(bad)
    assert error.value.reason == "serving-cell-in-neighbours"
    assert device.stats.rejected == 1
    [(topic, letter)] = device.pending_records()
    assert topic == "tiertwin.deadletters" and letter["reason"] == "serving-cell-in-neighbours"


def test_observe_many_queues_what_observe_per_record_queues():
    """A step's telemetry in one call: the same summaries and dead letters queued, the same counts, nothing raised."""
    records = [record for kind, record in fleet_records(4, 60) if kind == "telemetry"]
    bad = {**records[10], "neighbours": [{"cell_id": records[10]["serving_cell"], "rsrp_dbm": -90.0, "sinr_db": 3.0}]}
    records = records[:20] + [bad] + records[15:18] + records[20:]     # a rejected record and three replays
    one_by_one = DeviceRuntime(DeviceConfig(device_id="offline-one", offline_uplink="keep"), connect=False)
    for record in records:
        try:
            one_by_one.observe(record)
        except RecordRejected:
            pass
    batched = DeviceRuntime(DeviceConfig(device_id="offline-many", offline_uplink="keep"), connect=False)
    assert batched.observe_many(records[:30]) + batched.observe_many(records[30:]) == 1
    volatile = ("emitted_ns", "failed_at_ms", "stage")
    queued = lambda device: sorted((topic, sorted((k, repr(v)) for k, v in record.items() if k not in volatile))  # noqa: E731
                                   for topic, record in device.pending_records())
    assert queued(batched) == queued(one_by_one) and len(queued(batched)) > 20
    counts = lambda device: (device.stats.observed, device.stats.replays, device.stats.rejected, device.stats.summaries)  # noqa: E731
    assert counts(batched) == counts(one_by_one) and counts(batched)[1:3] == (3, 1)


# -- broker stopped: memory queue -> spill file -> sent in order after the next start -------------
@pytest.mark.broker
@pytest.mark.parametrize("pump_every", [0, 7], ids=["uplink-encodes", "host-pumps"])
def test_decides_with_the_broker_stopped_spills_and_the_next_start_sends_it_all_in_order(broker, settings, tmp_path,
                                                                                          pump_every):
    (dead_port,) = free_ports(1)
    stopped = settings.model_copy(update={"broker_port": dead_port, "bootstrap_servers": None})
    topics = make_topics(settings, "test.device.spill")
    config = DeviceConfig(device_id="spill", topics=topics, spill_dir=tmp_path / "spill", queue_limit=50,
                          connect_timeout_s=0.5, backoff_s=(0.05, 0.2))
    device = DeviceRuntime(config, stopped).start()
    decisions = feed(device, fleet_records(10, 150), pump_every)
    summaries = device.stats.summaries
    assert len(decisions) > 200 and summaries > 50
    # the uplink keeps the memory bound while the broker is away
    wait_until_or_fail(lambda: device.stats.spilled > 0 and device.queued <= config.queue_limit, 20)
    assert device.stats.sent == 0 and not device.stats.connected
    device.close(timeout_s=1)
    assert device.stats.spill_pending == len(decisions) + summaries and device.stats.queued == 0
    spill = SpillFile(tmp_path / "spill")
    assert spill.pending == len(decisions) + summaries
    spill.close()

    # The same device, started again with its broker back: spill first, nothing lost, nothing twice.
    again = DeviceRuntime(config, settings).start()
    if pump_every:
        again.pump()    # nothing new: the spill goes first all the same
    assert again.drain(60)
    again.close()
    assert again.stats.resent == again.stats.sent == len(decisions) + summaries
    sent = [r.value for r in read_topic(topics.actions, settings, expect=len(decisions), timeout_s=30)]
    assert Counter(d["decision_id"] for d in sent) == Counter(d["decision_id"] for d in decisions)
    assert_in_order_per_ue(decisions, sent)
    got_summaries = read_topic(topics.summaries, settings, expect=summaries, timeout_s=30)
    assert len(got_summaries) == summaries
    spill = SpillFile(tmp_path / "spill")
    assert spill.pending == 0
    spill.close()


@pytest.mark.broker
@pytest.mark.parametrize("grace_s", [3600.0, 0.3], ids=["host-keeps-pumping", "host-stops-pumping"])
def test_a_host_that_pumps_gets_everything_sent_in_order(broker, settings, tmp_path, grace_s):
    """pump() encodes in the caller's thread, and the uplink thread leaves the outbox alone while the host pumps
    (within pump_grace_s); after that, or at close, the thread encodes again itself: nothing is lost or reordered."""
    topics = make_topics(settings, "test.device.pump")
    config = DeviceConfig(device_id=f"pump-{uuid.uuid4().hex[:6]}", topics=topics, pump_grace_s=grace_s,
                          spill_dir=tmp_path / "spill")
    device = DeviceRuntime(config, settings).start()
    records = list(fleet_records(10, 120))
    half = len(records) // 2
    decisions = feed(device, records[:half], pump_every=5)
    wait_until_or_fail(lambda: device.pump() >= 0 and not device._outbox, 10)   # the uplink thread may hold it a moment
    decisions += feed(device, records[half:])              # no pump from here on
    made = len(decisions) + device.stats.summaries
    if grace_s > 60:    # the host still counts as pumping: the thread sends what pump() encoded, not the outbox
        wait_until_or_fail(lambda: device.stats.sent > 0 and not device._encoded, 60)
        waiting = len(device._outbox)
        time.sleep(0.5)
        assert len(device._outbox) == waiting > 0
        device.close()     # closing: the thread encodes and sends the rest itself
    else:               # no pump for 0.3 s: the thread takes the outbox again (not drain(), which pumps)
        wait_until_or_fail(lambda: device.stats.sent == made, 60)
        device.close()
    assert device.stats.sent == made and device.stats.queued == 0 and device.stats.spill_pending == 0
    sent = [r.value for r in read_topic(topics.actions, settings, expect=len(decisions), timeout_s=30)]
    assert Counter(d["decision_id"] for d in sent) == Counter(d["decision_id"] for d in decisions)
    assert_in_order_per_ue(decisions, sent)


def read_whole(topic: str, settings, timeout_s: float = 180.0) -> list:
    """Every record of ``topic`` up to its end as of now (its writers are done), failing the test if that end is
    not reached in ``timeout_s``: not a count of records (copies sent again would stop a count-bound read short
    of the last ids) and never a partial read that looks like a loss."""
    records: list = []
    with TopicReader([topic], settings, on_undecodable="raise") as reader:
        deadline = time.monotonic() + timeout_s
        while not reader.at_end():
            if time.monotonic() > deadline:
                pytest.fail(f"{topic}: read {len(records)} records, not at its end {reader.end_offsets} "
                            f"after {timeout_s:g}s")
            records.extend(reader.poll(200))
    return records


def assert_in_order_per_ue(made: list[dict], sent: list[dict]) -> None:
    def by_ue(decisions):
        order = defaultdict(list)
        for d in decisions:
            order[d["ue_id"]].append(d["decision_id"])
        return order

    sent_order = by_ue(sent)
    for ue, ids in by_ue(made).items():
        seen = list(dict.fromkeys(sent_order[ue]))   # first arrival of each id
        assert seen == ids, f"{ue}: decisions out of order"


# -- the broker stops for ~10 s in the middle of a run ---------------------------------------------
@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.parametrize("pump", [False, True], ids=["uplink-encodes", "host-pumps"])
def test_broker_stopped_for_ten_seconds_mid_run_loses_nothing(broker, settings, tmp_path, pump):
    from tiertwin.connectors.broker import ManagedBroker

    private = ManagedBroker.private(tmp_path / "home", main=settings)
    private.start()
    try:
        topics = make_topics(private.settings, "test.device.outage")
        config = DeviceConfig(device_id="outage", topics=topics, spill_dir=tmp_path / "spill", queue_limit=300,
                              flush_timeout_s=2.0, probe_timeout_s=0.3, backoff_s=(0.05, 0.5), connect_timeout_s=1.0)
        device = DeviceRuntime(config, private.settings).start()
        phases: dict[str, float] = {}
        failures: list[BaseException] = []

        def outage():
            try:
                time.sleep(4)
                phases["stopping"] = time.monotonic()
                private.stop(timeout_s=20)
                phases["stopped"] = time.monotonic()
                time.sleep(10)
                private.start(timeout_s=180)   # a JVM start on a loaded machine: waits for readiness, not a fixed time
                phases["restarted"] = time.monotonic()
            except BaseException as exc:   # the test says so below, rather than as an uplink that never caught up
                failures.append(exc)

        chaos = threading.Thread(target=outage, daemon=True)
        gc_pauses = GcPauses().__enter__()   # reported, not asserted: where a slow place() came from
        chaos.start()
        decisions, during_outage, tick = [], 0, 0
        fleet = SyntheticFleet(n_ues=20, n_cells=4, seed=11, demand_every=2)
        slowest_ns = 0
        while chaos.is_alive() or time.monotonic() < phases.get("restarted", 0) + 3:
            for kind, record in fleet.step(START_MS + tick * 10):
                if kind == "telemetry":
                    device.observe(record)
                elif kind == "demand":
                    started = time.perf_counter_ns()
                    decisions.append(device.place(record))
                    slowest_ns = max(slowest_ns, time.perf_counter_ns() - started)
                    if "stopped" in phases and "restarted" not in phases:
                        during_outage += 1
            tick += 1
            if pump:    # a host that steps encodes the step's uplink records after it
                device.pump()
            time.sleep(0.01)
        chaos.join()
        gc_pauses.__exit__()
        assert not failures and "restarted" in phases, f"the broker did not come back: {failures!r}"
        stats = device.stats
        assert during_outage > 100, "decisions kept coming while the broker was down"
        assert stats.send_errors > 0 and stats.spilled > 0, stats
        assert device.drain(90), f"uplink did not catch up: {stats}"
        # the downlink came back too: a model published after the restart swaps in between two decisions
        from tiertwin.pipelines.models import publish_command, publish_model

        old = device.model_version
        with KafkaSink(private.settings, client_id="test-device-outage-models") as sink:
            publish_model(sink, device.twin.model_name, device.twin.model.clone(include_attributes=True), old + 1,
                          topic=topics.models)
            publish_command(sink, "promote", device.twin.model_name, old + 1, topic=topics.models)
        deadline = time.monotonic() + 120   # the condition ends the wait; the bound is for a loaded machine
        while decisions[-1]["model_version"] == old and time.monotonic() < deadline:
            for kind, record in fleet.step(START_MS + tick * 10):
                if kind == "telemetry":
                    device.observe(record)
                elif kind == "demand":
                    decisions.append(device.place(record))
            tick += 1
            if pump:
                device.pump()
            time.sleep(0.01)
        assert decisions[-1]["model_version"] == old + 1 and device.stats.models_swapped == 1
        assert device.drain(60)
        device.close()
        print(f"\noutage: {len(decisions)} decisions ({during_outage} while the broker was down), "
              f"{stats.summaries} summaries, spilled {stats.spilled}, resent {stats.resent}, sent {stats.sent}, "
              f"send errors {stats.send_errors}, reconnects {stats.reconnects}, retried batches "
              f"{stats.retried_batches}; slowest place() {slowest_ns / 1e6:.2f} ms; GC pauses {gc_pauses.summary()}")
        # the device is closed: each topic is read to its end, whatever number of records (copies included) it holds
        sent = [r.value for r in read_whole(topics.actions, private.settings)]
        ids = Counter(d["decision_id"] for d in sent)
        assert set(ids) == {d["decision_id"] for d in decisions}, "a decision was lost"
        duplicates = {i: n for i, n in ids.items() if n > 1}
        print(f"duplicates: {len(duplicates)} ids sent more than once")
        assert not duplicates or stats.retried_batches > 0   # duplicates only from a batch sent again
        made = {d["decision_id"]: (d["ue_id"], d["subject_id"], d["target"], d["model_version"]) for d in decisions}
        assert all(made[s["decision_id"]] == (s["ue_id"], s["subject_id"], s["target"], s["model_version"])
                   for s in sent)
        assert_in_order_per_ue(decisions, sent)
        summaries = read_whole(topics.summaries, private.settings)
        keys = Counter((s.value["ue_id"], s.value["window_start_ms"]) for s in summaries)
        assert len(keys) == stats.summaries, "a summary was lost"
        assert stats.sent >= len(decisions) + stats.summaries
    finally:
        private.stop()


# -- downlink: a model update swaps the model between two decisions; edge state arrives -------------
@pytest.mark.broker
def test_a_model_update_swaps_the_model_between_two_decisions(broker, settings, tmp_path):
    from tiertwin.pipelines.models import publish_command, publish_model

    topics = make_topics(settings, "test.device.models")
    config = DeviceConfig(device_id="models", topics=topics, spill_dir=tmp_path)
    with DeviceRuntime(config, settings) as device:
        assert device.downlink_ready.wait(30)
        records = fleet_records(4, 100_000)
        old = device.model_version
        versions = [d["model_version"] for d in feed(device, [next(records) for _ in range(50)])]
        new_model = device.twin.model.clone(include_attributes=True)
        with KafkaSink(settings, client_id="test-device-models") as sink:
            publish_model(sink, device.twin.model_name, new_model, old + 1, topic=topics.models)
            publish_command(sink, "promote", device.twin.model_name, old + 1, topic=topics.models)
            edge = {"cell_id": 1, "site_id": 0, "ts_ms": START_MS + 5, "attached_ues": 3, "prb_utilization": 0.9,
                    "cell_load_mbps": 500.0, "mean_sinr_db": 12.0, "mec_queue_gcycles": 40.0, "mec_utilization": 0.8,
                    "mec_capacity_gcps": 200.0, "handovers": 0, "emitted_ns": 0}
            from tiertwin.schemas.examples import example
            sink.send(topics.edge_state, "EdgeState", {**example("EdgeState"), **edge}, key=1)
            sink.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not versions or versions[-1] == old or device.stats.edge_states == 0):
            versions.extend(d["model_version"] for d in feed(device, [next(records) for _ in range(20)]))
            time.sleep(0.01)
    assert versions[0] == old and versions[-1] == old + 1   # decisions were made before and after the swap
    swap = versions.index(old + 1)
    assert set(versions[:swap]) == {old} and set(versions[swap:]) == {old + 1}
    assert device.stats.models_swapped == 1
    assert device.stats.edge_states == 1 and device.twin.edge_states[1]["prb_utilization"] == pytest.approx(0.9)
    # the transitions went up as ModelStatus records, keyed by model and device like an agent instance's
    statuses = read_topic(topics.model_status, settings, expect=device.stats.model_transitions, timeout_s=30)
    assert device.stats.model_transitions >= 2
    assert {r.key.decode() for r in statuses} == {f"{device.twin.model_name}/models"}
    events = [(r.value["event"], r.value["version"]) for r in statuses]
    assert ("shadowing", old + 1) in events and events[-1][1] == old + 1 and "promoted" in events[-1][0]
    assert statuses[-1].value["live_version"] == old + 1


# -- metrics -----------------------------------------------------------------------------------------
def test_metrics_read_the_stats():
    device = DeviceRuntime(DeviceConfig(device_id="metrics"), connect=False)
    feed(device, fleet_records(3, 100))
    value = device.metrics.get_sample_value
    assert value("tiertwin_device_decisions_total", {"device": "metrics"}) == device.stats.decisions > 0
    assert value("tiertwin_device_observed_total", {"device": "metrics"}) == device.stats.observed > 0
    assert value("tiertwin_device_queued", {"device": "metrics"}) == 0
