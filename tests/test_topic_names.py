"""Topic names: the constants of tiertwin.topics and jobs/ops/topology.yaml list the same topics."""

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


# -- job specs and the lag view consume what the agents consume ---------------------------------------
AGENT_TIERS = ("local", "edge")


def _agent_group_topics(spec) -> list[str]:
    """The topics the spec's agent consumes as a group member, from the agent itself (built as `tiertwin run`
    builds it, with the config the launcher gives it; no Kafka client is made before ``open()``)."""
    from tiertwin.jobs.cli.agents import make_agent

    return make_agent(spec.tier, **spec.effective_config(0)).group_topics()


def _shipped_agent_specs():
    from tiertwin.jobs.ops.launcher import SPECS_DIR, load_spec

    specs = [load_spec(path) for path in sorted(SPECS_DIR.glob("*.yaml"))]
    return [spec for spec in specs if spec.tier in AGENT_TIERS]


def test_each_agent_spec_declares_exactly_what_its_agent_consumes():
    specs = _shipped_agent_specs()
    assert {spec.tier for spec in specs} == set(AGENT_TIERS)
    for spec in specs:
        assert spec.inputs == _agent_group_topics(spec), spec.name


# The config fields naming what each agent produces to (its checkpoints included).
AGENT_OUTPUTS = {"local": ("actions_topic", "summaries_topic", "changelog_topic"),
                 "edge": ("actions_topic", "edge_state_topic", "migrations_topic", "changelog_topic")}


def test_each_agent_spec_declares_the_topics_its_agent_writes_and_the_models_it_loads():
    from tiertwin.jobs.cli.agents import make_agent

    for spec in _shipped_agent_specs():
        agent = make_agent(spec.tier, **spec.effective_config(0))
        assert spec.outputs == [getattr(agent.config, f) for f in AGENT_OUTPUTS[spec.tier]], spec.name
        assert spec.models == list(agent.model_names), spec.name


def test_the_local_spec_includes_the_outcomes_the_local_agent_learns_from():
    local = next(spec for spec in _shipped_agent_specs() if spec.tier == "local")
    assert topics.OUTCOMES in local.inputs


def test_the_lag_view_measures_the_groups_the_specs_declare():
    from tiertwin.jobs.api.twin_view_routes import default_lag_groups

    assert default_lag_groups() == {spec.group_id: spec.inputs for spec in _shipped_agent_specs()
                                    if spec.name in ("local", "edge")}
    assert topics.OUTCOMES in default_lag_groups()["tiertwin-local"]
