"""Domain separation for everything the backend key (and the device key, off the event path)
signs: each purpose prepends its own context to the signed bytes.

The backend has ONE Ed25519 key for commands, settlement receipts, sealed templates and claim
tokens. Without a context, bytes valid under one purpose could be presented as another (a
receipt as a command, a sealed blob as a token); with it, a signature made for one purpose never
verifies for another, whatever the bytes look like. Events keep their signature over the bare
canonical JSON (DESIGN §5; the backend ledger and fleet tools verify them that way) and are
signed by device keys, which sign nothing else but the status documents below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.trust import canonical
from edge.trust.event_schema import SIG_HEX

COMMAND = b"facegate/v1/command\0"
RECEIPT = b"facegate/v1/receipt\0"
SEALED_TEMPLATE = b"facegate/v1/sealed-template\0"
# Kept from before the other contexts existed: tokens already printed on paper stay valid.
CLAIM_TOKEN = b"facegate claim token v1\0"
STATUS = b"facegate/v1/status\0"  # device key: the retained …/status and …/status/state

ALL = (COMMAND, RECEIPT, SEALED_TEMPLATE, CLAIM_TOKEN, STATUS)


def signed_bytes(context: bytes, message: bytes) -> bytes:
    """The exact bytes signed and verified for `message` under `context`."""
    return context + message


class SignedDocError(ValueError):
    """A signed document that cannot be opened; `reason` is a fixed word for counters/audits."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def sign_doc(key: Ed25519PrivateKey, context: bytes, body: Mapping[str, Any]) -> bytes:
    """Canonical `{**body, sig}` with `sig` over `context` + the canonical body."""
    sig = key.sign(signed_bytes(context, canonical.dumps(dict(body)))).hex()
    return canonical.dumps({**body, "sig": sig})


def open_doc(
    payload: bytes,
    public_key: Ed25519PublicKey | None,
    context: bytes,
    *,
    what: str,
    max_bytes: int,
) -> dict[str, Any]:
    """The verified body (without `sig`) of a document signed by `sign_doc`, or SignedDocError
    with reason too_large / malformed / unsigned / signature. The size is checked before the
    payload is parsed; the signature before any field is trusted."""
    if len(payload) > max_bytes:
        raise SignedDocError("too_large", f"{what} is {len(payload)} bytes > {max_bytes}")
    try:
        doc = canonical.loads_canonical(payload)
    except canonical.CanonicalError as exc:
        raise SignedDocError("malformed", str(exc)) from exc
    if not isinstance(doc, dict):
        raise SignedDocError("malformed", f"{what} is not a JSON object")
    sig = doc.get("sig")
    if not isinstance(sig, str) or not SIG_HEX.fullmatch(sig):
        raise SignedDocError("unsigned", f"{what} has no valid 'sig'")
    if public_key is None:
        raise SignedDocError("unsigned", f"no [backend] public_key configured; {what}s refused")
    body = {k: v for k, v in doc.items() if k != "sig"}
    try:
        public_key.verify(bytes.fromhex(sig), signed_bytes(context, canonical.dumps(body)))
    except InvalidSignature:
        raise SignedDocError("signature", f"{what} signature does not verify") from None
    return body
