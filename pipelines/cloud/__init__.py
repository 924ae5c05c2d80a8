"""The cloud twin on Apache Beam: cross-tier fusion, global training, models pushed down.

One module per concern:

* :mod:`~tiertwin.pipelines.cloud.config` -- :class:`CloudTwinConfig`;
* :mod:`~tiertwin.pipelines.cloud.streams` -- the four tier streams and where each keeps its cell;
* :mod:`~tiertwin.pipelines.cloud.fusion` -- :class:`FuseTiers`: TwinSnapshots per cell and window;
* :mod:`~tiertwin.pipelines.cloud.trainable` -- :data:`TRAINABLE`, the registry of trainable models;
* :mod:`~tiertwin.pipelines.cloud.training` -- :class:`TrainGlobalModels`: one stateful trainer per model;
* :mod:`~tiertwin.pipelines.cloud.job` -- the :class:`CloudTwin` composite, its inputs and sinks, and the
  streaming and backfill pipelines;
* :mod:`~tiertwin.pipelines.cloud.runtime` -- runners, the streaming run and its training process,
  draining, garbage-collector tuning (no transforms).
* :mod:`~tiertwin.pipelines.cloud.worker` -- the SDK worker process of a job with several.

Import from the module that holds a name; this package imports nothing, so supervising code
that needs only the runtime does not load Beam.
"""
