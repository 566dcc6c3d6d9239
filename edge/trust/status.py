"""Signed status documents of a device: the retained `…/status` (online/offline) and
`…/status/state` (the kiosk's display state), signed by the device key under `contexts.STATUS`.

Retained topics are what a fleet dashboard trusts at a glance; anyone who may publish on the
broker could otherwise pin a kiosk "online" while it is dead. The document is
`{v:1, device, site, ts, <fields>, sig}` with `sig` over `contexts.STATUS` + canonical JSON
without `sig`; the backend checks it with the device's registered signing key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.trust import canonical, contexts
from edge.trust.event_schema import SIG_HEX


class StatusError(ValueError):
    """A status document that is not signed by the expected device."""


def sign_status(
    signing_key: Ed25519PrivateKey, device: str, site: str, ts: float, fields: Mapping[str, Any]
) -> bytes:
    """Canonical signed status bytes (fields must not use the envelope names)."""
    body = {**fields, "v": 1, "device": device, "site": site, "ts": round(ts, 3)}
    message = canonical.dumps(body)
    sig = signing_key.sign(contexts.signed_bytes(contexts.STATUS, message)).hex()
    return canonical.dumps({**body, "sig": sig})


def verify_status(payload: bytes, device_public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The checked document, or StatusError."""
    try:
        doc = canonical.loads_canonical(payload)
    except canonical.CanonicalError as exc:
        raise StatusError(f"status is not canonical JSON: {exc}") from exc
    if not isinstance(doc, dict) or not SIG_HEX.fullmatch(str(doc.get("sig", ""))):
        raise StatusError("status is not a signed document")
    body = {k: v for k, v in doc.items() if k != "sig"}
    try:
        device_public_key.verify(
            bytes.fromhex(doc["sig"]),
            contexts.signed_bytes(contexts.STATUS, canonical.dumps(body)),
        )
    except InvalidSignature:
        raise StatusError("status signature does not verify") from None
    return body
