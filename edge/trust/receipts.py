"""Settlement receipts (backend -> device on the device's downlink `…/cmd`): format and checking.

A receipt says "the ledger has committed these events of this device":

    {v:1, kind:"receipt", device, site, ranges:[[first, last], ...], ledger, ts, sig}

`ranges` are inclusive seq ranges, sorted and disjoint; `ledger` is the backend's opaque id of
the commit (for audit); `sig` is the backend key's Ed25519 signature (hex) over
`contexts.RECEIPT` + the canonical JSON without `sig`. A receipt carries no freshness check and no
replay guard on purpose: applying one is "delete these rows if they are still here", so a
duplicate or stale receipt deletes nothing new (a device's seqs are never reused), while refusing
an old one would leave settled events to be sent again forever.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import RefusedError
from edge.ids import is_valid_id
from edge.trust import contexts

KIND = "receipt"
MAX_RANGES = 1000  # per receipt; the backend splits longer lists
MAX_RECEIPT_BYTES = 64 * 1024
MAX_LEDGER_ID = 128
REASONS = ("too_large", "malformed", "unsigned", "signature", "wrong_device")


class ReceiptError(RefusedError):
    """A refused receipt; `reason` is one of REASONS."""

    prefix = "receipt refused"


@dataclass(frozen=True)
class Receipt:
    device: str
    site: str
    ranges: tuple[tuple[int, int], ...]
    ledger: str
    ts: float

    @property
    def count(self) -> int:
        return sum(b - a + 1 for a, b in self.ranges)


def to_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged inclusive ranges of `seqs` ([3, 1, 2, 7] -> [(1, 3), (7, 7)])."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def is_receipt(doc: Any) -> bool:
    """True for a parsed downlink document that claims to be a receipt (checked separately)."""
    return isinstance(doc, dict) and doc.get("kind") == KIND


def sign_receipt(
    backend_key: Ed25519PrivateKey,
    site: str,
    device: str,
    ranges: Iterable[tuple[int, int]],
    ledger: str,
    ts: float,
) -> bytes:
    """The signed receipt payload (the backend's side; checked by `verify_receipt`)."""
    body = {
        "v": 1,
        "kind": KIND,
        "device": device,
        "site": site,
        "ranges": [[int(a), int(b)] for a, b in ranges],
        "ledger": ledger[:MAX_LEDGER_ID],
        "ts": round(ts, 3),
    }
    return contexts.sign_doc(backend_key, contexts.RECEIPT, body)


def _ranges(raw: Any) -> tuple[tuple[int, int], ...]:
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_RANGES:
        raise ReceiptError("malformed", f"ranges must be a list of 1..{MAX_RANGES} pairs")
    out: list[tuple[int, int]] = []
    for pair in raw:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
            or not 1 <= pair[0] <= pair[1] < 2**53
            or (out and pair[0] <= out[-1][1])
        ):
            raise ReceiptError("malformed", "ranges must be sorted, disjoint [first, last] seqs")
        out.append((pair[0], pair[1]))
    return tuple(out)


def verify_receipt(
    payload: bytes, backend_public_key: Ed25519PublicKey | None, device_id: str, site: str
) -> Receipt:
    """Device side: the verified receipt for this device, or ReceiptError with the reason."""
    try:
        body = contexts.open_doc(
            payload, backend_public_key, contexts.RECEIPT,
            what="receipt", max_bytes=MAX_RECEIPT_BYTES,
        )
    except contexts.SignedDocError as exc:
        raise ReceiptError(exc.reason, str(exc)) from None
    if not is_receipt(body):
        raise ReceiptError("malformed", "not a receipt")
    if set(body) != {"v", "kind", "device", "site", "ranges", "ledger", "ts"} or body["v"] != 1:
        raise ReceiptError("malformed", f"receipt fields {sorted(body)} are not the v1 set")
    dev, where, ledger, ts = body["device"], body["site"], body["ledger"], body["ts"]
    if not (is_valid_id(dev) and is_valid_id(where) and isinstance(ledger, str)):
        raise ReceiptError("malformed", "receipt device/site/ledger have the wrong form")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        raise ReceiptError("malformed", "receipt ts is not a number")
    if (dev, where) != (device_id, site):
        raise ReceiptError("wrong_device", f"receipt is for {where}/{dev}, not {site}/{device_id}")
    return Receipt(dev, where, _ranges(body["ranges"]), ledger, float(ts))
