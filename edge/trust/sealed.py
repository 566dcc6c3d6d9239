"""Sealed templates: a template encrypted by the backend to one device and signed by the backend.

This module opens them on the device; sealing is the backend's (edge/backend/sealing.py).

Used by `facegate templates import FILE` and by the MQTT downlink template sync. Format v1
(all integers big-endian; `lp16(x)` = u16 length then bytes):

    "FGST" | u8 format=1 | lp16(device id) | lp16(subject) | u32 version
    | i64 created_s | i64 expires_s | u16 dim | 32 B ephemeral X25519 public | 12 B nonce
    | u32 n | n B ciphertext (AES-256-GCM of `dim` little-endian float32, 16 B tag included)
    | 64 B Ed25519 signature (backend key) over `contexts.SEALED_TEMPLATE` + every byte before it

Sealing key = HKDF-SHA256(X25519(ephemeral, device), salt = ephemeral_pub || device_pub,
info = "facegate sealed template v1"); the AES-GCM AAD is the whole header (everything before
`n`), so device id, subject, version and validity are bound to the ciphertext as well as signed.
A file may hold the raw bytes or their base64 text (what a JSON/MQTT command carries).
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from numpy.typing import NDArray

from edge.errors import TemplateError
from edge.ids import ID_RULE, is_valid_id
from edge.trust import contexts
from edge.trust.keys import DeviceKeys

MAGIC = b"FGST"
FORMAT = 1
HKDF_INFO = b"facegate sealed template v1"
SIG_BYTES = 64
MAX_DIM = 4096
# The largest sealed template (MAX_DIM floats, longest ids) is ~16.6 KB, ~22 KB as base64 text.
MAX_SEALED_FILE_BYTES = 64 << 10


def check_subject(subject: str) -> str:
    """Return `subject` if it follows the id rule (edge/ids.py), else raise TemplateError."""
    if not is_valid_id(subject):
        shown = subject if len(subject) <= 40 and subject.isprintable() else "<unprintable>"
        raise TemplateError(f"subject {shown!r}: not a valid subject id; use {ID_RULE}")
    return subject


@dataclass(frozen=True)
class SealedTemplate:
    """A template opened on the device: metadata plus the embedding (keep only in memory)."""

    device_id: str
    subject: str
    version: int
    created_s: int
    expires_s: int
    embedding: NDArray[np.float32]  # (dim,) L2-normalised

    def __repr__(self) -> str:  # the embedding never goes into a log line or traceback
        return f"SealedTemplate(subject={self.subject!r}, version={self.version})"


def lp16(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def raw_public(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def derive_key(shared: bytes, eph_pub: bytes, device_pub: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + device_pub, info=HKDF_INFO)
    return hkdf.derive(shared)


class _Reader:
    """Bounds-checked cursor; every shortfall is a TemplateError, never an IndexError."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise TemplateError(f"sealed template is truncated in {what}; get a fresh copy")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def text(self, what: str) -> str:
        (n,) = struct.unpack(">H", self.take(2, what))
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise TemplateError(
                f"sealed template has a malformed {what}; get a fresh copy"
            ) from None


def decode_sealed_file(raw: bytes) -> bytes:
    """Accept raw sealed bytes or their base64 text (e.g. copied out of a JSON command)."""
    if raw.startswith(MAGIC):
        return raw
    try:
        decoded = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if decoded.startswith(MAGIC):
        return decoded
    raise TemplateError("not a sealed template (bad magic); check the file given to import")


def open_sealed(blob: bytes, keys: DeviceKeys, backend_public: Ed25519PublicKey) -> SealedTemplate:
    """Device side: check signature, device id, integrity; decrypt. TemplateError on any fault."""
    r = _Reader(blob)
    if r.take(4, "magic") != MAGIC:
        raise TemplateError("not a sealed template (bad magic); check the file given to import")
    fmt = r.take(1, "format")[0]
    if fmt != FORMAT:
        raise TemplateError(f"sealed template format {fmt} is not supported; update the firmware")
    device_id = r.text("device id")
    subject = r.text("subject")
    version, created_s, expires_s, dim = struct.unpack(">Iqq H", r.take(22, "header"))
    eph_pub = r.take(32, "ephemeral key")
    nonce = r.take(12, "nonce")
    header_end = r.pos
    (n,) = struct.unpack(">I", r.take(4, "ciphertext length"))
    ct = r.take(n, "ciphertext")
    body_end = r.pos
    sig = r.take(SIG_BYTES, "signature")
    if r.pos != len(blob):
        raise TemplateError("sealed template has trailing bytes; get a fresh copy")
    # Names in messages come from the (not yet authenticated) header: shown, never trusted.
    who = f"subject {subject!r}" if is_valid_id(subject) else "sealed template"
    try:
        backend_public.verify(sig, contexts.signed_bytes(contexts.SEALED_TEMPLATE, blob[:body_end]))
    except InvalidSignature:
        raise TemplateError(
            f"{who}: backend signature does not verify (tampered or signed by another backend); "
            f"check [backend] public_key and request a fresh copy"
        ) from None
    check_subject(subject)
    if device_id != keys.device_id:
        raise TemplateError(
            f"{who}: sealed for device {device_id!r}, this is {keys.device_id!r}; "
            f"request a template sealed for this device"
        )
    if not (0 < dim <= MAX_DIM) or n != 4 * dim + 16:
        raise TemplateError(f"{who}: ciphertext length does not match dimension {dim}")
    try:
        peer = X25519PublicKey.from_public_bytes(eph_pub)
        shared = keys.sealing_key.exchange(peer)
        key = derive_key(shared, eph_pub, raw_public(keys.sealing_key.public_key()))
        plain = AESGCM(key).decrypt(nonce, ct, blob[:header_end])
    except (InvalidTag, ValueError):
        raise TemplateError(
            f"{who}: cannot be decrypted with this device's sealing key (sealed to another "
            f"device key); re-register `facegate keys public` with the backend"
        ) from None
    vec = np.frombuffer(plain, dtype="<f4").astype(np.float32)
    norm = float(np.linalg.norm(vec))
    if not np.all(np.isfinite(vec)) or not 0.5 < norm < 1.5:
        raise TemplateError(f"{who}: embedding is not normalised; the backend must re-seal it")
    return SealedTemplate(device_id, subject, version, created_s, expires_s, vec / norm)
