"""Models that flow down the tiers: serialization, publishing, and atomic hot swap.

The cloud (or ``tiertwin pretrain``) publishes a :class:`ModelUpdate` record to the
compacted ``tiertwin.models`` topic, keyed by model name. Agents keep each model
in a :class:`ModelSlot` and swap it between records when a newer version arrives;
every decision names the ``(name, version)`` that made it.

Training examples travel inside decisions: a decision's ``parameters`` carry the
feature vector it was made from under keys prefixed ``x_`` (see
:func:`features_to_parameters`), so the cloud can join a Decision with the
Outcome that measured it (by ``decision_id``) and learn ``x -> measured latency``
without re-deriving features.

>>> from river import linear_model
>>> slot = ModelSlot("demand-latency", linear_model.LinearRegression(), version=0)
>>> update = {"model_name": "demand-latency", "version": 2, "format": FORMAT,
...           "payload": serialize(linear_model.LinearRegression(intercept_lr=0.5))}
>>> slot.offer(update)
True
>>> slot.version, slot.offer({**update, "version": 1})
(2, False)
"""

from __future__ import annotations

import pickle
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tiertwin.errors import TiertwinError
from tiertwin.topics import MODELS

FORMAT = "river-pickle"
MODELS_TOPIC = MODELS
FEATURE_PREFIX = "x_"


class ModelFormatError(TiertwinError):
    """A ModelUpdate payload cannot be loaded (unknown format or corrupt pickle)."""


def serialize(model: Any) -> bytes:
    return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)


def deserialize(payload: bytes, fmt: str = FORMAT) -> Any:
    """Load a model payload. Only tiertwin's own models topic should be trusted with pickles."""
    if fmt != FORMAT:
        raise ModelFormatError(f"unsupported model format {fmt!r} (expected {FORMAT!r})")
    try:
        return pickle.loads(payload)
    except Exception as exc:  # pickle raises many types on corrupt input
        raise ModelFormatError(f"model payload does not load: {exc!r}") from exc


def features_to_parameters(x: dict[str, float]) -> dict[str, float]:
    """``{"sinr_db": 12.0}`` -> ``{"x_sinr_db": 12.0}`` (numeric features only)."""
    return {FEATURE_PREFIX + k: float(v) for k, v in x.items() if isinstance(v, (int, float))}


def parameters_to_features(parameters: dict[str, float]) -> dict[str, float]:
    """Inverse of :func:`features_to_parameters`; other parameters are ignored."""
    n = len(FEATURE_PREFIX)
    return {k[n:]: v for k, v in parameters.items() if k.startswith(FEATURE_PREFIX)}


def model_update(name: str, model: Any, version: int, *, metrics: dict[str, float] | None = None,
                 window_start_ms: int = 0, window_end_ms: int = 0, trained_on: int = 0,
                 producer: str = "") -> dict:
    """A ModelUpdate record (see schemas/ModelUpdate.avsc) carrying ``model``."""
    return {
        "model_name": name, "version": int(version), "created_ms": int(time.time() * 1000), "format": FORMAT,
        "payload": serialize(model), "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "training_window_start_ms": int(window_start_ms), "training_window_end_ms": int(window_end_ms),
        "trained_on": int(trained_on), "producer": producer,
    }


def publish_model(sink, name: str, model: Any, version: int, topic: str = MODELS_TOPIC, **details) -> dict:
    """Produce a ModelUpdate for ``model`` keyed by ``name`` and flush it; returns the record."""
    record = model_update(name, model, version, **details)
    sink.send(topic, "ModelUpdate", record, key=name)
    sink.flush()
    return record


@dataclass
class ModelSlot:
    """The live version of one named model; swapped atomically, never downgraded."""

    name: str
    model: Any
    version: int = 0
    swaps: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def offer(self, update: dict) -> bool:
        """Swap in ``update`` (a ModelUpdate record) if it is this model and newer. Returns True if swapped."""
        if update["model_name"] != self.name or update["version"] <= self.version:
            return False
        model = deserialize(update["payload"], update.get("format", FORMAT))
        if self.model is not None and type(model) is not type(self.model):
            raise ModelFormatError(f"{self.name} v{update['version']} is a {type(model).__name__}, "
                                   f"not a {type(self.model).__name__} like the live model; not swapped")
        with self._lock:
            self.model, self.version = model, update["version"]
            self.swaps += 1
        return True

    def current(self) -> tuple[Any, int]:
        """``(model, version)`` read together, so a decision never mixes two versions."""
        with self._lock:
            return self.model, self.version
