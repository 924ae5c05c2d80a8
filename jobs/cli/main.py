"""The ``tiertwin`` command: broker, topics, demos, agents and benchmarks.

Every tiertwin error is printed as one line (``error: …``) with exit code 1;
nothing an operator can cause ends in a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from tiertwin.errors import TiertwinError
from tiertwin.jobs.api import twin_api
from tiertwin.jobs.bench import agents as bench_agents
from tiertwin.jobs.bench import chaos
from tiertwin.jobs.bench import cloud as bench_cloud
from tiertwin.jobs.bench import fidelity as bench_fidelity
from tiertwin.jobs.bench import local as bench_local
from tiertwin.jobs.bench import models as bench_models
from tiertwin.jobs.bench import replay as bench_replay
from tiertwin.jobs.bench import scale as bench_scale
from tiertwin.jobs.bench import sim as bench_sim
from tiertwin.jobs.bench import soak
from tiertwin.jobs.bench import tiers as bench_tiers
from tiertwin.jobs.bench import view as bench_view
from tiertwin.jobs.cli import agents, cloud, deploy, experiments, ops, sim
from tiertwin.jobs.cli.models import models_app
from tiertwin.jobs.cli.common import console, one_line_errors
from tiertwin.settings import Settings

app = typer.Typer(help="tiertwin: a local / edge / cloud digital twin for 6G mobile-metaverse networks.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
broker_app = typer.Typer(help="The managed local Kafka broker (Apache Kafka 4.x from Maven Central).",
                         no_args_is_help=True)
topics_app = typer.Typer(help="The topic topology (jobs/ops/topology.yaml).", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks; each writes bench-results/<name>.json.", no_args_is_help=True)


# -- broker ------------------------------------------------------------------------------------
@broker_app.command("install")
@one_line_errors
def broker_install(force: bool = typer.Option(False, help="Resolve the jars again even if present.")):
    """Resolve kafka_2.13, kafka-tools and a log4j2 binding from Maven Central (once)."""
    from tiertwin.connectors.broker import ManagedBroker

    broker = ManagedBroker()
    libs = broker.install(force=force)
    console.print(f"Apache Kafka {broker.kafka_version()} jars in {libs}")


@broker_app.command("start")
@one_line_errors
def broker_start(timeout: float = typer.Option(90.0, help="Seconds to wait for the broker to be ready."),
                 nodes: int = typer.Option(None, "--nodes", min=1, max=9,
                                           help="KRaft nodes (broker + controller each) on this machine, for a new "
                                                "TIERTWIN_HOME: 1 (the default) or a cluster, e.g. 3 (a 3-voter quorum; "
                                                "node i on TIERTWIN_BROKER_PORT/TIERTWIN_CONTROLLER_PORT + 2(i-1)). "
                                                "A home keeps the count it was first started with.")):
    """Install if needed, format KRaft storage once, start the broker (every node of a cluster) and wait until
    it serves consumer groups."""
    from tiertwin.connectors.broker import ManagedBroker

    broker = ManagedBroker(nodes=nodes)
    pid = broker.start(timeout_s=timeout)
    s = broker.settings
    if broker.node_count == 1:
        console.print(f"Kafka {broker.kafka_version()} ready on {s.bootstrap}, serving consumer groups "
                      f"(pid {pid}, logs {broker.nodes[0].logs})")
        return
    console.print(f"Kafka {broker.kafka_version()} cluster of {broker.node_count} nodes ready, serving consumer groups")
    for node in broker.nodes:
        console.print(f"  node {node.node_id}: {s.broker_host}:{node.port} (controller {node.controller_port}), "
                      f"pid {node.pid()}, logs {node.logs}")
    console.print(f"clients: TIERTWIN_BOOTSTRAP_SERVERS={s.bootstrap}")


@broker_app.command("stop")
@one_line_errors
def broker_stop():
    """Stop the managed broker, every node of a cluster, cleanly (SIGTERM, then SIGKILL after 30 s)."""
    from tiertwin.connectors.broker import ManagedBroker

    console.print("stopped" if ManagedBroker().stop() else "broker was not running")


@broker_app.command("status")
@one_line_errors
def broker_status():
    """Print the broker's version, nodes, under-replicated partitions and topics; exit 1 if it is not reachable."""
    from tiertwin.connectors.broker import ManagedBroker
    from tiertwin.connectors.kafka import admin_client
    from tiertwin.connectors.readiness import wait_out
    from tiertwin.connectors.topics import partition_health

    broker = ManagedBroker()
    settings = broker.client_settings()
    admin = admin_client(settings)
    try:  # a node killed a moment ago is still listed until it is fenced: wait out refused connections
        cluster = wait_out(admin.describe_cluster, "a description of the cluster", settings)
        api = admin._manager.broker_version  # kafka-python keeps the probed version here
        topics = sorted(t for t in wait_out(admin.list_topics, "the list of topics", settings)
                        if not t.startswith("__"))
    finally:
        admin.close()
    health = partition_health(settings)
    version = broker.kafka_version() if broker.paths.libs.exists() else "unknown (not the managed broker)"
    console.print(f"Apache Kafka {version} (protocol API {'.'.join(map(str, api)) if api else '?'}), "
                  f"cluster {cluster.get('cluster_id')}, controller {cluster.get('controller_id')}")
    listed = {b.get("broker_id"): b for b in cluster.get("brokers", [])}
    managed = broker.pids() if broker.formatted() else {}
    for node_id in sorted(set(listed) | set(managed)):
        b, pid = listed.get(node_id), managed.get(node_id)
        where = f"{b.get('host')}:{b.get('port')}" if b else "-"
        state = "not registered" if b is None else "fenced" if b.get("is_fenced") else "serving"
        process = f"pid {pid}" if pid else "not running" if node_id in managed else "not started by tiertwin"
        console.print(f"  node {node_id}: {where} {state}, {process}")
    console.print(f"  security: {broker.settings.broker_security}")
    under, offline = health["under_replicated"], health["offline"]
    console.print(f"  partitions: {health['partitions']}, under-replicated: {len(under)}, offline: {len(offline)}")
    for p in (under + [p for p in offline if p not in under])[:20]:
        console.print(f"    {p['topic']}-{p['partition']}: leader {p['leader']}, replicas {p['replicas']}, isr {p['isr']}")
    if len(under) + len(offline) > 20:
        console.print("    ...")
    console.print(f"  topics ({len(topics)}): {', '.join(topics) if topics else '-'}")


@broker_app.command("secure")
@one_line_errors
def broker_secure():
    """Create a SCRAM principal per tier and ACLs derived from the topology (needs TIERTWIN_BROKER_SECURITY=scram)."""
    from tiertwin.connectors.broker import ManagedBroker
    from tiertwin.connectors.security import acl_plan, apply_security
    from tiertwin.connectors.topics import load_topology

    topology = load_topology()
    files = apply_security(ManagedBroker(), topology)
    plan = acl_plan(topology)
    table = Table("principal", "password file", "writes", "reads")
    for principal, path in files.items():
        table.add_row(principal, str(path), str(len(plan[principal]["write"])), str(len(plan[principal]["read"])))
    console.print(table)
    console.print("clients: TIERTWIN_SASL_USERNAME=<principal> TIERTWIN_SASL_PASSWORD_FILE=<password file>")


# -- topics ------------------------------------------------------------------------------------
@topics_app.command("apply")
@one_line_errors
def topics_apply(file: Path = typer.Option(None, "--file", "-f", help="Topology file (default: jobs/ops/topology.yaml).")):
    """Create missing topics and bring existing ones to the topology's partitions and retention; replication
    factor min(3, brokers), min.insync.replicas 2 where there are 3 replicas."""
    from tiertwin.connectors.broker import ManagedBroker
    from tiertwin.connectors.topics import apply_topology, load_topology

    broker = ManagedBroker()
    brokers = broker.node_count if broker.formatted() else None  # else: what the cluster reports
    for name, action in apply_topology(load_topology(file), broker.client_settings(), brokers=brokers).items():
        console.print(f"{name:36} {action}")


@topics_app.command("list")
@one_line_errors
def topics_list():
    """List the broker's topics with partitions, retention and cleanup policy."""
    from tiertwin.connectors.topics import describe_topics, load_topology

    declared = load_topology().by_name()
    table = Table("topic", "partitions", "retention.ms", "cleanup", "schema", "declared")
    from tiertwin.connectors.broker import ManagedBroker

    for t in describe_topics(ManagedBroker().client_settings()):
        spec = declared.get(t["name"])
        table.add_row(t["name"], str(t["partitions"]), str(t["retention.ms"]), str(t["cleanup.policy"]),
                      (spec.schema_ or "-") if spec else "-", "yes" if spec else "no")
    console.print(table)


# -- demo --------------------------------------------------------------------------------------
@app.command("roundtrip")
@one_line_errors
def roundtrip(count: int = typer.Option(100, help="Records per schema.")):
    """Produce and consume every Avro contract through Kafka and print a summary."""
    from tiertwin.jobs.bench.roundtrip import run_roundtrip

    table = Table("schema", "topic", "sent", "received", "intact", "p50 ms", "p99 ms")
    for row in run_roundtrip(count):
        table.add_row(row.schema, row.topic, str(row.sent), str(row.received), "yes" if row.intact else "NO",
                      f"{row.p50_ms:.2f}", f"{row.p99_ms:.2f}")
    console.print(table)


@app.command("demo")
@one_line_errors
def demo(seconds: float = typer.Option(60.0, help="How long the simulated network runs (wall clock)."),
         ues: int = typer.Option(None, help="Number of UEs (default: the scenario's)."),
         cloud: bool = typer.Option(True, help="Also run the cloud job (Beam on Prism)."),
         api: bool = typer.Option(False, help="Also serve the twin API and live view on :8080 during the demo."),
         seed: int = typer.Option(14, help="The simulated world's seed (the no-control baseline runs the same world)."),
         local_twin: str = typer.Option("device", "--local-twin",
                                        help="device: the local twins run in the simulator, on the UEs; service: "
                                             "deploy the local-twin service and place over Kafka."),
         summary_json: Path = typer.Option(None, "--summary-json",
                                           help="Also write the summary as JSON to this file (for scripts and CI).")):
    """The live three-tier demo: simulator, local twins, edge and cloud jobs on the managed broker, then a summary
    beside no control on the same seed."""
    import json

    from tiertwin.jobs.ops.demo import run_demo, summary_tables

    summary = run_demo(seconds, ues, with_cloud=cloud, with_api=api, on_progress=console.print, seed=seed,
                       local_twin=local_twin)
    for table in summary_tables(summary):
        console.print(table)
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary.as_dict(), indent=2, allow_nan=False, default=str) + "\n")
    if not summary.decisions:
        raise TiertwinError(f"no decisions were made; see the job logs under {Settings.from_env().home / 'jobs'}/")


# The tree. Every area declares its commands beside the code they drive; here they are added, in
# the order `tiertwin --help` lists them.
app.add_typer(ops.commands)
app.add_typer(twin_api.commands)
app.add_typer(deploy.commands)
app.add_typer(chaos.commands)
app.add_typer(agents.commands)
app.add_typer(sim.commands)
app.add_typer(cloud.commands)
app.add_typer(experiments.commands)
app.add_typer(broker_app, name="broker")
app.add_typer(topics_app, name="topics")
app.add_typer(bench_app, name="bench")
app.add_typer(models_app, name="models")

bench_app.add_typer(bench_replay.bench_commands)
bench_app.add_typer(bench_view.bench_commands)
bench_app.add_typer(soak.bench_commands)
bench_app.add_typer(bench_agents.bench_commands)
bench_app.add_typer(bench_sim.bench_commands)
bench_app.add_typer(bench_cloud.bench_commands)
bench_app.add_typer(bench_tiers.bench_commands)
bench_app.add_typer(bench_local.bench_commands)
bench_app.add_typer(chaos.bench_commands)
bench_app.add_typer(bench_models.bench_commands)
bench_app.add_typer(bench_fidelity.bench_commands)
bench_app.add_typer(bench_scale.bench_commands)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
