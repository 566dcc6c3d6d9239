"""Signed downlink commands (backend -> device on `facegate/v1/<site>/<device>/cmd`): checking.

A command is canonical JSON `{v:1, device, type, seq, ts, nonce, body, sig}`; `sig` is the
backend's Ed25519 signature (hex) over `contexts.COMMAND` + the canonical bytes without `sig`
(edge/trust/contexts.py: a receipt or any other backend signature never verifies as a command).
The device accepts a command only if the signature verifies against `[backend] public_key`,
it is addressed to this device, its type is known, its `ts` is within the freshness window, and
its `seq` is strictly greater than the last accepted one. The last seq is committed to SQLite
before the command is handed to its handler, so a replay (even after a reboot) is refused; a
command whose handler then crashes is not retried by replay - the backend issues a new one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.errors import RefusedError
from edge.trust import contexts

COMMAND_TYPES = ("templates.sync", "templates.revoke", "config.reload", "wipe")
MAX_COMMAND_BYTES = 256 * 1024  # a template sync carries sealed templates (~1 KB each)
MAX_AGE_S = 86_400.0  # matches the MQTT session expiry: older queued commands are stale
MAX_FUTURE_S = 300.0  # tolerated clock skew between backend and kiosk




class CommandError(RefusedError):
    """A refused downlink command; `reason` is one of: too_large, malformed, unsigned, signature,
    wrong_device, unknown_type, stale, replay."""

    prefix = "command refused"


@dataclass(frozen=True)
class Command:
    device: str
    type: str
    seq: int
    ts: float
    body: dict[str, Any]


class SeqGuard(Protocol):
    def accept(self, device: str, seq: int) -> bool:
        """Durably record `seq` if newer than the last accepted one; False for a replay."""
        ...


def verify_command(
    payload: bytes,
    backend_public_key: Ed25519PublicKey | None,
    device_id: str,
    guard: SeqGuard,
    now: float | None = None,
    max_age_s: float | None = MAX_AGE_S,
) -> Command:
    """Device side: the verified command, or CommandError with the reason (see module doc)."""
    try:
        body = contexts.open_doc(
            payload, backend_public_key, contexts.COMMAND,
            what="command", max_bytes=MAX_COMMAND_BYTES,
        )
    except contexts.SignedDocError as exc:
        raise CommandError(exc.reason, str(exc)) from None
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
