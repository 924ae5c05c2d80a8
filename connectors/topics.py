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
    replication_factor: int = Field(ge=1, le=10)
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


def apply_topology(topology: Topology, settings: Settings | None = None) -> dict[str, str]:
    """Create missing topics, add partitions, set retention/cleanup. Returns ``{topic: action}``."""
    admin = admin_client(settings)
    try:
        existing = {t["name"]: len(t["partitions"]) for t in admin.describe_topics()
                    if not t["name"].startswith("__")}
        actions: dict[str, str] = {}
        missing = {t.name: {"num_partitions": t.partitions, "replication_factor": t.replication_factor,
                            "configs": t.configs} for t in topology.topics if t.name not in existing}
        if missing:
            admin.create_topics(missing, timeout_ms=30_000)
            actions.update({name: "created" for name in missing})
        grow = {t.name: t.partitions for t in topology.topics
                if t.name in existing and existing[t.name] < t.partitions}
        if grow:
            admin.create_partitions(grow, timeout_ms=30_000)
        present = [t for t in topology.topics if t.name in existing]
        if present:
            admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, t.name, configs=t.configs)
                                 for t in present])
        for t in present:
            if t.name in grow:
                actions[t.name] = f"partitions {existing[t.name]} -> {t.partitions}"
            elif existing[t.name] > t.partitions:
                actions[t.name] = f"kept {existing[t.name]} partitions (Kafka cannot shrink to {t.partitions})"
            else:
                actions[t.name] = "up to date"
        wait_for_leaders(admin, list(missing), settings=settings)
        return actions
    finally:
        admin.close()


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
