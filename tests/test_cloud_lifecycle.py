"""The cloud trains the allocation bandits globally (#15): from the edge's allocation decisions and the
outcomes measured in their cells, judged against the shipped allocator, through the same lifecycle."""

from __future__ import annotations

import random

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import TimestampedValue

from tiertwin.pipelines.cloud.config import CloudTwinConfig
from tiertwin.pipelines.cloud.streams import DECISIONS, EDGE_STATES, OUTCOMES, SUMMARIES
from tiertwin.pipelines.cloud.training import TrainGlobalModels
from tiertwin.pipelines.models import load_update
from tiertwin.pipelines.pretrain import PRETRAINED_VERSION
from tiertwin.schemas.examples import example

T0 = 1_767_225_600_000
SHARES = (0.25, 0.5, 0.75, 1.0)


def allocation_traffic(seconds: int = 8, cells: int = 4, seed: int = 3) -> tuple[list, list]:
    """Every 200 ms per cell a prb_share allocation; demand outcomes between them meet their deadline with a
    probability that rises with the share (a world unlike the one the shipped allocator was trained in)."""
    rng = random.Random(seed)
    decisions, outcomes = [], []
    for step in range(seconds * 5):
        for cell in range(cells):
            ts = T0 + step * 200
            share, load = rng.choice(SHARES), rng.random()
            context = {"x_bias": 1.0, "x_prb_utilization": load, "x_mec_utilization": 0.5, "x_ues": 0.4,
                       "x_sinr": 0.5, "x_mec_backlog_s": 0.1}
            decisions.append(example("Decision", decision_id=f"edge/prb_share/{cell}/{step}", tier="edge",
                                     kind="prb_share", cell_id=cell, ue_id=None, subject_id=None, target="",
                                     model_name="prb-share", parameters={"share": share, **context},
                                     source_ts_ms=ts))
            for i in range(6):
                met = rng.random() < 0.2 + 0.8 * share * (1 - 0.5 * load)
                outcomes.append(example("Outcome", outcome_id=f"o/{cell}/{step}/{i}", ts_ms=ts + 20 + 30 * i,
                                        cell_id=cell, decision_id=None, deadline_met=met))
    return decisions, outcomes


def test_the_prb_share_bandit_is_trained_globally_and_judged_against_the_shipped_one():
    decisions, outcomes = allocation_traffic()
    config = CloudTwinConfig(model_names=("prb-share",), train_window_s=2, min_examples=30, models_topic=None,
                             snapshots_topic=None, early_firing_s=None)

    def check(updates):
        assert updates, "no prb-share version published"
        updates = sorted(updates, key=lambda u: u["version"])
        assert {u["model_name"] for u in updates} == {"prb-share"}
        assert updates[0]["version"] == PRETRAINED_VERSION + 1, "the first version follows the shipped one"
        assert updates[0]["metrics"]["live_version"] == PRETRAINED_VERSION
        for u in updates:
            assert u["metrics"]["mae_reward"] < u["metrics"]["live_mae_reward"]
        allocator = load_update(updates[-1])    # signed with the deployment key, digest intact
        assert allocator.n_updates > 0

    def stamped(records, field):
        return [TimestampedValue(r, r[field] / 1000) for r in records]

    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        streams = {
            DECISIONS: p | "Decisions" >> beam.Create(stamped(decisions, "source_ts_ms")),
            OUTCOMES: p | "Outcomes" >> beam.Create(stamped(outcomes, "ts_ms")),
            SUMMARIES: p | "Summaries" >> beam.Create([]),
            EDGE_STATES: p | "EdgeStates" >> beam.Create([]),
        }
        assert_that(streams | TrainGlobalModels(config), check)
