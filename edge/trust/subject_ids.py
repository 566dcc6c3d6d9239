"""Pseudonymous subject ids from card and phone numbers (a keyed hash shared with the back office).

    subject = f"{kind}-" + hex(HMAC-SHA256(key, f"{kind}:{digits}"))[:32]   (128 bits)

`digits` is the number with spaces, '-', '.', '(' and ')' and one leading '+' removed. The back
office computes the same id with the same 32-byte key, so a phone number typed on the bakery
keypad or a card tapped on the fare gate names a template without the device ever storing or
logging the number. Without the key the id cannot be linked back to the number (a phone number
has few enough digits to be brute-forced from an unkeyed hash).
"""

from __future__ import annotations

import hashlib
import hmac
import re

from edge.errors import KeyStoreError

SUBJECT_KEY_BYTES = 32
SUBJECT_HEX_CHARS = 32  # 128 bits of the HMAC
MAX_DIGITS = 32
_KIND = re.compile(r"[a-z]{1,16}")
_SEPARATORS = re.compile(r"[\s().-]")
_DIGITS = re.compile(r"[0-9]+")
MISSING_KEY_FIX = (
    "no subject-id key is provisioned, so card and phone numbers cannot be turned into subject "
    "ids; run `facegate keys init` (on a provisioned device it adds only the missing "
    "subject-id.key), or install the back office's key as keys/subject-id.key (0600) or as the "
    "credential facegate-subject-id.key"
)


def normalise_digits(number: str) -> str:
    """The digits of a card or phone number; ValueError (without the number) if there are none."""
    if not isinstance(number, str) or len(number) > 2 * MAX_DIGITS:
        raise ValueError(f"a number must be a string of 1-{MAX_DIGITS} digits")
    text = _SEPARATORS.sub("", number.strip())
    text = text.removeprefix("+")
    if not _DIGITS.fullmatch(text) or len(text) > MAX_DIGITS:
        raise ValueError(f"a number must be 1-{MAX_DIGITS} digits (spaces and '-' allowed)")
    return text


def require_subject_key(key: bytes | None) -> bytes:
    """The key itself, or KeyStoreError saying how to provision it."""
    if key is None:
        raise KeyStoreError(MISSING_KEY_FIX)
    if len(key) != SUBJECT_KEY_BYTES:
        raise KeyStoreError(f"the subject-id key must be {SUBJECT_KEY_BYTES} bytes")
    return key


def subject_from_number(kind: str, number: str, key: bytes | None) -> str:
    """Pseudonymous subject id for a `kind` ("card", "phone") number; follows the one id rule."""
    if not _KIND.fullmatch(kind):
        raise ValueError("kind must be 1-16 lowercase letters")
    digits = normalise_digits(number)
    mac = hmac.new(require_subject_key(key), f"{kind}:{digits}".encode("ascii"), hashlib.sha256)
    return f"{kind}-{mac.hexdigest()[:SUBJECT_HEX_CHARS]}"
