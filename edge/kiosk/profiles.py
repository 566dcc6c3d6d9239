"""What each deployment profile turns a decision into: event type and fields, and prompts."""

from __future__ import annotations

from typing import Any

from edge.config import Config
from edge.kiosk.claims import Claim
from edge.session.decision import Decision

CLAIM_PROMPTS = {
    "demo": "Please look at the camera",
    "fare_gate": "Show your QR code or tap your card",
    "smart_lock": "Please look at the camera",
    "bakery": "Enter your phone number on the keypad",
}


def minor_units(amount: float) -> int:
    """Major currency units -> integer minor units (cents, fen), as events carry money."""
    return int(round(amount * 100))


def decision_fields(d: Decision) -> dict[str, Any]:
    return {
        "subject": d.subject,
        "decision": d.decision,
        "score": None if d.score is None else round(float(d.score), 4),
        "liveness": {"blinks": int(d.blinks), "challenge_ms": int(round(d.challenge_ms or 0))},
    }


def event_for(
    cfg: Config, claim: Claim, d: Decision, *, unknown_faces: int = 0
) -> tuple[str, dict[str, Any]] | None:
    """(event type, fields) for a decision under the configured profile; None: no event."""
    base = decision_fields(d)
    reason = d.reason or "rejected"
    if cfg.profile == "fare_gate":
        if d.accepted:
            fg = cfg.fare_gate
            return "fare.charge", {**base, "amount": minor_units(fg.fare),
                                   "currency": fg.currency, "gate": fg.gate,
                                   "claim": claim.method}
        return "verify.reject", {**base, "reason": reason, "claim": claim.method}
    if cfg.profile == "bakery":
        if d.accepted and claim.amount is not None:
            fields = {**base, "amount": minor_units(claim.amount),
                      "currency": cfg.bakery.currency, "step_up": d.challenge_required,
                      "method": "face"}
            if claim.ref:
                fields["pos_ref"] = claim.ref
            return "payment.authorize", fields
        return "verify.reject", {**base, "reason": reason if not d.accepted else "no_amount",
                                 "claim": claim.method}
    if cfg.profile == "smart_lock":
        sl = cfg.smart_lock
        if d.accepted:
            return "door.unlock", {**base, "door": sl.door, "household": claim.ref or sl.door}
        return "door.denied", {**base, "door": sl.door, "unknown_faces": unknown_faces,
                               "reason": reason, "household": claim.ref or sl.door}
    if not d.accepted:
        return "verify.reject", {**base, "reason": reason, "claim": claim.method}
    return None  # demo accept: shown on the display only
