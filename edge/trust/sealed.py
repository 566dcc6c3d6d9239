"""Sealed templates: a template encrypted by the backend to one device and signed by the backend.

Used by `facegate templates import FILE` and by the MQTT downlink template sync. Format v1
(all integers big-endian; `lp16(x)` = u16 length then bytes):

    "FGST" | u8 format=1 | lp16(device id) | lp16(subject) | u32 version
    | i64 created_s | i64 expires_s | u16 dim | 32 B ephemeral X25519 public | 12 B nonce
    | u32 n | n B ciphertext (AES-256-GCM of `dim` little-endian float32, 16 B tag included)
    | 64 B Ed25519 signature (backend key) over every byte before it

Sealing key = HKDF-SHA256(X25519(ephemeral, device), salt = ephemeral_pub || device_pub,
info = "facegate sealed template v1"); the AES-GCM AAD is the whole header (everything before
`n`), so device id, subject, version and validity are bound to the ciphertext as well as signed.
A file may hold the raw bytes or their base64 text (what a JSON/MQTT command carries).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from numpy.typing import NDArray

from edge.errors import KeyStoreError, TemplateError
from edge.trust.keys import DeviceKeys

MAGIC = b"FGST"
FORMAT = 1
HKDF_INFO = b"facegate sealed template v1"
SIG_BYTES = 64
MAX_DIM = 4096
BACKEND_KEY_FILE = "backend-signing.key"
BACKEND_PUB_FILE = "backend-signing.pub"

# Pseudonymous subject ids: short, printable, no separators that could break a log line or topic.
SUBJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


def check_subject(subject: str) -> str:
    """Return `subject` if it is a valid pseudonymous id, else raise TemplateError."""
    if not SUBJECT_RE.fullmatch(subject):
        shown = subject if len(subject) <= 40 and subject.isprintable() else "<unprintable>"
        raise TemplateError(
            f"subject {shown!r}: not a valid subject id; use 1-128 characters "
            f"from A-Z a-z 0-9 . _ : @ - (starting with a letter or digit)"
        )
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


def _lp16(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _raw_public(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _derive(shared: bytes, eph_pub: bytes, device_pub: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + device_pub, info=HKDF_INFO)
    return hkdf.derive(shared)


def seal_template(
    backend_key: Ed25519PrivateKey,
    device_sealing_public: X25519PublicKey | bytes,
    device_id: str,
    subject: str,
    version: int,
    embedding: NDArray[np.floating],
    created_s: int,
    expires_s: int,
) -> bytes:
    """Backend side: seal `embedding` ((dim,) float) for one device and sign it; returns bytes."""
    check_subject(subject)
    if isinstance(device_sealing_public, bytes):
        device_sealing_public = X25519PublicKey.from_public_bytes(device_sealing_public)
    vec = np.asarray(embedding, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vec))
    if not (0 < vec.size <= MAX_DIM) or not np.isfinite(norm) or norm == 0.0:
        raise TemplateError(f"subject {subject!r}: embedding is empty or not finite; re-enrol")
    plain = (vec / norm).astype("<f4").tobytes()
    eph = X25519PrivateKey.generate()
    eph_pub, dev_pub = _raw_public(eph.public_key()), _raw_public(device_sealing_public)
    key = _derive(eph.exchange(device_sealing_public), eph_pub, dev_pub)
    nonce = os.urandom(12)
    header = (
        MAGIC
        + bytes([FORMAT])
        + _lp16(device_id.encode("utf-8"))
        + _lp16(subject.encode("utf-8"))
        + struct.pack(">Iqq H", version, created_s, expires_s, vec.size)
        + eph_pub
        + nonce
    )
    ct = AESGCM(key).encrypt(nonce, plain, header)
    body = header + struct.pack(">I", len(ct)) + ct
    return body + backend_key.sign(body)


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
    who = f"subject {subject!r}" if SUBJECT_RE.fullmatch(subject) else "sealed template"
    try:
        backend_public.verify(sig, blob[:body_end])
    except InvalidSignature:
        raise TemplateError(
            f"{who}: backend signature does not verify (tampered or signed by another backend); "
            f"check mqtt.backend_public_key and request a fresh copy"
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
        key = _derive(shared, eph_pub, _raw_public(keys.sealing_key.public_key()))
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


# --- backend / enrolment-authority key pair -----------------------------------------------


def generate_backend_keys(directory: Path) -> Ed25519PrivateKey:
    """Create `backend-signing.key` (0600, raw) and `backend-signing.pub` (hex) in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path = directory / BACKEND_KEY_FILE
    key = Ed25519PrivateKey.generate()
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyStoreError(
            f"{key_path} already exists; backend keys are never overwritten"
        ) from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key.private_bytes_raw())
        os.fsync(fd)
    finally:
        os.close(fd)
    (directory / BACKEND_PUB_FILE).write_text(_raw_public(key.public_key()).hex() + "\n")
    return key


def load_backend_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read the backend's Ed25519 private key (32 raw bytes or 64 hex chars, mode 0600)."""
    path = Path(path)
    try:
        st = path.stat()
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"cannot read backend key {path} ({exc.strerror})") from None
    if st.st_mode & 0o077:
        raise KeyStoreError(f"{path} is readable by group or others; run `chmod 600 {path}`")
    if len(raw) != 32:
        try:
            raw = bytes.fromhex(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raw = b""
    if len(raw) != 32:
        raise KeyStoreError(f"backend key {path} is not 32 raw bytes or 64 hex characters")
    return Ed25519PrivateKey.from_private_bytes(raw)


def backend_public_hex(key: Ed25519PrivateKey) -> str:
    """Hex of the backend's public key, the value of config `mqtt.backend_public_key`."""
    return _raw_public(key.public_key()).hex()


def parse_backend_public(hex_key: str) -> Ed25519PublicKey:
    """Ed25519 public key from `mqtt.backend_public_key` (64 hex chars)."""
    try:
        raw = bytes.fromhex(hex_key.strip())
        if len(raw) != 32:
            raise ValueError
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise KeyStoreError(
            "mqtt.backend_public_key is missing or not 64 hex characters; set it to the "
            "backend's public key (backend-signing.pub)"
        ) from None
