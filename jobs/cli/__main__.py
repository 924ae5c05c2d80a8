"""``python -m tiertwin.jobs.cli`` (the launcher and the chaos harness start agents this way)."""

import sys

from tiertwin.jobs.cli.main import app

sys.exit(app())
