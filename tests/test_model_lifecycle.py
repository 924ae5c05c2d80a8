"""Model lifecycle (#15): identity, signed updates, shadow -> promote -> rollback, checkpointed revision."""

from __future__ import annotations

import copy
import json
import os
import pickle
import random
import stat
import time
from pathlib import Path

import pytest
from river import linear_model, optim

from tiertwin.pipelines import signing
from tiertwin.pipelines.learners import DEMAND_LATENCY, default_model
from tiertwin.pipelines.lifecycle import Candidate, PromotionPolicy
from tiertwin.pipelines.local_twin import LocalTwin
from tiertwin.pipelines.models import (ModelRejected, ModelSlot, command_update, model_update, next_version,
                                       payload_digest, serialize)
from tiertwin.pipelines.pretrain import PRETRAINED_VERSION, SyntheticFleet, load_pretrained

KEY = b"test-deployment-key-0123456789ab"
POLICY = PromotionPolicy(min_outcomes=100, max_outcomes=2_000, probation=400)


def line(w: float) -> linear_model.LinearRegression:
    """y = w * a, frozen (learning rate 0): its error on y = 2a is fixed by w."""
    model = linear_model.LinearRegression(optimizer=optim.SGD(0.0), intercept_lr=0.0)
    model._weights["a"] = w
    return model


def examples(n: int, seed: int = 1):
    rng = random.Random(seed)
    for _ in range(n):
        a = rng.uniform(1, 10)
        yield {"a": a}, 2.0 * a + rng.gauss(0, 0.5)


def slot_with(live_w: float) -> ModelSlot:
    return ModelSlot("m", line(live_w), version=1, key=KEY, policy=POLICY)


class WritesAFile:
    """Unpickling this runs Path.write_text: a model payload that would own the twin if loaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.write_text, (self.path, "pwned")


# -- identity ----------------------------------------------------------------------------------------
def test_an_update_carries_name_version_digest_and_signature():
    update = model_update("m", line(2.0), 3, key=KEY)
    assert (update["model_name"], update["version"], update["action"]) == ("m", 3, "publish")
    assert update["digest"] == payload_digest(update["payload"]) and len(update["signature"]) == 64


def test_versions_never_collide_with_the_shipped_model():
    # Fresh install: nothing on the topic -> the first publisher's version follows the shipped one.
    assert next_version([], "m", shipped=PRETRAINED_VERSION) == PRETRAINED_VERSION + 1
    on_topic = [model_update("m", line(1.0), 1), model_update("m", line(1.0), 4), model_update("other", line(1.0), 9)]
    assert next_version(on_topic, "m") == 5
    forged = {**model_update("m", line(1.0), 99), "signature": "00" * 32}
    assert next_version(on_topic + [forged], "m") == 5, "a forged version does not move the numbering"


def test_decisions_name_version_and_revision_and_a_restart_keeps_them():
    twin = LocalTwin()
    fleet = SyntheticFleet(n_ues=3, n_cells=2, seed=5)
    learned = 0
    for tick in range(60):
        for kind, record in fleet.step(tick * 10):
            if kind == "telemetry":
                twin.observe(record)
            elif kind == "demand":
                decision = twin.place(record)
                assert decision["model_revision"] == learned
                learned += twin.learn({"kind": "demand", "decision_id": decision["decision_id"],
                                       "demand_id": record["demand_id"], "placement": decision["target"],
                                       "latency_ms": 12.0})
    assert learned > 10 and twin.slot.revision == learned
    twin.swap_model(model_update(DEMAND_LATENCY, copy.deepcopy(twin.model), 7))
    restored = pickle.loads(pickle.dumps(twin))     # the device's checkpoint: the twin pickles whole
    assert (restored.slot.version, restored.slot.revision, restored.slot.shadow.version) == (PRETRAINED_VERSION, learned, 7)


# -- signed updates ----------------------------------------------------------------------------------
def test_the_key_file_is_created_once_mode_0600_and_the_env_var_names_its_path(tmp_path, monkeypatch):
    path = tmp_path / "keys" / "deploy.key"
    monkeypatch.setenv(signing.KEY_FILE_ENV, str(path))
    assert signing.key_path() == path
    key = signing.ensure_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signing.ensure_key(path) == key
    os.chmod(path, 0o644)
    with pytest.raises(Exception, match="chmod 600"):
        signing.ensure_key(path)


@pytest.mark.parametrize("forge,reason", [
    (lambda u: {**u, "signature": ""}, "unsigned-model"),
    (lambda u: {**u, "signature": signing.sign(u, b"another-deployment-key-0123456")}, "bad-signature"),
    (lambda u: {**u, "digest": "0" * 64, "signature": signing.sign({**u, "digest": "0" * 64}, KEY)}, "digest-mismatch"),
])
def test_a_forged_update_is_refused_before_it_is_unpickled(tmp_path, forge, reason):
    target = tmp_path / "pwned"
    payload = pickle.dumps(WritesAFile(target))
    genuine = {**model_update("m", line(1.0), 5, key=KEY), "payload": payload, "digest": payload_digest(payload)}
    slot = slot_with(1.0)
    with pytest.raises(ModelRejected) as refused:
        slot.offer(forge(genuine))
    assert refused.value.reason == reason
    assert not target.exists(), "the forged pickle was loaded"
    assert (slot.version, slot.shadow) == (1, None), "the live model stays"


# -- shadow -> promote -> rollback -------------------------------------------------------------------
def run(slot: ModelSlot, n: int, seed: int = 1) -> list[int]:
    """Learn n outcomes; the live version before each (what a decision at that moment would name)."""
    versions = []
    for x, y in examples(n, seed):
        versions.append(slot.current()[1])
        slot.learn(x, y)
    return versions


def test_a_worse_candidate_stays_shadow_makes_no_decision_and_is_rejected():
    slot = slot_with(1.8)
    assert slot.offer(model_update("m", line(0.5), 2, key=KEY))
    versions = run(slot, 300)
    assert set(versions) == {1}, "decisions by the worse candidate: 0"
    assert slot.shadow is None and 2 in slot.rejected
    assert [e["event"] for e in slot.events] == ["shadowing", "rejected"]
    assert not slot.offer(model_update("m", line(0.5), 2, key=KEY)), "a rejected version is not shadowed again"


def test_a_better_candidate_is_promoted_after_enough_outcomes():
    slot = slot_with(1.5)
    slot.offer(model_update("m", line(2.0), 2, key=KEY))
    versions = run(slot, 400)
    promoted_at = versions.index(2)
    assert POLICY.min_outcomes <= promoted_at <= POLICY.min_outcomes + 5
    assert slot.version == 2 and slot.previous.version == 1, "the previous model stays warm on probation"
    assert slot.revision == len(versions), "the revision counts the outcomes learned since v2 was published"
    events = [e["event"] for e in slot.events]
    assert events[:2] == ["shadowing", "promoted"]


def test_a_bad_promotion_forced_by_hand_rolls_back_by_itself():
    slot = slot_with(2.0)
    slot.offer(model_update("m", line(0.5), 2, key=KEY))
    run(slot, 10)
    assert slot.offer(command_update("promote", "m", 2, key=KEY)) and slot.version == 2
    versions = run(slot, 400, seed=2)
    rolled_at = versions.index(1)
    assert rolled_at <= POLICY.min_outcomes + 5 and slot.version == 1 and 2 in slot.rejected
    assert [e["event"] for e in slot.events] == ["shadowing", "promoted-by-operator", "rolled-back"]


class CannotLearn(linear_model.LinearRegression):
    def learn_one(self, x, y, **kwargs):
        raise ValueError("broken candidate")


def test_a_shadow_that_cannot_learn_is_rejected_and_the_live_model_keeps_learning():
    slot = slot_with(2.0)
    slot.shadow = Candidate(CannotLearn(), 2)   # set directly: a class of this test module does not travel pickled
    run(slot, 5)
    assert slot.shadow is None and 2 in slot.rejected and slot.revision == 5
    assert slot.events[-1]["event"] == "rejected-broken"


def test_operator_commands_are_signed_and_reject_and_rollback_work():
    slot = slot_with(1.5)
    slot.offer(model_update("m", line(2.0), 2, key=KEY))
    with pytest.raises(ModelRejected):
        slot.offer({**command_update("promote", "m", 2, key=KEY), "signature": ""})
    assert slot.offer(command_update("reject", "m", 2, key=KEY)) and slot.shadow is None
    slot.offer(model_update("m", line(2.0), 3, key=KEY))
    slot.offer(command_update("promote", "m", 3, key=KEY))
    assert slot.offer(command_update("rollback", "m", 3, key=KEY)) and slot.version == 1
    assert not slot.offer(command_update("rollback", "m", 3, key=KEY)), "nothing left to roll back"


def test_a_slot_pickles_with_its_shadow_and_scores():
    slot = slot_with(1.5)
    slot.offer(model_update("m", line(2.0), 2, key=KEY))
    run(slot, 50)
    restored = pickle.loads(pickle.dumps(slot))
    restored.key = KEY
    assert (restored.version, restored.revision, restored.shadow.score.n) == (1, 50, 50)
    run(restored, 100)
    assert restored.version == 2


def test_serialized_payload_is_what_the_digest_names():
    model = line(2.0)
    assert payload_digest(serialize(model)) == model_update("m", model, 1, key=KEY)["digest"]


# -- on a real broker: a forged update on the models topic -------------------------------------------
@pytest.mark.broker
def test_an_agent_dead_letters_a_forged_model_and_keeps_deciding(new_topic, group_id, settings, tmp_path):
    from tiertwin.connectors.kafka import KafkaSink, read_topic
    from tiertwin.pipelines.local_twin import LocalTwinAgent

    from tests.agent_support import Running, local_agent_config, wait_until

    config = local_agent_config(new_topic, group_id, prefix="test.lifecycle")
    target = tmp_path / "pwned"
    payload = pickle.dumps(WritesAFile(target))
    forged = {**model_update(DEMAND_LATENCY, default_model(DEMAND_LATENCY), 50), "payload": payload,
              "digest": payload_digest(payload), "signature": "ab" * 32}     # an attacker without the key
    fleet = SyntheticFleet(n_ues=2, n_cells=2, seed=9)
    demands = [r for tick in range(5) for kind, r in fleet.step(tick * 10) if kind == "demand"]
    with KafkaSink(settings) as sink, Running(LocalTwinAgent(config, settings)) as agent:
        sink.send(config.models_topic, "ModelUpdate", forged, key=DEMAND_LATENCY)
        sink.flush()
        assert wait_until(lambda: agent.metrics.value("tiertwin_agent_models_refused_total", model=DEMAND_LATENCY,
                                                      reason="bad-signature") == 1, 20)
        for d in demands:
            sink.send(config.demands_topic, "Demand", d, key=d["ue_id"])
        sink.flush()
        decisions = read_topic(config.actions_topic, settings, expect=len(demands), timeout_s=30)
        letters = read_topic(config.dead_letter_topic, settings, expect=1, timeout_s=20)
    assert not target.exists(), "the forged pickle was loaded"
    assert {d.value["model_version"] for d in decisions} == {PRETRAINED_VERSION}, "the live model stayed"
    assert [(d.value["reason"], d.value["topic"]) for d in letters] == [("bad-signature", config.models_topic)]


@pytest.mark.broker
def test_a_device_refuses_a_forged_model_and_still_takes_the_genuine_one(broker, settings, tmp_path):
    from tiertwin.connectors.kafka import KafkaSink, read_topic
    from tiertwin.pipelines.device import DeviceConfig, DeviceRuntime
    from tiertwin.pipelines.models import publish_command, publish_model

    from tests.test_device_runtime import feed, fleet_records, make_topics

    topics = make_topics(settings, "test.lifecycle.device")
    target = tmp_path / "pwned"
    payload = pickle.dumps(WritesAFile(target))
    forged = {**model_update(DEMAND_LATENCY, default_model(DEMAND_LATENCY), 50), "payload": payload,
              "digest": payload_digest(payload), "signature": ""}      # unsigned
    with DeviceRuntime(DeviceConfig(device_id="forged", topics=topics, spill_dir=tmp_path), settings) as device:
        assert device.downlink_ready.wait(30)
        records = fleet_records(3, 100_000)
        old = device.model_version
        with KafkaSink(settings, client_id="test-lifecycle-device") as sink:
            sink.send(topics.models, "ModelUpdate", forged, key=DEMAND_LATENCY)
            sink.flush()
            # a forged high version must not hide the genuine next one from the downlink
            publish_model(sink, DEMAND_LATENCY, device.twin.model.clone(include_attributes=True), old + 1,
                          topic=topics.models)
            publish_command(sink, "promote", DEMAND_LATENCY, old + 1, topic=topics.models)
        versions: list[int] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not versions or versions[-1] == old or device.stats.models_refused == 0):
            versions.extend(d["model_version"] for d in feed(device, [next(records) for _ in range(20)]))
            time.sleep(0.01)
        assert device.stats.models_refused == 1 and versions[-1] == old + 1
        assert device.drain(30)
    assert not target.exists(), "the forged pickle was loaded"
    letters = read_topic(topics.dead_letters, settings, expect=1, timeout_s=20)
    assert [d.value["reason"] for d in letters] == ["unsigned-model"]


@pytest.mark.broker
def test_manual_promote_reject_rollback_from_the_cli(new_topic, settings):
    from typer.testing import CliRunner

    from tiertwin.connectors.kafka import KafkaSink, read_topic
    from tiertwin.jobs.cli.main import app
    from tiertwin.pipelines.models import publish_model

    topic = new_topic(1, prefix="test.lifecycle.models")
    twin = LocalTwin()
    better = twin.model.clone(include_attributes=True)
    runner = CliRunner()

    def cli(*args: str) -> None:
        result = runner.invoke(app, ["models", *args, "--topic", topic])
        assert result.exit_code == 0, result.output

    with KafkaSink(settings) as sink:
        publish_model(sink, DEMAND_LATENCY, better, 2, topic=topic, producer="test")
        cli("promote", DEMAND_LATENCY, "2")
        publish_model(sink, DEMAND_LATENCY, better, 3, topic=topic, producer="test")
        cli("reject", DEMAND_LATENCY, "3")
        cli("rollback", DEMAND_LATENCY, "2")
    records = read_topic(topic, settings, expect=5, timeout_s=20)
    control = f"{DEMAND_LATENCY}/control".encode()
    assert [(r.key, r.value["action"]) for r in records] == [
        (DEMAND_LATENCY.encode(), "publish"), (control, "promote"), (DEMAND_LATENCY.encode(), "publish"),
        (control, "reject"), (control, "rollback")]
    # A twin reading the topic: v2 shadowed, promoted by hand; v3 shadowed, rejected; v2 rolled back to v1.
    seen = []
    for r in records:
        twin.swap_model(r.value)
        seen.append((twin.model_version, twin.slot.shadow.version if twin.slot.shadow else None))
    assert seen == [(1, 2), (2, None), (2, 3), (2, None), (1, None)]
    assert twin.model_version == PRETRAINED_VERSION and {2, 3} <= twin.slot.rejected
    status = new_topic(1, prefix="test.lifecycle.status")
    listed = runner.invoke(app, ["models", "list", "--topic", topic, "--status-topic", status, "--format", "json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)["versions"]
    assert [(r["version"], r["verified"], r["commands"]) for r in rows] == [(3, "ok", ["reject"]),
                                                                          (2, "ok", ["promote", "rollback"])]


@pytest.mark.broker
def test_an_agent_restart_keeps_the_revision_and_the_shadow(new_topic, group_id, settings):
    from tiertwin.connectors.kafka import KafkaSink, read_topic
    from tiertwin.pipelines.local_twin import LocalTwinAgent
    from tiertwin.pipelines.models import publish_model

    from tests.agent_support import Running, local_agent_config, wait_until

    config = local_agent_config(new_topic, group_id, prefix="test.lifecycle.restart")
    fleet = SyntheticFleet(n_ues=3, n_cells=2, seed=12)
    demands = [r for tick in range(10) for kind, r in fleet.step(tick * 10) if kind == "demand"]
    with KafkaSink(settings) as sink:
        with Running(LocalTwinAgent(config, settings)) as agent:
            publish_model(sink, DEMAND_LATENCY, load_pretrained(DEMAND_LATENCY)[0], 2, topic=config.models_topic)
            for d in demands:
                sink.send(config.demands_topic, "Demand", d, key=d["ue_id"])
            sink.flush()
            decisions = read_topic(config.actions_topic, settings, expect=len(demands), timeout_s=30)
            for i, r in enumerate(decisions):
                sink.send(config.outcomes_topic, "Outcome", {
                    "outcome_id": f"o-{i}", "ts_ms": r.value["source_ts_ms"] + 5, "kind": "demand",
                    "ue_id": r.value["ue_id"], "cell_id": r.value["cell_id"], "demand_id": r.value["subject_id"],
                    "decision_id": r.value["decision_id"], "placement": r.value["target"], "latency_ms": 12.0,
                    "deadline_ms": 20.0, "deadline_met": True, "components_ms": {}, "effect": {}, "emitted_ns": 0},
                    key=r.value["ue_id"])
            sink.flush()
            assert wait_until(lambda: agent.latency_slot.revision == len(decisions), 20)
            assert agent.latency_slot.shadow is not None and agent.latency_slot.shadow.score.n == len(decisions)
        before = (agent.latency_slot.version, agent.latency_slot.revision, agent.latency_slot.shadow.version)
        with Running(LocalTwinAgent(config, settings)) as restarted:     # same instance, same group
            assert wait_until(lambda: restarted.latency_slot.revision == before[1], 30), restarted.latency_slot.status()
            after = (restarted.latency_slot.version, restarted.latency_slot.revision,
                     restarted.latency_slot.shadow.version)
            assert restarted.latency_slot.shadow.score.n == len(decisions), "the shadow's paired score came back too"
    assert after == before == (PRETRAINED_VERSION, len(decisions), 2)
    statuses = [r.value for r in read_topic(config.model_status_topic, settings, timeout_s=20,
                                            until=lambda recs: len(recs) >= 3)]
    assert [(s["event"], s["version"], s["live_version"], s["shadow_version"]) for s in statuses][:3] == [
        ("started", PRETRAINED_VERSION, PRETRAINED_VERSION, None), ("shadowing", 2, PRETRAINED_VERSION, 2),
        ("started", PRETRAINED_VERSION, PRETRAINED_VERSION, None)]
    assert {s["instance"] for s in statuses} == {config.instance_id}


@pytest.mark.broker
def test_pretrain_publish_takes_the_next_version_on_the_topic_each_time(new_topic, settings, tmp_path):
    from typer.testing import CliRunner

    from tiertwin.connectors.kafka import read_topic
    from tiertwin.jobs.cli.main import app

    topic = new_topic(1, prefix="test.lifecycle.pretrain")
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(app, ["pretrain", "--source", "synthetic", "--samples", "300", "--out", str(tmp_path),
                                     "--publish", "--models-topic", topic])
        assert result.exit_code == 0, result.output
    records = [r.value for r in read_topic(topic, settings, expect=8, timeout_s=20)]
    versions = {}
    for u in records:
        versions.setdefault(u["model_name"], []).append(u["version"])
    assert versions and all(v == [PRETRAINED_VERSION + 1, PRETRAINED_VERSION + 2] for v in versions.values()), versions
    assert next_version(records, DEMAND_LATENCY) == PRETRAINED_VERSION + 3
