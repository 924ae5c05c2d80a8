"""What the cloud twin fuses, how it windows, what it trains and where it writes: :class:`CloudTwinConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tiertwin import topics
from tiertwin.connectors.kafka import DEAD_LETTER_TOPIC
from tiertwin.errors import ConfigError
from tiertwin.pipelines.cloud.trainable import TRAINABLE, training_schemas
from tiertwin.pipelines.models import MODELS_TOPIC

if TYPE_CHECKING:  # Beam is imported where windows are made, so runtime code can read a config without it
    from apache_beam.transforms import trigger, window

INPUT_TOPICS = (topics.SUMMARIES, topics.EDGE_STATE, *topics.ACTIONS, topics.OUTCOMES)
SNAPSHOTS_TOPIC = topics.SNAPSHOTS


class CloudTwinConfig(BaseModel):
    """What the cloud twin fuses, how it windows, what it trains and where it writes.

    >>> CloudTwinConfig(window_s=10, slide_s=5).windowing()
    <apache_beam.transforms.window.SlidingWindows object at ...>
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_s: float = Field(10.0, gt=0, description="Window size (event time).")
    slide_s: float | None = Field(None, gt=0, description="Slide period; None = fixed windows.")
    allowed_lateness_s: float = Field(30.0, ge=0, description="How long a window accepts late records.")
    # Whole seconds: Beam's portable trigger proto carries this delay in ms but reads it back as s.
    early_firing_s: int | None = Field(2, ge=1, description="Early pane every N s of processing time; None = none.")
    input_topics: tuple[str, ...] = INPUT_TOPICS
    snapshots_topic: str | None = SNAPSHOTS_TOPIC
    snapshots_dir: Path | None = None
    dead_letter_topic: str | None = Field(DEAD_LETTER_TOPIC, description="None: not written by this job (another "
                                                                       "job reading the same topics writes them).")
    models_topic: str | None = MODELS_TOPIC
    batches: bool = Field(True, description="Records cross the pipeline as batches (one per fetch, partition "
                          "and contract, decoded into Arrow columns) instead of one element each.")
    fuse: bool = Field(True, description="Fuse the tiers into snapshots.")
    fold_in_read: bool = Field(True, description="A job that fuses and does not train folds its batches into "
                               "partial aggregates inside the Kafka read (less CPU per record); false: they cross "
                               "to fusion as batches.")
    train: bool = Field(True, description="Train the global models and publish the better ones.")
    train_in_own_process: bool = Field(True, description="Where the SDK worker runs in the launching process "
                                       "(LOOPBACK), run training as a second streaming job in a child process.")
    training_topics: tuple[str, ...] | None = Field(None, description="What that training job reads; None: the "
                                                    "input topics, less those the topology gives a schema training "
                                                    "does not use.")
    train_window_s: float = Field(10.0, gt=0, description="Training window (fixed, event time).")
    model_names: tuple[str, ...] = Field(tuple(TRAINABLE), description="Which of the trainable models to train.")
    min_examples: int = Field(50, ge=1, description="Examples learned since the last publish before a candidate is judged.")
    min_improvement: float = Field(0.0, ge=0, lt=1, description="Relative MAE gain over the live model needed to publish.")
    eval_examples: int = Field(2000, ge=1, description="Examples of a window (evenly spaced) the candidate and live "
                                                       "models are judged on and the prequential MAE is taken over.")
    start: str = Field("latest", pattern="^(earliest|latest)$")
    max_out_of_order_ms: int = Field(200, ge=0, description="Watermark = newest event time read minus this.")
    idle_after_s: float = Field(0.5, gt=0, description="A partition this long without records is idle.")
    read_interval_s: float = Field(0.3, gt=0, description="A caught-up partition is read again after this long "
                                                           "(every read is a bundle, which costs CPU on Prism).")
    read_max_s: float = Field(0.1, gt=0, description="A partition with a backlog hands its records on this often.")
    kafka_client: str = Field("librdkafka", pattern="^(librdkafka|kafka-python)$",
                              description="The client the Kafka read fetches with (librdkafka: confluent-kafka).")
    consumer_group: str | None = Field("tiertwin-cloud-twin", min_length=1, description="The Kafka consumer group "
                                       "the job commits its resume offsets to and resumes from (the training job "
                                       "beside it: '<group>-training'); None: no commits, start at `start`.")
    resume_margin_s: float = Field(10.0, ge=0, description="Event time a snapshot may take to be written after the "
                                   "watermark closed its window: commits stay this far further behind.")
    emitted_before_ms: int | None = Field(None, description="Set at start-up from the group's commits: windows "
                                          "starting before it were emitted before a restart and are not again.")
    sdk_workers: int = Field(1, ge=1, le=16, description="SDK worker processes the fusing job reads and aggregates "
                             "in, each with every n-th input partition (Prism: one worker per environment).")

    @model_validator(mode="after")
    def _trainable_models(self):
        unknown = [name for name in self.model_names if name not in TRAINABLE]
        if unknown:
            raise ValueError(f"model_names: cannot train {unknown}; trainable: {', '.join(TRAINABLE)}")
        return self

    @model_validator(mode="after")
    def _does_something(self):
        if not (self.fuse or self.train):
            raise ValueError("fuse and train are both off: the job would do nothing")
        return self

    @model_validator(mode="after")
    def _slide_within_window(self):
        if self.slide_s is not None and self.slide_s > self.window_s:
            raise ValueError(f"slide_s={self.slide_s} is larger than window_s={self.window_s}")
        return self

    def training_input_topics(self) -> tuple[str, ...]:
        """The input topics a training-only job needs (EdgeState, for one, trains no model).

        >>> CloudTwinConfig().training_input_topics()  # doctest: +NORMALIZE_WHITESPACE
        ('tiertwin.edge.summaries', 'tiertwin.actions.local', 'tiertwin.actions.edge', 'tiertwin.actions.cloud',
         'tiertwin.outcomes')
        """
        if self.training_topics is not None:
            return self.training_topics
        from tiertwin.connectors.topics import load_topology

        used = training_schemas(self.model_names)
        schemas = {t.name: t.schema_ for t in load_topology().topics}
        topics = tuple(t for t in self.input_topics if schemas.get(t) is None or schemas[t] in used)
        if not topics:
            raise ConfigError(f"training {', '.join(self.model_names)} needs {', '.join(sorted(used))} records; "
                              f"no input topic carries them")
        return topics

    def resume_policy(self):
        """Where the read commits and how far behind its watermark (None: ``consumer_group`` is None).

        The replay point is aligned on the fusion windows (the training windows when the job only trains);
        a job that does both holds back by the longer training window too.

        >>> CloudTwinConfig(window_s=10, allowed_lateness_s=30, resume_margin_s=10).resume_policy().replay_from(100_000)
        60000
        """
        from tiertwin.connectors.beam_resume import ResumePolicy

        if self.consumer_group is None:
            return None
        window_s = self.window_s if self.fuse else self.train_window_s
        period_s = (self.slide_s or self.window_s) if self.fuse else self.train_window_s
        margin_s = self.resume_margin_s + (max(0.0, self.train_window_s - window_s) if self.train else 0.0)
        return ResumePolicy(self.consumer_group, window_ms=round(window_s * 1000), period_ms=round(period_s * 1000),
                            lateness_ms=round(self.allowed_lateness_s * 1000), margin_ms=round(margin_s * 1000))

    def windowing(self) -> window.WindowFn:
        from apache_beam.transforms import window

        if self.slide_s is None:
            return window.FixedWindows(self.window_s)
        return window.SlidingWindows(self.window_s, self.slide_s)

    def trigger(self) -> trigger.TriggerFn:
        from apache_beam.transforms import trigger

        if not self.early_firing_s and not self.allowed_lateness_s:
            # Nothing to fire but the on-time pane: the default trigger, which batch runners
            # execute natively instead of through the (slow) general Python trigger driver.
            return trigger.DefaultTrigger()
        early = trigger.AfterProcessingTime(self.early_firing_s) if self.early_firing_s else None
        return trigger.AfterWatermark(early=trigger.Repeatedly(early) if early else None,
                                      late=trigger.AfterCount(1))
