"""Claims: who the person in front of the kiosk says they are (QR, card, keypad, POS).

A claim names a pseudonymous subject id (the back office maps phone numbers, cards and QR codes
to subject ids; the device never stores a phone number). Claims arrive as text lines
`SUBJECT [AMOUNT] [REF]` from a POS, keypad bridge or card reader on a stream (stdin, a FIFO or
a serial line); a bad line is logged (without its content) and ignored.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from edge.ids import ID_RULE, is_valid_id

log = logging.getLogger(__name__)
_PHONE_LIKE = re.compile(r"\+?\d[\d-]{6,}")  # 7+ digits: a phone or card number, not an id
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
MAX_AMOUNT = 1e7


@dataclass(frozen=True)
class Claim:
    """A claimed identity; `amount` in major units for payments, None otherwise."""

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
    if ref and not _REF.fullmatch(ref):
        raise ValueError("reference must be 1-64 of [A-Za-z0-9_.:-]")
    return Claim(subject, amount, ref, method)


class FixedClaim:
    """The same claim for every session (`facegate run --claim`, demos, a single-tenant lock)."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim

    def poll(self) -> Claim | None:
        return self.claim


class LineClaims:
    """Claims read line by line from a text stream on a daemon thread; newest pending wins."""

    def __init__(self, lines: Iterable[str], method: str = "pos") -> None:
        self._queue: queue.Queue[Claim] = queue.Queue(maxsize=16)
        self.rejected = 0
        self._thread = threading.Thread(
            target=self._read, args=(lines, method), name="claims", daemon=True
        )
        self._thread.start()

    def _read(self, lines: Iterable[str], method: str) -> None:
        for line in lines:
            if not line.strip():
                continue
            try:
                claim = parse_claim_line(line, method)
            except ValueError as exc:
                self.rejected += 1
                log.warning("claim line ignored: %s", exc)  # never log the line: it may be PII
                continue
            try:
                self._queue.put_nowait(claim)
            except queue.Full:
                log.warning("claim queue full; dropping the oldest claim")
                self._queue.get_nowait()
                self._queue.put_nowait(claim)

    def poll(self) -> Claim | None:
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None
