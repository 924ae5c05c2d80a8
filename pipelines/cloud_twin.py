"""Deprecated: the cloud twin is the package :mod:`tiertwin.pipelines.cloud` (config, fusion, training, job,
runtime). This module re-exports its names for one release; import them from there."""

from tiertwin.pipelines.cloud.config import (CELL_FIELDS, DECISIONS, EDGE_STATES, INPUT_TOPICS, OUTCOMES,  # noqa: F401
                                             PLACEMENT_TIERS, SNAPSHOTS_TOPIC, STREAMS, SUMMARIES, CloudTwinConfig)
from tiertwin.pipelines.cloud.fusion import (ADD_TO_AGGREGATE, PANES, CellAggregate, CellAggregateCoder,  # noqa: F401
                                             FuseTiers, snapshot, window_slices_us)
from tiertwin.pipelines.cloud.job import (CloudTwin, ReadArchive, SplitBySchema, build_backfill,  # noqa: F401
                                          build_streaming, write_outputs)
from tiertwin.pipelines.cloud.runtime import (RUNNERS, TRAINER_NICENESS, TRAINER_READ_INTERVAL_S,  # noqa: F401
                                              StreamingRun, TrainerProcess, backfill, prism_binary, run_streaming,
                                              runner_args)
from tiertwin.pipelines.cloud.training import (ERROR_UNITS, TRAINING_EXAMPLES, TRAINING_INPUTS,  # noqa: F401
                                               Batch, TrainerState, TrainGlobalModels, forecast_examples,
                                               forecast_fields, join_examples, mean_absolute_error,
                                               measured_latency, placement_features, training_examples,
                                               training_schemas)
