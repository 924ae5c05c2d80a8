"""The local twin agent against the real broker, on fresh topics and consumer groups.

Its decisions themselves (LocalTwin) are tested without a broker in tests/test_local_twin.py.
"""

from __future__ import annotations

import time

import pytest

from tiertwin.connectors.kafka import KafkaSink
from tiertwin.connectors.kafka import read_topic
from tiertwin.pipelines.learners import DEMAND_LATENCY, default_model
from tiertwin.pipelines.local_twin import LocalTwinAgent
from tiertwin.pipelines.models import parameters_to_features, publish_command, publish_model
from tiertwin.pipelines.pretrain import PRETRAINED_VERSION, SyntheticFleet

from tests.agent_support import Running, local_agent_config, wait_until

pytestmark = pytest.mark.broker


@pytest.fixture
def local_config(new_topic, group_id):
    return local_agent_config(new_topic, group_id)


def send(sink: KafkaSink, topic: str, schema: str, records: list[dict], key_field: str = "ue_id") -> None:
    for record in records:
        record["emitted_ns"] = time.time_ns()
        sink.send(topic, schema, record, key=record[key_field])
    sink.flush()


def fleet_records(fleet: SyntheticFleet, ticks: int) -> tuple[list[dict], list[dict]]:
    telemetry, demands = [], []
    for tick in range(ticks):
        for kind, record in fleet.step(tick * 10):
            (telemetry if kind == "telemetry" else demands if kind == "demand" else []).append(record)
    return telemetry, demands


def test_decisions_for_demands_carry_provenance(local_config, settings):
    fleet = SyntheticFleet(n_ues=5, n_cells=3, seed=1, demand_every=2)
    telemetry, demands = fleet_records(fleet, 16)
    with KafkaSink(settings) as sink:
        send(sink, local_config.telemetry_topic, "Telemetry", telemetry)
        send(sink, local_config.demands_topic, "Demand", demands)
    with Running(LocalTwinAgent(local_config, settings)):
        decisions = read_topic(local_config.actions_topic, settings, expect=len(demands), timeout_s=60)
    coordinates = {r.value["demand_id"]: (r.partition, r.offset, r.value)
                   for r in read_topic(local_config.demands_topic, settings, expect=len(demands))}
    assert len(decisions) == len(demands)
    for record in decisions:
        d = record.value
        partition, offset, demand = coordinates[d["subject_id"]]
        assert d["decision_id"] == f"local/placement/{local_config.demands_topic}/{partition}/{offset}"
        assert (d["source_topic"], d["source_partition"], d["source_offset"]) == (local_config.demands_topic, partition, offset)
        assert d["source_ts_ms"] == demand["ts_ms"] and d["source_emitted_ns"] == demand["emitted_ns"]
        assert d["source_emitted_ns"] <= d["received_ns"] <= d["decided_ns"]
        assert d["kind"] == "placement" and d["tier"] == "local" and d["target"] in ("local", "edge", "cloud")
        assert d["twin_site"] == local_config.site == "edge", "the service deployment runs at the edge by default"
        assert (d["model_name"], d["model_version"]) == (DEMAND_LATENCY, PRETRAINED_VERSION)
        assert d["parameters"]["predicted_latency_ms"] == d["parameters"][f"predicted_{d['target']}_ms"]
        x = parameters_to_features(d["parameters"])
        assert x["compute_gcycles"] == pytest.approx(demand["compute_gcycles"], rel=1e-6)
        # The cloud trainer's contract: these x plus x["tier"] = target feed the model as is.
        default_model(DEMAND_LATENCY).learn_one({**x, "tier": d["target"]}, 10.0)
        assert 0.0 <= d["confidence"] <= 1.0
    summaries = read_topic(local_config.summaries_topic, settings, timeout_s=10)
    assert summaries, "telemetry is compressed into LocalSummary records"
    assert sum(s.value["samples"] for s in summaries) < len(telemetry)


def test_model_update_changes_version_of_later_decisions(local_config, settings):
    fleet = SyntheticFleet(n_ues=3, n_cells=2, seed=3)
    with KafkaSink(settings) as sink, Running(LocalTwinAgent(local_config, settings)) as agent:
        _, first = fleet_records(fleet, 3)
        send(sink, local_config.demands_topic, "Demand", first)
        assert len(read_topic(local_config.actions_topic, settings, expect=len(first), timeout_s=30)) == len(first)
        publish_model(sink, DEMAND_LATENCY, default_model(DEMAND_LATENCY), version=7, topic=local_config.models_topic)
        # v7 runs in shadow until promoted: here by the operator's signed command (the lifecycle's own
        # verdicts are tests/test_model_lifecycle.py's)
        publish_command(sink, "promote", DEMAND_LATENCY, 7, topic=local_config.models_topic)
        deadline = time.monotonic() + 20
        while agent.latency_slot.version != 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        _, second = fleet_records(fleet, 3)
        send(sink, local_config.demands_topic, "Demand", second)
        decisions = read_topic(local_config.actions_topic, settings, expect=len(first) + len(second), timeout_s=30)
    version = {r.value["subject_id"]: r.value["model_version"] for r in decisions}
    assert {version[d["demand_id"]] for d in first} == {PRETRAINED_VERSION}
    assert {version[d["demand_id"]] for d in second} == {7}
    assert agent.metrics.value("tiertwin_agent_model_version", model=DEMAND_LATENCY) == 7


def test_outcomes_train_the_live_model(local_config, settings):
    fleet = SyntheticFleet(n_ues=2, n_cells=2, seed=4)
    _, demands = fleet_records(fleet, 10)
    with KafkaSink(settings) as sink, Running(LocalTwinAgent(local_config, settings)) as agent:
        send(sink, local_config.demands_topic, "Demand", demands)
        decisions = read_topic(local_config.actions_topic, settings, expect=len(demands), timeout_s=30)
        outcomes = [{"outcome_id": f"o-{i}", "ts_ms": r.value["source_ts_ms"] + 5, "kind": "demand",
                     "ue_id": r.value["ue_id"], "cell_id": r.value["cell_id"], "demand_id": r.value["subject_id"],
                     "decision_id": r.value["decision_id"] if i % 2 else None, "placement": r.value["target"],
                     "latency_ms": 12.0, "deadline_ms": 20.0, "deadline_met": True, "components_ms": {}, "effect": {}}
                    for i, r in enumerate(decisions)]
        before = agent.latency_slot.model.n_learned
        send(sink, local_config.outcomes_topic, "Outcome", outcomes)
        deadline = time.monotonic() + 20
        while agent.latency_slot.model.n_learned < before + len(outcomes) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert agent.latency_slot.model.n_learned == before + len(outcomes), "joined by decision_id or demand_id"


def test_bad_telemetry_is_dead_lettered(local_config, settings):
    fleet = SyntheticFleet(n_ues=1, n_cells=3, seed=5)
    good = fleet.telemetry(fleet.ues[0], 0)
    bad = {**fleet.telemetry(fleet.ues[0], 10), "neighbours": [{"cell_id": good["serving_cell"], "rsrp_dbm": -90.0, "sinr_db": 3.0}]}
    with KafkaSink(settings) as sink:
        send(sink, local_config.telemetry_topic, "Telemetry", [good, bad])
        sink.send_raw(local_config.telemetry_topic, b"\x00\x01not-an-avro-record", key="ue-x")
        sink.send(local_config.telemetry_topic, "Demand", fleet.demand("ue-x", 0, 0), key="ue-x")
        sink.flush()
    with Running(LocalTwinAgent(local_config, settings)) as agent:
        letters = read_topic(local_config.dead_letter_topic, settings, expect=3, timeout_s=30)
        assert wait_until(lambda: agent.twins.get(good["ue_id"]) is not None)
    assert sorted((r.value["reason"], r.value["stage"]) for r in letters) == [
        ("bad-magic", "local-agent/decode"), ("serving-cell-in-neighbours", "local-agent/process"),
        ("wrong-schema", "local-agent/process")]
    assert agent.twins[good["ue_id"]].last_seq == good["seq"], "the good record was used, the bad one was not"


def test_checkpoint_restores_twins_in_a_new_instance(local_config, settings):
    fleet = SyntheticFleet(n_ues=4, n_cells=2, seed=6, demand_every=1000)
    telemetry, _ = fleet_records(fleet, 12)
    with KafkaSink(settings) as sink:
        send(sink, local_config.telemetry_topic, "Telemetry", telemetry)
    first = LocalTwinAgent(local_config, settings)
    with Running(first):
        deadline = time.monotonic() + 30
        while sum(1 for t in first.twins.values() if t.last_seq == 12) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    second = LocalTwinAgent(local_config.model_copy(update={"instance_id": "restored"}), settings)
    with Running(second):
        deadline = time.monotonic() + 30
        while len(second.twins) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert sorted(second.twins) == sorted(first.twins)
    for ue_id, twin in first.twins.items():
        restored = second.twins[ue_id]
        assert (restored.last_seq, restored.radio, list(restored.history)) == (twin.last_seq, twin.radio, list(twin.history))


def test_metrics_are_served_on_the_metrics_port(local_config, settings):
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fleet = SyntheticFleet(n_ues=2, n_cells=2, seed=7)
    _, demands = fleet_records(fleet, 3)
    config = local_config.model_copy(update={"metrics_port": port})
    with KafkaSink(settings) as sink, Running(LocalTwinAgent(config, settings)):
        send(sink, config.demands_topic, "Demand", demands)
        read_topic(config.actions_topic, settings, expect=len(demands), timeout_s=30)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert f'tiertwin_agent_decisions_total{{instance="{config.instance_id}",kind="placement",tier="local"}} {float(len(demands))}' in text
    assert "tiertwin_agent_decision_latency_seconds_bucket" in text and "tiertwin_agent_model_version" in text


def test_an_agent_that_fails_mid_batch_commits_nothing_past_it_and_its_successor_sees_every_record(
        local_config, settings):
    from tests.agent_support import committed_offset

    fleet = SyntheticFleet(n_ues=4, n_cells=2, seed=8, demand_every=1000)
    telemetry, _ = fleet_records(fleet, 12)
    with KafkaSink(settings) as sink:
        send(sink, local_config.telemetry_topic, "Telemetry", telemetry)
    first = LocalTwinAgent(local_config, settings)
    process, seen = first.process, []

    def fails_halfway(batch, received_ns):
        if batch and not seen:
            seen.append(len(batch))
            process(batch[:len(batch) // 2], received_ns)
            raise RuntimeError("injected failure mid-batch")
        process(batch, received_ns)

    first.process = fails_halfway
    with pytest.raises(RuntimeError, match="injected"):
        first.run(max_seconds=30)
    assert seen, "the agent polled a batch"
    # Committing on the way out would have skipped the batch's unprocessed half for good.
    assert committed_offset(settings, local_config.group_id, local_config.telemetry_topic) < len(telemetry)

    second = LocalTwinAgent(local_config.model_copy(update={"instance_id": "successor"}), settings)
    with Running(second):
        wait_until(lambda: sum(1 for t in second.twins.values() if t.last_seq == 12) == 4, 60)
    assert len(second.twins) == 4
    assert {ue: t.last_seq for ue, t in second.twins.items()} == {ue: 12 for ue in second.twins}


def test_an_agent_fenced_while_stalled_writes_no_checkpoint_over_its_successors(local_config, settings):
    import pickle

    from tests.agent_support import read_raw

    fleet = SyntheticFleet(n_ues=4, n_cells=2, seed=9, demand_every=1000)
    telemetry, _ = fleet_records(fleet, 30)
    ues = {t["ue_id"] for t in telemetry}

    def up_to(last_seq):
        return lambda agent: len(agent.twins) == len(ues) and all(t.last_seq == last_seq for t in agent.twins.values())

    def send_seqs(low, high):
        with KafkaSink(settings) as sink:
            send(sink, local_config.telemetry_topic, "Telemetry", [t for t in telemetry if low <= t["seq"] <= high])

    def latest_checkpoints():
        states = ((key, pickle.loads(value)) for key, value in read_raw(local_config.changelog_topic, settings))
        return {key: state.last_seq for key, state in states if key in ues}     # (not the model slots)

    # The first instance checkpoints seq 10 and commits, then folds in up to seq 20 and stalls before its next
    # checkpoint: its heartbeats stop with it, so the group fences it after the session timeout.
    first = LocalTwinAgent(local_config.model_copy(update={"commit_interval_ms": 60_000}), settings)
    first.open()
    send_seqs(1, 10)
    wait_until(lambda: first.step() >= 0 and up_to(10)(first), 60)
    first.commit()
    send_seqs(11, 20)
    wait_until(lambda: first.step() >= 0 and up_to(20)(first), 60)
    first.source.consumer._coordinator._disable_heartbeat()

    second = LocalTwinAgent(local_config.model_copy(update={"instance_id": "successor"}), settings)
    with Running(second):
        assert wait_until(lambda: up_to(20)(second), 90), "the successor took the partitions over"
        send_seqs(21, 30)
        assert wait_until(lambda: set(latest_checkpoints().values()) == {30}, 60), latest_checkpoints()
        # The stalled instance wakes up and is stopped: its twins (seq 20) must not overwrite the successor's.
        first.close()
        assert latest_checkpoints() == {key: 30 for key in latest_checkpoints()}
