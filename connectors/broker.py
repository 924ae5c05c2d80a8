"""The managed local Apache Kafka broker: resolved from Maven Central, run with the machine's Java.

One KRaft node that is both broker and controller, bound to 127.0.0.1, or a cluster of such
nodes on this machine (``nodes=3``: three combined nodes, a static quorum of three voters),
each with its own ports, configuration, data and log, all on the same jars. The jars and
credentials live under ``<home>/kafka`` (``home`` from :class:`tiertwin.settings.Settings`);
a single node keeps its configuration, data and log there too, the nodes of a cluster under
``<home>/kafka/node-<id>``, and ``<home>/kafka/cluster.json`` records the cluster's layout so
that ``stop``, ``status`` and later starts find every node.
``tiertwin broker install|start|stop|status`` drive this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiertwin.errors import BrokerSetupError, BrokerUnavailableError
from tiertwin.procs import free_ports, pid_alive
from tiertwin.settings import Settings

POM = Path(__file__).resolve().parent / "kafka-broker-pom.xml"
READY_LINE = "Kafka Server started"
# A cluster's failure detection. A SIGKILLed node is fenced, and its partitions get new leaders, once it
# has missed broker.session.timeout.ms of heartbeats: with Kafka's defaults (9 s session, 2 s heartbeat)
# an acks=all producer paused 12.0 s on the partition the killed node led (tests/test_cluster.py).
# A node that comes back leads nothing until the preferred leaders are restored: every 30 s here
# (Kafka's default is 300 s), so a restarted node takes its share of the load back within a minute.
CLUSTER_TIMEOUTS = {"broker.session.timeout.ms": "4000", "broker.heartbeat.interval.ms": "1000",
                    "leader.imbalance.check.interval.seconds": "30"}

LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="${sys:tiertwin.log.dir}/server.log" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="INFO"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Root level="WARN"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""


@dataclass(frozen=True)
class BrokerPaths:
    root: Path

    @property
    def libs(self) -> Path:
        return self.root / "libs"

    @property
    def log4j(self) -> Path:
        return self.root / "log4j2.xml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def stamp(self) -> Path:
        return self.libs / ".pom-sha256"

    @property
    def credentials(self) -> Path:
        return self.root / "credentials"

    @property
    def security_mode(self) -> Path:
        return self.root / "security.mode"

    @property
    def layout(self) -> Path:
        return self.root / "cluster.json"


@dataclass(frozen=True)
class Node:
    """One KRaft node (broker and controller) of the managed broker: its id, ports and folder.

    A single node lives in ``<home>/kafka`` itself (the layout of every tiertwin home made before
    clusters), the nodes of a cluster in ``<home>/kafka/node-<id>``.
    """

    node_id: int
    port: int
    controller_port: int
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "server.properties"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pid_file(self) -> Path:
        return self.root / "broker.pid"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def formatted(self) -> bool:
        return (self.data / "meta.properties").exists()

    def port_open(self, host: str) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((host, self.port)) == 0

    def server_log_size(self) -> int:
        log = self.logs / "server.log"
        return log.stat().st_size if log.exists() else 0


class ManagedBroker:
    """Install, format, start, stop and inspect the managed broker: one node, or ``nodes`` of them.

    ``nodes`` is what a new home is formatted as (default 1); a home that was already configured
    keeps its layout (``cluster.json``), and :meth:`start` refuses another count. Node 1 listens on
    ``broker_port`` / ``controller_port``; node *i* of a cluster on ``node_ports[i-1]`` if given, else
    on both plus ``2 * (i - 1)`` (9094/9095, 9096/9097 for the default ports).
    """

    def __init__(self, settings: Settings | None = None, extra_listeners: dict[str, tuple[int, int]] | None = None,
                 nodes: int | None = None, node_ports: Sequence[tuple[int, int]] | None = None):
        settings = settings or Settings.from_env()
        self.paths = BrokerPaths(settings.home / "kafka")
        # NAME -> (bind port, advertised port) on broker_host, PLAINTEXT; e.g. a listener whose
        # advertised address is a link-emulation proxy in front of it (tiertwin.connectors.linkemu).
        self.extra_listeners = dict(extra_listeners or {})
        self.requested_nodes = nodes
        self.nodes = self._layout(settings, nodes, node_ports)
        if len(self.nodes) > 1 and self.extra_listeners:
            raise BrokerSetupError("extra listeners (link emulation) are for a single-node broker only")
        if len(self.nodes) > 1 and settings.bootstrap_servers is None:
            # Every node bootstraps a client, so a client starting while one node is down still connects.
            settings = settings.model_copy(update={"bootstrap_servers": ",".join(
                f"{settings.broker_host}:{n.port}" for n in self.nodes)})
        self.settings = settings

    def _layout(self, settings: Settings, nodes: int | None,
                node_ports: Sequence[tuple[int, int]] | None) -> list[Node]:
        if self.paths.layout.exists():
            layout = json.loads(self.paths.layout.read_text())
            return [Node(n["id"], n["port"], n["controller_port"], self.paths.root / f"node-{n['id']}")
                    for n in layout["nodes"]]
        if (self.paths.data / "meta.properties").exists() or not nodes or nodes == 1:
            return [Node(1, settings.broker_port, settings.controller_port, self.paths.root)]
        ports = list(node_ports or [(settings.broker_port + 2 * i, settings.controller_port + 2 * i)
                                    for i in range(nodes)])
        if len(ports) != nodes:
            raise BrokerSetupError(f"{nodes} nodes need {nodes} port pairs, not {len(ports)}")
        return [Node(i + 1, port, controller, self.paths.root / f"node-{i + 1}")
                for i, (port, controller) in enumerate(ports)]

    @property
    def node_count(self) -> int:
        return len(self.nodes)

    @property
    def replication_factor(self) -> int:
        """What topics get here: min(3, nodes)."""
        return min(3, len(self.nodes))

    @classmethod
    def private(cls, home: Path | None = None, *, main: Settings | None = None, listeners: Sequence[str] = (),
                nodes: int = 1, **fields: Any) -> "ManagedBroker":
        """A broker of its own beside the shared one (tests, chaos, bench tiers): its own ``home`` (a new
        temporary folder when None; the caller removes it), free ports, and the jars the ``main`` broker
        resolved (installed there first if need be), linked in. Not started.

        ``nodes``: a cluster of that many nodes, each on free ports. ``listeners`` name extra PLAINTEXT
        listeners (single node only), each given a free (bind, advertised) port pair
        (:attr:`extra_listeners`: put a proxy on the advertised port). ``fields`` are further
        :class:`Settings` (``broker_security="scram"``, ``connect_timeout_s`` ...). ``bootstrap_servers``
        is explicit (every node), so no client of it, and no child process given :meth:`env`, falls back
        to the shared broker.
        """
        main_broker = cls(main or Settings.from_env())
        main_broker.install()
        home = Path(home) if home is not None else Path(tempfile.mkdtemp(prefix="tiertwin-private-"))
        libs = home / "kafka" / "libs"
        if not libs.exists():
            libs.parent.mkdir(parents=True, exist_ok=True)
            libs.symlink_to(main_broker.paths.libs.resolve())
        ports = free_ports(2 * nodes + 2 * len(listeners))
        pairs = [(ports[2 * i], ports[2 * i + 1]) for i in range(nodes)]
        more = ports[2 * nodes:]
        bootstrap = ",".join(f"127.0.0.1:{port}" for port, _ in pairs)
        settings = Settings(**{"home": home, "broker_port": pairs[0][0], "controller_port": pairs[0][1],
                               "bootstrap_servers": bootstrap, "connect_timeout_s": 10, **fields})
        return cls(settings, nodes=nodes, node_ports=pairs,
                   extra_listeners={name: (more[2 * i], more[2 * i + 1]) for i, name in enumerate(listeners)})

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with the ``TIERTWIN_*`` variables that point a
        child process at this broker."""
        s = self.settings
        return {**(os.environ if base is None else base), "TIERTWIN_HOME": str(s.home),
                "TIERTWIN_BROKER_PORT": str(s.broker_port), "TIERTWIN_CONTROLLER_PORT": str(s.controller_port),
                "TIERTWIN_BOOTSTRAP_SERVERS": s.bootstrap, "TIERTWIN_CONNECT_TIMEOUT_S": str(s.connect_timeout_s),
                "TIERTWIN_BROKER_SECURITY": s.broker_security}

    # -- install -------------------------------------------------------------------------------
    def installed(self) -> bool:
        return self.paths.stamp.exists() and self.paths.stamp.read_text() == _pom_digest()

    def install(self, force: bool = False) -> Path:
        """Resolve ``kafka_2.13``, ``kafka-tools`` and log4j2 with Maven into ``libs/`` (once)."""
        if self.installed() and not force:
            return self.paths.libs
        if shutil.which("mvn") is None:
            raise BrokerSetupError("Maven (mvn) is not on PATH; install it (apt-get install maven)")
        if self.paths.libs.exists():
            shutil.rmtree(self.paths.libs)
        self.paths.libs.mkdir(parents=True)
        cmd = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
               f"-DoutputDirectory={self.paths.libs}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise BrokerSetupError(f"Maven could not resolve Kafka: {(done.stdout + done.stderr)[-2000:]}")
        self.paths.stamp.write_text(_pom_digest())
        return self.paths.libs

    def kafka_version(self) -> str:
        jars = sorted(self.paths.libs.glob("kafka_2.13-*.jar"))
        if not jars:
            raise BrokerSetupError("Kafka is not installed; run `tiertwin broker install`")
        return jars[0].stem.removeprefix("kafka_2.13-")

    # -- configure and format ------------------------------------------------------------------
    def admin_password(self) -> str:
        """The broker super user's password (secure mode), generated once and kept 0600."""
        path = self.paths.credentials / "admin.password"
        if not path.exists():
            self.paths.credentials.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text().strip()

    def client_settings(self) -> Settings:
        """Settings for tiertwin's own admin work: the super user in secure mode unless credentials are given."""
        if self.settings.broker_security != "scram" or self.settings.sasl_username:
            return self.settings
        self.admin_password()
        return self.settings.model_copy(update={"sasl_username": "admin",
                                                "sasl_password_file": self.paths.credentials / "admin.password"})

    def write_config(self) -> None:
        """Write every node's ``server.properties`` (and, for a cluster, ``cluster.json``)."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        if len(self.nodes) > 1 and not self.paths.layout.exists():
            self.paths.layout.write_text(json.dumps({"nodes": [
                {"id": n.node_id, "port": n.port, "controller_port": n.controller_port} for n in self.nodes]},
                indent=2) + "\n")
        for node in self.nodes:
            node.root.mkdir(parents=True, exist_ok=True)
            props = self._node_props(node)
            node.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
            node.config.chmod(0o600)
        self.paths.log4j.write_text(LOG4J2_XML)

    def _node_props(self, node: Node) -> dict[str, str]:
        s, host = self.settings, self.settings.broker_host
        replicas, min_isr = str(self.replication_factor), str(min(2, self.replication_factor))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "listeners": f"PLAINTEXT://{host}:{node.port},CONTROLLER://{host}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(node.data),
            "num.partitions": "3",
            "default.replication.factor": replicas,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.retention.hours": "24",
            "log.segment.bytes": str(64 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        if len(self.nodes) == 1:
            props["controller.quorum.bootstrap.servers"] = f"{host}:{node.controller_port}"
        else:
            # A static quorum: every node votes. A node that stops heartbeating is fenced (and loses its
            # leaderships) after broker.session.timeout.ms; tests/test_cluster.py measures the pause.
            props["controller.quorum.voters"] = ",".join(f"{n.node_id}@{host}:{n.controller_port}"
                                                         for n in self.nodes)
            props.update(CLUSTER_TIMEOUTS)
        if s.broker_security == "scram":
            props.update(self._scram_props(node))
        for name, (port, advertised) in self.extra_listeners.items():
            props["listeners"] += f",{name}://{host}:{port}"
            props["advertised.listeners"] += f",{name}://{host}:{advertised}"
            props["listener.security.protocol.map"] += f",{name}:PLAINTEXT"
        return props

    def _scram_props(self, node: Node) -> dict[str, str]:
        """SASL/SCRAM-SHA-512 for clients and inter-broker traffic, SASL/PLAIN on the controller
        listener (KRaft controllers cannot use SCRAM), and the StandardAuthorizer with deny-by-default."""
        host, password = self.settings.broker_host, self.admin_password()
        return {
            "listeners": f"SASL_PLAINTEXT://{host}:{node.port},CONTROLLER://{host}:{node.controller_port}",
            "advertised.listeners": f"SASL_PLAINTEXT://{host}:{node.port}",
            "listener.security.protocol.map": "CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config":
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="admin" password="{password}" user_admin="{password}";',
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="admin" password="{password}";',
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": "User:admin",
            "allow.everyone.if.no.acl.found": "false",
        }

    def _java(self, main: str, *args: str, logs: Path | None = None) -> list[str]:
        return [
            "java", f"-Xms{min(256, self.settings.broker_heap_mb)}m", f"-Xmx{self.settings.broker_heap_mb}m",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.paths.log4j}", f"-Dtiertwin.log.dir={logs or self.paths.logs}",
            "-cp", f"{self.paths.libs}/*", main, *args,
        ]

    def formatted(self) -> bool:
        return all(node.formatted() for node in self.nodes)

    def format(self) -> None:
        """Format KRaft storage once: a standalone controller quorum of one, or every node of a cluster
        with one cluster id and the static quorum of its configuration."""
        mode = self.settings.broker_security
        if self.formatted():
            formatted_as = self.paths.security_mode.read_text().strip() if self.paths.security_mode.exists() else "none"
            if formatted_as != mode:
                raise BrokerSetupError(
                    f"the broker's storage in {self.nodes[0].data} was formatted with security {formatted_as!r}, "
                    f"not {mode!r}; use another TIERTWIN_HOME (or delete that folder) to switch")
            return
        if any(node.formatted() for node in self.nodes):
            raise BrokerSetupError(f"only some nodes of the cluster in {self.paths.root} are formatted; "
                                   "delete that folder (or use another TIERTWIN_HOME) and start again")
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        uuid = subprocess.run(self._java("kafka.tools.StorageTool", "random-uuid"),
                              capture_output=True, text=True, check=False)
        if uuid.returncode != 0:
            raise BrokerSetupError(f"StorageTool random-uuid failed: {uuid.stderr[-1000:]}")
        cluster_id = uuid.stdout.strip().splitlines()[-1]
        extra = ["--standalone"] if len(self.nodes) == 1 else []
        if mode == "scram":  # the super user's SCRAM credential must exist before the broker starts
            extra += ["--add-scram", f"SCRAM-SHA-512=[name=admin,password={self.admin_password()}]"]
        formats = [subprocess.Popen(self._java("kafka.tools.StorageTool", "format", "-t", cluster_id,
                                               "-c", str(node.config), *extra, logs=node.logs),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for node in self.nodes]
        for proc in formats:
            output = proc.communicate()[0]
            if proc.returncode != 0:
                raise BrokerSetupError(f"StorageTool format failed: {output[-1000:]}")
        self.paths.security_mode.write_text(mode)

    # -- run -----------------------------------------------------------------------------------
    def pid(self) -> int | None:
        """The pid of node 1 (the only node of a single broker), None if it is not running."""
        return self.nodes[0].pid()

    def pids(self) -> dict[int, int | None]:
        """``{node id: pid, or None if that node is not running}``."""
        return {node.node_id: node.pid() for node in self.nodes}

    def node(self, node_id: int) -> Node:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise BrokerSetupError(f"the managed broker has no node {node_id} (nodes: "
                               f"{', '.join(str(n.node_id) for n in self.nodes)})")

    def port_open(self) -> bool:
        """Does some node accept connections?"""
        return any(node.port_open(self.settings.broker_host) for node in self.nodes)

    def start(self, timeout_s: float = 90.0) -> int:
        """Install, configure, format and start every node that is not running; return node 1's pid once
        the broker is ready: every node accepts connections and consumer groups are served
        (:meth:`wait_serving_groups`). A node killed a moment ago restarts here and rejoins."""
        if self.requested_nodes and self.requested_nodes != len(self.nodes):
            raise BrokerSetupError(
                f"the broker in {self.paths.root} is configured with {len(self.nodes)} node(s), not "
                f"{self.requested_nodes}; stop it and use another TIERTWIN_HOME (or delete that folder)")
        deadline = time.monotonic() + timeout_s
        host = self.settings.broker_host
        to_start = [node for node in self.nodes if node.pid() is None]
        for node in to_start:
            if node.port_open(host):
                raise BrokerSetupError(
                    f"port {node.port} (node {node.node_id}) is taken by another process; "
                    "stop it or set TIERTWIN_BROKER_PORT")
        if to_start:
            self.install()
            self.write_config()
            self.format()
        started: list[tuple[Node, int, subprocess.Popen]] = []
        for node in to_start:
            node.logs.mkdir(parents=True, exist_ok=True)
            log_offset = node.server_log_size()
            with open(node.logs / "stdout.log", "ab") as stdout:
                proc = subprocess.Popen(self._java("kafka.Kafka", str(node.config), logs=node.logs), stdout=stdout,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            node.pid_file.write_text(str(proc.pid))
            started.append((node, log_offset, proc))
        try:
            for node in self.nodes:
                launched = next(((offset, proc) for n, offset, proc in started if n is node), (None, None))
                self._wait_node_ready(node, max(1.0, deadline - time.monotonic()), *launched)
            self.wait_serving_groups(max(1.0, deadline - time.monotonic()))
        except BrokerUnavailableError:
            for node, _, _ in started:
                self._stop_nodes([node], 10.0)
            raise
        return self.nodes[0].pid()

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Every node logged that it started and its client port accepts."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            self._wait_node_ready(node, max(1.0, deadline - time.monotonic()))

    def _wait_node_ready(self, node: Node, timeout_s: float, log_offset: int | None = None,
                         proc: subprocess.Popen | None = None) -> None:
        """Ready = the node logged that it started and its client port accepts (it opens unfenced)."""
        deadline = time.monotonic() + timeout_s
        log = node.logs / "server.log"
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                tail = (node.logs / "stdout.log").read_text(errors="replace")[-1500:]
                raise BrokerUnavailableError(f"broker node {node.node_id} exited with code {proc.returncode}: {tail}")
            logged = log_offset is None or (log.exists() and READY_LINE in _read_from(log, log_offset))
            if logged and node.port_open(self.settings.broker_host):
                return
            time.sleep(0.2)
        raise BrokerUnavailableError(f"broker node {node.node_id} not ready after {timeout_s:.0f}s; see {log}")

    def wait_serving_groups(self, timeout_s: float = 60.0) -> None:
        """Ready for consumer groups: commit an offset for a throw-away group, then delete the group.

        A broker formatted a moment ago has no ``__consumer_offsets`` until the first group request,
        and answers COORDINATOR_NOT_AVAILABLE / NOT_COORDINATOR while it creates and loads it
        (0.4 s here on 2 shared cores, issue 13). The commit goes to a partition of that topic
        itself, the one topic every broker has once groups work.
        """
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        from tiertwin.connectors.kafka import admin_client
        from tiertwin.connectors.readiness import PROBE_GROUP, raise_errors, wait_out

        settings = self.client_settings()
        admin = admin_client(settings)
        offset = {TopicPartition("__consumer_offsets", 0): OffsetAndMetadata(0, "", None)}
        what = f"an offset commit of consumer group {PROBE_GROUP!r}"
        try:
            wait_out(lambda: raise_errors(admin.alter_group_offsets(PROBE_GROUP, offset).values(), what),
                     what, settings, timeout_s=timeout_s)
            wait_out(lambda: admin.delete_groups([PROBE_GROUP]), f"deleting consumer group {PROBE_GROUP!r}",
                     settings, timeout_s=timeout_s)
        finally:
            admin.close()

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop every node: SIGTERM (controlled shutdown), then SIGKILL after ``timeout_s``.
        False if none was running."""
        return self._stop_nodes(self.nodes, timeout_s)

    def stop_node(self, node_id: int, timeout_s: float = 30.0) -> bool:
        """Stop one node of a cluster cleanly (SIGTERM, SIGKILL after ``timeout_s``)."""
        return self._stop_nodes([self.node(node_id)], timeout_s)

    def kill_node(self, node_id: int) -> int | None:
        """SIGKILL one node (a crash, for fault tests); its pid, or None if it was not running."""
        node = self.node(node_id)
        pid = node.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.02)
        node.pid_file.unlink(missing_ok=True)
        return pid

    def _stop_nodes(self, nodes: Sequence[Node], timeout_s: float) -> bool:
        running = [(node, pid) for node in nodes if (pid := node.pid()) is not None]
        for node, pid in running:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(node.pid() is not None for node, _ in running):
            time.sleep(0.2)
        for node, pid in running:
            if node.pid() is not None:
                os.kill(pid, signal.SIGKILL)
        for node in nodes:
            node.pid_file.unlink(missing_ok=True)
        return bool(running)


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()
