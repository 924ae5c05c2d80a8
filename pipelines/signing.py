"""The deployment key that signs model updates, and the HMAC-SHA256 signature over one.

Every publisher signs a ModelUpdate (and an operator command) with the deployment key; every
agent and device runtime verifies the signature and the payload's SHA-256 digest *before* the
payload is unpickled, so a client that can write to ``tiertwin.models`` cannot make a twin run code.

The key is 32 random bytes in a file, mode 0600: ``$TIERTWIN_MODEL_KEY_FILE`` if set (a path, never
the key itself), else ``$TIERTWIN_HOME/model-signing.key``. ``scripts/setup`` creates it; otherwise
the first process that needs it does (``O_EXCL``, so two first users agree on one key). Copy that
file to every host of the deployment.

>>> key = b"k" * 32
>>> update = {"action": "publish", "model_name": "m", "version": 2, "digest": "ab", "payload": b"x"}
>>> update["signature"] = sign(update, key)
>>> check_signature(update, key)
>>> try:
...     check_signature({**update, "version": 3}, key)
... except BadSignature as exc:
...     print(exc.reason)
bad-signature
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from tiertwin.errors import ConfigError, RecordRejected
from tiertwin.settings import Settings

KEY_FILE_ENV = "TIERTWIN_MODEL_KEY_FILE"
KEY_FILE_NAME = "model-signing.key"
KEY_BYTES = 32


class BadSignature(RecordRejected):
    """A model update (or command) is unsigned or its signature is not the deployment key's."""

    reason = "bad-signature"


def key_path(settings: Settings | None = None) -> Path:
    """Where the deployment key lives: ``$TIERTWIN_MODEL_KEY_FILE``, else ``<home>/model-signing.key``."""
    override = os.environ.get(KEY_FILE_ENV)
    if override:
        return Path(override)
    return (settings or Settings.from_env()).home / KEY_FILE_NAME


def ensure_key(path: Path) -> bytes:
    """The key in ``path``, created (32 random bytes, mode 0600) if the file does not exist."""
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:     # another process created it first: use theirs
        return _read(path)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(KEY_BYTES))
    return _read(path)


def _read(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) < 16:
        raise ConfigError(f"{path}: a model-signing key of {len(key)} bytes is too short (need at least 16)")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise ConfigError(f"{path}: the model-signing key is readable by others; chmod 600 it")
    return key


_KEYS: dict[Path, bytes] = {}


def deployment_key(settings: Settings | None = None) -> bytes:
    """The deployment key (read once per path and process; created on first use)."""
    path = key_path(settings)
    key = _KEYS.get(path)
    if key is None:
        key = _KEYS[path] = ensure_key(path)
    return key


def _message(update: dict) -> bytes:
    # Each field length-prefixed, so no two different updates sign the same bytes.
    parts = [update.get("action", "publish").encode(), update["model_name"].encode(),
             str(int(update["version"])).encode(), update.get("digest", "").encode(), bytes(update.get("payload", b""))]
    return b"".join(len(p).to_bytes(8, "big") + p for p in parts)


def sign(update: dict, key: bytes) -> str:
    """HMAC-SHA256 of the update's action, name, version, digest and payload (lowercase hex)."""
    return hmac.new(key, _message(update), hashlib.sha256).hexdigest()


def check_signature(update: dict, key: bytes) -> None:
    """Raise :class:`BadSignature` (reason ``unsigned-model`` or ``bad-signature``) unless signed with ``key``."""
    signature = update.get("signature") or ""
    label = f"{update.get('model_name')} v{update.get('version')}"
    if not signature:
        raise BadSignature(f"{label}: unsigned (no signature); refused", reason="unsigned-model")
    if not hmac.compare_digest(signature, sign(update, key)):
        raise BadSignature(f"{label}: signature does not match (not signed with this deployment's key, or altered)")
