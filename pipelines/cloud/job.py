"""The cloud twin assembled: input split by contract, the :class:`CloudTwin` composite, the sinks, and the
streaming (Kafka) and backfill (archive) pipelines built from them.

Read top to bottom, the cloud tier is::

    Kafka (summaries, edge state, actions.*, outcomes)      or   a `tiertwin archive` folder
          │ ReadFromKafka (splittable DoFn)                       │ ReadArchive (bounded)
          ▼                                                       ▼
    SplitBySchema ── summaries / edge_states / decisions / outcomes ──┬─► FuseTiers ─► TwinSnapshot
                                                                      │      (per bundle: one CellAggregate per cell
                                                                      │       and window slice; then event-time windows,
                                                                      │       GroupByKey by cell, early/on-time/late panes)
                                                                      └─► TrainGlobalModels ─► ModelUpdate
                                                                             (per bundle: one list of projected rows per
                                                                              window; Decision ⨝ Outcome by decision_id,
                                                                              one global stateful trainer per model)

A job that fuses and does not train (``run cloud`` trains in a process of its own) folds its batches into
the per-cell, per-window-slice aggregates inside the Kafka read (:class:`~tiertwin.pipelines.cloud.fusion.FoldInRead`):
only those aggregates and the dead letters leave the read, no record crosses a stage.

With ``sdk_workers`` = n > 1 the read, the split and the per-bundle aggregation run n times, each on every
n-th partition in an SDK worker of its own, and the aggregates meet before the windows
(:func:`_build_sharded`).

Snapshots go to ``tiertwin.cloud.snapshots`` and to Parquet partitioned by date/hour;
model updates go to ``tiertwin.models`` (only when they beat the live version);
records that do not decode go to ``tiertwin.deadletters``.
"""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.resources import ResourceHint

from tiertwin.connectors.archive import archive_files
from tiertwin.connectors.beam_resume import resume_boundary
from tiertwin.errors import ConfigError
from tiertwin.pipelines import parquet_log
from tiertwin.connectors.beam_kafka import (DEAD_LETTERS, RECORDS, ReadFromKafka, ReadSpec, WriteToKafka,
                                            dead_letter_key, decode_record)
from tiertwin.pipelines.cloud.config import CloudTwinConfig
from tiertwin.pipelines.cloud.fusion import (AggregateTiers, CellAggregate, FoldInRead, FuseTiers,
                                             SnapshotAggregates)
from tiertwin.pipelines.cloud.streams import STREAMS
from tiertwin.pipelines.cloud.training import TrainGlobalModels
from tiertwin.schemas.batches import RecordBatch, decode_batch
from tiertwin.settings import Settings


# -- input -------------------------------------------------------------------------------------
class SplitBySchema(beam.PTransform):
    """``(schema, record)`` -> ``{"summaries": …, "edge_states": …, "decisions": …, "outcomes": …}``.

    A :class:`~tiertwin.schemas.batches.RecordBatch` element goes whole to the stream of its contract.

    Records of other contracts (a topic list that includes, say, telemetry) are counted
    under ``cloud-fusion/records_not_fused`` and not fused.
    """

    def expand(self, records):
        def route(element):
            if isinstance(element, RecordBatch):  # a batch holds one contract: it goes whole to its stream
                schema, record, n = element.schema, element, len(element)
            else:
                (schema, record), n = element, 1
            stream = STREAMS.get(schema)
            if stream is None:
                Metrics.counter("cloud-fusion", "records_not_fused").inc(n)
                return
            yield beam.pvalue.TaggedOutput(stream, record)

        outputs = records | "BySchema" >> beam.FlatMap(route).with_outputs(*STREAMS.values())
        return {stream: outputs[stream] for stream in STREAMS.values()}


class ReadArchive(beam.PTransform):
    """Bounded read of a ``tiertwin archive`` folder (``DIR/topic=<t>/date=…/hour=…/*.parquet``).

    Every archived value is decoded exactly as :class:`ReadFromKafka` decodes a live
    one, so the outputs are the same: ``.records`` and ``.dead_letters``. With
    ``batches=True`` each file is read as Arrow record batches of ``batch_rows`` rows and
    each is decoded in one call into :class:`~tiertwin.schemas.batches.RecordBatch` es,
    as the Kafka read does with a fetch.
    """

    def __init__(self, archive_dir: str | Path, stage: str = "cloud-twin/backfill", batches: bool = False,
                 batch_rows: int = 4096):
        super().__init__()
        self.paths = [str(p) for p in archive_files(archive_dir)]
        if not self.paths:
            raise ConfigError(f"no archived records under {archive_dir} (expected topic=*/date=*/hour=*/*.parquet)")
        self.stage, self.batches, self.batch_rows = stage, batches, batch_rows

    def expand(self, pbegin):
        stage = self.stage
        if self.batches:
            return (pbegin | "Files" >> beam.Create(self.paths)
                    | "DecodeBatches" >> beam.FlatMap(_read_archive_batches, stage, self.batch_rows).with_outputs(
                        DEAD_LETTERS, main=RECORDS))

        def read(path: str):
            import pyarrow.parquet as pq

            from tiertwin.schemas import SchemaRegistry

            registry = SchemaRegistry.default()
            topic = Path(path).parents[2].name.removeprefix("topic=")
            table = pq.read_table(path, columns=["partition", "offset", "timestamp_ms", "key", "value"])
            for row in table.to_pylist():
                yield decode_record(registry, value=row["value"], key=row["key"], topic=topic,
                                    partition=row["partition"], offset=row["offset"],
                                    timestamp_ms=row["timestamp_ms"], stage=stage)

        return (pbegin | "Files" >> beam.Create(self.paths)
                | "Decode" >> beam.FlatMap(read).with_outputs(DEAD_LETTERS, main=RECORDS))


def _read_archive_batches(path: str, stage: str, batch_rows: int):
    """One archive file, read as Arrow batches, each decoded in one call (:func:`decode_batch`)."""
    import pyarrow.parquet as pq

    from tiertwin.schemas import SchemaRegistry

    registry = SchemaRegistry.default()
    topic = Path(path).parents[2].name.removeprefix("topic=")
    columns = ["partition", "offset", "timestamp_ms", "key", "value"]
    for table in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
        batches, letters = decode_batch(registry, table.column("value").to_pylist(), topic=topic,
                                        partition=table.column("partition").to_pylist(),
                                        offsets=table.column("offset").to_pylist(),
                                        timestamps_ms=table.column("timestamp_ms").to_pylist(),
                                        keys=table.column("key").to_pylist(), stage=stage)
        for batch in batches:
            yield beam.window.TimestampedValue(batch, min(batch.event_ms) / 1000)
        for letter in letters:
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, letter)


# -- the whole tier ----------------------------------------------------------------------------
class CloudTwin(beam.PTransform):
    """``(schema, record)`` stream -> ``{"snapshots": …, "model_updates": …}`` (each if fusing / training)."""

    def __init__(self, config: CloudTwinConfig = CloudTwinConfig(), settings: Settings | None = None):
        super().__init__()
        self.config, self.settings = config, settings or Settings.from_env()

    def expand(self, records):
        streams = records | "Split" >> SplitBySchema()
        outputs = {}
        if self.config.fuse:
            outputs["snapshots"] = streams | "Fuse" >> FuseTiers(self.config)
        if self.config.train:
            outputs["model_updates"] = streams | "Train" >> TrainGlobalModels(self.config, self.settings)
        return outputs


class _WriteParquet(beam.DoFn):
    """Buffer a bundle's records and write them as Parquet files partitioned by date/hour."""

    def __init__(self, root: str, schema: str):
        self.root, self.schema = root, schema

    def start_bundle(self):
        self._rows: list[dict] = []

    def process(self, record: dict):
        self._rows.append(record)

    def finish_bundle(self):
        if self._rows:
            parquet_log.write_records(self.root, self.schema, self._rows)
            self._rows = []


def write_outputs(outputs: dict, dead_letters, config: CloudTwinConfig, settings: Settings) -> None:
    """Attach the sinks: snapshots to Kafka and Parquet, model updates and dead letters to Kafka."""
    snapshots = outputs.get("snapshots")
    if snapshots is not None and config.snapshots_topic:
        snapshots | "SnapshotsToKafka" >> WriteToKafka(config.snapshots_topic, "TwinSnapshot", "cell_id", settings)
    if snapshots is not None and config.snapshots_dir:
        snapshots | "SnapshotsToParquet" >> beam.ParDo(_WriteParquet(str(config.snapshots_dir), "TwinSnapshot"))
    model_updates = outputs.get("model_updates")
    if model_updates is not None and config.models_topic:
        model_updates | "ModelUpdatesToKafka" >> WriteToKafka(config.models_topic, "ModelUpdate", "model_name", settings)
    if config.dead_letter_topic:
        dead_letters | "DeadLettersToKafka" >> WriteToKafka(config.dead_letter_topic, "DeadLetter", dead_letter_key,
                                                            settings)


def build_streaming(pipeline: beam.Pipeline, config: CloudTwinConfig, settings: Settings) -> str:
    """Kafka -> cloud twin -> Kafka (+ Parquet): the streaming job ``tiertwin run cloud`` runs.

    Returns the id of its Kafka read (what :func:`tiertwin.connectors.beam_kafka.drain` stops).

    With a ``consumer_group`` the read commits resume offsets and starts from the group's; windows
    that start before the group's resume boundary were emitted before the restart and are not
    emitted again (connectors/beam_resume.py).
    """
    resume = config.resume_policy()
    if resume is not None and config.fuse and config.emitted_before_ms is None:
        config = config.model_copy(update={"emitted_before_ms": resume_boundary(settings, resume.group_id,
                                                                                list(config.input_topics))})
    spec = ReadSpec(start=config.start, max_out_of_order_ms=config.max_out_of_order_ms,
                    idle_after_s=config.idle_after_s, poll_interval_s=config.read_interval_s,
                    max_read_s=config.read_max_s, client=config.kafka_client, resume=resume)
    if config.sdk_workers > 1:
        return _build_sharded(pipeline, config, settings, spec)
    fold = _fold_in_read(config)
    reader = ReadFromKafka(list(config.input_topics), spec, settings, batches=config.batches, fold=fold)
    read = pipeline | "ReadTiers" >> reader
    if fold is not None:
        outputs = {"snapshots": read[RECORDS] | "Partials" >> _Partials() | "Fuse" >> SnapshotAggregates(config)}
    else:
        outputs = read[RECORDS] | "CloudTwin" >> CloudTwin(config, settings)
    write_outputs(outputs, read[DEAD_LETTERS], config, settings)
    return reader.read_id


def _fold_in_read(config: CloudTwinConfig) -> FoldInRead | None:
    """With ``fold_in_read``, a job that fuses and does not train folds its batches into partial aggregates
    inside the Kafka read (:class:`~tiertwin.pipelines.cloud.fusion.FoldInRead`): no record leaves the read.
    Training needs the records, so a job that also trains splits them by contract as before; so does a job with
    ``fold_in_read: false``."""
    return (FoldInRead(config) if config.fold_in_read and config.fuse and not config.train and config.batches
            else None)


class _Partials(beam.PTransform):
    """The read's ``(cell, CellAggregate)`` outputs, typed as such (the grouping by cell needs the key's coder)."""

    def expand(self, partials):
        return partials | "Typed" >> beam.Map(_same).with_output_types(tuple[int, CellAggregate])


def _same(partial):
    return partial


class SdkWorkerHint(ResourceHint):
    """``tiertwin_sdk_worker=i``: a resource hint that only makes an environment of its own, so Prism (which
    starts one SDK worker per environment) runs the transforms under it in a worker of their own."""

    urn = "beam:resources:tiertwin_sdk_worker:v1"


ResourceHint.register_resource_hint("tiertwin_sdk_worker", SdkWorkerHint)


class _Shard(beam.PTransform):
    """One SDK worker's part of a job with several: its share of the partitions read, split by contract and
    (when fusing) aggregated per bundle. Outputs ``dead_letters``, the four streams, and ``partials``."""

    def __init__(self, reader: ReadFromKafka, config: CloudTwinConfig):
        super().__init__()
        self.reader, self.config = reader, config

    def expand(self, pbegin):
        read = pbegin | "Read" >> self.reader
        if self.reader.fold is not None:  # folded in the read: only the partials leave it
            return {DEAD_LETTERS: read[DEAD_LETTERS], "partials": read[RECORDS] | "Partials" >> _Partials()}
        streams = read[RECORDS] | "Split" >> SplitBySchema()
        outputs = {DEAD_LETTERS: read[DEAD_LETTERS], **streams}
        if self.config.fuse:
            outputs["partials"] = streams | "Partials" >> AggregateTiers(self.config)
        return outputs


def _build_sharded(pipeline: beam.Pipeline, config: CloudTwinConfig, settings: Settings, spec: ReadSpec) -> str:
    """``sdk_workers`` = n > 1: n Kafka reads, each of every n-th partition and in an SDK worker of its own
    (shard 0 in the default environment, which also windows, fuses, trains and writes; the others under a
    :class:`SdkWorkerHint`). Each worker decodes and aggregates what it reads; only the per-bundle aggregates
    (and, when training in the job, the records training uses) cross to the default one.

    Each read holds its watermark at the slowest of its own partitions; the runner takes the minimum over
    the reads where they are flattened, so no window closes before every worker's partitions passed it.
    The reads share one read id, so :func:`~tiertwin.connectors.beam_kafka.drain` stops all of them.
    """
    import uuid

    read_id, n = uuid.uuid4().hex, config.sdk_workers
    shards = []
    for i in range(n):
        shard = _Shard(ReadFromKafka(list(config.input_topics), spec, settings, batches=config.batches,
                                     shard=(i, n), read_id=read_id, fold=_fold_in_read(config)), config)
        if i:
            shard = shard.with_resource_hints(tiertwin_sdk_worker=str(i))
        shards.append(pipeline | f"Worker {i}" >> shard)
    outputs = {}
    if config.fuse:
        outputs["snapshots"] = ([s["partials"] for s in shards] | "AllPartials" >> beam.Flatten()
                                | "Fuse" >> SnapshotAggregates(config))
    if config.train:
        streams = {name: [s[name] for s in shards] | f"All {name}" >> beam.Flatten() for name in STREAMS.values()}
        outputs["model_updates"] = streams | "Train" >> TrainGlobalModels(config, settings)
    dead_letters = [s[DEAD_LETTERS] for s in shards] | "AllDeadLetters" >> beam.Flatten()
    write_outputs(outputs, dead_letters, config, settings)
    return read_id


def build_backfill(pipeline: beam.Pipeline, archive_dir: str | Path, config: CloudTwinConfig,
                   settings: Settings) -> dict:
    """A ``tiertwin archive`` folder -> the same cloud twin, bounded (replay / backfill).

    Over an archive every record is on time (the watermark stays back until all are
    read), so early and late firings are switched off; batch runners also have no
    processing-time clock for early firings.
    """
    config = config.model_copy(update={"early_firing_s": None, "allowed_lateness_s": 0})
    read = pipeline | "ReadArchive" >> ReadArchive(archive_dir, batches=config.batches)
    outputs = read[RECORDS] | "CloudTwin" >> CloudTwin(config, settings)
    write_outputs(outputs, read[DEAD_LETTERS], config, settings)
    return outputs
