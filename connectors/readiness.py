"""Waiting out Kafka's retriable errors: one bounded wait for every caller.

A broker formatted a moment ago has no ``__consumer_offsets`` topic. The first group
request (FindCoordinator) creates it, and for a few seconds after that the broker
answers group requests with ``COORDINATOR_NOT_AVAILABLE`` or
``COORDINATOR_LOAD_IN_PROGRESS``. A topic created a moment ago may likewise answer
``LEADER_NOT_AVAILABLE`` or ``UNKNOWN_TOPIC_OR_PARTITION``. These are *retriable*:
kafka-python marks their classes with ``retriable = True``. :func:`wait_out` calls an
action until it gets past them, within a bound, and shows on one stderr line what it
waits for. Any other error is raised at once, unchanged.

>>> from kafka.errors import CoordinatorNotAvailableError
>>> answers = iter([CoordinatorNotAvailableError("loading"), "served"])
>>> def ask():
...     answer = next(answers)
...     if isinstance(answer, Exception):
...         raise answer
...     return answer
>>> wait_out(ask, "the coordinator of group 'g'", Settings(), first_backoff_s=0.01, quiet=True)
'served'
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, TypeVar

from kafka.errors import KafkaError, NoError

from tiertwin.errors import BrokerUnavailableError
from tiertwin.settings import Settings

T = TypeVar("T")

PROBE_GROUP = "tiertwin-readiness-probe"


def is_retriable(error: BaseException) -> bool:
    """True for kafka-python errors that may go away when the request is made again (``.retriable``)."""
    return isinstance(error, KafkaError) and bool(getattr(error, "retriable", False))


def raise_errors(errors: Iterable[type[KafkaError] | KafkaError | None], what: str) -> None:
    """Raise the first error of a per-partition result (kafka-python returns classes there), so
    :func:`wait_out` can retry it if it is retriable."""
    for error in errors:
        if error is None or error is NoError or isinstance(error, NoError):
            continue
        raise error(f"for {what}") if isinstance(error, type) else error


class _WaitLine:
    """What is being waited for, on stderr, once the wait has lasted ``SHOW_AFTER_S``: redrawn in place
    on a terminal (at most twice a second), else one line when it is first shown and one at the end."""

    SHOW_AFTER_S = 0.5

    def __init__(self, what: str, bootstrap: str, quiet: bool):
        self.what, self.bootstrap, self.quiet = what, bootstrap, quiet
        self.shown = False
        self._next_draw = 0.0

    @property
    def _stream(self):
        return sys.stderr

    def waiting(self, elapsed_s: float, error: BaseException) -> None:
        if self.quiet or elapsed_s < self.SHOW_AFTER_S:
            return
        text = f"waiting for {self.what} on Kafka at {self.bootstrap} ({type(error).__name__}, {elapsed_s:.1f}s)"
        if self._stream.isatty():
            now = time.monotonic()
            if now >= self._next_draw:
                self._stream.write(f"\r\x1b[K{text}")
                self._stream.flush()
                self._next_draw = now + 0.5
        elif not self.shown:
            print(f"{text} ...", file=self._stream, flush=True)
        self.shown = True

    def done(self, elapsed_s: float) -> None:
        if self.quiet or not self.shown:
            return
        prefix = "\r\x1b[K" if self._stream.isatty() else ""
        print(f"{prefix}{self.what} on Kafka at {self.bootstrap}: ready after {elapsed_s:.1f}s",
              file=self._stream, flush=True)

    def clear(self) -> None:
        if not self.quiet and self.shown and self._stream.isatty():
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def wait_out(action: Callable[[], T], what: str, settings: Settings | None = None, *,
             timeout_s: float | None = None, first_backoff_s: float = 0.1, max_backoff_s: float = 0.5,
             quiet: bool = False) -> T:
    """``action()``, called again while it raises a retriable Kafka error, for at most ``timeout_s``
    (default ``settings.ready_timeout_s``).

    ``what`` names what is waited for, e.g. ``"the coordinator of consumer group 'tiertwin-local'"``;
    it appears on the progress line and in the error. When the bound runs out,
    :class:`BrokerUnavailableError` names the broker, ``what`` and the last error. A non-retriable
    error propagates at once, unchanged.
    """
    settings = settings or Settings.from_env()
    bound = settings.ready_timeout_s if timeout_s is None else timeout_s
    line = _WaitLine(what, settings.bootstrap, quiet)
    start = time.monotonic()
    backoff = first_backoff_s
    while True:
        try:
            result = action()
        except Exception as exc:
            if not is_retriable(exc):
                line.clear()
                raise
            elapsed = time.monotonic() - start
            if elapsed + backoff > bound:
                line.clear()
                detail = " ".join(str(exc).split())
                if type(exc).__name__ not in detail:
                    detail = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
                raise BrokerUnavailableError(
                    f"Kafka at {settings.bootstrap} did not serve {what} within {bound:g}s (last error: {detail}); "
                    "is the broker healthy? see its server.log") from exc
            line.waiting(elapsed, exc)
            time.sleep(backoff)
            backoff = min(max_backoff_s, backoff * 2)
            continue
        line.done(time.monotonic() - start)
        return result


def wait_for_topics(admin, topics: list[str], settings: Settings | None = None, **kwargs) -> list[dict]:
    """Wait until every one of ``topics`` is known with a leader for each partition; returns their
    descriptions (``admin.describe_topics``)."""
    from kafka.errors import LeaderNotAvailableError, for_code

    def described() -> list[dict]:
        found = admin.describe_topics(topics)
        for topic in found:
            raise_errors([for_code(topic["error_code"])], f"topic {topic['name']!r}")
            if not topic["partitions"] or any(p["leader_id"] < 0 for p in topic["partitions"]):
                raise LeaderNotAvailableError(f"topic {topic['name']!r} has a partition without a leader")
        return found

    if not topics:
        return []
    names = ", ".join(repr(t) for t in topics[:3]) + (f" and {len(topics) - 3} more" if len(topics) > 3 else "")
    return wait_out(described, f"topic {names}" if len(topics) == 1 else f"topics {names}", settings, **kwargs)
