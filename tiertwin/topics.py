"""The names of tiertwin's Kafka topics, in one place.

``jobs/ops/topology.yaml`` declares each topic (contract, partitions, retention, who writes and reads it);
these constants are how code names them, and a test (``tests/test_topic_names.py``) checks that the two
list the same topics. Configs take these as defaults, so a deployment can still rename a topic.

>>> ACTIONS_LOCAL
'tiertwin.actions.local'
>>> ACTIONS == (ACTIONS_LOCAL, ACTIONS_EDGE, ACTIONS_CLOUD)
True
"""

from __future__ import annotations

# -- the device / simulator side -------------------------------------------------------------------
TELEMETRY = "tiertwin.local.telemetry"
DEMANDS = "tiertwin.local.demands"
OUTCOMES = "tiertwin.outcomes"

# -- the edge ---------------------------------------------------------------------------------------
SUMMARIES = "tiertwin.edge.summaries"
MIGRATIONS = "tiertwin.edge.migrations"
CELL_REPORTS = "tiertwin.edge.cell-reports"

# -- the cloud --------------------------------------------------------------------------------------
EDGE_STATE = "tiertwin.cloud.edge-state"
SNAPSHOTS = "tiertwin.cloud.snapshots"
MODELS = "tiertwin.models"
MODEL_STATUS = "tiertwin.models.status"

# -- decisions, one topic per tier ------------------------------------------------------------------
ACTIONS_LOCAL = "tiertwin.actions.local"
ACTIONS_EDGE = "tiertwin.actions.edge"
ACTIONS_CLOUD = "tiertwin.actions.cloud"
ACTIONS = (ACTIONS_LOCAL, ACTIONS_EDGE, ACTIONS_CLOUD)

# -- operations -------------------------------------------------------------------------------------
DEAD_LETTERS = "tiertwin.deadletters"
LOCAL_CHANGELOG = "tiertwin.state.local-changelog"
EDGE_CHANGELOG = "tiertwin.state.edge-changelog"

#: Every topic above, in the order of ``jobs/ops/topology.yaml``.
ALL = (TELEMETRY, DEMANDS, SUMMARIES, MIGRATIONS, CELL_REPORTS, EDGE_STATE, SNAPSHOTS, *ACTIONS, OUTCOMES, MODELS,
       MODEL_STATUS, DEAD_LETTERS, LOCAL_CHANGELOG, EDGE_CHANGELOG)
