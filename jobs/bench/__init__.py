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
           "machine": {"python": platform.python_version(), "cpus": _cpus(), "platform": platform.platform(),
                       "python_loop_cpu_ms_at_end": python_loop_cpu_ms()},
           "results": results}
    path.write_text(json.dumps(doc, indent=2, default=str))
    return path


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def python_loop_cpu_ms(repeats: int = 15) -> float:
    """CPU time of a fixed pure-Python loop (20,000 multiply-adds), median of ``repeats`` runs, in ms: how fast
    the host lets this machine's cores run just now, beside each result.

    The same code measured twice is not the same speed here: on 2026-12-03 a loop of this kind, timed every
    0.5 s beside the benchmarks, cost 1.7-1.9 times as much CPU until 16:53 as from 16:54 on, and the cloud job's
    CPU per 1,000 records went from 20-26 ms to 13.3-13.6 ms with it. Compare results at similar values only.

    >>> python_loop_cpu_ms(3) > 0
    True
    """
    import statistics

    def once() -> float:
        started = time.thread_time()
        total = 0
        for i in range(20_000):
            total += i * i
        return (time.thread_time() - started) * 1000

    return round(statistics.median(once() for _ in range(repeats)), 3)
