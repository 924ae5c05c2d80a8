"""The one bounded wait for Kafka's retriable errors (connectors/readiness.py), without a broker."""

from __future__ import annotations

import pytest
from kafka.errors import (CoordinatorLoadInProgressError, CoordinatorNotAvailableError, GroupAuthorizationFailedError,
                          NoError, NotCoordinatorError, UnknownMemberIdError)

from tiertwin.connectors.readiness import is_retriable, raise_errors, wait_out
from tiertwin.errors import BrokerUnavailableError
from tiertwin.settings import Settings

SETTINGS = Settings(broker_port=19999)


def failing(*errors, result="served"):
    """An action raising ``errors`` in turn, then returning ``result``; ``calls`` counts the calls."""
    pending = list(errors)

    def action():
        action.calls += 1
        if pending:
            raise pending.pop(0)
        return result

    action.calls = 0
    return action


def test_retriable_errors_are_waited_out_and_the_result_returned():
    action = failing(CoordinatorNotAvailableError("x"), NotCoordinatorError("x"), CoordinatorLoadInProgressError("x"))
    assert wait_out(action, "the coordinator of consumer group 'g'", SETTINGS, first_backoff_s=0.001) == "served"
    assert action.calls == 4


def test_a_non_retriable_error_fails_at_once_with_its_message():
    action = failing(GroupAuthorizationFailedError("not allowed"))
    with pytest.raises(GroupAuthorizationFailedError, match="not allowed"):
        wait_out(action, "group 'g'", SETTINGS, first_backoff_s=0.001)
    assert action.calls == 1


def test_when_the_bound_runs_out_one_line_names_the_broker_what_and_the_last_error(capsys):
    action = failing(*[CoordinatorNotAvailableError("loading")] * 1000)
    with pytest.raises(BrokerUnavailableError) as caught:
        wait_out(action, "the coordinator of consumer group 'tiertwin-local'", SETTINGS, timeout_s=0.7,
                 first_backoff_s=0.01, max_backoff_s=0.05)
    message = str(caught.value)
    assert "\n" not in message
    assert "127.0.0.1:19999" in message and "'tiertwin-local'" in message
    assert "CoordinatorNotAvailableError" in message
    # Not a terminal here: the wait was shown on one line (not one per attempt), and nothing else.
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("waiting for the coordinator of consumer group 'tiertwin-local'")


def test_a_wait_long_enough_to_show_says_when_it_is_over(capsys):
    action = failing(*[CoordinatorNotAvailableError("loading")] * 8)
    wait_out(action, "group 'g'", SETTINGS, first_backoff_s=0.1, max_backoff_s=0.1)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "waiting for group 'g'" in err[0] and "ready after" in err[1]


def test_per_partition_results_raise_their_first_error_so_retriable_ones_are_retried():
    raise_errors([NoError, None], "group 'g'")  # nothing to raise
    with pytest.raises(CoordinatorLoadInProgressError):
        raise_errors([NoError, CoordinatorLoadInProgressError], "group 'g'")
    assert is_retriable(CoordinatorLoadInProgressError()) and not is_retriable(UnknownMemberIdError())
    assert not is_retriable(ValueError())
