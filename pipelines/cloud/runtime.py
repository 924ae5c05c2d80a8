"""Running the cloud twin: Beam runner arguments, the streaming job and its training process beside it,
draining and cancelling, and the garbage-collector tuning of a process that hosts an SDK worker.

No transform is defined here; Beam itself is imported only where a pipeline is built and run,
so supervising code (the CLI, the launcher) can import this module cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tiertwin.errors import ConfigError, JobFailedError
from tiertwin.pipelines.cloud.config import CloudTwinConfig
from tiertwin.settings import Settings


RUNNERS = ("direct", "prism", "flink", "dataflow")


def prism_binary(settings: Settings) -> Path:
    """``<home>/bin/prism``, or a ConfigError saying how to get it."""
    path = Path(settings.home) / "bin" / "prism"
    if not path.is_file():
        raise ConfigError(f"Prism binary not found at {path}; run `bash scripts/setup` "
                          f"(it builds Beam's Go runner with `go install`)")
    return path


def runner_args(runner: str, settings: Settings, *, streaming: bool, extra: Iterable[str] = ()) -> list[str]:
    """Beam pipeline arguments for one of :data:`RUNNERS` (``extra`` is appended unchanged).

    >>> runner_args("direct", Settings(), streaming=False)
    ['--runner=DirectRunner']
    >>> runner_args("flink", Settings(), streaming=True, extra=["--flink_master=localhost:8081"])[:2]
    ['--runner=FlinkRunner', '--streaming']
    """
    runner = runner.lower()
    if runner == "direct":
        args = ["--runner=DirectRunner"]
    elif runner == "prism":
        args = ["--runner=PrismRunner", f"--prism_location={prism_binary(settings)}", "--environment_type=LOOPBACK"]
    elif runner == "flink":
        # The job-server jar must be given with --flink_job_server_jar (see README, "Cloud twin").
        args = ["--runner=FlinkRunner"]
        if not any(a.startswith("--environment_type") for a in extra):
            args.append("--environment_type=LOOPBACK")
    elif runner == "dataflow":
        args = ["--runner=DataflowRunner"]
    else:
        raise ConfigError(f"runner must be one of {', '.join(RUNNERS)}, not {runner!r}")
    if streaming:
        args.insert(1, "--streaming")
    return args + list(extra)


def backfill(archive_dir: str | Path, config: CloudTwinConfig, settings: Settings | None = None,
             runner: str = "direct", extra_args: Iterable[str] = ()) -> None:
    """Run the cloud twin bounded over an archive folder and wait for it to finish."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from tiertwin.pipelines.cloud.job import build_backfill

    settings = settings or Settings.from_env()
    options = PipelineOptions(runner_args(runner, settings, streaming=False, extra=extra_args))
    with beam.Pipeline(options=options) as pipeline:
        build_backfill(pipeline, archive_dir, config, settings)


@dataclass
class StreamingRun:
    """A started streaming cloud twin: its Beam ``PipelineResult``, how to stop it, and the training job
    beside it when training runs in its own process (:class:`TrainerProcess`)."""

    result: Any
    read_id: str
    trainer: "TrainerProcess | None" = None

    def wait_until_finish(self):
        state = self.result.wait_until_finish()
        if self.trainer is not None:
            self.trainer.stop()
        return state

    def ended(self) -> bool:
        from apache_beam.runners.runner import PipelineState

        return PipelineState.is_terminal(self.result.state) or (self.trainer is not None and self.trainer.ended())

    def failure(self) -> str | None:
        """Why the training process ended by itself, if it did (the main job's failures raise)."""
        return self.trainer.failure() if self.trainer is not None else None

    def stop(self, timeout_s: float = 30.0) -> str:
        """Drain the job (the Kafka read finishes, windows fire, the trainer flushes) and wait for it to
        end; cancel it if it has not within ``timeout_s``. Returns ``"drained"`` or ``"cancelled"``
        (``"cancelled"`` if either job had to be).

        Draining reaches the SDK worker only when it runs in this process (LOOPBACK: Prism,
        Flink's default here); a cancel cuts off the bundles in flight, which the worker
        reports as errors (closed state channel, unknown instruction).
        """
        from apache_beam.runners.runner import PipelineState

        from tiertwin.connectors.beam_kafka import drain, drained_and_done

        if self.trainer is not None:
            self.trainer.request_stop()  # both jobs drain at once
        drain(self.read_id)
        try:
            state = self.result.wait_until_finish(duration=int(timeout_s * 1000))
        except RuntimeError:  # ended other than DONE
            state = None
        outcome = "drained"
        if state != PipelineState.DONE:
            self.result.cancel()
            outcome = "cancelled"
        drained_and_done(self.read_id)
        if self.trainer is not None and self.trainer.stop(timeout_s) != "drained":
            outcome = "cancelled"
        return outcome


class TrainerProcess:
    """Training as its own streaming job (fusion off) in a child process, beside the fusing job.

    With LOOPBACK the SDK worker is the launching process: one interpreter, one GIL. Training a
    window takes 0.2–0.7 s of CPU per model in one go, and snapshots waited behind it (at 10k
    records/s, window end -> snapshot p95 1.9–4.3 s with training in the job, 1.1 s without).
    In a child process training has its own worker and GIL, and runs ``nice``d
    (:data:`TRAINER_NICENESS`), so it takes the CPU fusion leaves. It has its own Kafka read of the
    topics training uses (:meth:`CloudTwinConfig.training_input_topics`), in larger bundles
    (:data:`TRAINER_READ_INTERVAL_S`); the fusing job writes the dead letters.
    """

    def __init__(self, config: CloudTwinConfig, settings: Settings, runner: str, extra_args: Iterable[str]):
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads or gRPC state copied
        self._stop = context.Event()
        self._status = context.Queue()
        self._outcome: tuple[str, str | None] | None = None
        self.process = context.Process(target=_trainer_main, name="tiertwin-cloud-trainer", daemon=True,
                                       args=(config, settings, runner, list(extra_args), self._stop, self._status))
        self.process.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def _next_status(self, timeout_s: float) -> tuple[str, str | None] | None:
        import queue

        try:
            return self._status.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def wait_started(self, timeout_s: float = 120.0) -> None:
        status = self._next_status(timeout_s)
        if status is None or status[0] != "started":
            self.process.kill()
            why = status[1] if status else f"not started within {timeout_s:.0f} s"
            raise JobFailedError(f"the cloud twin's training job did not start: {why}")

    def ended(self) -> bool:
        return not self.process.is_alive()

    def failure(self) -> str | None:
        if self.process.is_alive():
            return None
        if self._outcome is None:
            self._outcome = self._next_status(1.0) or ("failed", f"exit code {self.process.exitcode}")
        return self._outcome[1] if self._outcome[0] == "failed" else None

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout_s: float = 30.0) -> str:
        """Drain the training job (cancelled by the child after ``timeout_s``); ``"drained"`` or how it ended."""
        self.request_stop()
        if self._outcome is None:
            self._outcome = self._next_status(timeout_s + 15.0)
        self.process.join(10.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
            return "killed"
        return self._outcome[1] if self._outcome and self._outcome[0] == "stopped" else "failed"


TRAINER_NICENESS = 10
# Training windows last seconds, so the training job reads in fewer, larger bundles: on Prism each
# bundle costs CPU in the runner and the worker whatever it carries.
TRAINER_READ_INTERVAL_S = 1.0


def _trainer_main(config: CloudTwinConfig, settings: Settings, runner: str, extra_args: list[str],
                  stop, status) -> None:
    """The child process of :class:`TrainerProcess`: start the job, report, and drain it when told to."""
    import os
    import signal

    os.nice(TRAINER_NICENESS)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent stops us
    parent = os.getppid()
    try:
        job = run_streaming(config, settings, runner, extra_args)
    except Exception as exc:  # reported to the parent, which raises it
        status.put(("failed", f"{type(exc).__name__}: {exc}"))
        return
    status.put(("started", None))
    while not stop.wait(1.0):
        if os.getppid() != parent:  # the parent died without stopping us
            break
        if job.ended():
            try:
                job.wait_until_finish()
                status.put(("failed", "the training job ended by itself"))
            except Exception as exc:
                status.put(("failed", f"{type(exc).__name__}: {exc}"))
            return
    status.put(("stopped", job.stop()))


def run_streaming(config: CloudTwinConfig, settings: Settings | None = None, runner: str = "prism",
                  extra_args: Iterable[str] = ()) -> StreamingRun:
    """Start the streaming cloud twin; ``stop()`` the returned run to end it.

    With LOOPBACK, a config that fuses and trains (and ``train_in_own_process``) becomes two jobs:
    fusion here, training in a :class:`TrainerProcess`.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from tiertwin.pipelines.cloud.job import build_streaming

    settings = settings or Settings.from_env()
    extra_args = list(extra_args)
    args = runner_args(runner, settings, streaming=True, extra=extra_args)
    loopback = "--environment_type=LOOPBACK" in args
    if loopback and config.sdk_workers > 1:
        _process_workers(args)
    trainer = None
    if loopback and config.fuse and config.train and config.train_in_own_process:
        trainer = TrainerProcess(config.model_copy(update={
            "fuse": False, "dead_letter_topic": None, "input_topics": config.training_input_topics(),
            "consumer_group": config.consumer_group and f"{config.consumer_group}-training", "sdk_workers": 1,
            "read_interval_s": max(config.read_interval_s, TRAINER_READ_INTERVAL_S),
            "read_max_s": max(config.read_max_s, TRAINER_READ_INTERVAL_S / 2)}), settings, runner, extra_args)
        config = config.model_copy(update={"train": False})
    try:
        pipeline = beam.Pipeline(options=PipelineOptions(args))
        read_id = build_streaming(pipeline, config, settings)
        result = pipeline.run()
        run = StreamingRun(result, read_id, trainer)
        if trainer is not None:
            try:
                trainer.wait_started()
            except BaseException:
                result.cancel()
                raise
    except BaseException:
        if trainer is not None:
            trainer.process.kill()
        raise
    if loopback:
        _tune_gc_for_worker()
    return run


def _process_workers(args: list[str]) -> None:
    """LOOPBACK with several SDK workers: the worker pool starts each as a child process (Beam's
    ``use_loopback_process_worker``), one per environment, instead of a thread of this process (one GIL).
    The pool runs ``python -c <code>`` from PATH: first on PATH goes a ``python`` that runs this
    interpreter with :mod:`tiertwin.pipelines.cloud.worker` (metric ids of its own per worker)."""
    import os
    import stat
    import sys
    import tempfile

    args.append("--experiments=use_loopback_process_worker")
    bin_dir = Path(tempfile.mkdtemp(prefix="tiertwin-sdk-worker-"))
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tiertwin.pipelines.cloud.worker "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def _tune_gc_for_worker() -> None:
    """With LOOPBACK the SDK worker is this process, and it allocates millions of short-lived objects.

    Measured at 10k records/s: ~15 full collections per minute, each walking the ~250k objects of
    Beam, River, Arrow and the rest for ~140 ms with the GIL held (snapshots wait). Freezing what
    is loaded by now and collecting less often cut the collector's time from 2.1 s to 0.5 s a minute.
    """
    import gc

    gc.freeze()
    gc.set_threshold(20_000, 50, 50)
