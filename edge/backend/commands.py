"""Backend side of the downlink: sign a command for one device (checked by edge.trust.commands)."""

from __future__ import annotations

import os
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.ids import id_problem
from edge.trust import contexts
from edge.trust.commands import COMMAND_TYPES, CommandError


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
    problem = id_problem("device", device)
    if problem:
        raise CommandError("malformed", problem)
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
    return contexts.sign_doc(backend_key, contexts.COMMAND, cmd)
