"""What the kiosk shows a person: one `KioskState` per change, and the names it may take.

The kiosk emits a state once, through `Dispatcher`; the display page, and later the MQTT status
and the console, are listeners. A state is plain data (JSON values only), so every listener can
send it on without knowing the kiosk's types.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

# name -> meaning. The display renders each one (messages.py) in Chinese and English.
STATES: dict[str, str] = {
    "look": "look at the camera",
    "closer": "move closer (the face is too small for a reliable check)",
    "step_back": "step back (the face fills the frame)",
    "one_person": "one person at a time",
    "claim": "show a QR code, tap a card or enter a phone number; detail `method` "
    "(qr, card, phone) or `profile` (fare_gate, bakery, smart_lock, demo)",
    "blink": "blink now; detail `seconds_left` (countdown from `t`)",
    "verifying": "checking, please wait",
    "approved": "verified; detail `kind` (payment, fare, door), `amount` (major units), "
    "`currency` (ISO 4217, e.g. CNY), `door`",
    "denied": "not verified; detail `reason` (one of DENIAL_REASONS or quality:*)",
    "alternative": "use your card or PIN instead",
    "locked_out": "too many attempts; detail `seconds_left` (countdown from `t`)",
    "offline_queued": "the broker is offline but the event is safely queued",
    "service_unavailable": "the event could not be stored: use your card or PIN",
    "maintenance": "out of service: the camera is lent to a technician's enrolment",
}

# `denied` reasons the kiosk produces (session, claims, loop). Any `quality:<gate>` is also
# valid; an unknown reason still renders (as a plain "not verified").
DENIAL_REASONS: tuple[str, ...] = (
    "mismatch",
    "stranger",
    "spoof",
    "static",
    "no_blink",
    "face_changed",
    "timeout",
    "expired_token",
    "forged_token",
    "used_token",
    "unknown_card",
    "no_face",
    "no_template",
    "template_error",
    "no_amount",
    "locked_out",
    "quality:size",
    "quality:too_far",
    "quality:too_close",
    "quality:yaw",
    "quality:pitch",
    "quality:blur",
    "quality:dark",
    "quality:bright",
    "quality:unknown",
)


@dataclass(frozen=True)
class KioskState:
    """One thing the kiosk shows: a state name from `STATES`, its detail (JSON values only)
    and the wall time `t` (s since the epoch) it began, which countdowns run from."""

    state: str
    detail: dict[str, Any] = field(default_factory=dict)
    t: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"unknown kiosk state {self.state!r}; allowed: {', '.join(STATES)}")
        try:
            # A round trip both checks the values are plain JSON and takes a private copy, so
            # the caller mutating its dict later cannot change a state already published.
            detail = json.loads(json.dumps(self.detail, allow_nan=False))
        except (TypeError, ValueError) as exc:
            msg = f"kiosk state {self.state!r}: detail must be plain JSON: {exc}"
            raise ValueError(msg) from None
        if not isinstance(detail, dict):
            raise ValueError(f"kiosk state {self.state!r}: detail must be a JSON object")
        object.__setattr__(self, "detail", detail)

    def to_json(self) -> dict[str, Any]:
        """The state as plain JSON values: {state, detail, t}."""
        return {"state": self.state, "detail": dict(self.detail), "t": self.t}
