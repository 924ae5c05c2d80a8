"""Where tiertwin keeps its state and how its clients reach Kafka.

Everything is read from the environment once (``TIERTWIN_*``), validated by
pydantic, and passed around as a frozen object.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tiertwin.errors import ConfigError


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
            first = exc.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else "?"
            raise ConfigError(f"TIERTWIN_{field.upper()}: {first['msg']}") from None
