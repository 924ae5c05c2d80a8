"""What the tests on the secure broker (the ``secure_broker`` fixture in conftest) share."""

from __future__ import annotations

from tiertwin.connectors.security import credential_file
from tiertwin.settings import Settings


def settings_as(secure, principal: str) -> Settings:
    """The secure broker's settings for one tier's principal (its password file, never the password)."""
    return secure.settings.model_copy(update={"sasl_username": principal,
                                              "sasl_password_file": credential_file(secure, principal)})
