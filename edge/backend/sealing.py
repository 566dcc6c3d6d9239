"""Backend side of sealed templates: encrypt a template to one device and sign it (format in
edge/trust/sealed.py, which opens it on the device)."""

from __future__ import annotations

import os
import struct

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from numpy.typing import NDArray

from edge.errors import TemplateError
from edge.trust import contexts
from edge.trust.sealed import FORMAT, MAGIC, MAX_DIM, check_subject, derive_key, lp16, raw_public


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
    eph_pub, dev_pub = raw_public(eph.public_key()), raw_public(device_sealing_public)
    key = derive_key(eph.exchange(device_sealing_public), eph_pub, dev_pub)
    nonce = os.urandom(12)
    header = (
        MAGIC
        + bytes([FORMAT])
        + lp16(device_id.encode("utf-8"))
        + lp16(subject.encode("utf-8"))
        + struct.pack(">Iqq H", version, created_s, expires_s, vec.size)
        + eph_pub
        + nonce
    )
    ct = AESGCM(key).encrypt(nonce, plain, header)
    body = header + struct.pack(">I", len(ct)) + ct
    return body + backend_key.sign(contexts.signed_bytes(contexts.SEALED_TEMPLATE, body))
