"""``tiertwin bench …``: benchmarks that write their results to ``bench-results/<name>.json``.

Speed and memory targets live here, never in timed unit tests. Each benchmark
measures tiertwin and its floor/ceiling side by side in the same run, and reports ratios.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("bench-results")


def write_results(name: str, results: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``results`` with machine facts and a timestamp; return the file path."""
    out_dir = out_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    doc = {"benchmark": name, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"python": platform.python_version(), "cpus": _cpus(), "platform": platform.platform()},
           "results": results}
    path.write_text(json.dumps(doc, indent=2, default=str))
    return path


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
