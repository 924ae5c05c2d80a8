"""Deploy streaming jobs from specs: one detached process per instance, tracked under ``<home>/jobs``.

A job spec (``jobs/ops/specs/*.yaml``) names the tier, its inputs and outputs, how many
instances to run, the models it uses, and the runner and options::

    name: local
    tier: local            # simulator | local | edge | cloud | api
    instances: 2           # consumer-group members; Kafka spreads partitions over them
    group_id: tiertwin-local
    inputs: [tiertwin.local.telemetry, tiertwin.local.demands, tiertwin.outcomes]   # the agent's group_topics()
    outputs: [tiertwin.actions.local, tiertwin.edge.summaries]
    models: [demand-latency]
    config: {}             # written to a file and passed as --config (agents)
    args: []               # extra command-line arguments
    runner: {name: prism, options: {}}   # cloud jobs only

>>> spec = JobSpec(name="api", tier="api", args=["--port", "8081"])
>>> spec.command(Path("/tmp/cfg.yaml"), 0)[-3:]
['api', '--port', '8081']
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tiertwin.errors import ConfigError, TiertwinError, config_error, dotted
from tiertwin.procs import pid_alive
from tiertwin.settings import Settings

SPECS_DIR = Path(__file__).resolve().parent / "specs"
TIER_COMMANDS: dict[str, list[str]] = {
    "simulator": ["sim"],
    "local": ["run", "local"],
    "edge": ["run", "edge"],
    "cloud": ["run", "cloud"],
    "api": ["api"],
}
TAKES_CONFIG = {"local", "edge", "cloud"}


class JobNotFoundError(TiertwinError):
    """No deployed job has that name."""


class RunnerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["prism", "direct", "flink", "dataflow"] = "prism"
    options: dict[str, Any] = {}


class JobSpec(BaseModel):
    """A deployable job; validated on load, errors name the bad field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    tier: Literal["simulator", "local", "edge", "cloud", "api"]
    instances: int = Field(1, ge=1, le=64)
    group_id: str | None = None
    inputs: list[str] = []
    outputs: list[str] = []
    models: list[str] = []
    config: dict[str, Any] = {}
    args: list[str] = []
    runner: RunnerSpec | None = None

    def command(self, config_file: Path | None, instance: int) -> list[str]:
        cmd = [sys.executable, "-m", "tiertwin.jobs.cli", *TIER_COMMANDS[self.tier]]
        if self.tier in TAKES_CONFIG and config_file is not None:
            cmd += ["--config", str(config_file)]
        if self.tier == "cloud" and self.runner is not None:
            cmd += ["--runner", self.runner.name]
        return cmd + list(self.args)

    def effective_config(self, instance: int) -> dict[str, Any]:
        config = dict(self.config)
        if self.group_id and self.tier in ("local", "edge"):
            config.setdefault("group_id", self.group_id)
        if self.tier in ("local", "edge"):
            config.setdefault("instance_id", f"{self.name}-{instance}")
        if self.tier == "cloud" and self.runner is not None:
            config.setdefault("runner_options", self.runner.options)
        if self.tier == "cloud":  # its resume offsets are the job's own (connectors/beam_resume.py)
            config.setdefault("consumer_group", self.group_id or f"tiertwin-cloud-{self.name}")
        return config


def load_spec(path: Path) -> JobSpec:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a job spec is a mapping (name, tier, …)")
    try:
        return JobSpec(**doc)
    except ValidationError as exc:
        raise config_error(exc, str(path), field=lambda loc: f"field {dotted(loc)}") from None


def _jobs_dir(settings: Settings) -> Path:
    return settings.home / "jobs"


def deploy(spec: JobSpec, settings: Settings | None = None, spec_path: Path | None = None) -> dict:
    """Start every instance of ``spec`` detached; returns the job's state record."""
    settings = settings or Settings.from_env()
    folder = _jobs_dir(settings) / spec.name
    existing = status_of(spec.name, settings) if (folder / "state.json").exists() else None
    if existing and existing["running"]:
        raise ConfigError(f"job {spec.name!r} is already running ({existing['running']} instances); "
                          f"`tiertwin stop {spec.name}` first")
    folder.mkdir(parents=True, exist_ok=True)
    # The jobs reach the broker the caller reaches, whatever the caller's environment says.
    env = {**os.environ, "TIERTWIN_HOME": str(settings.home), "TIERTWIN_BROKER_HOST": settings.broker_host,
           "TIERTWIN_BROKER_PORT": str(settings.broker_port), "TIERTWIN_CONTROLLER_PORT": str(settings.controller_port)}
    if settings.bootstrap_servers:
        env["TIERTWIN_BOOTSTRAP_SERVERS"] = settings.bootstrap_servers
    instances = []
    for i in range(spec.instances):
        config_file = folder / f"config-{i}.yaml"
        config_file.write_text(yaml.safe_dump(spec.effective_config(i), sort_keys=False))
        log = open(folder / f"instance-{i}.log", "ab")
        proc = subprocess.Popen(spec.command(config_file, i), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        instances.append({"instance": i, "pid": proc.pid, "log": str(folder / f"instance-{i}.log")})
    state = {"name": spec.name, "tier": spec.tier, "started_at": time.time(), "instances": instances,
             "spec": spec.model_dump(), "spec_path": str(spec_path) if spec_path else None}
    (folder / "state.json").write_text(json.dumps(state, indent=2))
    return state


def deployed(settings: Settings | None = None) -> list[dict]:
    settings = settings or Settings.from_env()
    folder = _jobs_dir(settings)
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*/state.json"))] if folder.exists() else []


def status_of(name: str, settings: Settings | None = None) -> dict:
    settings = settings or Settings.from_env()
    path = _jobs_dir(settings) / name / "state.json"
    if not path.exists():
        raise JobNotFoundError(f"no job named {name!r}; see `tiertwin jobs`")
    state = json.loads(path.read_text())
    alive = [i for i in state["instances"] if pid_alive(i["pid"])]
    return {**state, "running": len(alive), "uptime_s": time.time() - state["started_at"] if alive else 0.0}


def consumer_progress(group_id: str, topics: list[str], settings: Settings | None = None) -> tuple[int, int]:
    """``(committed offsets summed, lag summed)`` of ``group_id`` over ``topics``."""
    from kafka import TopicPartition
    from kafka.admin import OffsetSpec

    from tiertwin.connectors.kafka import admin_client
    from tiertwin.connectors.readiness import wait_out

    admin = admin_client(settings)
    try:
        committed = wait_out(lambda: admin.list_group_offsets({group_id: None}),
                             f"the coordinator of consumer group {group_id!r}", settings).get(group_id, {}) or {}
        tps = []
        for t in admin.describe_topics(topics):
            tps += [TopicPartition(t["name"], p["partition_index"]) for p in t.get("partitions", [])]
        ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps}) if tps else {}
    finally:
        admin.close()
    total, lag = 0, 0
    for tp in tps:
        meta = committed.get(tp)
        offset = getattr(meta, "offset", meta if isinstance(meta, int) else -1)
        end = ends.get(tp)
        end = getattr(end, "offset", end if isinstance(end, int) else 0)
        if offset is not None and offset >= 0:
            total += offset
            lag += max(0, end - offset)
        else:
            lag += end
    return total, lag


def skip_to_latest(group_id: str, topics: list[str], settings: Settings | None = None) -> None:
    """Move an idle consumer group's committed offsets to the end of ``topics`` (skip a stale backlog)."""
    from kafka import TopicPartition
    from kafka.admin import OffsetSpec
    from kafka.errors import KafkaError

    from tiertwin.connectors.kafka import admin_client
    from tiertwin.connectors.readiness import raise_errors, wait_out

    def reset() -> None:
        tps = [TopicPartition(t["name"], p["partition_index"]) for t in admin.describe_topics(topics)
               for p in t.get("partitions", [])]
        if tps:
            done = admin.reset_group_offsets(group_id, {tp: OffsetSpec.LATEST for tp in tps})
            raise_errors((r["error"] for r in done.values()), f"consumer group {group_id!r}")

    admin = admin_client(settings)
    try:  # on a broker formatted a moment ago, the group's coordinator is still loading (issue 13)
        wait_out(reset, f"the coordinator of consumer group {group_id!r}", settings)
    except KafkaError as exc:  # not retriable: e.g. UnknownMemberIdError while a member is still in the group
        raise TiertwinError(f"cannot move consumer group {group_id!r} to the end of {', '.join(topics)}: {exc}; "
                            "is a member of the group still running? (`tiertwin jobs`)") from None
    finally:
        admin.close()


def job_rows(settings: Settings | None = None, sample_s: float = 1.0) -> list[dict]:
    """Status, uptime, consumer lag and records/s (committed offsets over ``sample_s``) per job."""
    settings = settings or Settings.from_env()
    rows = []
    states = [status_of(s["name"], settings) for s in deployed(settings)]
    first = {}
    for st in states:
        spec = st["spec"]
        if spec.get("group_id") and spec.get("inputs"):
            first[st["name"]] = consumer_progress(spec["group_id"], spec["inputs"], settings)
    if first:
        time.sleep(sample_s)
    for st in states:
        spec = st["spec"]
        row = {"name": st["name"], "tier": st["tier"], "instances": f"{st['running']}/{len(st['instances'])}",
               "status": "running" if st["running"] == len(st["instances"]) else
               ("degraded" if st["running"] else "stopped"),
               "uptime_s": st["uptime_s"], "lag": None, "records_per_s": None}
        if st["name"] in first:
            total, lag = consumer_progress(spec["group_id"], spec["inputs"], settings)
            row["lag"] = lag
            row["records_per_s"] = max(0.0, (total - first[st["name"]][0]) / sample_s)
        rows.append(row)
    return rows


def stop(name: str, settings: Settings | None = None, timeout_s: float = 30.0) -> int:
    """SIGTERM every instance (they flush, commit and checkpoint), SIGKILL after ``timeout_s``."""
    state = status_of(name, settings)
    pids = [i["pid"] for i in state["instances"] if pid_alive(i["pid"])]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    return len(pids)
