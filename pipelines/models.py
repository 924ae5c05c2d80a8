"""Models that flow down the tiers: identity, signing, publishing, and the slot that runs their lifecycle.

The cloud (or ``tiertwin pretrain``) publishes a :class:`ModelUpdate` record to the
compacted ``tiertwin.models`` topic, keyed by model name. A model is ``(name, version,
digest)``: the version is the newest on the topic plus one (:func:`latest_updates`; the
shipped pretrained model is version 1), the digest the SHA-256 of the payload. Every
update is signed with the deployment key (:mod:`~tiertwin.pipelines.signing`); the
signature and the digest are checked *before* the payload is unpickled (:func:`load_update`).

Agents keep each model in a :class:`ModelSlot`. A newer version runs in shadow beside
the live one, is promoted on a measured win, and is rolled back if it loses on
probation (:mod:`~tiertwin.pipelines.lifecycle`). Operators steer it with signed
commands (``action`` promote / reject / rollback) on the same topic, keyed
``<name>/control``. Every decision names the ``(name, version, revision)`` that made it;
the revision counts the online updates the live copy has taken since its version.

Training examples travel inside decisions: a decision's ``parameters`` carry the
feature vector it was made from under keys prefixed ``x_`` (see
:func:`features_to_parameters`), so the cloud can join a Decision with the
Outcome that measured it (by ``decision_id``) and learn ``x -> measured latency``
without re-deriving features.

>>> from river import linear_model
>>> key = b"doctest-key-0123456789abcdef"
>>> slot = ModelSlot("demand-latency", linear_model.LinearRegression(), version=1, key=key)
>>> slot.offer(model_update("demand-latency", linear_model.LinearRegression(intercept_lr=0.5), 2, key=key))
True
>>> slot.version, slot.shadow.version       # v2 runs in shadow; v1 still decides
(1, 2)
>>> slot.offer(command_update("promote", "demand-latency", 2, key=key)), slot.version
(True, 2)
>>> forged = {**model_update("demand-latency", linear_model.LinearRegression(), 3, key=key), "signature": "00"}
>>> try:
...     slot.offer(forged)
... except ModelRejected as exc:
...     print(exc.reason)
bad-signature
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tiertwin.errors import RecordRejected
from tiertwin.pipelines.lifecycle import (Candidate, PromotionPolicy, error_of, probation_verdict,
                                          shadow_verdict)
from tiertwin.pipelines.signing import check_signature, deployment_key, sign
from tiertwin.topics import MODELS

FORMAT = "river-pickle"
MODELS_TOPIC = MODELS
FEATURE_PREFIX = "x_"
PUBLISH = "publish"
COMMANDS = ("promote", "reject", "rollback")
EVENTS_KEPT = 50
log = logging.getLogger("tiertwin.models")


class ModelRejected(RecordRejected):
    """A ModelUpdate is refused before or while loading; ``reason`` is its dead-letter reason."""

    reason = "bad-model"


class ModelFormatError(ModelRejected):
    """A ModelUpdate payload cannot be loaded (unknown format or corrupt pickle)."""


def serialize(model: Any) -> bytes:
    return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)


def deserialize(payload: bytes, fmt: str = FORMAT) -> Any:
    """Unpickle a model payload. Only call it on a payload :func:`verify_update` has passed (see :func:`load_update`)."""
    if fmt != FORMAT:
        raise ModelFormatError(f"unsupported model format {fmt!r} (expected {FORMAT!r})")
    try:
        return pickle.loads(payload)
    except Exception as exc:  # pickle raises many types on corrupt input
        raise ModelFormatError(f"model payload does not load: {exc!r}") from exc


def payload_digest(payload: bytes) -> str:
    """SHA-256 of a payload, lowercase hex: the content part of a model's identity."""
    return hashlib.sha256(payload).hexdigest()


def verify_update(update: dict, key: bytes | None = None) -> None:
    """Raise :class:`ModelRejected` (reason ``unsigned-model``, ``bad-signature`` or ``digest-mismatch``)
    unless ``update`` is signed with the deployment key and its payload matches its digest. Loads nothing."""
    try:
        check_signature(update, key if key is not None else deployment_key())
    except RecordRejected as exc:
        raise ModelRejected(str(exc), reason=exc.reason) from None
    if update.get("action", PUBLISH) == PUBLISH and payload_digest(update["payload"]) != update.get("digest"):
        raise ModelRejected(f"{update['model_name']} v{update['version']}: payload does not match its digest",
                            reason="digest-mismatch")


def load_update(update: dict, key: bytes | None = None) -> Any:
    """The model of a ModelUpdate: signature and digest verified first, then unpickled."""
    verify_update(update, key)
    return deserialize(update["payload"], update.get("format", FORMAT))


def features_to_parameters(x: dict[str, float]) -> dict[str, float]:
    """``{"sinr_db": 12.0}`` -> ``{"x_sinr_db": 12.0}`` (numeric features only)."""
    return {FEATURE_PREFIX + k: float(v) for k, v in x.items() if isinstance(v, (int, float))}


def parameters_to_features(parameters: dict[str, float]) -> dict[str, float]:
    """Inverse of :func:`features_to_parameters`; other parameters are ignored."""
    n = len(FEATURE_PREFIX)
    return {k[n:]: v for k, v in parameters.items() if k.startswith(FEATURE_PREFIX)}


def model_update(name: str, model: Any, version: int, *, metrics: dict[str, float] | None = None,
                 window_start_ms: int = 0, window_end_ms: int = 0, trained_on: int = 0,
                 producer: str = "", key: bytes | None = None) -> dict:
    """A signed ModelUpdate record (see schemas/ModelUpdate.avsc) carrying ``model``."""
    payload = serialize(model)
    record = {
        "model_name": name, "version": int(version), "created_ms": int(time.time() * 1000), "format": FORMAT,
        "payload": payload, "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "training_window_start_ms": int(window_start_ms), "training_window_end_ms": int(window_end_ms),
        "trained_on": int(trained_on), "producer": producer, "digest": payload_digest(payload), "action": PUBLISH,
    }
    record["signature"] = sign(record, key if key is not None else deployment_key())
    return record


def command_update(action: str, name: str, version: int, *, producer: str = "tiertwin models",
                   key: bytes | None = None) -> dict:
    """A signed operator command about ``name`` ``version``: ``promote``, ``reject`` or ``rollback``."""
    if action not in COMMANDS:
        raise ValueError(f"action must be one of {COMMANDS}, not {action!r}")
    record = {
        "model_name": name, "version": int(version), "created_ms": int(time.time() * 1000), "format": FORMAT,
        "payload": b"", "metrics": {}, "training_window_start_ms": 0, "training_window_end_ms": 0,
        "trained_on": 0, "producer": producer, "digest": "", "action": action,
    }
    record["signature"] = sign(record, key if key is not None else deployment_key())
    return record


def control_key(name: str) -> str:
    """The Kafka key of a model's commands (compacted apart from its models)."""
    return f"{name}/control"


def publish_model(sink, name: str, model: Any, version: int, topic: str = MODELS_TOPIC, **details) -> dict:
    """Produce a signed ModelUpdate for ``model`` keyed by ``name`` and flush it; returns the record."""
    record = model_update(name, model, version, **details)
    sink.send(topic, "ModelUpdate", record, key=name)
    sink.flush()
    return record


def publish_command(sink, action: str, name: str, version: int, topic: str = MODELS_TOPIC, **details) -> dict:
    """Produce a signed command (keyed ``<name>/control``) and flush it; returns the record."""
    record = command_update(action, name, version, **details)
    sink.send(topic, "ModelUpdate", record, key=control_key(name))
    sink.flush()
    return record


def newest_verified(updates, key: bytes | None = None) -> dict[str, dict]:
    """The newest *published and verified* ModelUpdate per name among ``updates`` (others skipped)."""
    newest: dict[str, dict] = {}
    for update in updates:
        if update.get("action", PUBLISH) != PUBLISH:
            continue
        try:
            verify_update(update, key)
        except ModelRejected:
            continue
        seen = newest.get(update["model_name"])
        if seen is None or update["version"] > seen["version"]:
            newest[update["model_name"]] = update
    return newest


def read_models_topic(settings=None, topic: str = MODELS_TOPIC, idle_ms: int = 1_000,
                      schema: str = "tiertwin.ModelUpdate") -> list[dict]:
    """Every ``schema`` record on ``topic`` (the models topic by default), from its beginning until it stays
    quiet ``idle_ms``."""
    from tiertwin.connectors.kafka import TopicReader

    reader = TopicReader([topic], settings, on_undecodable="skip", client_id="tiertwin-models-reader")
    records: list[dict] = []
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_ms / 1000:
            batch = reader.poll(200)
            if batch:
                quiet_since = time.monotonic()
                records.extend(r.value for r in batch if r.schema == schema)
    finally:
        reader.close()
    return records


def next_version(updates, name: str, shipped: int = 1) -> int:
    """The version a publisher gives its next ``name``: the newest verified on the topic plus one; with none
    there, the one after the ``shipped`` pretrained version (which every twin already has)."""
    newest = newest_verified(updates).get(name)
    return max(newest["version"] if newest else 0, shipped) + 1


@dataclass
class ModelSlot:
    """One named model of a twin: the live version, its shadow candidate and, on probation, the previous one.

    Decisions read :meth:`current` (the live model and version, together) and :attr:`revision`; outcomes
    go through :meth:`learn`, which scores the shadow (or the previous model) beside the live one and
    applies the verdicts of :mod:`~tiertwin.pipelines.lifecycle`. ``policy=None`` swaps a verified newer
    version in at once; so does a slot whose model cannot be scored (no ``predict_one``, e.g. the bandits).
    The slot pickles whole (lock excluded): a checkpointed twin resumes the same version and revision.
    """

    name: str
    model: Any
    version: int = 0
    swaps: int = 0
    digest: str = ""
    revision: int = 0
    policy: PromotionPolicy | None = field(default_factory=PromotionPolicy)
    key: bytes | None = field(default=None, repr=False)   # None: the deployment key
    shadow: Candidate | None = None
    previous: Candidate | None = None
    rejected: set[int] = field(default_factory=set)
    events: list[dict] = field(default_factory=list)
    n_events: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state.pop("key", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("key", None)
        self._lock = threading.Lock()

    # -- arrivals ------------------------------------------------------------------------------
    def offer(self, update: dict) -> bool:
        """Take a ModelUpdate (a model or a command) for this slot; True if it changed something.

        A newer version is verified (signature, digest) before it is loaded, then shadowed (or swapped
        in, see the class doc). Raises :class:`ModelRejected` for an update that fails verification or
        does not load; the live model stays.
        """
        if update["model_name"] != self.name:
            return False
        action = update.get("action", PUBLISH)
        if action != PUBLISH:
            verify_update(update, self.key)
            return self.command(action, update["version"])
        version = update["version"]
        if version <= self.version or version in self.rejected or                 (self.shadow is not None and version <= self.shadow.version):
            return False
        model = load_update(update, self.key)
        if self.model is not None and type(model) is not type(self.model):
            raise ModelFormatError(f"{self.name} v{version} is a {type(model).__name__}, "
                                   f"not a {type(self.model).__name__} like the live model; not swapped")
        candidate = Candidate(model, version, update.get("digest", ""))
        if self.policy is None or not hasattr(self.model, "predict_one"):
            self._go_live(candidate, "promoted", keep_previous=False)
        else:
            self.shadow = candidate
            self._event("shadowing", version)
        return True

    def command(self, action: str, version: int) -> bool:
        """An operator's ``promote`` / ``reject`` / ``rollback`` of ``version``; True if it acted."""
        if action == "promote" and self.shadow is not None and self.shadow.version == version:
            self._promote("promoted-by-operator")
        elif action in ("reject", "rollback") and self.shadow is not None and self.shadow.version == version:
            self._reject("rejected-by-operator")    # a rollback replayed to a twin that only shadows V: V is bad
        elif action in ("reject", "rollback") and self.previous is not None and self.version == version:
            self._rollback("rolled-back-by-operator")
        else:
            return False
        return True

    # -- outcomes ------------------------------------------------------------------------------
    def learn(self, x: dict, y: float) -> None:
        """Learn one example online: scores the shadow / previous model beside the live one first."""
        live, shadow, previous = self.model, self.shadow, self.previous
        if shadow is not None or previous is not None:
            live_error = error_of(live, x, y)
            for other in (shadow, previous):
                if other is not None:
                    other.score.add(live_error, error_of(other.model, x, y))
                    try:
                        other.model.learn_one(x, y)
                    except Exception as exc:  # noqa: BLE001 - a candidate that cannot learn must not stop the live one
                        self._drop_broken(other, exc)
                        continue
                    other.revision += 1
            shadow, previous = self.shadow, self.previous
        live.learn_one(x, y)
        self.revision += 1
        if self.policy is not None:
            if shadow is not None:
                verdict = shadow_verdict(shadow.score, self.policy)
                if verdict == "promoted":
                    self._promote("promoted")
                elif verdict == "rejected":
                    self._reject("rejected")
            elif previous is not None:
                verdict = probation_verdict(previous.score, self.policy)
                if verdict == "rolled-back":
                    self._rollback("rolled-back")
                elif verdict == "stable":
                    self._event("stable", self.version, previous.score.figures())
                    self.previous = None

    # -- transitions ---------------------------------------------------------------------------
    def _drop_broken(self, other: Candidate, exc: Exception) -> None:
        """A shadow (rejected) or previous model (no longer a rollback target) whose ``learn_one`` raised."""
        if other is self.shadow:
            self.shadow = None
            self.rejected.add(other.version)
            self._event("rejected-broken", other.version, {"outcomes": float(other.score.n)})
        else:
            self.previous = None
            self._event("previous-dropped-broken", other.version)
        log.warning("%s v%d cannot learn (%r): dropped", self.name, other.version, exc)

    def _promote(self, event: str) -> None:
        shadow, self.shadow = self.shadow, None
        self._event(event, shadow.version, shadow.score.figures())
        self._go_live(shadow, None, keep_previous=True)

    def _reject(self, event: str) -> None:
        shadow, self.shadow = self.shadow, None
        self.rejected.add(shadow.version)
        self._event(event, shadow.version, shadow.score.figures())

    def _rollback(self, event: str) -> None:
        previous, self.previous = self.previous, None
        self.rejected.add(self.version)
        self._event(event, self.version, {**previous.score.figures(), "to_version": float(previous.version)})
        with self._lock:
            self.model, self.version, self.digest, self.revision = (previous.model, previous.version,
                                                                    previous.digest, previous.revision)
            self.swaps += 1

    def _go_live(self, candidate: Candidate, event: str | None, keep_previous: bool) -> None:
        old = Candidate(self.model, self.version, self.digest, self.revision)
        with self._lock:
            self.model, self.version, self.digest, self.revision = (candidate.model, candidate.version,
                                                                    candidate.digest, candidate.revision)
            self.swaps += 1
        self.previous = old if keep_previous else None
        if event is not None:
            self._event(event, candidate.version)

    def _event(self, event: str, version: int, figures: dict | None = None) -> None:
        self.n_events += 1
        self.events.append({"event": event, "version": version, "seq": self.n_events, "at_ms": int(time.time() * 1000),
                            **(figures or {})})
        del self.events[:-EVENTS_KEPT]

    def adopt(self, saved: "ModelSlot") -> bool:
        """Take this slot's checkpointed state (a restart): live version and revision, shadow, previous model,
        rejected versions. Not if the slot already runs a newer live version than the checkpoint; a newer
        shadow taken from the topic meanwhile stays. True if adopted."""
        if saved.name != self.name or saved.version < self.version:
            return False
        newer_shadow = self.shadow if self.shadow is not None and self.shadow.version > max(
            saved.version, saved.shadow.version if saved.shadow is not None else 0) else None
        with self._lock:
            for name in ("model", "version", "digest", "revision", "swaps", "shadow", "previous", "events",
                         "n_events"):
                setattr(self, name, getattr(saved, name))
            self.rejected = self.rejected | saved.rejected
            if newer_shadow is not None:
                self.shadow = newer_shadow
        return True

    def current(self) -> tuple[Any, int]:
        """``(model, version)`` read together, so a decision never mixes two versions."""
        with self._lock:
            return self.model, self.version

    def status_record(self, event: dict, tier: str, instance: str) -> dict:
        """The ModelStatus record (schemas/ModelStatus.avsc) of one of :attr:`events`, as ``instance`` of
        ``tier`` reports it; its key on the compacted status topic is ``<model>/<instance>``."""
        figures = {k: float(v) for k, v in event.items() if k not in ("event", "version", "seq", "at_ms")
                   and isinstance(v, (int, float)) and math.isfinite(v)}
        return {"model_name": self.name, "tier": tier, "instance": instance, "event": event["event"],
                "version": event["version"], "live_version": self.version, "revision": self.revision,
                "shadow_version": None if self.shadow is None else self.shadow.version, "figures": figures,
                "at_ms": event["at_ms"]}

    def status(self) -> dict:
        """Live, shadow and previous versions with their figures (for metrics, the CLI and the docs)."""
        return {"name": self.name, "live": self.version, "revision": self.revision, "digest": self.digest,
                "shadow": None if self.shadow is None else {"version": self.shadow.version,
                                                              **self.shadow.score.figures()},
                "previous": None if self.previous is None else {"version": self.previous.version,
                                                                  **self.previous.score.figures()},
                "rejected": sorted(self.rejected), "events": list(self.events[-5:])}
