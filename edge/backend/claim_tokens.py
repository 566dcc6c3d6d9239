"""Issue QR claim tokens (see `edge.trust.claim_tokens` for the format) and draw their QR code."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.trust.claim_tokens import (
    MAX_TTL_S,
    NONCE_BYTES,
    encode_token,
    signed_message,
    token_body,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

MIN_TTL_S = 10
DEFAULT_TTL_S = 300
QR_MODULE_PX = 8  # pixels per QR module in the PNG: sharp on a phone screen or on paper
QR_QUIET_MODULES = 4  # the quiet zone the QR standard asks for


def issue_claim_token(
    backend_key: Ed25519PrivateKey, subject: str, ttl_s: float, now: float
) -> str:
    """A signed token for `subject`, valid from `now` (Unix s) for `ttl_s` seconds."""
    if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl must be {MIN_TTL_S}..{MAX_TTL_S} s")
    body = token_body(subject, int(now + ttl_s), os.urandom(NONCE_BYTES))
    return encode_token(body, backend_key.sign(signed_message(body)))


def qr_image(token: str) -> npt.NDArray[np.uint8]:
    """The token's QR code as an (H, W) uint8 image: black modules on white, quiet zone added."""
    import cv2
    import numpy as np

    params = cv2.QRCodeEncoder.Params()
    params.correction_level = cv2.QRCodeEncoder_CORRECT_LEVEL_M  # survives glare on a phone
    modules = cv2.QRCodeEncoder.create(params).encode(token)
    if modules is None or modules.size == 0:
        raise ValueError("OpenCV could not encode the token as a QR code")
    gray = np.asarray(modules, dtype=np.uint8)
    # OpenCV leaves a border of its own; trim it and add the standard 4-module quiet zone.
    dark = np.argwhere(gray < 128)
    (y0, x0), (y1, x1) = dark.min(axis=0), dark.max(axis=0) + 1
    core = gray[y0:y1, x0:x1]
    core = np.pad(core, QR_QUIET_MODULES, constant_values=255)
    big = np.repeat(np.repeat(core, QR_MODULE_PX, axis=0), QR_MODULE_PX, axis=1)
    return np.ascontiguousarray(big, dtype=np.uint8)
