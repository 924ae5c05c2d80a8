"""Every kafka-python client tiertwin builds takes the shared config (`kafka_config`), so none drops SASL.

A client built by hand beside it connects anonymously: against a SCRAM broker it is refused,
and nothing but this check notices before the tier is deployed with credentials.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_DIRS = ("tiertwin", "schemas", "connectors", "pipelines", "jobs")
CLIENTS = {"KafkaConsumer", "KafkaProducer", "KafkaAdminClient"}


def _client_calls(path: Path):
    """``(line, client, enclosing function source)`` of every kafka-python client built in ``path``."""
    source = path.read_text()
    tree = ast.parse(source)
    found = []

    def visit(node, scope):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scope = node
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name in CLIENTS:
                found.append((node.lineno, name, ast.get_source_segment(source, scope) if scope else source))
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(tree, None)
    return found


def _project_files():
    return sorted(p for d in PROJECT_DIRS for p in (ROOT / d).rglob("*.py"))


def test_the_check_finds_the_clients_it_guards():
    calls = {(p.relative_to(ROOT).as_posix(), name) for p in _project_files() for _, name, _ in _client_calls(p)}
    assert {("connectors/kafka.py", "KafkaProducer"), ("connectors/kafka.py", "KafkaConsumer"),
            ("connectors/kafka.py", "KafkaAdminClient")} <= calls


@pytest.mark.parametrize("path", _project_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_kafka_client_is_built_with_the_shared_config(path):
    bare = [f"{path.relative_to(ROOT)}:{line} {name}(...)" for line, name, scope in _client_calls(path)
            if "kafka_config(" not in scope]
    assert not bare, f"built without tiertwin.connectors.kafka.kafka_config (SASL would be dropped): {bare}"


def test_every_producer_waits_for_every_in_sync_replica():
    """On a cluster (``tiertwin broker start --nodes 3``, min.insync.replicas 2) a record is safe once
    ``acks=all`` acknowledged it: every kafka-python producer tiertwin builds says so itself, rather than
    leaning on the client's default."""
    producers = [(p.relative_to(ROOT).as_posix(), line, scope) for p in _project_files()
                 for line, name, scope in _client_calls(p) if name == "KafkaProducer"]
    assert producers
    weak = [f"{path}:{line}" for path, line, scope in producers
            if '"acks": "all"' not in scope and 'acks="all"' not in scope]
    assert not weak, f"KafkaProducer built without acks='all': {weak}"
