"""The managed broker's layout, without starting Kafka: one node keeps the files of every older home,
a cluster gets a folder, ports and a static quorum per node, and a home keeps its node count.
(The real 3-node cluster runs in ``tests/test_cluster.py``, ``-m cluster``.)"""

from __future__ import annotations

import json

import pytest

from tiertwin.connectors.broker import ManagedBroker
from tiertwin.errors import BrokerSetupError
from tiertwin.settings import Settings


def _props(path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def test_a_single_node_keeps_its_files_in_kafka(tmp_path):
    broker = ManagedBroker(Settings(home=tmp_path))
    broker.write_config()
    (node,) = broker.nodes
    assert node.root == tmp_path / "kafka" and node.config == tmp_path / "kafka" / "server.properties"
    assert not broker.paths.layout.exists()
    props = _props(node.config)
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:9093" and "controller.quorum.voters" not in props
    assert props["offsets.topic.replication.factor"] == "1" and props["default.replication.factor"] == "1"
    assert broker.settings.bootstrap == "127.0.0.1:9092"


def test_three_nodes_get_their_own_folder_ports_and_one_quorum(tmp_path):
    broker = ManagedBroker(Settings(home=tmp_path, broker_port=19092, controller_port=19093), nodes=3)
    broker.write_config()
    assert [(n.node_id, n.port, n.controller_port) for n in broker.nodes] == \
        [(1, 19092, 19093), (2, 19094, 19095), (3, 19096, 19097)]
    assert broker.settings.bootstrap == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    for node in broker.nodes:
        props = _props(node.config)
        assert node.root == tmp_path / "kafka" / f"node-{node.node_id}"
        assert props["node.id"] == str(node.node_id) and props["log.dirs"] == str(node.data)
        assert props["controller.quorum.voters"] == "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
        assert props["listeners"] == f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
        assert props["offsets.topic.replication.factor"] == "3" and props["transaction.state.log.min.isr"] == "2"
    assert len(json.loads(broker.paths.layout.read_text())["nodes"]) == 3

    # Later commands find the cluster from its layout, whatever the environment's ports say.
    again = ManagedBroker(Settings(home=tmp_path))
    assert again.node_count == 3 and again.replication_factor == 3
    assert again.settings.bootstrap == broker.settings.bootstrap
    with pytest.raises(BrokerSetupError, match="3 node"):
        ManagedBroker(Settings(home=tmp_path), nodes=1).start()


def test_a_cluster_has_no_link_emulation_listeners(tmp_path):
    with pytest.raises(BrokerSetupError, match="single-node"):
        ManagedBroker(Settings(home=tmp_path), nodes=3, extra_listeners={"EDGE": (1, 2)})


def test_scram_secures_every_node(tmp_path):
    broker = ManagedBroker(Settings(home=tmp_path, broker_security="scram"), nodes=3)
    broker.write_config()
    for node in broker.nodes:
        props = _props(node.config)
        assert props["listeners"].startswith(f"SASL_PLAINTEXT://127.0.0.1:{node.port},")
        assert props["sasl.mechanism.controller.protocol"] == "PLAIN" and props["super.users"] == "User:admin"
        assert props["controller.quorum.voters"].count("@") == 3
