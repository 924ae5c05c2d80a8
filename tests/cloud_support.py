"""Starting, killing and stopping `tiertwin run cloud` in its own process group (tests/test_cloud_resume.py,
tests/test_cloud_workers.py, tests/test_cloud_prism.py), and a file sink for bounded pipelines' outputs."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path


def descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        parent = stack.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            stack += children
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _reap(family: list[int], wait_s: float = 10.0) -> None:
    """Wait up to ``wait_s`` for these processes to be gone, then SIGKILL whatever is left."""
    deadline = time.monotonic() + wait_s
    while any(alive(pid) for pid in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in family:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def start_job(config: Path, log: Path, extra: tuple = ()) -> subprocess.Popen:
    """``tiertwin run cloud`` in its own process group (so a kill takes Prism and the SDK worker with it)."""
    job = subprocess.Popen([sys.executable, "-m", "tiertwin.jobs.cli", "run", "cloud", "--config", str(config),
                            "--runner", "prism", *extra], stdout=log.open("a"), stderr=subprocess.STDOUT,
                           cwd=os.getcwd(), start_new_session=True)
    deadline = time.monotonic() + 120
    while "cloud twin running" not in log.read_text():
        assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)
    return job


def kill_job(job: subprocess.Popen) -> None:
    """SIGKILL the job's whole process group and wait until none of its processes is left."""
    family = [job.pid, *descendants(job.pid)]
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(10)
    _reap(family)


def stop_job(job: subprocess.Popen) -> None:
    """SIGTERM (the job drains); whatever of its process group is left after it ended is killed."""
    if job.poll() is None:
        family = [job.pid, *descendants(job.pid)]
        job.send_signal(signal.SIGTERM)
        try:
            job.wait(60)
        except subprocess.TimeoutExpired:
            pass
        _reap(family)


def sdk_worker_processes(job: subprocess.Popen) -> list[int]:
    """The job's SDK worker child processes (Beam's worker pool starts each as `python -c ... SdkHarness`)."""
    found = []
    for pid in descendants(job.pid):
        try:
            if b"SdkHarness" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def collect_to(path: Path):
    """A Beam sink that appends each element, pickled, to ``path`` (the runner may unpickle a copy of it)."""
    def append(element):
        with open(path, "ab") as f:
            pickle.dump(element, f)
    return append


def read_back(path: Path) -> list:
    """What :func:`collect_to` wrote to ``path``, in order (nothing if it wrote nothing)."""
    out = []
    if path.exists():
        with open(path, "rb") as f:
            while True:
                try:
                    out.append(pickle.load(f))
                except EOFError:
                    return out
    return out
