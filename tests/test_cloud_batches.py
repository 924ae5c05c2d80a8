"""Cloud fusion in batches (#18): batch and record paths give the same snapshots, training examples and
dead letters on the same log, late data included; a malformed record dead-letters alone."""

from __future__ import annotations

import math

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream
from apache_beam.transforms.window import TimestampedValue

from tiertwin.connectors.beam_kafka import DEAD_LETTERS, RECORDS, decode_record
from tiertwin.jobs.bench.cloud import tier_traffic
from tiertwin.pipelines.cloud import fusion
from tiertwin.pipelines.cloud.config import CloudTwinConfig
from tiertwin.pipelines.cloud.fusion import FuseTiers
from tiertwin.pipelines.cloud.job import SplitBySchema
from tiertwin.pipelines.cloud.training import TrainingExamples
from tiertwin.schemas import SchemaRegistry
from tiertwin.pipelines.cloud.streams import CELL_FIELDS, STREAMS
from tiertwin.schemas import batches as batches_module
from tiertwin.schemas.batches import decode_batch, event_micros
from tiertwin.schemas.examples import example

from tests.cloud_support import collect_to, read_back

T0 = 1_767_225_600_000
REGISTRY = SchemaRegistry.default()


def _encode_unchecked(schema: str, record: dict) -> bytes:
    return REGISTRY.encode(schema, record, validate=False)


def _malformed() -> list[bytes]:
    """One value for each way a record is refused, and the reason it is refused for."""
    return [
        b"garbage",                                                                           # truncated
        b"\x00\x01" + bytes(8) + b"x",                                                         # bad-magic
        b"\xc3\x01" + bytes(8) + b"x",                                                         # unknown-fingerprint
        REGISTRY.encode("EdgeState", example("EdgeState", cell_id=1, ts_ms=T0)) + b"\x00",     # trailing-bytes
        _encode_unchecked("LocalSummary", example("LocalSummary", serving_cell=1, window_end_ms=T0,
                                                  sinr_db=float("nan"))),                      # non-finite-field
        _encode_unchecked("EdgeState", example("EdgeState", cell_id=1, ts_ms=T0, prb_utilization=1.5)),  # range
        _encode_unchecked("Outcome", example("Outcome", cell_id=1, ts_ms=T0, latency_ms=float("inf"))),
        _encode_unchecked("Decision", example("Decision", cell_id=1, source_ts_ms=T0, decision_id="d" * 300)),
    ]


def _letters_of_records(values: list[bytes]) -> list[dict]:
    out = []
    for offset, value in enumerate(values):
        output = decode_record(REGISTRY, value=value, key=b"k", topic="t", partition=3, offset=offset,
                               timestamp_ms=T0, stage="s")
        if isinstance(output, beam.pvalue.TaggedOutput):
            out.append(output.value)
    return out


def _without_time(letters: list[dict]) -> list[dict]:
    return [{k: v for k, v in letter.items() if k != "failed_at_ms"} for letter in letters]


CHECKS = pytest.mark.parametrize("column_checks_from", [1, 10**9], ids=["columns", "predicate"])


@CHECKS
def test_a_malformed_record_in_a_batch_is_dead_lettered_alone_with_the_record_paths_letter(monkeypatch,
                                                                                           column_checks_from):
    monkeypatch.setattr(batches_module, "COLUMN_CHECKS_MIN_ROWS", column_checks_from)
    good = [(s, r) for s, r in tier_traffic(T0, 40, rate_per_s=100, cells=4, seed=1)]
    values = [REGISTRY.encode(s, r) for s, r in good]
    bad = _malformed()
    mixed = values[:10] + bad + values[10:]
    batches, letters = decode_batch(REGISTRY, mixed, topic="t", partition=3, offsets=range(len(mixed)),
                                    timestamps_ms=[T0] * len(mixed), keys=[b"k"] * len(mixed), stage="s")
    assert [d["reason"] for d in letters] == ["truncated", "bad-magic", "unknown-fingerprint", "trailing-bytes",
                                              "non-finite-field", "out-of-range-field", "non-finite-field",
                                              "oversized-field"]
    assert _without_time(letters) == _without_time(_letters_of_records(mixed))
    assert [d["original"] for d in letters] == bad and [d["offset"] for d in letters] == list(range(10, 18))
    # Every good record is kept, in order, in the batch of its contract, with its event time.
    kept = {b.schema: b for b in batches}
    for schema in ("LocalSummary", "EdgeState", "Decision", "Outcome"):
        expected = [REGISTRY.decode(v)[1] for (s, _), v in zip(good, values) if s == schema]  # float32 fields
        assert kept[schema].records == expected
        assert kept[schema].columns.num_rows == len(expected)
    assert kept["EdgeState"].event_ms == [r["ts_ms"] for s, r in good if s == "EdgeState"]


@CHECKS
def test_column_checks_refuse_what_the_record_validator_refuses_and_nothing_else(monkeypatch, column_checks_from):
    monkeypatch.setattr(batches_module, "COLUMN_CHECKS_MIN_ROWS", column_checks_from)
    # Values at the edges of their ranges pass both ways; just outside them fail both ways.
    edge = [example("EdgeState", cell_id=c, ts_ms=T0, prb_utilization=p, mec_utilization=0.0)
            for c, p in ((0, 0.0), (1, 1.0), (1_000_000, 0.5), (2, -0.0))]
    outside = [example("EdgeState", cell_id=1_000_001, ts_ms=T0), example("EdgeState", cell_id=-1, ts_ms=T0),
               example("EdgeState", ts_ms=T0, mec_utilization=1.0000001)]
    values = [_encode_unchecked("EdgeState", r) for r in edge + outside]
    batches, letters = decode_batch(REGISTRY, values, topic="t", partition=3, offsets=range(len(values)),
                                    timestamps_ms=[T0] * len(values), keys=[b"k"] * len(values), stage="s")
    assert len(batches[0]) == len(edge)
    assert len(letters) == len(outside) and _without_time(letters) == _without_time(_letters_of_records(values))


# -- both paths on the same log ----------------------------------------------------------------
def _log() -> list[tuple[str, list[bytes]]]:
    """Fetches of a log: ``(what happens before, values)``; the third comes after the watermark passed
    its window (late, within the allowed lateness), the fifth after the window closed."""
    records = list(tier_traffic(T0, 3_600, rate_per_s=600, cells=4, ues=16, seed=7))
    encoded = [REGISTRY.encode(s, r) for s, r in records]
    late = [REGISTRY.encode(s, r) for s, r in tier_traffic(T0 + 500, 200, rate_per_s=400, cells=4, ues=16, seed=8)]
    closed = [REGISTRY.encode(s, r) for s, r in tier_traffic(T0 + 100, 80, rate_per_s=400, cells=4, ues=16, seed=9)]
    bad = _malformed()
    return [("", encoded[:2_400] + bad[:4]),              # big: >= POLARS_MIN_ROWS rows of each contract
            ("", encoded[2_400:2_600] + bad[4:]),
            ("watermark", late),                          # late for [T0, T0 + 2 s)
            ("", encoded[2_600:]),
            ("close", closed)]                            # after T0 + 2 s + the allowed lateness: dropped


def _stream(batched: bool) -> test_stream.TestStream:
    stream = test_stream.TestStream().advance_watermark_to(T0 / 1000)
    offset = 0
    for step, values in _log():
        if step == "watermark":
            stream = stream.advance_watermark_to((T0 + 4_000) / 1000)
        if step == "close":
            stream = stream.advance_watermark_to((T0 + 7_000) / 1000)
        fetch = (offset, values)
        offset += len(values)
        # A fetch is timestamped no later than its earliest record (outputs may not go back in time).
        stream = stream.add_elements([TimestampedValue(fetch, (T0 - 1_000) / 1000)])
    return stream.advance_watermark_to_infinity()


def _decode_records(fetch):
    first, values = fetch
    for i, value in enumerate(values):
        yield decode_record(REGISTRY, value=value, key=None, topic="t", partition=0, offset=first + i,
                            timestamp_ms=T0, stage="s")


def _decode_batches(fetch):
    first, values = fetch
    batches, letters = decode_batch(REGISTRY, values, topic="t", partition=0,
                                    offsets=range(first, first + len(values)), timestamps_ms=[T0] * len(values),
                                    stage="s")
    for batch in batches:
        yield TimestampedValue(batch, min(batch.event_ms) / 1000)
    for letter in letters:
        yield beam.pvalue.TaggedOutput(DEAD_LETTERS, letter)


def _decode_folded(fetch, config):
    """What the Kafka read hands on with a fold (ReadFromKafka(fold=FoldInRead)): a fetch's partials, not its batches."""
    fold = fusion.FoldInRead(config)
    fold.start()
    for output in _decode_batches(fetch):
        if isinstance(output, beam.pvalue.TaggedOutput):
            yield output
        else:
            fold.add(output.value)
    yield from fold.finish()


def _run_folded(config: CloudTwinConfig, folder) -> dict[str, list]:
    from tiertwin.pipelines.cloud.job import _Partials

    folder.mkdir()
    paths = {name: folder / name for name in ("snapshots", "letters")}
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(runner="DirectRunner", options=options) as p:
        decoded = (p | _stream(True)
                   | beam.FlatMap(_decode_folded, config).with_outputs(DEAD_LETTERS, main=RECORDS))
        (decoded[RECORDS] | _Partials() | fusion.SnapshotAggregates(config)
         | "Snapshots" >> beam.Map(collect_to(paths["snapshots"])))
        decoded[DEAD_LETTERS] | "Letters" >> beam.Map(collect_to(paths["letters"]))
    return {name: read_back(path) for name, path in paths.items()}


def _run(batched: bool, config: CloudTwinConfig, folder) -> dict[str, list]:
    folder.mkdir()
    paths = {name: folder / name for name in ("snapshots", "examples", "letters")}
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(runner="DirectRunner", options=options) as p:
        decoded = (p | _stream(batched)
                   | beam.FlatMap(_decode_batches if batched else _decode_records).with_outputs(DEAD_LETTERS,
                                                                                               main=RECORDS))
        streams = decoded[RECORDS] | SplitBySchema()
        streams | FuseTiers(config) | "Snapshots" >> beam.Map(collect_to(paths["snapshots"]))
        (streams | TrainingExamples(config)
         | "ExampleRows" >> beam.Map(lambda e: (e[0], e[1].start_ms, e[1].end_ms, sorted(map(repr, e[1].examples()))))
         | "Examples" >> beam.Map(collect_to(paths["examples"])))
        decoded[DEAD_LETTERS] | "Letters" >> beam.Map(collect_to(paths["letters"]))
    return {name: read_back(path) for name, path in paths.items()}


def _comparable(snapshots: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in s.items() if k != "emitted_ns"} for s in snapshots),
                  key=lambda s: (s["cell_id"], s["window_start_ms"], s["pane"], s["summaries"] + s["outcomes"]))


def _final_panes(snapshots: list[dict]) -> dict:
    """Per cell and window: the on-time pane and the last pane (the one with the most records)."""
    out: dict = {}
    for s in _comparable(snapshots):
        key = (s["cell_id"], s["window_start_ms"])
        if s["pane"] == "on_time":
            out[key + ("on_time",)] = s
        last = out.get(key + ("last",))
        size = s["summaries"] + s["edge_states"] + s["decisions"] + s["outcomes"]
        if last is None or size > last["summaries"] + last["edge_states"] + last["decisions"] + last["outcomes"]:
            out[key + ("last",)] = {**s, "pane": "last"}
    return out


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)  # polars adds floats in its own order
    return a == b


def _folded_with_polars(stream, batch):
    return fusion.batch_aggregates(stream, batch, 1_000_000, 0)


def _folded_from_columns(stream, batch):
    """fold_batch below POLARS_MIN_ROWS: row by row from the columns, into an empty ``open_``."""
    open_: dict = {}
    without_cell = fusion._fold_columns(open_, stream, batch, 1_000_000, 0)
    return [(key, earliest, aggregate) for key, (earliest, aggregate) in open_.items()], without_cell


@pytest.mark.parametrize("fold", [_folded_with_polars, _folded_from_columns])
def test_the_aggregates_of_a_batch_equal_folding_its_records(fold):
    records = list(tier_traffic(T0, 4_000, rate_per_s=1_000, cells=4, ues=16, seed=11))
    records.append(("Decision", example("Decision", cell_id=None, source_ts_ms=T0 + 5)))
    records.append(("Outcome", example("Outcome", cell_id=2, ts_ms=T0 + 7, latency_ms=None, deadline_met=None,
                                       ue_id="")))
    records.append(("Outcome", example("Outcome", cell_id=3, ts_ms=T0 + 9, latency_ms=55.0, deadline_met=False)))
    values = [REGISTRY.encode(s, r) for s, r in records]
    batches, _ = decode_batch(REGISTRY, values, topic="t", partition=0, offsets=range(len(values)),
                              timestamps_ms=[T0] * len(values), stage="s")
    for batch in batches:
        stream = STREAMS[batch.schema]
        got, without_cell = fold(stream, batch)
        folded: dict = {}
        add, cell_field = fusion.ADD_TO_AGGREGATE[stream], CELL_FIELDS[stream]
        for record, ms in batch.timestamped():
            if record.get(cell_field) is None:
                continue
            us = event_micros(ms)
            entry = folded.setdefault((record[cell_field], us - us % 1_000_000), [us, fusion.CellAggregate()])
            entry[0] = min(entry[0], us)
            add(entry[1], record)
        assert without_cell == (1 if stream == "decisions" else 0)
        assert {key for key, _, _ in got} == set(folded)
        for key, earliest, aggregate in got:
            assert earliest == folded[key][0]
            expected = folded[key][1]
            for name in fusion.CellAggregateCoder.FIELDS:
                a, b = getattr(aggregate, name), getattr(expected, name)
                if name == "latencies":
                    a, b = sorted(a), sorted(b)
                assert a == b or (isinstance(a, float) and math.isclose(a, b, rel_tol=1e-12)), (stream, name, a, b)


def test_batch_and_record_paths_give_equal_snapshots_examples_and_dead_letters(monkeypatch, tmp_path):
    monkeypatch.setattr(fusion, "POLARS_MIN_ROWS", 1)  # every batch through polars (the folding is the record path's)
    monkeypatch.setattr(batches_module, "COLUMN_CHECKS_MIN_ROWS", 1)  # and checked on columns
    monkeypatch.setattr(batches_module, "COLUMNAR_MIN_ROWS", 16)  # and decoded column-wise
    config = CloudTwinConfig(window_s=2, early_firing_s=None, allowed_lateness_s=2, train_window_s=2, train=False)
    by_record = _run(False, config, tmp_path / "records")
    by_batch = _run(True, config, tmp_path / "batches")

    records, batches = _comparable(by_record["snapshots"]), _comparable(by_batch["snapshots"])
    assert [s["pane"] for s in records].count("late") >= 1, "the log has late data"
    assert len(records) == len(batches)
    for r, b in zip(records, batches):
        assert r.keys() == b.keys() and all(_close(r[k], b[k]) for k in r), (r, b)
    assert sorted(by_record["examples"]) == sorted(by_batch["examples"])
    assert sum(len(e[3]) for e in by_record["examples"]) > 500
    assert sorted(map(repr, _without_time(by_record["letters"]))) == \
        sorted(map(repr, _without_time(by_batch["letters"])))
    assert len(by_batch["letters"]) == len(_malformed())


@pytest.mark.parametrize("polars_from", [1, 2000])
def test_folding_in_the_read_gives_the_record_paths_snapshots_and_dead_letters(monkeypatch, tmp_path, polars_from):
    """A job that only fuses folds its batches inside the read (FoldInRead): the same snapshots, late panes
    included, and the same dead letters as the record path."""
    monkeypatch.setattr(fusion, "POLARS_MIN_ROWS", polars_from)
    monkeypatch.setattr(batches_module, "COLUMNAR_MIN_ROWS", 16)
    config = CloudTwinConfig(window_s=2, early_firing_s=None, allowed_lateness_s=2, train_window_s=2, train=False)
    by_record = _run(False, config, tmp_path / "records")
    folded = _run_folded(config, tmp_path / "folded")
    # A late pane fires per late partial: the record path makes one per stream and cell, the fold one per cell
    # (the four streams merged), so the late panes in between differ in number; each window's on-time pane and
    # its last pane (panes accumulate: the full view) are the same.
    records, got = _final_panes(by_record["snapshots"]), _final_panes(folded["snapshots"])
    assert [s["pane"] for s in by_record["snapshots"]].count("late") >= 1, "the log has late data"
    assert records.keys() == got.keys()
    for key, r in records.items():
        b = got[key]
        assert r.keys() == b.keys() and all(_close(r[k], b[k]) for k in r), (r, b)
    assert sorted(map(repr, _without_time(by_record["letters"]))) == \
        sorted(map(repr, _without_time(folded["letters"])))


@pytest.mark.broker
def test_the_kafka_read_in_batches_gives_every_record_once_and_dead_letters_the_bad_one(new_topic, settings):
    from apache_beam.testing.util import assert_that

    from tiertwin.connectors.beam_kafka import ReadFromKafka, ReadSpec
    from tiertwin.connectors.kafka import KafkaSink
    from tiertwin.schemas.batches import RecordBatch

    topic = new_topic(3)
    records = [example("EdgeState", cell_id=i % 4, ts_ms=T0 + i) for i in range(300)]
    with KafkaSink(settings) as sink:
        for r in records[:150]:
            sink.send(topic, "EdgeState", r, key=r["cell_id"])
        sink.send_raw(topic, b"\xc3\x01not-a-fingerprint", key="bad")
        for r in records[150:]:
            sink.send(topic, "EdgeState", r, key=r["cell_id"])

    def rows(batch):
        assert isinstance(batch, RecordBatch) and batch.schema == "EdgeState"
        return [(r["ts_ms"], ms) for r, ms in batch.timestamped()]

    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        read = p | ReadFromKafka([topic], ReadSpec(stop="end", max_poll_records=40), settings, batches=True)
        assert_that(read.records | beam.FlatMap(rows),
                    lambda got: sorted(got) == [(r["ts_ms"], r["ts_ms"]) for r in records] or _fail(got))
        assert_that(read.dead_letters | beam.Map(lambda d: (d["topic"], d["reason"], d["original"])),
                    lambda got: got == [(topic, "unknown-fingerprint", b"\xc3\x01not-a-fingerprint")] or _fail(got),
                    label="DeadLetters")


def _fail(got):
    raise AssertionError(sorted(got)[:20])


def test_a_read_holds_its_watermark_until_every_partition_has_reported():
    # A job started on full topics: the first partition read must not move the watermark past the others' backlog.
    from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

    from tiertwin.connectors.beam_kafka import _WorkerWatermarks

    marks = _WorkerWatermarks()
    marks.expect("read", (("t", 0), ("t", 1)))
    assert marks.report("read", ("t", 0), Timestamp.of(100)) == MIN_TIMESTAMP
    marks.publish("read", ("t", 0))  # the runner holds what t/0 read (tests/test_fold_watermarks.py)
    assert marks.report("read", ("t", 1), Timestamp.of(50)) == Timestamp.of(50)
    marks.forget("read", ("t", 1))
    assert marks.report("read", ("t", 0), Timestamp.of(120)) == Timestamp.of(120)


@pytest.mark.parametrize("batched", [True, False], ids=["batches", "records"])
def test_a_split_under_a_fetch_makes_the_resumed_read_seek_back(batched):
    # The runner checkpoints the range while a fetch is in hand: the records past the split are not claimed,
    # so whatever resumes the range must seek to them instead of reading on from the consumer's position.
    from apache_beam.io.restriction_trackers import OffsetRange

    from tiertwin.connectors.beam_kafka import UNBOUNDED, KafkaOffsetTracker, PartitionSlice, ReadSpec, _ReadPartition

    class Message:
        def __init__(self, offset):
            self.topic, self.partition, self.offset, self.key, self.timestamp = "t", 0, offset, None, T0
            self.value = REGISTRY.encode("EdgeState", example("EdgeState", cell_id=1, ts_ms=T0 + offset))

    class Consumer:
        def __init__(self):
            self.seeks = []

        def seek(self, tp, offset):
            self.seeks.append(offset)

        def poll(self, timeout_ms):
            from kafka import TopicPartition
            return {TopicPartition("t", 0): [Message(o) for o in range(10, 20)]}

        def highwater(self, tp):
            return 1000

    class Tracker(KafkaOffsetTracker):
        def try_claim(self, position):  # the runner's checkpoint lands before this claim
            if position >= 14 and self.current_restriction().stop == UNBOUNDED:
                self.try_split(0)
            return super().try_claim(position)

    class Watermark:
        def current_watermark(self):
            return None

        def set_watermark(self, _):
            pass

    reader = _ReadPartition(settings=None, spec=ReadSpec(), stage="s", read_id="split-test", batches=batched)
    reader.registry, reader._next_offset, consumer = REGISTRY, {}, Consumer()
    reader._consumers = {("t", 0): consumer}
    reader._consumer_at = lambda tp, offset: (reader._next_offset.get(("t", 0)) != offset
                                              and (consumer.seek(tp, offset), reader._next_offset.__setitem__(
                                                  ("t", 0), offset)), consumer)[1]
    tracker = Tracker(OffsetRange(10, UNBOUNDED))
    outputs = list(reader._read(PartitionSlice("t", 0, 10, UNBOUNDED), tracker, Watermark()))
    resume_at = tracker.current_restriction().stop
    claimed = sum(len(o.value) if batched else 1 for o in outputs if not isinstance(o, beam.pvalue.TaggedOutput))
    assert claimed == resume_at - 10 and resume_at < 20
    consumer.seeks.clear()
    reader._consumer_at(None, resume_at)
    assert consumer.seeks == [resume_at], "the resumed range seeks back to its first offset"


def test_a_fetch_that_runs_past_the_end_of_a_bounded_range_is_claimed_up_to_it():
    from apache_beam.io.restriction_trackers import OffsetRange

    from tiertwin.connectors.beam_kafka import KafkaOffsetTracker, _ReadPartition

    class Message:
        def __init__(self, offset):
            self.offset = offset

    tracker = KafkaOffsetTracker(OffsetRange(10, 15))
    claimed = _ReadPartition._claim_batch(tracker, [Message(o) for o in range(10, 20)])
    assert [m.offset for m in claimed] == [10, 11, 12, 13, 14]
    tracker.check_done()

