"""Claims: who the person in front of the kiosk says they are (QR, card, keypad, POS).

A claim names a pseudonymous subject id; the device never stores a phone or card number (see
`edge.trust.subject_ids`). Every input feeds one `ClaimQueue` (newest wins, claims expire, none
is carried over into the next session):
- `lines`: `SUBJECT [AMOUNT] [REF]` text lines from stdin, a file or a FIFO (`--claims-from`);
- `qr`: backend-signed claim tokens shown to the camera (`QrClaimReader`);
- `card`: a serial card reader, one number per line (`CardReader`);
- `bridge`: POS amounts and keypad phone numbers over a local Unix socket (`BridgeServer`).
The QR, card and bridge modules are imported from their own modules (they pull in OpenCV,
pyserial and sockets); this package exports the light parts.
"""

from __future__ import annotations

from edge.kiosk.claims.base import MAX_AMOUNT, Claim, ClaimSource, parse_claim_line
from edge.kiosk.claims.lines import FixedClaim, LineClaims
from edge.kiosk.claims.queue import ClaimQueue, ClaimQueueStats

__all__ = [
    "MAX_AMOUNT",
    "Claim",
    "ClaimQueue",
    "ClaimQueueStats",
    "ClaimSource",
    "FixedClaim",
    "LineClaims",
    "parse_claim_line",
]
