"""Cloud twin fusion: window / trigger semantics (TestStream on DirectRunner --streaming)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import TimestampedValue

from tiertwin.pipelines.cloud.config import CloudTwinConfig
from tiertwin.pipelines.cloud.fusion import FuseTiers
from tiertwin.pipelines.cloud.job import SplitBySchema
from tiertwin.schemas.examples import example

T0 = 1_767_225_600_000  # a multiple of the window size, so windows start here


def summary(ue: str, cell: int, ts_ms: int, sinr: float) -> TimestampedValue:
    record = example("LocalSummary", ue_id=ue, serving_cell=cell, window_start_ms=ts_ms - 100,
                     window_end_ms=ts_ms, sinr_db=sinr)
    return TimestampedValue(("LocalSummary", record), ts_ms / 1000)


def outcome(cell: int | None, ts_ms: int, latency: float, met: bool) -> TimestampedValue:
    record = example("Outcome", ue_id="ue-1", cell_id=cell, ts_ms=ts_ms, latency_ms=latency, deadline_met=met)
    return TimestampedValue(("Outcome", record), ts_ms / 1000)


def fuse(stream: test_stream.TestStream, config: CloudTwinConfig, check) -> None:
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(runner="DirectRunner", options=options) as p:
        snapshots = p | stream | SplitBySchema() | FuseTiers(config)
        assert_that(snapshots, check)


def test_early_on_time_and_late_panes_accumulate():
    config = CloudTwinConfig(window_s=10, early_firing_s=2, allowed_lateness_s=60, train=False)
    stream = (test_stream.TestStream()
              .advance_watermark_to(T0 / 1000)
              .add_elements([summary("ue-1", 7, T0 + 1_000, 10.0), outcome(7, T0 + 1_500, 12.0, True)])
              .advance_processing_time(3)                              # -> early pane
              .add_elements([summary("ue-2", 7, T0 + 4_000, 20.0), outcome(None, T0 + 4_000, 99.0, False)])
              .advance_watermark_to((T0 + 10_000) / 1000)              # -> on-time pane
              .add_elements([outcome(7, T0 + 9_000, 30.0, False)])      # behind the watermark -> late pane
              .advance_watermark_to_infinity())

    def check(snapshots):
        panes = sorted(snapshots, key=lambda s: ("early", "on_time", "late").index(s["pane"]))
        assert [s["pane"] for s in panes] == ["early", "on_time", "late"], panes
        early, on_time, late = panes
        assert all(s["cell_id"] == 7 and s["window_start_ms"] == T0 and s["window_end_ms"] == T0 + 10_000
                   for s in panes)
        assert (early["summaries"], early["outcomes"], early["mean_sinr_db"]) == (1, 1, 10.0)
        # The outcome with no cell is not fused (counted, see the module doc).
        assert (on_time["summaries"], on_time["outcomes"], on_time["mean_sinr_db"], on_time["ues"]) == (2, 1, 15.0, 2)
        # Accumulating panes: the late pane is the whole window again plus the late record.
        assert (late["outcomes"], late["mean_latency_ms"], late["deadline_miss_rate"]) == (2, 21.0, 0.5)

    fuse(stream, config, check)


def test_record_later_than_allowed_lateness_is_not_in_any_pane():
    config = CloudTwinConfig(window_s=10, early_firing_s=None, allowed_lateness_s=5, train=False)
    stream = (test_stream.TestStream()
              .advance_watermark_to(T0 / 1000)
              .add_elements([summary("ue-1", 3, T0 + 1_000, 5.0)])
              .advance_watermark_to((T0 + 16_000) / 1000)            # past end + lateness: window closed
              .add_elements([summary("ue-2", 3, T0 + 2_000, 7.0)])
              .advance_watermark_to_infinity())

    def check(snapshots):
        assert [(s["pane"], s["summaries"]) for s in snapshots] == [("on_time", 1)], snapshots

    fuse(stream, config, check)


def test_sliding_windows_put_a_record_in_every_window_covering_it():
    config = CloudTwinConfig(window_s=10, slide_s=5, early_firing_s=None, train=False)
    stream = (test_stream.TestStream()
              .advance_watermark_to(T0 / 1000)
              .add_elements([summary("ue-1", 2, T0 + 7_000, 9.0)])
              .advance_watermark_to_infinity())

    def check(snapshots):
        windows = sorted((s["window_start_ms"] - T0, s["window_end_ms"] - T0) for s in snapshots)
        assert windows == [(0, 10_000), (5_000, 15_000)], windows

    fuse(stream, config, check)


def test_aggregating_per_slice_then_windowing_matches_windowing_each_record():
    # 10 s windows every 4 s: boundaries every 2 s, so records are folded per 2 s slice first.
    config = CloudTwinConfig(window_s=10, slide_s=4, early_firing_s=None, train=False)
    offsets_ms = [0, 1_999, 2_000, 3_500, 6_100, 9_999, 10_000, 13_000]
    stream = (test_stream.TestStream()
              .advance_watermark_to(T0 / 1000)
              .add_elements([summary(f"ue-{i}", 4, T0 + t, float(i)) for i, t in enumerate(offsets_ms)])
              .advance_watermark_to_infinity())
    expected = {}
    for i, t in enumerate(offsets_ms):
        for start in range(-8_000, t + 1, 4_000):  # every window [start, start + 10 s) covering t
            if start <= t < start + 10_000:
                expected.setdefault(start, []).append(float(i))

    def check(snapshots):
        got = {s["window_start_ms"] - T0: (s["summaries"], s["mean_sinr_db"]) for s in snapshots}
        assert got == {start: (len(v), sum(v) / len(v)) for start, v in expected.items()}, got

    fuse(stream, config, check)
