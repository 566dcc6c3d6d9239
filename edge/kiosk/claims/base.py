"""A claim: who the person in front of the kiosk says they are, and the text-line claim format."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol

from edge.ids import ID_RULE, is_valid_id

_PHONE_LIKE = re.compile(r"\+?\d[\d-]{6,}")  # 7+ digits: a phone or card number, not an id
REF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
MAX_AMOUNT = 1e7


@dataclass(frozen=True)
class Claim:
    """A claimed identity; `amount` in major units for payments, None otherwise.

    `method` names the input: "qr", "card", "phone" (keypad + POS bridge), "pos" (claim lines),
    "cli", "household", "liveness".
    """

    subject: str
    amount: float | None = None
    ref: str = ""
    method: str = "id"


class ClaimSource(Protocol):
    def poll(self) -> Claim | None: ...


def parse_claim_line(line: str, method: str = "pos") -> Claim:
    """`SUBJECT [AMOUNT] [REF]` -> Claim; ValueError naming the bad field."""
    parts = line.split()
    if not parts or len(parts) > 3:
        raise ValueError("expected 'SUBJECT [AMOUNT] [REF]'")
    subject = parts[0]
    if _PHONE_LIKE.fullmatch(subject):
        # Never echo it: the back office maps phone numbers to pseudonymous subject ids.
        raise ValueError("a phone number is not a subject id; send the mapped subject id")
    if not is_valid_id(subject):
        raise ValueError(f"subject id must be {ID_RULE}")
    amount: float | None = None
    if len(parts) >= 2:
        try:
            amount = float(parts[1])
        except ValueError:
            raise ValueError("amount must be a number") from None
        if not math.isfinite(amount) or not (0 <= amount <= MAX_AMOUNT):
            raise ValueError(f"amount must be between 0 and {MAX_AMOUNT:g}")
    ref = parts[2] if len(parts) == 3 else ""
    if ref and not REF_RE.fullmatch(ref):
        raise ValueError("reference must be 1-64 of [A-Za-z0-9_.:-]")
    return Claim(subject, amount, ref, method)
