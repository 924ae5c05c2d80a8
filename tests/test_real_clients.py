"""tiertwin against real clients it does not share code with: kcat (librdkafka's command-line client) on
the topics, promtool and a Prometheus server on the metrics. ``bash scripts/setup`` installs them from
Debian where it can; without them these tests skip, saying so."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from tiertwin.connectors.kafka import KafkaSink, read_topic
from tiertwin.pipelines.local_twin import LocalTwinAgent
from tiertwin.pipelines.pretrain import SyntheticFleet
from tiertwin.procs import free_ports
from tiertwin.schemas.codec import SchemaRegistry

from tests.agent_support import Running, local_agent_config

pytestmark = pytest.mark.broker


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (bash scripts/setup installs it from Debian as root)")
    return path


def kcat_read(settings, topic: str) -> list[tuple[int, int, bytes, bytes]]:
    """(partition, offset, key, value) of every record of ``topic``, read by kcat."""
    # A text header per record, then exactly the key's and the value's bytes: the bodies are binary Avro.
    out = subprocess.run([_tool("kcat"), "-C", "-b", settings.bootstrap, "-t", topic, "-e", "-q",
                          "-f", "%p %o %K %S\n%k%s"], capture_output=True, timeout=60, check=True).stdout
    records, at = [], 0
    while at < len(out):
        end = out.index(b"\n", at)
        partition, offset, key_len, value_len = map(int, out[at:end].split())
        key_at = end + 1
        value_at = key_at + max(key_len, 0)
        records.append((partition, offset, out[key_at:value_at], out[value_at:value_at + value_len]))
        at = value_at + value_len
    return records


def test_kcat_reads_the_decisions_an_agent_writes(new_topic, group_id, settings):
    config = local_agent_config(new_topic, group_id, prefix="test.clients")
    fleet = SyntheticFleet(n_ues=3, n_cells=2, seed=11, demand_every=1)
    demands = [record for tick in range(4) for kind, record in fleet.step(tick * 10) if kind == "demand"]
    with KafkaSink(settings) as sink, Running(LocalTwinAgent(config, settings)):
        for demand in demands:
            sink.send(config.demands_topic, "Demand", {**demand, "emitted_ns": time.time_ns()}, key=demand["ue_id"])
        sink.flush()
        ours = read_topic(config.actions_topic, settings, expect=len(demands), timeout_s=60)

    theirs = kcat_read(settings, config.actions_topic)
    registry = SchemaRegistry.default()
    decoded = {(p, o): (key.decode(), registry.decode(value, expect="Decision")[1]) for p, o, key, value in theirs}
    assert len(decoded) == len(ours) >= len(demands)
    for record in ours:
        key, decision = decoded[(record.partition, record.offset)]
        assert decision == record.value
        assert key == decision["ue_id"]
    assert {d["subject_id"] for _, d in decoded.values()} == {d["demand_id"] for d in demands}


def test_records_kcat_writes_are_read_and_a_malformed_one_is_refused(new_topic, settings, tmp_path):
    topic = new_topic(1, prefix="test.clients.kcat-in")
    fleet = SyntheticFleet(n_ues=2, n_cells=2, seed=12, demand_every=1000)
    telemetry = [record for tick in range(3) for kind, record in fleet.step(tick * 10) if kind == "telemetry"]
    registry = SchemaRegistry.default()
    paths = []    # kcat -P sends each file named as one record: the binary bodies need no delimiter
    for i, record in enumerate(telemetry):
        path = tmp_path / f"telemetry-{i}.avro"
        path.write_bytes(registry.encode("Telemetry", record))
        paths.append(str(path))
    subprocess.run([_tool("kcat"), "-P", "-b", settings.bootstrap, "-t", topic, "-k", "from-kcat", *paths],
                   check=True, timeout=60, capture_output=True)
    read = read_topic(topic, settings, expect=len(telemetry), timeout_s=30)
    as_written = [registry.decode(open(path, "rb").read())[1] for path in paths]   # float fields are 32-bit
    assert [r.value for r in read] == as_written and [v["seq"] for v in as_written] == [t["seq"] for t in telemetry] and {r.key for r in read} == {b"from-kcat"}

    subprocess.run([_tool("kcat"), "-P", "-b", settings.bootstrap, "-t", topic, "-k", "garbage"],
                   input=b"\x00not avro at all", check=True, timeout=60, capture_output=True)
    from tiertwin.errors import RecordRejected
    with pytest.raises(RecordRejected):
        read_topic(topic, settings, expect=len(telemetry) + 1, timeout_s=30)


def test_promtool_and_prometheus_accept_an_agents_metrics(new_topic, group_id, settings, tmp_path):
    promtool, prometheus = _tool("promtool"), _tool("prometheus")
    metrics_port, prometheus_port = free_ports(2)
    config = local_agent_config(new_topic, group_id, prefix="test.clients.metrics").model_copy(
        update={"metrics_port": metrics_port})
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - {{job_name: tiertwin-local, static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]}}\n")
    checked = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    fleet = SyntheticFleet(n_ues=2, n_cells=2, seed=13, demand_every=1)
    demands = [record for tick in range(3) for kind, record in fleet.step(tick * 10) if kind == "demand"]
    server = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with KafkaSink(settings) as sink, Running(LocalTwinAgent(config, settings)):
            for demand in demands:
                sink.send(config.demands_topic, "Demand", {**demand, "emitted_ns": time.time_ns()},
                          key=demand["ue_id"])
            sink.flush()
            read_topic(config.actions_topic, settings, expect=len(demands), timeout_s=60)
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
            linted = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
            assert linted.returncode == 0, (linted.stdout + linted.stderr).decode()

            query = 'sum(tiertwin_agent_decisions_total{job="tiertwin-local",kind="placement"})'
            url = f"http://127.0.0.1:{prometheus_port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
            value, deadline = None, time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    result = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
                except OSError:
                    result = []    # the server is still starting
                value = float(result[0]["value"][1]) if result else None
                if value == len(demands):
                    break
                time.sleep(0.5)
    finally:
        server.terminate()
        _, log = server.communicate(timeout=30)
    assert value == len(demands), f"Prometheus scraped {value} placements, expected {len(demands)}: {log[-1500:]}"
