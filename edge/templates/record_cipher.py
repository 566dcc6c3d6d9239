"""Record format of the template store: metadata, AAD and the per-record AES-256-GCM cipher.

A stored record is `nonce (12 B) || AES-256-GCM(float32 LE embedding)` under the device's
template key with AAD = lp16(device id) || lp16(subject) || u32 version || i64 expires_s.
The AAD makes a record valid only in its own row: moving it to another subject, another
device, another version, or editing its expiry makes authentication fail.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from numpy.typing import NDArray

from edge.errors import TemplateError

NONCE_BYTES = 12
KEY_CHECK_PLAIN = b"facegate template key check v1"
ACTIVE, REVOKED, EXPIRED = "active", "revoked", "expired"


@dataclass(frozen=True)
class TemplateInfo:
    """Metadata of one template (never the embedding)."""

    subject: str
    version: int
    state: str  # active | revoked | expired
    origin: str  # enrol | import
    created_s: int
    expires_s: int

    def as_dict(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "version": self.version,
            "state": self.state,
            "origin": self.origin,
            "created": iso_utc(self.created_s),
            "expires": iso_utc(self.expires_s),
        }


def iso_utc(ts: int) -> str:
    """Unix seconds as an ISO-8601 UTC timestamp."""
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"@{ts}"


def lp16(data: bytes) -> bytes:
    """u16 big-endian length prefix + data: an unambiguous concatenation element."""
    return struct.pack(">H", len(data)) + data


def record_aad(device_id: str, subject: str, version: int, expires_s: int) -> bytes:
    """AAD binding a record to its device, subject, version and expiry."""
    return (
        lp16(device_id.encode("utf-8"))
        + lp16(subject.encode("utf-8"))
        + struct.pack(">Iq", version, expires_s)
    )


def normalised(embedding: NDArray[np.floating], subject: str) -> NDArray[np.float32]:
    """(dim,) float32 unit vector; TemplateError for an empty or non-finite embedding."""
    vec = np.asarray(embedding, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vec))
    if vec.size == 0 or not np.isfinite(norm) or norm == 0.0:
        raise TemplateError(f"subject {subject!r}: embedding is empty or not finite; re-capture")
    return (vec / norm).astype(np.float32)


def cosine(a: NDArray[np.floating], b: NDArray[np.floating]) -> float:
    """Cosine similarity of two (dim,) vectors; -1 when shapes differ or one is zero."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0 or a.shape != b.shape:
        return -1.0
    return float(np.dot(a, b) / (na * nb))


class RecordCipher:
    """AES-256-GCM under the template key of one device."""

    def __init__(self, device_id: str, template_key: bytes) -> None:
        self.device_id = device_id
        self._aead = AESGCM(template_key)

    def seal(self, subject: str, version: int, expires_s: int, vec: NDArray[np.float32]) -> bytes:
        nonce = os.urandom(NONCE_BYTES)  # random 96-bit nonce per record (and per rewrite)
        aad = record_aad(self.device_id, subject, version, expires_s)
        return nonce + self._aead.encrypt(nonce, vec.astype("<f4").tobytes(), aad)

    def open(
        self, subject: str, version: int, expires_s: int, record: bytes
    ) -> NDArray[np.float32]:
        aad = record_aad(self.device_id, subject, version, expires_s)
        try:
            plain = self._aead.decrypt(record[:NONCE_BYTES], record[NONCE_BYTES:], aad)
        except (InvalidTag, ValueError):
            raise TemplateError(
                f"subject {subject!r}: record fails authentication (modified on disk); "
                f"revoke it and re-enrol or resync from the backend"
            ) from None
        if len(plain) == 0 or len(plain) % 4:
            raise TemplateError(f"subject {subject!r}: record has a bad length; re-enrol")
        return np.frombuffer(plain, dtype="<f4").astype(np.float32)

    def key_check(self) -> bytes:
        """A small authenticated value telling later whether the key still matches the store."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, KEY_CHECK_PLAIN, lp16(self.device_id.encode()))

    def key_matches(self, check: bytes) -> bool:
        try:
            aad = lp16(self.device_id.encode())
            return self._aead.decrypt(check[:NONCE_BYTES], check[NONCE_BYTES:], aad) == (
                KEY_CHECK_PLAIN
            )
        except (InvalidTag, ValueError):
            return False
