"""Global training: placement decisions joined with their outcomes, and each UE's consecutive summaries,
learned window by window (in event-time order) by one stateful trainer per model.

**Training examples** are placement decisions joined with the outcome that measured
them in the same training window: ``x = parameters_to_features(decision.parameters)``
plus ``x["tier"] = decision.target``, ``y = outcome.latency_ms``. A pair split by a
window boundary (decision at the very end, outcome just after) is not learned from;
with 10 s windows and latencies of tens of ms that is well under 1 % of the pairs.
"""

from __future__ import annotations

import copy
import pickle
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from tiertwin.pipelines.cloud.config import CloudTwinConfig
from tiertwin.pipelines.cloud.trainable import BATCH_PROJECTIONS, TRAINABLE
from tiertwin.pipelines.models import load_update, model_update, newest_verified
from tiertwin.schemas.batches import RecordBatch, event_micros
from tiertwin.settings import Settings

def mean_absolute_error(model, examples: list[tuple[dict, float]]) -> float:
    """MAE of ``model`` on ``examples`` without learning (an untrained model's None counts as 0)."""
    return sum(abs((model.predict_one(x) or 0.0) - y) for x, y in examples) / len(examples)


@dataclass
class Batch:
    """The training examples of one window, pickled once.

    A batch waits in Beam state until the watermark passes its window; as one bytes
    value it is stored and read back without walking (and sizing, for the state cache)
    every example dict.

    >>> Batch.of(0, 1000, [({"rtt_ms": 8.0}, 13.25)]).examples()
    [({'rtt_ms': 8.0}, 13.25)]
    """

    start_ms: int
    end_ms: int
    pickled_examples: bytes

    @classmethod
    def of(cls, start_ms: int, end_ms: int, examples: list) -> "Batch":
        return cls(start_ms, end_ms, pickle.dumps(examples, protocol=pickle.HIGHEST_PROTOCOL))

    def examples(self) -> list:
        return pickle.loads(self.pickled_examples)


@dataclass
class TrainerState:
    """What the global trainer of one model keeps between windows (in Beam state)."""

    name: str
    candidate: Any
    live_model: Any
    live_version: int = 0
    trained_on: int = 0
    learned_since_publish: int = 0
    first_window_start_ms: int | None = None
    prequential_mae: float = float("nan")


class _TrainModel(beam.DoFn):
    """Stateful trainer of one global model (key = model name), windows taken in event-time order.

    Each window's batch waits in a bag until the watermark passes its end (a timer),
    so a bounded backfill, where batches arrive in any order, trains in time order too.
    On each batch: refresh the live model from the models topic, judge the candidate on
    this batch (data it has not seen) against the live model, emit it as a ModelUpdate of
    ``live version + 1`` if it is better, then learn the batch prequentially. The trainer
    writes nothing itself: the pipeline writes the ModelUpdates it emits
    (:func:`tiertwin.pipelines.cloud.job.write_outputs`).
    """

    PENDING = BagStateSpec("pending", PickleCoder())
    TRAINER = ReadModifyWriteStateSpec("trainer", PickleCoder())
    NEXT_FLUSH = ReadModifyWriteStateSpec("next_flush_ms", PickleCoder())
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)

    def __init__(self, config: CloudTwinConfig, settings: Settings):
        self.config, self.settings = config, settings
        self.published = Metrics.counter("cloud-training", "models_published")

    def setup(self):
        # River pulls in scipy (seconds of import): pay it at start-up, not at the first window.
        from tiertwin.pipelines import learners  # noqa: F401

        self._models = None
        self._live_updates: dict[str, dict] = {}

    def teardown(self):
        if self._models is not None:
            self._models.close()

    def process(self, element, pending=beam.DoFn.StateParam(PENDING), next_flush=beam.DoFn.StateParam(NEXT_FLUSH),
                flush=beam.DoFn.TimerParam(FLUSH)):
        _, batch = element
        pending.add(batch)
        current = next_flush.read()
        if current is None or batch.end_ms < current:
            flush.set(Timestamp.of(batch.end_ms / 1000))
            next_flush.write(batch.end_ms)

    @on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                 pending=beam.DoFn.StateParam(PENDING), trainer=beam.DoFn.StateParam(TRAINER),
                 next_flush=beam.DoFn.StateParam(NEXT_FLUSH), flush=beam.DoFn.TimerParam(FLUSH)):
        fired_ms = fired.micros // 1000
        batches = sorted(pending.read(), key=lambda b: b.end_ms)
        ready, later = [b for b in batches if b.end_ms <= fired_ms], [b for b in batches if b.end_ms > fired_ms]
        pending.clear()
        for b in later:
            pending.add(b)
        state = trainer.read()
        if state is None:
            state, registration = self._fresh_state(key)
            if registration is not None:
                yield registration
        for batch in ready:
            yield from self._train(state, batch)
        trainer.write(state)
        if later:
            flush.set(Timestamp.of(later[0].end_ms / 1000))
            next_flush.write(later[0].end_ms)
        else:
            next_flush.clear()

    def _fresh_state(self, name: str) -> tuple[TrainerState, dict | None]:
        """The trainer's start: the newest verified version on the models topic; with none there (a fresh
        install), the shipped pretrained model, which every twin already runs as its version 1. That one is
        then registered on the topic (the returned ModelUpdate), so the first trained version is 2 and is
        judged against the shipped model, not against an untrained default."""
        from tiertwin.pipelines.pretrain import load_pretrained

        live = self._latest_live(name)
        if live is not None:
            model = load_update(live)
            return TrainerState(name, candidate=copy.deepcopy(model), live_model=model,
                                live_version=live["version"]), None
        shipped, version = load_pretrained(name)
        state = TrainerState(name, candidate=copy.deepcopy(shipped), live_model=shipped, live_version=version)
        registration = None
        if version > 0 and self.config.models_topic:
            registration = model_update(name, shipped, version, producer="shipped pretrained (registered by cloud-twin)")
        return state, registration

    def _latest_live(self, name: str) -> dict | None:
        """The newest ModelUpdate of ``name`` on the compacted models topic (read on, never re-read)."""
        if not self.config.models_topic:
            return None
        if self._models is None:
            self._models = _models_reader(self.settings, self.config.models_topic)
        while True:
            rejected = self._models.rejected
            batch = self._models.poll(200)
            if not batch and self._models.rejected == rejected:
                break
            # Only signed, intact versions count: a forged v99 neither becomes the live model nor moves the numbering.
            updates = list(self._live_updates.values()) + [r.value for r in batch if r.schema == "tiertwin.ModelUpdate"]
            self._live_updates = newest_verified(updates)
        return self._live_updates.get(name)

    def _follow_live(self, state: TrainerState) -> None:
        live = self._latest_live(state.name)
        if live is not None and live["version"] > state.live_version:
            # A newer model came from elsewhere (pretrain, another job): continue from it.
            state.live_model = load_update(live)
            state.live_version = live["version"]
            state.candidate = copy.deepcopy(state.live_model)
            state.learned_since_publish = 0

    def _train(self, state: TrainerState, batch: Batch):
        examples = batch.examples()
        if not examples:
            return
        self._follow_live(state)
        # Judging every example of a busy window costs more than learning them (three predictions
        # each); an evenly spaced sample of eval_examples estimates the errors as well.
        step = -(-len(examples) // self.config.eval_examples)
        judged = examples[::step]
        if state.learned_since_publish >= self.config.min_examples:
            candidate_mae = mean_absolute_error(state.candidate, judged)
            live_mae = mean_absolute_error(state.live_model, judged)
            if candidate_mae < live_mae * (1 - self.config.min_improvement):
                baseline = TRAINABLE[state.name].baseline
                baseline_mae = (sum(abs(baseline(x) - y) for x, y in judged) / len(judged)
                                if baseline is not None and judged else None)
                yield self._publish(state, batch, len(judged), candidate_mae, live_mae, baseline_mae)
        errors = 0.0
        for i, (x, y) in enumerate(examples):  # prequential: predict (the judged ones), then learn
            if i % step == 0:
                errors += abs((state.candidate.predict_one(x) or 0.0) - y)
            state.candidate.learn_one(x, y)
        state.prequential_mae = errors / len(judged)
        state.trained_on += len(examples)
        state.learned_since_publish += len(examples)
        if state.first_window_start_ms is None:
            state.first_window_start_ms = batch.start_ms

    def _publish(self, state: TrainerState, batch: Batch, evaluated_on: int, candidate_mae: float,
                 live_mae: float, baseline_mae: float | None = None) -> dict:
        version = state.live_version + 1       # the newest on the topic (followed before each batch) plus one
        unit = TRAINABLE[state.name].error_unit
        details = dict(metrics={f"mae_{unit}": candidate_mae, f"live_mae_{unit}": live_mae,
                                f"prequential_mae_{unit}": state.prequential_mae,
                                "live_version": state.live_version, "evaluated_on": evaluated_on,
                                # the naive rule it must beat, on the same examples (docs/evaluation/fidelity.md)
                                **({f"baseline_mae_{unit}": baseline_mae} if baseline_mae is not None else {})},
                       window_start_ms=state.first_window_start_ms or batch.start_ms,
                       window_end_ms=batch.start_ms, trained_on=state.trained_on, producer="cloud-twin")
        record = model_update(state.name, state.candidate, version, **details)
        state.live_model, state.live_version = copy.deepcopy(state.candidate), version
        state.learned_since_publish = 0
        self.published.inc()
        return record


def _models_reader(settings: Settings, topic: str):
    """The models topic from its beginning; a record on it that does not decode is the publisher's problem
    (its dead letters), so the trainer skips it."""
    from tiertwin.connectors.kafka import TopicReader

    return TopicReader([topic], settings, on_undecodable="skip", client_id="tiertwin-cloud-models")


class _ProjectPerBundle(beam.DoFn):
    """What training needs of each record (``project``; None = nothing), one list per bundle and window.

    Elements are record dicts or :class:`~tiertwin.schemas.batches.RecordBatch` es (each record of
    a batch is kept with its own event time). Keyed ``"all"``: every model sees the whole window. The training window is fixed, so
    each record's window is its timestamp rounded down, computed here rather than by a
    WindowInto per record; each list leaves at the end of the bundle timestamped with its
    earliest record, which lies in the list's window, so a WindowInto of the lists
    puts each one back in it.
    """

    def __init__(self, project, window_s: float):
        self.project, self.window_us = project, round(window_s * 1_000_000)
        # A batch is projected from its columns where the projection has a batch form: a batch that crossed a
        # stage as Arrow columns then never rebuilds its record dicts (3-18 us a record, most of what training
        # spent per record before it learned).
        self.project_batch = BATCH_PROJECTIONS.get(project)

    def start_bundle(self):
        self._open: dict[int, list] = {}

    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        if isinstance(element, RecordBatch):  # each record of a batch with its own event time
            if self.project_batch is not None:
                for row, ms in zip(self.project_batch(element), element.event_ms):
                    self._keep(row, event_micros(ms))
                return
            for record, ms in element.timestamped():
                self._keep(self.project(record), event_micros(ms))
        else:
            self._keep(self.project(element), timestamp.micros)

    def _keep(self, row, micros: int) -> None:
        if row is None:
            return
        start = micros - micros % self.window_us
        entry = self._open.get(start)
        if entry is None:
            self._open[start] = [micros, [row]]
            return
        entry[1].append(row)
        if micros < entry[0]:
            entry[0] = micros

    def finish_bundle(self):
        for earliest, rows in self._open.values():
            yield WindowedValue(("all", rows), Timestamp(micros=earliest), (window.GlobalWindow(),))
        self._open = {}


class TrainingExamples(beam.PTransform):
    """The fused streams -> ``(model name, Batch)``: each model's training examples of each training window.

    Input: the stream dict of :class:`~tiertwin.pipelines.cloud.job.SplitBySchema` (record dicts or
    :class:`~tiertwin.schemas.batches.RecordBatch` es). Output: one Batch per model and window, in that window.
    """

    def __init__(self, config: CloudTwinConfig = CloudTwinConfig()):
        super().__init__()
        self.config = config

    def expand(self, streams: dict):
        config = self.config

        def to_batches(element, win=beam.DoFn.WindowParam):
            _, groups = element
            rows = {stream: [row for bundle in bundles for row in bundle] for stream, bundles in groups.items()}
            for name in config.model_names:
                yield name, Batch.of(win.start.micros // 1000, win.end.micros // 1000, TRAINABLE[name].examples(rows))

        projections = {}
        for name in config.model_names:
            projections.update(TRAINABLE[name].inputs)
        training_window = window.FixedWindows(config.train_window_s)
        windowed = {stream: (streams[stream]
                             | f"Project {stream}" >> beam.ParDo(_ProjectPerBundle(project, config.train_window_s))
                             | f"TrainWindow {stream}" >> beam.WindowInto(training_window))
                    for stream, project in projections.items()}
        return (windowed
                | "JoinWindow" >> beam.CoGroupByKey()
                | "Examples" >> beam.FlatMap(to_batches))


class TrainGlobalModels(beam.PTransform):
    """Per training window, update the global models from the fused streams.

    ``demand-latency`` learns from decisions joined with outcomes, ``handover-sinr``
    from each UE's consecutive summaries (:data:`~tiertwin.pipelines.cloud.trainable.TRAINABLE`). Input: the stream
    dict of :class:`SplitBySchema`. Output: the ModelUpdate records to publish (the pipeline writes them).
    """

    def __init__(self, config: CloudTwinConfig = CloudTwinConfig(), settings: Settings | None = None):
        super().__init__()
        self.config, self.settings = config, settings or Settings.from_env()

    def expand(self, streams: dict):
        return (streams
                | "TrainingExamples" >> TrainingExamples(self.config)
                | "AcrossWindows" >> beam.WindowInto(window.GlobalWindows())
                | "Train" >> beam.ParDo(_TrainModel(self.config, self.settings)))
