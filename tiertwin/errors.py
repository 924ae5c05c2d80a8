"""One exception root for tiertwin, with subclasses where callers act differently."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import pydantic


class TiertwinError(Exception):
    """Root of every error tiertwin raises on purpose."""


class ConfigError(TiertwinError):
    """A configuration file or option is invalid; the message names the bad field."""


def dotted(loc: tuple) -> str:
    """A pydantic error location as a dotted path (``mobility.0.model``); ``?`` for the whole object."""
    return ".".join(str(part) for part in loc) or "?"


def config_error(exc: pydantic.ValidationError, where: str | None, *,
                 field: Callable[[tuple], str] = dotted) -> ConfigError:
    """The :class:`ConfigError` for a pydantic validation error: ``"{where}: {field}: {message}"`` of its
    first error (``where`` names the file or object, ``field`` formats the error's location). Raise it
    ``from None``: the message is the whole story.

    >>> from pydantic import BaseModel, ValidationError
    >>> class Knobs(BaseModel):
    ...     rate_hz: float
    >>> try:
    ...     Knobs(rate_hz="fast")
    ... except ValidationError as exc:
    ...     print(config_error(exc, "knobs.yaml"))
    knobs.yaml: rate_hz: Input should be a valid number, unable to parse string as a number
    """
    first = exc.errors()[0]
    message = f"{field(tuple(first['loc']))}: {first['msg']}"
    return ConfigError(f"{where}: {message}" if where else message)


class BrokerUnavailableError(TiertwinError):
    """The Kafka broker cannot be reached (not started, wrong address, or not ready in time)."""


class NotYetAcknowledged(BrokerUnavailableError):
    """Records sent are not all acknowledged within the wait asked for (a leader being replaced, a slow
    broker); they stay queued and are still sent. A caller that can go on without them may."""


class AccessDeniedError(TiertwinError):
    """The broker refused the principal (authentication or ACL authorization failed); retrying won't help."""


class BrokerSetupError(TiertwinError):
    """The managed broker could not be installed, formatted or started."""


class JobFailedError(TiertwinError):
    """A streaming job (or a process it runs beside it) failed to start or ended by itself."""


class SchemaError(TiertwinError):
    """A schema is missing, malformed, or an evolution of it is incompatible."""


class IncompatibleSchemaError(SchemaError):
    """A new schema version cannot read records written with an older version."""


class RecordRejected(TiertwinError):
    """A record cannot be used; it goes to the dead-letter topic with `reason`.

    ``reason`` is a short machine-readable code (e.g. ``unknown-fingerprint``);
    ``str(error)`` is the human-readable detail.
    """

    reason = "rejected"

    def __init__(self, detail: str, reason: str | None = None):
        super().__init__(detail)
        if reason is not None:
            self.reason = reason


class DecodeError(RecordRejected):
    """The bytes are not a tiertwin Avro single-object record."""

    reason = "undecodable"


class ValidationError(RecordRejected):
    """The record decodes but a field is NaN, infinite or out of its documented range."""

    reason = "invalid-field"
