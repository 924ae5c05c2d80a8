"""The cloud's side of the model lifecycle (#15): on a fresh install its first version is judged against the
shipped model and, if it wins, a twin promotes it by itself; the allocation bandits are trained globally too."""

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


def _streams(p, records: list[tuple[str, dict]]) -> dict:
    by_schema: dict[str, list] = {"Decision": [], "Outcome": [], "LocalSummary": [], "EdgeState": []}
    for schema, r in records:
        ts = r.get("ts_ms") or r.get("source_ts_ms") or r.get("window_end_ms")
        by_schema[schema].append(TimestampedValue(r, ts / 1000))
    names = {"Decision": DECISIONS, "Outcome": OUTCOMES, "LocalSummary": SUMMARIES, "EdgeState": EDGE_STATES}
    return {names[s]: p | f"Create {s}" >> beam.Create(rs) for s, rs in by_schema.items()}


def test_fresh_install_the_first_cloud_version_is_judged_against_the_shipped_model_and_a_twin_takes_it_if_it_wins():
    from tiertwin.jobs.bench.cloud import tier_traffic
    from tiertwin.pipelines.cloud.trainable import training_examples
    from tiertwin.pipelines.local_twin import LocalTwin

    records = list(tier_traffic(T0, 8_000, rate_per_s=400, cells=4, ues=16, seed=21))
    config = CloudTwinConfig(model_names=("demand-latency",), train_window_s=2, min_examples=50, models_topic=None,
                             snapshots_topic=None, early_firing_s=None)

    def check(published):
        assert published, "the trainer published nothing better than the shipped model"
        first = min(published, key=lambda u: u["version"])
        assert first["version"] == PRETRAINED_VERSION + 1 and first["metrics"]["live_version"] == PRETRAINED_VERSION
        assert first["metrics"]["mae_ms"] < first["metrics"]["live_mae_ms"], "judged against the shipped model"
        # A twin running the shipped model shadows it, scores it on later outcomes of the same world, promotes it.
        twin = LocalTwin()
        assert twin.model_version == PRETRAINED_VERSION and twin.swap_model(first)
        later = list(tier_traffic(T0 + 60_000, 8_000, rate_per_s=400, cells=4, ues=16, seed=22))
        examples = training_examples([r for s, r in later if s == "Decision"], [r for s, r in later if s == "Outcome"])
        for x, y in examples:
            twin.slot.learn(x, y)
            if twin.slot.shadow is None:
                break
        assert twin.model_version == first["version"], twin.slot.status()
        assert twin.slot.events[-1]["event"] == "promoted"

    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        assert_that(_streams(p, records) | TrainGlobalModels(config), check)
