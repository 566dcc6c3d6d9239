"""QR claim tokens: a rider's subject id, an expiry and a nonce, signed by the backend's key.

Wire format (then base64url without padding, so it fits a small QR code):

    version (1 byte, = 1) | expires_at (uint32 big-endian, Unix seconds) | nonce (8 bytes)
    | subject (1-64 ASCII bytes, the one id rule) | Ed25519 signature (64 bytes)

The signature covers `CONTEXT + everything before it`; the context prefix keeps a signature
made for another purpose of the backend key (a downlink command, a receipt) from ever reading
as a claim token. A 12-character subject gives a 119-character token.

`UsedTokens` is the kiosk's replay guard: a token is accepted once per device, then refused
with reason "used" until it expires (its row is purged then, so the file stays bounded).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import sqlite3
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.ids import is_valid_id
from edge.trust import contexts
from edge.trust.private_db import immediate, open_private_db

CONTEXT = contexts.CLAIM_TOKEN
VERSION = 1
NONCE_BYTES = 8
SIG_BYTES = 64
_HEAD = struct.Struct(">BI")  # version, expires_at
HEAD_BYTES = _HEAD.size + NONCE_BYTES
MAX_SUBJECT_BYTES = 64
MIN_TOKEN_BYTES = HEAD_BYTES + 1 + SIG_BYTES
MAX_TOKEN_BYTES = HEAD_BYTES + MAX_SUBJECT_BYTES + SIG_BYTES
MAX_TOKEN_CHARS = (MAX_TOKEN_BYTES * 4 + 2) // 3  # 188: base64url of the longest token
MAX_TTL_S = 86400  # a token valid for longer than a day is refused as "too_far_in_future"
REASONS = ("malformed", "forged", "expired", "too_far_in_future", "used")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class ClaimTokenError(ValueError):
    """A refused claim token; `reason` is one of REASONS (never the token text)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"claim token refused: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class ClaimToken:
    """A verified claim token; `expires_at` in Unix seconds."""

    subject: str
    expires_at: int
    nonce: bytes

    def replay_key(self) -> bytes:
        """32-byte digest naming this token in the replay guard (subject, expiry, nonce)."""
        return hashlib.sha256(token_body(self.subject, self.expires_at, self.nonce)).digest()


def token_body(subject: str, expires_at: int, nonce: bytes) -> bytes:
    """The signed fields in wire order (without CONTEXT or signature)."""
    if not is_valid_id(subject):
        raise ValueError("subject does not follow the id rule")
    if len(nonce) != NONCE_BYTES or not 0 < expires_at < 2**32:
        raise ValueError("nonce must be 8 bytes and expires_at a uint32 of Unix seconds")
    return _HEAD.pack(VERSION, expires_at) + nonce + subject.encode("ascii")


def signed_message(body: bytes) -> bytes:
    """The exact bytes the backend signs: domain-separation context + body."""
    return CONTEXT + body


def encode_token(body: bytes, signature: bytes) -> str:
    """base64url (no padding) of body + signature."""
    return base64.urlsafe_b64encode(body + signature).rstrip(b"=").decode("ascii")


def _decode(text: str) -> bytes:
    # Size and alphabet are checked before any decoding: a camera can read any QR code.
    if not isinstance(text, str) or not MIN_TOKEN_BYTES <= len(text) <= MAX_TOKEN_CHARS:
        raise ClaimTokenError("malformed")
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ClaimTokenError("malformed")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ClaimTokenError("malformed") from None
    if not MIN_TOKEN_BYTES <= len(raw) <= MAX_TOKEN_BYTES:
        raise ClaimTokenError("malformed")
    return raw


def verify_claim_token(
    text: str, backend_public_key: Ed25519PublicKey, now: float, *, max_ttl_s: float = MAX_TTL_S
) -> ClaimToken:
    """Check a token's form, signature and expiry at `now` (Unix seconds); ClaimTokenError."""
    raw = _decode(text)
    body, signature = raw[:-SIG_BYTES], raw[-SIG_BYTES:]
    version, expires_at = _HEAD.unpack_from(body)
    nonce = body[_HEAD.size : HEAD_BYTES]
    try:
        subject = body[HEAD_BYTES:].decode("ascii")
    except UnicodeDecodeError:
        raise ClaimTokenError("malformed") from None
    if version != VERSION or not is_valid_id(subject):
        raise ClaimTokenError("malformed")
    try:
        backend_public_key.verify(signature, signed_message(body))
    except InvalidSignature:
        raise ClaimTokenError("forged") from None
    if now >= expires_at:
        raise ClaimTokenError("expired")
    if expires_at > now + max_ttl_s:
        raise ClaimTokenError("too_far_in_future")
    return ClaimToken(subject, expires_at, nonce)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS used_tokens (
    token BLOB PRIMARY KEY,      -- ClaimToken.replay_key(): a digest, never the token text
    expires_at INTEGER NOT NULL  -- Unix seconds; the row is purged after it
);
CREATE INDEX IF NOT EXISTS used_tokens_expiry ON used_tokens (expires_at);
"""


class UsedTokens:
    """Replay guard: each claim token is accepted once; a private SQLite file (0600, WAL)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = open_private_db(self.path, check_same_thread=False)
        self._db.executescript(_SCHEMA)

    def use(self, token: ClaimToken, now: float) -> None:
        """Record the token as used at `now` (Unix s); ClaimTokenError("used") if it was."""
        with self._lock, immediate(self._db) as db:
            db.execute("DELETE FROM used_tokens WHERE expires_at < ?", (int(now),))
            try:
                db.execute(
                    "INSERT INTO used_tokens (token, expires_at) VALUES (?, ?)",
                    (token.replay_key(), token.expires_at),
                )
            except sqlite3.IntegrityError:
                raise ClaimTokenError("used") from None

    def purge(self, now: float) -> int:
        """Delete rows of tokens expired before `now` (Unix s); returns how many."""
        with self._lock:
            cur = self._db.execute("DELETE FROM used_tokens WHERE expires_at < ?", (int(now),))
            return cur.rowcount

    def __len__(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM used_tokens").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> UsedTokens:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
