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

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.trust import contexts

MAX_STATUS_BYTES = 4096


class StatusError(ValueError):
    """A status document that is not signed by the expected device."""


def sign_status(
    signing_key: Ed25519PrivateKey, device: str, site: str, ts: float, fields: Mapping[str, Any]
) -> bytes:
    """Canonical signed status bytes (fields must not use the envelope names)."""
    body = {**fields, "v": 1, "device": device, "site": site, "ts": round(ts, 3)}
    return contexts.sign_doc(signing_key, contexts.STATUS, body)


def verify_status(payload: bytes, device_public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The checked document, or StatusError."""
    try:
        return contexts.open_doc(
            payload, device_public_key, contexts.STATUS, what="status", max_bytes=MAX_STATUS_BYTES
        )
    except contexts.SignedDocError as exc:
        raise StatusError(f"status refused: {exc}") from None
