"""Signed downlink commands (backend -> device on `facegate/v1/<site>/<device>/cmd`).

A command is canonical JSON `{v:1, device, type, seq, ts, nonce, body, sig}`; `sig` is the
backend's Ed25519 signature (hex) over the canonical bytes without `sig`. The device accepts a
command only if the signature verifies against `mqtt.backend_public_key`, it is addressed to
this device, its type is known, its `ts` is within the freshness window, and its `seq` is
strictly greater than the last accepted one. The last seq is committed to SQLite before the
command is handed to its handler, so a replay (even after a reboot) is refused; a command whose
handler then crashes is not retried by replay - the backend issues a new one.
"""

from __future__ import annotations

import base64
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import FacegateError
from edge.trust import canonical

COMMAND_TYPES = ("templates.sync", "templates.revoke", "config.reload", "wipe")
MAX_COMMAND_BYTES = 256 * 1024  # a template sync carries sealed templates (~1 KB each)
MAX_AGE_S = 86_400.0  # matches the MQTT session expiry: older queued commands are stale
MAX_FUTURE_S = 300.0  # tolerated clock skew between backend and kiosk
DOWNLINK_FILE = "downlink.db"
_HEX128 = re.compile(r"[0-9a-f]{128}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class CommandError(FacegateError):
    """A refused downlink command; `reason` is one of: too_large, malformed, unsigned, signature,
    wrong_device, unknown_type, stale, replay."""

    prefix = "command refused"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Command:
    device: str
    type: str
    seq: int
    ts: float
    body: dict[str, Any]


def sign_command(
    backend_key: Ed25519PrivateKey,
    device: str,
    type: str,
    body: dict[str, Any],
    seq: int | None = None,
    ts: float | None = None,
    nonce: str | None = None,
) -> bytes:
    """Backend side: the signed payload. Default seq is ts in microseconds (increasing)."""
    if type not in COMMAND_TYPES:
        raise CommandError("unknown_type", f"unknown command {type!r}; one of {COMMAND_TYPES}")
    if not _ID.fullmatch(device):
        raise CommandError("malformed", f"device {device!r}: use [A-Za-z0-9_.-], ≤ 64")
    ts = time.time() if ts is None else ts
    cmd = {
        "v": 1,
        "device": device,
        "type": type,
        "seq": int(ts * 1e6) if seq is None else seq,
        "ts": round(ts, 3),
        "nonce": os.urandom(16).hex() if nonce is None else nonce,
        "body": body,
    }
    sig = backend_key.sign(canonical.dumps(cmd)).hex()
    return canonical.dumps({**cmd, "sig": sig})


def parse_public_key(hex_key: str) -> Ed25519PublicKey:
    """Backend public key from 64 hex chars (config `mqtt.backend_public_key`)."""
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key.strip()))
    except ValueError:
        raise CommandError(
            "malformed", "mqtt.backend_public_key must be 64 hex chars (the backend's Ed25519 key)"
        ) from None


class ReplayGuard:
    """Last accepted command seq per device, in SQLite (WAL, synchronous=FULL)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # owner-only state
        self._db = sqlite3.connect(
            str(path), isolation_level=None, timeout=30.0, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS cmd_seq (device TEXT PRIMARY KEY, last INTEGER NOT NULL)"
        )

    def accept(self, device: str, seq: int) -> bool:
        """Record `seq` if it is newer than the last accepted one; False for a replay."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT last FROM cmd_seq WHERE device = ?", (device,)
                ).fetchone()
                if row is not None and seq <= row[0]:
                    self._db.execute("ROLLBACK")
                    return False
                self._db.execute(
                    "INSERT INTO cmd_seq(device, last) VALUES (?, ?) "
                    "ON CONFLICT(device) DO UPDATE SET last = excluded.last",
                    (device, seq),
                )
                self._db.execute("COMMIT")
                return True
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()


def verify_command(
    payload: bytes,
    backend_public_key: Ed25519PublicKey | None,
    device_id: str,
    guard: ReplayGuard,
    now: float | None = None,
    max_age_s: float | None = MAX_AGE_S,
) -> Command:
    """Device side: the verified command, or CommandError with the reason (see module doc)."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError("too_large", f"command is {len(payload)} bytes > {MAX_COMMAND_BYTES}")
    try:
        cmd = canonical.loads_canonical(payload)
    except canonical.CanonicalError as exc:
        raise CommandError("malformed", str(exc)) from exc
    if not isinstance(cmd, dict):
        raise CommandError("malformed", "command is not a JSON object")
    sig = cmd.get("sig")
    if not isinstance(sig, str) or not _HEX128.fullmatch(sig):
        raise CommandError("unsigned", "command has no valid 'sig'")
    if backend_public_key is None:
        raise CommandError("unsigned", "no mqtt.backend_public_key configured; commands refused")
    body = {k: v for k, v in cmd.items() if k != "sig"}
    try:
        backend_public_key.verify(bytes.fromhex(sig), canonical.dumps(body))
    except InvalidSignature:
        raise CommandError("signature", "command signature does not verify") from None
    if set(body) != {"v", "device", "type", "seq", "ts", "nonce", "body"} or body["v"] != 1:
        raise CommandError("malformed", f"command fields {sorted(body)} are not the v1 set")
    seq, ts, inner = body["seq"], body["ts"], body["body"]
    if (
        not isinstance(seq, int)
        or isinstance(seq, bool)
        or seq < 1
        or not isinstance(ts, (int, float))
        or isinstance(ts, bool)
        or not isinstance(inner, dict)
    ):
        raise CommandError("malformed", "command seq/ts/body have the wrong type")
    if body["device"] != device_id:
        raise CommandError("wrong_device", f"command is for {str(body['device'])[:64]!r}")
    if body["type"] not in COMMAND_TYPES:
        raise CommandError("unknown_type", f"unknown command type {str(body['type'])[:40]!r}")
    now = time.time() if now is None else now
    if max_age_s is not None and not (now - max_age_s <= ts <= now + MAX_FUTURE_S):
        raise CommandError("stale", f"command ts {ts} is outside [now-{max_age_s:g}s, now+5min]")
    if not guard.accept(device_id, seq):
        raise CommandError("replay", f"command seq {seq} is not newer than the last accepted")
    return Command(device_id, str(body["type"]), seq, float(ts), inner)


# ---- standard handlers ----------------------------------------------------------------------


class TemplateStoreLike(Protocol):
    """The part of edge.templates.store.TemplateStore the command handlers use."""

    def import_sealed(self, blob: bytes, backend_public: Ed25519PublicKey) -> Any: ...
    def revoke(self, subject: str) -> Any: ...
    def wipe(self) -> int: ...
    def close(self) -> None: ...


MAX_SYNC_TEMPLATES = 100


def standard_handlers(
    open_store: Callable[[], TemplateStoreLike],
    backend_public: Ed25519PublicKey,
    on_config_reload: Callable[[], None] | None = None,
    on_wipe: Callable[[], None] | None = None,
) -> dict[str, Callable[[Command], None]]:
    """Handlers for the four command types; bodies:

    - `templates.sync`:   {"templates": [<base64 of a sealed template (edge.trust.sealed)>, ...]}
    - `templates.revoke`: {"subjects": ["s-1", ...]}
    - `config.reload`:    {}  -> on_config_reload()
    - `wipe`:             {}  -> store.wipe(), then on_wipe()
    The store is opened per command by `open_store()` because handlers run on the MQTT thread
    and a TemplateStore connection belongs to the thread that opened it.
    """

    def strings(cmd: Command, key: str) -> list[str]:
        items = cmd.body.get(key)
        if (
            not isinstance(items, list)
            or not 0 < len(items) <= MAX_SYNC_TEMPLATES
            or not all(isinstance(i, str) for i in items)
        ):
            raise CommandError("malformed", f"{cmd.type}: body needs {key!r}: a list of strings")
        return items

    def sync(cmd: Command) -> None:
        blobs = [base64.b64decode(b, validate=True) for b in strings(cmd, "templates")]
        store = open_store()
        try:
            for blob in blobs:
                store.import_sealed(blob, backend_public)
        finally:
            store.close()

    def revoke(cmd: Command) -> None:
        subjects = strings(cmd, "subjects")
        store = open_store()
        try:
            for subject in subjects:
                store.revoke(subject)
        finally:
            store.close()

    def reload(cmd: Command) -> None:
        if on_config_reload is None:
            raise CommandError("unknown_type", "config.reload is not supported by this process")
        on_config_reload()

    def wipe(cmd: Command) -> None:
        store = open_store()
        try:
            store.wipe()
        finally:
            store.close()
        if on_wipe is not None:
            on_wipe()

    return {
        "templates.sync": sync,
        "templates.revoke": revoke,
        "config.reload": reload,
        "wipe": wipe,
    }
