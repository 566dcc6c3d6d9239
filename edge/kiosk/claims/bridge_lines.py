"""The bridge's line protocol: validate one JSON line, pair an amount with a phone number.

    {"amount": "42.00", "currency": "CNY", "ref": "pos-7"}   from the POS
    {"phone": "13800138000"}                                 from the keypad

The amount and the phone number may come in either order and in one line or two; each waits
for the other for `timeout_s` seconds, and a newer one replaces a waiting one. The phone number
is turned into its subject id (`edge.trust.subject_ids`) while the line is parsed, so only the
pseudonym ever waits in memory; error texts never hold a value from the line.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from edge.kiosk.claims.base import MAX_AMOUNT, REF_RE, Claim
from edge.trust.subject_ids import normalise_digits, subject_from_number

MAX_LINE_BYTES = 1024
_KEYS = {"amount", "currency", "ref", "phone"}
_CENT = Decimal("0.01")


@dataclass(frozen=True)
class BridgeLine:
    """One valid line: an amount (major units, 2 places) with its POS ref, a subject, or both."""

    amount: Decimal | None = None
    ref: str = ""
    subject: str | None = None


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def parse_amount(value: object, max_amount: float = MAX_AMOUNT) -> Decimal:
    """A positive amount in major units, at most 2 decimal places; ValueError saying what is bad."""
    if isinstance(value, str) and len(value) <= 32:
        try:
            value = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError('amount must be a decimal like "42.00"') from None
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError('amount must be a decimal like "42.00"')
    if not Decimal(0) < value <= Decimal(str(max_amount)):
        raise ValueError(f"amount must be above 0 and at most {max_amount:g}")
    cents = value.quantize(_CENT)  # in range, so well within Decimal's precision
    if cents != value:
        raise ValueError("amount has more than 2 decimal places")
    return cents


def parse_phone(value: object) -> str:
    """6-15 digits (spaces, '-' and a leading '+' allowed); ValueError never holding the number."""
    if not isinstance(value, str):
        raise ValueError("phone must be a string of 6-15 digits")
    try:
        digits = normalise_digits(value)
    except ValueError:
        raise ValueError("phone must be 6-15 digits") from None
    if not 6 <= len(digits) <= 15:
        raise ValueError("phone must be 6-15 digits")
    return digits


def parse_bridge_line(
    line: bytes, subject_key: bytes, *, currency: str, max_amount: float = MAX_AMOUNT
) -> BridgeLine:
    """One request line (without its newline) -> BridgeLine; ValueError with a one-line reason."""
    line = line.rstrip(b"\r")
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        msg = json.loads(line.decode("utf-8"), parse_float=Decimal, parse_int=Decimal,
                         parse_constant=_no_constant)  # fmt: skip
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("not a JSON line") from None
    if not isinstance(msg, dict):
        raise ValueError("a line must be one JSON object")
    if set(msg) - _KEYS:  # never name the key: it may be the phone number itself
        raise ValueError("unknown key; allowed: amount, currency, ref, phone")
    if "amount" not in msg and "phone" not in msg:
        raise ValueError("send an amount (POS) or a phone (keypad)")
    if "amount" not in msg and ("currency" in msg or "ref" in msg):
        raise ValueError("currency and ref go with an amount")
    amount, ref, subject = None, "", None
    if "amount" in msg:
        amount = parse_amount(msg["amount"], max_amount)
        if msg.get("currency", currency) != currency:
            raise ValueError(f"currency must be {currency}")
        ref = msg.get("ref", "")
        if not isinstance(ref, str) or (ref and not REF_RE.fullmatch(ref)):
            raise ValueError("ref must be 1-64 of [A-Za-z0-9_.:-]")
    if "phone" in msg:
        subject = subject_from_number("phone", parse_phone(msg["phone"]), subject_key)
    return BridgeLine(amount, ref, subject)


class PaymentPairing:
    """Pairs the waiting amount with the waiting subject; times in monotonic seconds."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._amount: tuple[Decimal, str, float] | None = None  # amount, ref, t
        self._subject: tuple[str, float] | None = None  # subject id, t
        self.superseded = 0  # a waiting half replaced by a newer one

    def _expire(self, t: float) -> None:
        if self._amount is not None and t - self._amount[2] >= self.timeout_s:
            self._amount = None
        if self._subject is not None and t - self._subject[1] >= self.timeout_s:
            self._subject = None

    def add(self, line: BridgeLine, t: float) -> Claim | None:
        """Add a line's halves at `t`; the payment claim (method "phone") once both are here."""
        with self._lock:
            self._expire(t)
            if line.amount is not None:
                self.superseded += self._amount is not None
                self._amount = (line.amount, line.ref, t)
            if line.subject is not None:
                self.superseded += self._subject is not None
                self._subject = (line.subject, t)
            if self._amount is None or self._subject is None:
                return None
            (amount, ref, _), (subject, _) = self._amount, self._subject
            self._amount = self._subject = None
        return Claim(subject, float(amount), ref, "phone")

    def pending(self, t: float) -> tuple[bool, bool]:
        """(amount waiting, phone waiting) at `t`."""
        with self._lock:
            self._expire(t)
            return self._amount is not None, self._subject is not None
