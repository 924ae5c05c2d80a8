"""Deprecated: the cloud twin is the package :mod:`tiertwin.pipelines.cloud` (config, streams, fusion,
trainable, training, job, runtime). This module re-exports its names for one release; import them from there."""

from tiertwin.pipelines.cloud.config import INPUT_TOPICS, SNAPSHOTS_TOPIC, CloudTwinConfig  # noqa: F401
from tiertwin.pipelines.cloud.streams import (CELL_FIELDS, DECISIONS, EDGE_STATES, OUTCOMES, STREAMS,  # noqa: F401
                                              SUMMARIES)
from tiertwin.pipelines.cloud.fusion import (ADD_TO_AGGREGATE, PANES, CellAggregate, CellAggregateCoder,  # noqa: F401
                                             FuseTiers, snapshot, window_slices_us)
from tiertwin.pipelines.cloud.job import (CloudTwin, ReadArchive, SplitBySchema, build_backfill,  # noqa: F401
                                          build_streaming, write_outputs)
from tiertwin.pipelines.cloud.runtime import (RUNNERS, TRAINER_NICENESS, TRAINER_READ_INTERVAL_S,  # noqa: F401
                                              StreamingRun, TrainerProcess, backfill, prism_binary, run_streaming,
                                              runner_args)
from tiertwin.pipelines.cloud.trainable import (PLACEMENT_TIERS, TRAINABLE, TrainableModel,  # noqa: F401
                                                forecast_examples, forecast_fields, join_examples, measured_latency,
                                                placement_features, training_examples, training_schemas)
from tiertwin.pipelines.cloud.training import (Batch, TrainerState, TrainGlobalModels,  # noqa: F401
                                               mean_absolute_error)
