"""Where tiertwin keeps its state and how its clients reach Kafka.

Everything is read from the environment once (``TIERTWIN_*``), validated by
pydantic, and passed around as a frozen object.
"""

from __future__ import annotations

import os
from pathlib import Path

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from tiertwin.errors import ConfigError, config_error


class Settings(BaseModel):
    """Project-wide settings.

    ``home`` holds the managed broker (jars, config, data, logs), Prism and job state;
    it defaults to ``./.tiertwin`` in the working directory and is git-ignored.
    """

    model_config = ConfigDict(frozen=True)

    home: Path = Field(default_factory=lambda: Path.cwd() / ".tiertwin")
    broker_host: str = "127.0.0.1"
    broker_port: int = Field(9092, ge=1, le=65535)
    controller_port: int = Field(9093, ge=1, le=65535)
    broker_heap_mb: int = Field(512, ge=128, le=16384)
    bootstrap_servers: str | None = None
    connect_timeout_s: float = Field(5.0, gt=0, le=300)
    # How long to wait out Kafka's retriable errors (a group coordinator still loading on a fresh
    # broker, a topic without a leader yet) before giving up: tiertwin.connectors.readiness.
    ready_timeout_s: float = Field(60.0, gt=0, le=600)
    # Security of the managed broker: "none" (PLAINTEXT) or "scram" (SASL/SCRAM-SHA-512 + ACLs).
    broker_security: Literal["none", "scram"] = "none"
    # Client credentials (a tier's principal). The password comes from the environment or a
    # file, never from the command line.
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None

    def sasl_credentials(self) -> tuple[str, str] | None:
        """``(username, password)`` when the clients authenticate, else None."""
        if not self.sasl_username:
            return None
        if self.sasl_password is not None:
            return self.sasl_username, self.sasl_password.get_secret_value()
        if self.sasl_password_file is not None:
            try:
                return self.sasl_username, self.sasl_password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"TIERTWIN_SASL_PASSWORD_FILE: {exc}") from None
        raise ConfigError("TIERTWIN_SASL_USERNAME is set but neither TIERTWIN_SASL_PASSWORD "
                          "nor TIERTWIN_SASL_PASSWORD_FILE is")

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"{self.broker_host}:{self.broker_port}"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        values = {
            key: env[f"TIERTWIN_{key.upper()}"]
            for key in cls.model_fields
            if f"TIERTWIN_{key.upper()}" in env
        }
        try:
            return cls(**values)
        except ValidationError as exc:
            raise config_error(exc, None, field=lambda loc: f"TIERTWIN_{str(loc[0] if loc else '?').upper()}") from None
