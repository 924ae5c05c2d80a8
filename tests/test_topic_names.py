"""Topic names: the constants of tiertwin.topics and jobs/topology.yaml list the same topics."""

from tiertwin import topics
from tiertwin.connectors.topics import load_topology


def _constants() -> dict[str, str]:
    return {name: value for name, value in vars(topics).items() if name.isupper() and isinstance(value, str)}


def test_every_constant_is_a_declared_topic_and_every_declared_topic_has_a_constant():
    declared = [t.name for t in load_topology().topics]
    constants = _constants()
    assert sorted(set(constants.values()) - set(declared)) == []
    assert sorted(set(declared) - set(constants.values())) == []
    assert len(set(constants.values())) == len(constants), "two constants name the same topic"


def test_all_lists_the_topology_in_its_order():
    assert list(topics.ALL) == [t.name for t in load_topology().topics]
