"""A managed 3-node cluster (``ManagedBroker(nodes=3)``, ``tiertwin broker start --nodes 3``) on free ports in
a private home: it starts and reports every node, the topology's topics are replicated three times with two
in-sync replicas required, a SIGKILLed partition leader loses no acknowledged record, and the node rejoins
every ISR when it is started again. The live demo and the fault suite's tiers go on, losing nothing, when
the busiest partitions' leader is SIGKILLed. SCRAM and ACLs work on the cluster too.

Each cluster start costs ~20-30 s on 2 shared cores and the module starts three clusters (~5-6 min with the
demo and the fault run), so these tests run only when asked:
``bash scripts/test -m cluster`` (or ``TIERTWIN_CLUSTER_TESTS=1``). The measured numbers are printed
(``-s``) and kept in ``test-artifacts/cluster.json``.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from tiertwin.connectors.broker import ManagedBroker

pytestmark = [pytest.mark.broker, pytest.mark.cluster]

ARTIFACT = Path(__file__).resolve().parent.parent / "test-artifacts" / "cluster.json"
MEASURED: dict = {}


@pytest.fixture(scope="module", autouse=True)
def only_when_asked(request):
    if "cluster" not in (request.config.getoption("markexpr") or "") and not os.environ.get("TIERTWIN_CLUSTER_TESTS"):
        pytest.skip("3-node cluster tests (~6 min): run them with `bash scripts/test -m cluster`")
    yield
    if MEASURED:
        ARTIFACT.parent.mkdir(exist_ok=True)
        ARTIFACT.write_text(json.dumps(MEASURED, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, settings):
    from tiertwin.connectors.topics import apply_topology, load_topology

    managed = ManagedBroker.private(tmp_path_factory.mktemp("cluster-home"), main=settings, nodes=3)
    started = time.monotonic()
    try:
        managed.start()
        MEASURED["start_s"] = round(time.monotonic() - started, 1)
        print(f"\n3-node cluster formatted and started in {MEASURED['start_s']} s")
        apply_topology(load_topology(), managed.settings, brokers=managed.node_count)
        yield managed
    finally:
        stopping = time.monotonic()
        managed.stop()
        MEASURED["stop_s"] = round(time.monotonic() - stopping, 1)


def _admin(broker):
    from tiertwin.connectors.kafka import admin_client

    return admin_client(broker.client_settings())


def test_three_nodes_start_and_status_shows_each(cluster, monkeypatch):
    from typer.testing import CliRunner

    from tiertwin.jobs.cli.main import app

    pids = cluster.pids()
    assert sorted(pids) == [1, 2, 3] and all(pids.values()) and len(set(pids.values())) == 3
    assert len({n.data for n in cluster.nodes}) == 3 and len({n.port for n in cluster.nodes}) == 3
    assert all((n.logs / "server.log").exists() for n in cluster.nodes)
    assert len(cluster.settings.bootstrap.split(",")) == 3
    for key, value in cluster.env().items():
        if key.startswith("TIERTWIN_"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("TIERTWIN_BOOTSTRAP_SERVERS")  # the CLI finds every node from the home's layout
    result = CliRunner().invoke(app, ["broker", "status"])
    assert result.exit_code == 0, result.output
    for node in cluster.nodes:
        assert f"node {node.node_id}: 127.0.0.1:{node.port} serving, pid {pids[node.node_id]}" in result.output
    assert "under-replicated: 0, offline: 0" in result.output
    # A home keeps its node count: asking for another is refused, not silently ignored.
    result = CliRunner().invoke(app, ["broker", "start", "--nodes", "1"])
    assert result.exit_code == 1 and "3 node(s), not 1" in result.output


def test_topology_topics_have_three_replicas_and_two_in_sync_required(cluster):
    from kafka.admin import ConfigResource, ConfigResourceType

    from tiertwin.connectors.topics import load_topology

    names = [t.name for t in load_topology().topics]
    admin = _admin(cluster)
    try:
        described = admin.describe_topics(names + ["__consumer_offsets"])
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n, {"min.insync.replicas": None})
                                          for n in names], config_filter="all")["topic"]
    finally:
        admin.close()
    assert {t["name"] for t in described} == set(names) | {"__consumer_offsets"}
    for topic in described:
        for p in topic["partitions"]:
            assert len(p["replica_nodes"]) == 3 and sorted(p["isr_nodes"]) == [1, 2, 3], (topic["name"], p)
    assert {n: configs[n]["min.insync.replicas"]["value"] for n in names} == {n: "2" for n in names}


def test_topics_made_on_one_node_are_reassigned_to_three_replicas_when_the_cluster_has_three(cluster):
    """A topic created with one replica (as on a single node) gets three when `topics apply` runs on the
    3-node cluster: its records are still there, every replica is in sync, and min.insync.replicas is 2."""
    from kafka import KafkaProducer
    from kafka.admin import ConfigResource, ConfigResourceType

    from tiertwin.connectors.kafka import TopicReader, kafka_config
    from tiertwin.connectors.topics import TopicSpec, Topology, apply_topology

    topic = f"test.grow.{uuid.uuid4().hex[:8]}"
    topology = Topology(topics=[TopicSpec(name=topic, schema=None, key="k", partitions=4, retention_ms=-1,
                                          cleanup_policy="delete")])
    assert apply_topology(topology, cluster.settings, brokers=1) == {topic: "created"}
    producer = KafkaProducer(**kafka_config(cluster.settings, "grow-test", acks="all"))
    for i in range(200):
        producer.send(topic, key=b"k%d" % i, value=b"v%d" % i)
    producer.flush(30)

    actions = apply_topology(topology, cluster.settings, brokers=3)
    assert actions == {topic: "up to date; replication factor 1 -> 3 (partitions reassigned)"}, actions
    admin = _admin(cluster)
    partitions = admin.describe_topics([topic])[0]["partitions"]
    configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"min.insync.replicas": None})],
                                     config_filter="all")["topic"]
    admin.close()
    assert all(sorted(p["replica_nodes"]) == [1, 2, 3] and sorted(p["isr_nodes"]) == [1, 2, 3] for p in partitions)
    assert configs[topic]["min.insync.replicas"]["value"] == "2"
    for i in range(200, 300):     # acks=all needs two in-sync replicas now
        producer.send(topic, key=b"k%d" % i, value=b"v%d" % i)
    producer.flush(30)
    producer.close()
    with TopicReader([topic], cluster.settings, on_undecodable="raise") as reader:
        assert sum(reader.end_offsets.values()) == 300


def test_leader_killed_no_acknowledged_record_lost_and_it_rejoins(cluster):
    """A producer with acks=all (as KafkaSink) and a consumer group run while the node leading the most
    partitions of their topic is SIGKILLed; the node is then started again and rejoins every ISR."""
    from kafka import KafkaConsumer, KafkaProducer

    from tiertwin.connectors.kafka import kafka_config
    from tiertwin.connectors.topics import partition_health, wait_for_leaders

    topic, partitions = f"test.cluster.{uuid.uuid4().hex[:8]}", 3
    admin = _admin(cluster)
    admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 3,
                                 "configs": {"min.insync.replicas": "2"}}}, timeout_ms=30_000)
    wait_for_leaders(admin, [topic])
    deadline = time.monotonic() + 30   # the node asked may not have the new topic's metadata yet
    while len(leaders := {p["partition_index"]: p["leader_id"] for p in admin.describe_topics([topic])[0]["partitions"]
                          if p["leader_id"] >= 0}) < partitions and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(leaders) == partitions, leaders
    controller = admin.describe_cluster()["controller_id"]
    admin.close()
    victim = max(set(leaders.values()), key=list(leaders.values()).count)
    led = sorted(p for p, leader in leaders.items() if leader == victim)

    s = cluster.settings
    producer = KafkaProducer(**kafka_config(s, "cluster-test-producer", acks="all", enable_idempotence=True,
                                            retries=2**31 - 1, linger_ms=0))
    consumer = KafkaConsumer(topic, **kafka_config(s, "cluster-test-consumer", group_id=f"cluster-{topic}",
                                                   auto_offset_reset="earliest", fetch_max_wait_ms=50,
                                                   session_timeout_ms=10_000, heartbeat_interval_ms=1_000))
    acked: dict[int, list[tuple[float, int]]] = {p: [] for p in range(partitions)}
    consumed: dict[int, list[tuple[float, int]]] = {p: [] for p in range(partitions)}
    failed: list[Exception] = []
    stop_producing, stop_consuming = threading.Event(), threading.Event()

    def produce():
        seq = 0
        while not stop_producing.is_set():
            p = seq % partitions
            future = producer.send(topic, value=str(seq).encode(), partition=p)
            future.add_callback(lambda md, seq=seq, p=p: acked[p].append((time.monotonic(), seq)))
            future.add_errback(failed.append)
            seq += 1
            time.sleep(0.005)
        producer.flush(timeout=60)

    def consume():
        while not stop_consuming.is_set():
            for tp, messages in consumer.poll(timeout_ms=100).items():
                now = time.monotonic()
                consumed[tp.partition].extend((now, int(m.value)) for m in messages)

    threads = [threading.Thread(target=produce, daemon=True), threading.Thread(target=consume, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(4)
        killed_at = time.monotonic()
        cluster.kill_node(victim)
        time.sleep(20)
        stop_producing.set()
        threads[0].join(90)
        wanted = {p: {seq for _, seq in acked[p]} for p in range(partitions)}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(not wanted[p] <= {seq for _, seq in consumed[p]}
                                                  for p in range(partitions)):
            time.sleep(0.2)
    finally:
        stop_producing.set()
        stop_consuming.set()
        for thread in threads:
            thread.join(30)
        producer.close(timeout=10)
        consumer.close()

    assert not failed, failed[:3]
    lost = {p: sorted(wanted[p] - {seq for _, seq in consumed[p]})[:10] for p in range(partitions)}
    assert not any(lost.values()), f"acknowledged but never consumed: {lost}"
    total = sum(len(w) for w in wanted.values())
    produce_pause = max(_longest_gap(acked[p], killed_at) for p in led)
    consume_pause = max(_longest_gap(consumed[p], killed_at) for p in led)
    assert total > 3000 and all(a[-1][0] > killed_at + 10 for a in acked.values()), "production did not go on"

    restarted = time.monotonic()
    cluster.start()
    node_back = time.monotonic() - restarted
    deadline = time.monotonic() + 60
    while (under := partition_health(cluster.settings)["under_replicated"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    rejoined = time.monotonic() - restarted
    assert not under, under[:3]
    MEASURED["failover"] = {"killed_node": victim, "it_was_the_controller": victim == controller, "partitions_it_led": led, "acked_records": total,
                            "produce_pause_s": round(produce_pause, 2), "consume_pause_s": round(consume_pause, 2),
                            "restart_s": round(node_back, 1), "isr_rejoined_s": round(rejoined, 1)}
    print(f"\nfailover: {MEASURED['failover']}")
    assert produce_pause < 15, produce_pause


def _longest_gap(events: list[tuple[float, int]], after: float) -> float:
    """The longest time without an event from ``after`` on (acks or reads of one partition)."""
    times = [after] + sorted(t for t, _ in events if t >= after)
    return max(b - a for a, b in zip(times, times[1:])) if len(times) > 1 else float("inf")


def test_the_demo_on_a_cluster_goes_on_when_the_busiest_leader_is_killed(cluster, settings, monkeypatch):
    """The live demo (simulator with the device runtimes, edge service, cloud job on Prism) on the cluster;
    the node leading the most telemetry and demand partitions is SIGKILLed 15 s in and started again 10 s
    later. Every record the simulator published is on its topic exactly once, and decisions go on."""
    from tiertwin import topics as names
    from tiertwin.connectors.kafka import TopicReader, read_topic
    from tiertwin.jobs.bench.chaos import _busiest_leader
    from tiertwin.jobs.ops.demo import run_demo

    prism = settings.home / "bin" / "prism"
    if not prism.exists():
        pytest.skip("Prism is not installed (scripts/setup)")
    (cluster.settings.home / "bin").mkdir(exist_ok=True)
    if not (cluster.settings.home / "bin" / "prism").exists():
        (cluster.settings.home / "bin" / "prism").symlink_to(prism.resolve())
    for key, value in cluster.env().items():
        if key.startswith("TIERTWIN_"):
            monkeypatch.setenv(key, value)
    kill: dict = {}

    def fault():
        time.sleep(15)
        kill["node"] = _busiest_leader(cluster.settings)
        kill["at_ns"] = time.time_ns()
        cluster.kill_node(kill["node"])
        time.sleep(10)
        restarting = time.monotonic()
        cluster.start()
        kill["restart_s"] = round(time.monotonic() - restarting, 1)

    chaos = threading.Thread(target=fault, daemon=True)
    chaos.start()
    summary = run_demo(seconds=45, ues=20, with_cloud=True, settings=cluster.settings, on_progress=print,
                       baseline=False, local_twin="device")
    chaos.join(120)
    assert "restart_s" in kill, kill
    published = summary.simulator["published"]
    on_topic = {}
    for schema, topic in (("Telemetry", names.TELEMETRY), ("Demand", names.DEMANDS),
                          ("EdgeState", names.CELL_REPORTS), ("Outcome", names.OUTCOMES)):
        with TopicReader([topic], cluster.settings, on_undecodable="raise") as reader:
            on_topic[schema] = sum(reader.end_offsets.values())
    decided = {tier: sorted(d.value["decided_ns"] for d in read_topic(topic, cluster.settings))
               for tier, topic in (("local", names.ACTIONS_LOCAL), ("edge", names.ACTIONS_EDGE))}
    # the edge's pause is on all its outputs: handovers alone are rare, and say little about recovery
    edge_outputs = sorted(decided["edge"] + [s.value["emitted_ns"] for s in read_topic(names.EDGE_STATE, cluster.settings)])
    pauses = {}
    for tier, times in {"local": decided["local"], "edge": edge_outputs}.items():
        window = [kill["at_ns"]] + [t for t in times if kill["at_ns"] <= t <= kill["at_ns"] + 25 * 10**9]
        pauses[tier] = round(max((b - a for a, b in zip(window, window[1:])), default=25e9) / 1e9, 2)
    MEASURED["demo_leader_kill"] = {"node": kill["node"], "restart_s": kill["restart_s"], "published": published,
                                    "on_topic": on_topic, "decision_pause_s": pauses,
                                    "decisions": {f"{t}/{k}": n for (t, k), n in summary.decisions.items()},
                                    "device": {k: v for k, v in summary.simulator.get("device", {}).items()
                                               if k != "runtime"},
                                    "runtime": summary.simulator.get("device", {}).get("runtime"),
                                    "snapshots": summary.records.get(names.SNAPSHOTS, 0)}
    print(f"\ndemo on a cluster, leader killed: {MEASURED['demo_leader_kill']}")
    runtime = summary.simulator["device"]["runtime"]
    # what the simulator produced itself, exactly once; its device twins' outcomes go up through their uplink
    assert {k: on_topic[k] for k in ("Telemetry", "Demand", "EdgeState")} == \
        {k: published[k] for k in ("Telemetry", "Demand", "EdgeState")}
    assert on_topic["Outcome"] == published.get("Outcome", 0) + runtime["outcomes"]
    assert summary.simulator["device"]["placements"] == published["Demand"] == len(decided["local"])
    # The uplink may see a send error or two while the dead leader's partitions have none (reported in
    # MEASURED: 2 errors and 1 reconnect in one run); the counts above show it delivered everything anyway.
    assert runtime["encode_errors"] == 0 and runtime["spill_pending"] == 0
    assert all(times and times[-1] > kill["at_ns"] + 10**9 for times in decided.values()), "decisions stopped"
    assert summary.records.get(names.SNAPSHOTS, 0) > 0


def test_scram_and_acls_on_a_cluster(tmp_path_factory, settings):
    from tiertwin.connectors.kafka import KafkaSink
    from tiertwin.connectors.security import apply_security, credential_file
    from tiertwin.connectors.topics import apply_topology, load_topology
    from tiertwin.errors import AccessDeniedError
    from tiertwin.schemas.examples import example

    secure = ManagedBroker.private(tmp_path_factory.mktemp("secure-cluster"), main=settings, nodes=3,
                                   broker_security="scram")
    try:
        secure.start()
        topology = load_topology()
        apply_topology(topology, secure.client_settings(), brokers=3)
        apply_security(secure, topology)

        def as_(principal):
            return secure.settings.model_copy(update={"sasl_username": principal,
                                                      "sasl_password_file": credential_file(secure, principal)})

        with KafkaSink(as_("tiertwin-local")) as sink:
            sink.send("tiertwin.actions.local", "Decision", example("Decision"), key="ue-1")
            sink.flush(10)
        intruder = KafkaSink(as_("tiertwin-edge"))
        with pytest.raises(AccessDeniedError, match="tiertwin-edge"):
            intruder.send("tiertwin.actions.local", "Decision", example("Decision"), key="ue-1")
            intruder.flush(10)
        intruder._producer.close(timeout=2)
        from tiertwin.connectors.topics import partition_health

        health = partition_health(secure.client_settings())
        assert health["partitions"] > 0 and not health["under_replicated"]
    finally:
        secure.stop()


def test_tiers_lose_nothing_when_the_busiest_leader_node_is_killed(settings, tmp_path):
    """The fault suite (jobs/bench/chaos.py) on a 3-node cluster: a fleet streams telemetry and demands
    through local and edge agent processes (one of each SIGKILLed too) while the node leading the most
    telemetry and demand partitions is SIGKILLed and started again 10 s later."""
    from tiertwin.jobs.bench.chaos import run_chaos

    report = run_chaos(tmp_path, seconds=24, local_kills=1, edge_kills=1, broker_restarts=0, nodes=3,
                       leader_kills=1, main=settings, on_progress=print)
    MEASURED["tiers_leader_kill"] = {
        "telemetry_sent": report.telemetry_sent, "demands_sent": report.demands_sent,
        "leader_kills": [{k: v for k, v in kill.items() if k != "at_ns"} for kill in report.leader_kills],
        "local_decision_pause_s": report.local_decision_pause_s,
        "edge_decision_pause_s": report.edge_decision_pause_s,
        "local_decision_latency_max_s": report.local_decision_latency_max_s,
        "pause_without_a_kill_s": report.baseline_pause_s}
    print(f"\ntiers on a cluster, leader killed: {MEASURED['tiers_leader_kill']}")
    assert len(report.leader_kills) == 1 and dict(report.kills) == {"local": 1, "edge": 1}
    assert report.telemetry_sent > 500 and report.demands_sent > 100
    assert report.unaccounted_ues == {} and report.telemetry_accounted == report.telemetry_sent
    assert report.demands_decided == report.demands_sent
    assert report.conflicting_local_ids == 0 and report.conflicting_edge_ids == 0
    assert report.dead_lettered_malformed == report.malformed_sent > 0
    assert report.ok
    assert report.local_decision_pause_s < 20, report.local_decision_pause_s
