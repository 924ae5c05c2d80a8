"""The SDK worker process of a cloud job with several (``--sdk-workers``): Beam's own ``SdkHarness``, started by
the worker pool as ``python -c <code>``, with metric short ids no other worker of the job uses.

Prism (2.77) keeps one table of monitoring short ids per job, but each Python worker numbers its metrics
from 1: with two workers, one's id named the other's metric, and Prism panicked decoding a progress
metric as the wrong type (``error decoding metrics beam:metric:ptransform_progress:remaining:v1``). Here
each worker numbers from its process id shifted past any id it will use.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    from apache_beam.runners.worker import sdk_worker

    sdk_worker.SHORT_ID_CACHE._last_short_id = os.getpid() << 32
    code = sys.argv[sys.argv.index("-c") + 1]
    exec(compile(code, "<sdk-worker>", "exec"), {"__name__": "__main__"})


if __name__ == "__main__":
    main()
