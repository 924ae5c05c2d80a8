"""The topic topology (``jobs/ops/topology.yaml``) as data, and applying it to a broker idempotently."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from kafka.admin import ConfigResource, ConfigResourceType
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tiertwin.connectors.kafka import admin_client
from tiertwin.errors import ConfigError, config_error
from tiertwin.settings import Settings

TOPOLOGY_FILE = Path(__file__).resolve().parent.parent / "jobs" / "ops" / "topology.yaml"


def _default_topology_file() -> Path:
    # Installed (non-editable) layout: tiertwin/jobs/ops/topology.yaml inside the installed package.
    if TOPOLOGY_FILE.exists():
        return TOPOLOGY_FILE
    import tiertwin.jobs.ops

    return Path(tiertwin.jobs.ops.__file__).resolve().parent / "topology.yaml"


class TopicSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    schema_: str | None = Field(alias="schema")
    key: str
    partitions: int = Field(ge=1, le=1000)
    # None (the default): min(3, brokers in the cluster), see :func:`replication_for`.
    replication_factor: int | None = Field(None, ge=1, le=10)
    retention_ms: int = Field(ge=-1)
    cleanup_policy: Literal["delete", "compact", "compact,delete"]
    producers: list[str] = []
    consumers: list[str] = []
    doc: str = ""

    @property
    def configs(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


class Topology(BaseModel):
    model_config = ConfigDict(frozen=True)

    topics: list[TopicSpec]

    def by_name(self) -> dict[str, TopicSpec]:
        return {t.name: t for t in self.topics}

    def __getitem__(self, name: str) -> TopicSpec:
        return self.by_name()[name]


def load_topology(path: Path | None = None) -> Topology:
    """Read and validate the topology file; errors name the topic and field."""
    path = path or _default_topology_file()
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    defaults = doc.get("defaults", {})
    topics = []
    for i, entry in enumerate(doc.get("topics", [])):
        try:
            topics.append(TopicSpec(**{**defaults, **entry}))
        except ValidationError as exc:
            raise config_error(exc, f"{path}: topics[{i}] ({entry.get('name', '?')})") from None
    names = [t.name for t in topics]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: duplicate topic names")
    return Topology(topics=topics)


def replication_for(spec: TopicSpec, brokers: int) -> tuple[int, int]:
    """``(replication factor, min.insync.replicas)`` of a topic on a cluster of ``brokers``: the declared
    factor, else min(3, brokers); two in-sync replicas where there are three or more (an ``acks=all``
    write then survives the loss of any one broker), else one.

    >>> spec = TopicSpec(name="t", schema=None, key="k", partitions=1, retention_ms=1, cleanup_policy="delete")
    >>> replication_for(spec, 1), replication_for(spec, 3), replication_for(spec, 5)
    ((1, 1), (3, 2), (3, 2))
    """
    factor = spec.replication_factor or min(3, brokers)
    return factor, 2 if factor >= 3 else 1


def apply_topology(topology: Topology, settings: Settings | None = None, brokers: int | None = None) -> dict[str, str]:
    """Create missing topics, add partitions, set retention/cleanup and ``min.insync.replicas``.
    Returns ``{topic: action}``.

    ``brokers``: the cluster's size, for the replication factor (:func:`replication_for`); default:
    the brokers the cluster reports now (a managed cluster passes its node count, so a node that is
    down does not lower it). A topic that exists with another replication factor (made on one node,
    then the cluster grew) is reassigned to it: each partition keeps its replicas, leader first, and
    gets the brokers it lacks, spread round-robin; ``min.insync.replicas`` is raised only once the
    new replicas are in sync, so producers with ``acks=all`` never see too few replicas.
    """
    admin = admin_client(settings)
    try:
        if brokers is None:
            brokers = max(1, len(admin.describe_cluster().get("brokers", [])))
        replication = {t.name: replication_for(t, brokers) for t in topology.topics}
        configs = {t.name: {**t.configs, "min.insync.replicas": str(replication[t.name][1])} for t in topology.topics}
        described = {t["name"]: t for t in admin.describe_topics() if not t["name"].startswith("__")}
        existing = {name: len(t["partitions"]) for name, t in described.items()}
        actions: dict[str, str] = {}
        missing = {t.name: {"num_partitions": t.partitions, "replication_factor": replication[t.name][0],
                            "configs": configs[t.name]} for t in topology.topics if t.name not in existing}
        if missing:
            admin.create_topics(missing, timeout_ms=30_000)
            actions.update({name: "created" for name in missing})
        grow = {t.name: t.partitions for t in topology.topics
                if t.name in existing and existing[t.name] < t.partitions}
        if grow:
            admin.create_partitions(grow, timeout_ms=30_000)
        present = [t for t in topology.topics if t.name in existing]
        node_ids = sorted(b["broker_id"] for b in admin.describe_cluster().get("brokers", []) if not b.get("is_fenced"))
        replicated = {t.name: len(described[t.name]["partitions"][0]["replica_nodes"]) for t in present}
        reassigned = {t.name: (replicated[t.name], replication[t.name][0]) for t in present
                      if replicated[t.name] != replication[t.name][0] and len(node_ids) >= replication[t.name][0]}
        if reassigned:
            _reassign(admin, {name: described[name] for name in reassigned},
                      {name: wanted for name, (_, wanted) in reassigned.items()}, node_ids)
        if present:
            admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, t.name, configs=configs[t.name])
                                 for t in present])
        for t in present:
            if t.name in grow:
                action = f"partitions {existing[t.name]} -> {t.partitions}"
            elif existing[t.name] > t.partitions:
                action = f"kept {existing[t.name]} partitions (Kafka cannot shrink to {t.partitions})"
            else:
                action = "up to date"
            has, wanted = replicated[t.name], replication[t.name][0]
            if t.name in reassigned:
                action += f"; replication factor {has} -> {wanted} (partitions reassigned)"
            elif has != wanted:
                action += f"; replication factor {has} kept (wanted {wanted}: only {len(node_ids)} brokers up)"
            actions[t.name] = action
        wait_for_leaders(admin, list(missing), settings=settings)
        return actions
    finally:
        admin.close()


def reassignment_plan(partitions: list[dict], wanted: int, node_ids: list[int]) -> dict[int, list[int]]:
    """New replica lists for a topic's partitions (``describe_topics`` entries): each keeps its current
    replicas, leader first, cut or topped up to ``wanted`` from the brokers it lacks, starting at a
    different broker per partition so the new replicas spread.

    >>> reassignment_plan([{"partition_index": 0, "leader_id": 1, "replica_nodes": [1]},
    ...                    {"partition_index": 1, "leader_id": 2, "replica_nodes": [2]}], 3, [1, 2, 3])
    {0: [1, 2, 3], 1: [2, 3, 1]}
    """
    plan = {}
    for p in partitions:
        current = sorted(p["replica_nodes"], key=lambda node: node != p["leader_id"])
        lacking = [node for node in node_ids if node not in current]
        start = p["partition_index"] % len(lacking) if lacking else 0
        plan[p["partition_index"]] = (current + lacking[start:] + lacking[:start])[:wanted]
    return plan


def _reassign(admin, described: dict[str, dict], wanted: dict[str, int], node_ids: list[int],
              timeout_s: float = 120.0) -> None:
    """Move ``described`` topics to ``wanted`` replicas each and wait until Kafka has finished."""
    import time

    from kafka import TopicPartition

    from tiertwin.errors import BrokerUnavailableError

    moves = {TopicPartition(name, partition): replicas for name, topic in described.items()
             for partition, replicas in reassignment_plan(topic["partitions"], wanted[name], node_ids).items()}
    refused = {tp: error for tp, error in admin.alter_partition_reassignments(moves, timeout_ms=30_000).items()
               if error is not None}
    if refused:
        raise BrokerUnavailableError(f"Kafka refused to reassign {len(refused)} partitions: {refused}")
    deadline = time.monotonic() + timeout_s
    while admin.list_partition_reassignments(list(moves), timeout_ms=30_000):
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(f"reassigning {', '.join(described)} did not finish within {timeout_s:g}s")
        time.sleep(0.5)


def wait_for_leaders(admin, names: list[str], timeout_s: float = 30.0, settings: Settings | None = None) -> None:
    """Wait until topics created a moment ago have a leader for every partition (BrokerUnavailableError
    after ``timeout_s``)."""
    from tiertwin.connectors.readiness import wait_for_topics

    wait_for_topics(admin, names, settings, timeout_s=timeout_s)


def describe_topics(settings: Settings | None = None) -> list[dict]:
    """``[{name, partitions, retention.ms, cleanup.policy}]`` for every non-internal topic."""
    admin = admin_client(settings)
    try:
        topics = sorted((t["name"], len(t["partitions"])) for t in admin.describe_topics()
                        if not t["name"].startswith("__"))
        if not topics:
            return []
        wanted = {"retention.ms": None, "cleanup.policy": None}
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs=dict(wanted))
                                          for name, _ in topics], config_filter="all")["topic"]
        return [{"name": name, "partitions": n,
                 **{key: configs.get(name, {}).get(key, {}).get("value") for key in wanted}}
                for name, n in topics]
    finally:
        admin.close()


def partition_health(settings: Settings | None = None) -> dict:
    """Every partition's replication, internal topics included: ``{"partitions": n, "under_replicated":
    [...], "offline": [...]}``, each entry ``{topic, partition, leader, replicas, isr}``. Under-replicated:
    fewer in-sync replicas than replicas; offline: no leader."""
    from tiertwin.connectors.readiness import wait_out

    admin = admin_client(settings)
    try:  # a node killed a moment ago is still listed until it is fenced: wait out refused connections
        topics = wait_out(admin.describe_topics, "a description of every topic", settings)
    finally:
        admin.close()
    health: dict = {"partitions": 0, "under_replicated": [], "offline": []}
    for topic in sorted(topics, key=lambda t: t["name"]):
        for p in sorted(topic["partitions"], key=lambda p: p["partition_index"]):
            health["partitions"] += 1
            entry = {"topic": topic["name"], "partition": p["partition_index"], "leader": p["leader_id"],
                     "replicas": list(p["replica_nodes"]), "isr": list(p["isr_nodes"])}
            if len(p["isr_nodes"]) < len(p["replica_nodes"]):
                health["under_replicated"].append(entry)
            if p["leader_id"] < 0:
                health["offline"].append(entry)
    return health
