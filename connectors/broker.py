"""The managed local Apache Kafka broker: resolved from Maven Central, run with the machine's Java.

One KRaft node that is both broker and controller, bound to 127.0.0.1. Its jars,
configuration, data and log live under ``<home>/kafka`` (``home`` from
:class:`tiertwin.settings.Settings`). ``tiertwin broker install|start|stop|status``
drive this module.
"""

from __future__ import annotations

import hashlib
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
    def config(self) -> Path:
        return self.root / "server.properties"

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
    def pid(self) -> Path:
        return self.root / "broker.pid"

    @property
    def stamp(self) -> Path:
        return self.libs / ".pom-sha256"

    @property
    def credentials(self) -> Path:
        return self.root / "credentials"

    @property
    def security_mode(self) -> Path:
        return self.root / "security.mode"


class ManagedBroker:
    """Install, format, start, stop and inspect the single-node broker."""

    def __init__(self, settings: Settings | None = None, extra_listeners: dict[str, tuple[int, int]] | None = None):
        self.settings = settings or Settings.from_env()
        self.paths = BrokerPaths(self.settings.home / "kafka")
        # NAME -> (bind port, advertised port) on broker_host, PLAINTEXT; e.g. a listener whose
        # advertised address is a link-emulation proxy in front of it (tiertwin.connectors.linkemu).
        self.extra_listeners = dict(extra_listeners or {})

    @classmethod
    def private(cls, home: Path | None = None, *, main: Settings | None = None, listeners: Sequence[str] = (),
                **fields: Any) -> "ManagedBroker":
        """A broker of its own beside the shared one (tests, chaos, bench tiers): its own ``home`` (a new
        temporary folder when None; the caller removes it), free ports, and the jars the ``main`` broker
        resolved (installed there first if need be), linked in. Not started.

        ``listeners`` name extra PLAINTEXT listeners, each given a free (bind, advertised) port pair
        (:attr:`extra_listeners`: put a proxy on the advertised port). ``fields`` are further
        :class:`Settings` (``broker_security="scram"``, ``connect_timeout_s`` ...). ``bootstrap_servers``
        is explicit, so no client of it, and no child process given :meth:`env`, falls back to the shared broker.
        """
        main_broker = cls(main or Settings.from_env())
        main_broker.install()
        home = Path(home) if home is not None else Path(tempfile.mkdtemp(prefix="tiertwin-private-"))
        libs = home / "kafka" / "libs"
        if not libs.exists():
            libs.parent.mkdir(parents=True, exist_ok=True)
            libs.symlink_to(main_broker.paths.libs.resolve())
        port, controller, *more = free_ports(2 + 2 * len(listeners))
        settings = Settings(**{"home": home, "broker_port": port, "controller_port": controller,
                               "bootstrap_servers": f"127.0.0.1:{port}", "connect_timeout_s": 10, **fields})
        return cls(settings, extra_listeners={name: (more[2 * i], more[2 * i + 1]) for i, name in enumerate(listeners)})

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
        s = self.settings
        self.paths.root.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{s.broker_host}:{s.controller_port}",
            "listeners": f"PLAINTEXT://{s.broker_host}:{s.broker_port},CONTROLLER://{s.broker_host}:{s.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{s.broker_host}:{s.broker_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.paths.data),
            "num.partitions": "3",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.retention.hours": "24",
            "log.segment.bytes": str(64 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        if s.broker_security == "scram":
            props.update(self._scram_props())
        for name, (port, advertised) in self.extra_listeners.items():
            props["listeners"] += f",{name}://{s.broker_host}:{port}"
            props["advertised.listeners"] += f",{name}://{s.broker_host}:{advertised}"
            props["listener.security.protocol.map"] += f",{name}:PLAINTEXT"
        self.paths.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        self.paths.config.chmod(0o600)
        self.paths.log4j.write_text(LOG4J2_XML)

    def _scram_props(self) -> dict[str, str]:
        """SASL/SCRAM-SHA-512 for clients and inter-broker traffic, SASL/PLAIN on the controller
        listener (KRaft controllers cannot use SCRAM), and the StandardAuthorizer with deny-by-default."""
        s, password = self.settings, self.admin_password()
        return {
            "listeners": f"SASL_PLAINTEXT://{s.broker_host}:{s.broker_port},CONTROLLER://{s.broker_host}:{s.controller_port}",
            "advertised.listeners": f"SASL_PLAINTEXT://{s.broker_host}:{s.broker_port}",
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

    def _java(self, main: str, *args: str, **popen) -> list[str]:
        return [
            "java", f"-Xms{min(256, self.settings.broker_heap_mb)}m", f"-Xmx{self.settings.broker_heap_mb}m",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.paths.log4j}", f"-Dtiertwin.log.dir={self.paths.logs}",
            "-cp", f"{self.paths.libs}/*", main, *args,
        ]

    def formatted(self) -> bool:
        return (self.paths.data / "meta.properties").exists()

    def format(self) -> None:
        """Format KRaft storage once (a standalone controller quorum of one)."""
        mode = self.settings.broker_security
        if self.formatted():
            formatted_as = self.paths.security_mode.read_text().strip() if self.paths.security_mode.exists() else "none"
            if formatted_as != mode:
                raise BrokerSetupError(
                    f"the broker's storage in {self.paths.data} was formatted with security {formatted_as!r}, "
                    f"not {mode!r}; use another TIERTWIN_HOME (or delete that folder) to switch")
            return
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        uuid = subprocess.run(self._java("kafka.tools.StorageTool", "random-uuid"),
                              capture_output=True, text=True, check=False)
        if uuid.returncode != 0:
            raise BrokerSetupError(f"StorageTool random-uuid failed: {uuid.stderr[-1000:]}")
        cluster_id = uuid.stdout.strip().splitlines()[-1]
        extra = []
        if mode == "scram":  # the super user's SCRAM credential must exist before the broker starts
            extra = ["--add-scram", f"SCRAM-SHA-512=[name=admin,password={self.admin_password()}]"]
        done = subprocess.run(self._java("kafka.tools.StorageTool", "format", "--standalone",
                                         "-t", cluster_id, "-c", str(self.paths.config), *extra),
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise BrokerSetupError(f"StorageTool format failed: {(done.stdout + done.stderr)[-1000:]}")
        self.paths.security_mode.write_text(mode)

    # -- run -----------------------------------------------------------------------------------
    def pid(self) -> int | None:
        try:
            pid = int(self.paths.pid.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def port_open(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((self.settings.broker_host, self.settings.broker_port)) == 0

    def start(self, timeout_s: float = 90.0) -> int:
        """Install, configure, format and start the broker; return its pid once it is ready: it accepts
        connections and serves consumer groups (:meth:`wait_serving_groups`)."""
        deadline = time.monotonic() + timeout_s
        running = self.pid()
        if running is not None:
            self.wait_ready(timeout_s)
            self.wait_serving_groups(max(1.0, deadline - time.monotonic()))
            return running
        if self.port_open():
            raise BrokerSetupError(
                f"port {self.settings.broker_port} is taken by another process; "
                "stop it or set TIERTWIN_BROKER_PORT")
        self.install()
        self.write_config()
        self.format()
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        log_offset = self._server_log_size()
        stdout = open(self.paths.logs / "stdout.log", "ab")
        proc = subprocess.Popen(self._java("kafka.Kafka", str(self.paths.config)), stdout=stdout,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.paths.pid.write_text(str(proc.pid))
        try:
            self.wait_ready(timeout_s, log_offset=log_offset, proc=proc)
            self.wait_serving_groups(max(1.0, deadline - time.monotonic()))
        except BrokerUnavailableError:
            self.stop()
            raise
        return proc.pid

    def _server_log_size(self) -> int:
        log = self.paths.logs / "server.log"
        return log.stat().st_size if log.exists() else 0

    def wait_ready(self, timeout_s: float = 90.0, log_offset: int | None = None,
                   proc: subprocess.Popen | None = None) -> None:
        """Ready = the broker logged that it started and its PLAINTEXT port accepts (it opens unfenced)."""
        deadline = time.monotonic() + timeout_s
        log = self.paths.logs / "server.log"
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                tail = (self.paths.logs / "stdout.log").read_text(errors="replace")[-1500:]
                raise BrokerUnavailableError(f"broker exited with code {proc.returncode}: {tail}")
            logged = log_offset is None or (log.exists() and READY_LINE in _read_from(log, log_offset))
            if logged and self.port_open():
                return
            time.sleep(0.2)
        raise BrokerUnavailableError(f"broker not ready after {timeout_s:.0f}s; see {log}")

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
        """SIGTERM (controlled shutdown), then SIGKILL after ``timeout_s``. False if it was not running."""
        pid = self.pid()
        if pid is None:
            self.paths.pid.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.2)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)
        self.paths.pid.unlink(missing_ok=True)
        return True


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()
