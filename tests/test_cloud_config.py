"""Cloud twin pieces that need no broker: options, runners, offset tracking, worker watermarks."""

from __future__ import annotations

import pytest
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.utils.timestamp import Timestamp
from typer.testing import CliRunner

from tiertwin.errors import ConfigError
from tiertwin.connectors.beam_kafka import UNBOUNDED, KafkaOffsetTracker, PartitionOffsets, _WorkerWatermarks
from tiertwin.pipelines.cloud.config import CloudTwinConfig
from tiertwin.pipelines.cloud.runtime import prism_binary, runner_args
from tiertwin.settings import Settings


def test_slide_longer_than_window_is_refused():
    with pytest.raises(ValueError, match="slide_s"):
        CloudTwinConfig(window_s=5, slide_s=10)


def test_missing_prism_binary_points_to_setup(tmp_path):
    with pytest.raises(ConfigError, match="scripts/setup"):
        prism_binary(Settings(home=tmp_path))


def test_prism_runner_args_use_the_home_binary(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "prism").write_bytes(b"")
    args = runner_args("prism", Settings(home=tmp_path), streaming=True, extra=["--job_name=x"])
    assert args == ["--runner=PrismRunner", "--streaming", f"--prism_location={tmp_path}/bin/prism",
                    "--environment_type=LOOPBACK", "--job_name=x"]
    with pytest.raises(ConfigError, match="runner must be one of"):
        runner_args("spark", Settings(home=tmp_path), streaming=False)


def test_open_offset_range_only_checkpoints_and_bounded_range_splits():
    open_tracker = KafkaOffsetTracker(OffsetRange(10, UNBOUNDED))
    assert open_tracker.try_claim(10) and not open_tracker.is_bounded()
    assert open_tracker.try_split(0.5) is None, "a fractional split point of an open range never exists"
    primary, residual = open_tracker.try_split(0)
    assert (primary.stop, residual.start, residual.stop) == (11, 11, UNBOUNDED)
    bounded = KafkaOffsetTracker(OffsetRange(0, 100))
    assert bounded.try_claim(0) and bounded.is_bounded()
    primary, residual = bounded.try_split(0.5)
    assert primary.stop == residual.start and residual.stop == 100
    assert PartitionOffsets().restriction_size(None, OffsetRange(0, UNBOUNDED)) == 1


def test_worker_watermark_is_the_minimum_over_fresh_partitions_of_one_read():
    marks = _WorkerWatermarks(stale_s=60)

    def step(read, key, target):  # a partition's read step, which the runner holds once it ended
        bound = marks.report(read, key, target)
        marks.publish(read, key)  # (until then it counts for its own step only: tests/test_fold_watermarks.py)
        return bound

    assert step("read-1", ("t", 0), Timestamp.of(100)) == Timestamp.of(100)
    assert step("read-1", ("t", 1), Timestamp.of(50)) == Timestamp.of(50)
    assert step("read-1", ("t", 0), Timestamp.of(200)) == Timestamp.of(50), "the slow partition holds"
    assert step("read-2", ("t", 0), Timestamp.of(10)) == Timestamp.of(10), "another read is separate"
    assert step("read-1", ("t", 0), Timestamp.of(150)) == Timestamp.of(50), "own value never goes back"
    assert marks.own("read-1", ("t", 0)) == Timestamp.of(200)
    marks.forget("read-1", ("t", 1))
    assert step("read-1", ("t", 0), Timestamp.of(200)) == Timestamp.of(200)


def test_run_accepts_cloud_beside_the_agent_tiers():
    from tiertwin.jobs.cli.main import app

    result = CliRunner().invoke(app, ["run", "nowhere"])
    assert result.exit_code == 1 and "cloud" in result.output
    help_text = CliRunner().invoke(app, ["run", "--help"]).output
    assert "--window-s" in help_text and "--runner" in help_text


def test_a_job_that_neither_fuses_nor_trains_is_refused():
    with pytest.raises(ValueError, match="fuse and train are both off"):
        CloudTwinConfig(fuse=False, train=False)


def _labels(pipeline) -> set[str]:
    from apache_beam.pipeline import PipelineVisitor

    seen: set[str] = set()

    class Collect(PipelineVisitor):
        def enter_composite_transform(self, node):
            seen.add(node.full_label)

        def visit_transform(self, node):
            seen.add(node.full_label)

    pipeline.visit(Collect())
    return seen


def test_the_training_job_beside_a_fusing_job_only_trains_and_leaves_dead_letters_to_it():
    import apache_beam as beam

    from tiertwin.pipelines.cloud.job import CloudTwin, write_outputs

    def build(config: CloudTwinConfig):
        pipeline = beam.Pipeline()  # built, never run
        records = pipeline | "Records" >> beam.Create([])
        letters = pipeline | "Letters" >> beam.Create([])
        outputs = records | "CloudTwin" >> CloudTwin(config, Settings())
        write_outputs(outputs, letters, config, Settings())
        return outputs, _labels(pipeline)

    both, both_labels = build(CloudTwinConfig())
    assert set(both) == {"snapshots", "model_updates"}
    assert "CloudTwin/Fuse" in both_labels and "DeadLettersToKafka" in both_labels
    trainer, trainer_labels = build(CloudTwinConfig(fuse=False, dead_letter_topic=None))
    assert set(trainer) == {"model_updates"}
    assert "CloudTwin/Train" in trainer_labels
    assert not {label for label in trainer_labels if label.startswith(("CloudTwin/Fuse", "Snapshots", "DeadLetters"))}


def test_model_updates_leave_the_trainer_as_a_pcollection_the_pipeline_writes():
    import apache_beam as beam

    from tiertwin.pipelines.cloud.job import CloudTwin, write_outputs

    def labels(config: CloudTwinConfig):
        pipeline = beam.Pipeline()  # built, never run
        outputs = pipeline | beam.Create([]) | "CloudTwin" >> CloudTwin(config, Settings())
        write_outputs(outputs, pipeline | "Letters" >> beam.Create([]), config, Settings())
        return _labels(pipeline)

    assert "ModelUpdatesToKafka/Produce" in labels(CloudTwinConfig(fuse=False))
    assert not {label for label in labels(CloudTwinConfig(fuse=False, models_topic=None))
                if label.startswith("ModelUpdates")}
    assert not {label for label in labels(CloudTwinConfig(train=False)) if label.startswith("ModelUpdates")}


def test_the_training_job_reads_only_topics_whose_records_train_a_model():
    config = CloudTwinConfig(model_names=("handover-sinr",))
    assert config.training_input_topics() == ("tiertwin.edge.summaries",)
    unknown = CloudTwinConfig(input_topics=("mine.a", "tiertwin.cloud.edge-state"))
    assert unknown.training_input_topics() == ("mine.a",)  # not in the topology: it may carry anything
    assert CloudTwinConfig(training_topics=("x",)).training_input_topics() == ("x",)
    with pytest.raises(ConfigError, match="no input topic carries them"):
        CloudTwinConfig(input_topics=("tiertwin.cloud.edge-state",)).training_input_topics()


def test_every_trainable_model_learns_from_fused_streams_and_is_trained_by_default():
    from tiertwin.pipelines.cloud.streams import STREAMS
    from tiertwin.pipelines.cloud.trainable import TRAINABLE

    for name, model in TRAINABLE.items():
        assert model.name == name and model.error_unit
        assert model.inputs and set(model.inputs) <= set(STREAMS.values())
        assert model.examples({}) == []  # a window without its streams' records gives no examples
    assert CloudTwinConfig().model_names == tuple(TRAINABLE)
    with pytest.raises(ValueError, match="trainable: " + ", ".join(TRAINABLE)):
        CloudTwinConfig(model_names=("no-such-model",))


def test_the_loopback_worker_collects_the_young_generation_less_often(monkeypatch):
    # Lost once in a move of the module: the heap was frozen but collected as often as before.
    import gc

    from tiertwin.pipelines.cloud import runtime

    before = gc.get_threshold()
    monkeypatch.setattr(gc, "freeze", lambda: None)
    try:
        runtime._tune_gc_for_worker()
        assert gc.get_threshold() == (20_000, 50, 50)
    finally:
        gc.set_threshold(*before)
