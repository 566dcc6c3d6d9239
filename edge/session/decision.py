"""What a verification session decides, and the step-up policy that shapes the session."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Decision:
    """Outcome of one session: everything an event needs, and nothing biometric."""

    subject: str
    accepted: bool
    reason: str | None  # None when accepted
    score: float | None  # best cosine similarity to the references (None: not compared)
    blinks: int  # blinks counted inside the response window
    challenge_ms: float | None  # prompt -> end of the last counted blink
    challenge_required: bool
    timing_ms: dict[str, float] = field(default_factory=dict)  # per state, and "total"
    latency_ms: float | None = None  # end of the blink -> decision (perf clock)
    lockout_s: float = 0.0  # lock now in force on the claim
    pad_score: float | None = None  # fused passive real-face score (None: not scored)
    pad_crops: int = 0  # crops behind it
    # 1:few door: the face was far from every tenant, so the failure was not counted for the
    # lockout (edge.session.lockout.stranger_below)
    stranger: bool = False

    @property
    def decision(self) -> str:
        return "accept" if self.accepted else "reject"

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "decision": self.decision,
            "reason": self.reason,
            "score": None if self.score is None else round(self.score, 4),
            "liveness": {
                "blinks": self.blinks,
                "challenge_ms": _r(self.challenge_ms),
                "required": self.challenge_required,
                "pad_score": _r(self.pad_score, 3),
                "pad_crops": self.pad_crops,
            },
            "timing_ms": {k: round(v, 1) for k, v in self.timing_ms.items()},
            "latency_ms": _r(self.latency_ms),
            "lockout_s": round(self.lockout_s, 1),
            **({"stranger": True} if self.stranger else {}),
        }


def _r(v: float | None, digits: int = 1) -> float | None:
    return None if v is None else round(v, digits)


def challenge_required(policy: str, stepup_amount: float, amount: float | None) -> bool:
    """Step-up policy: `always`, `never`, or `above_amount` (an unknown amount requires it)."""
    if policy == "always":
        return True
    if policy == "never":
        return False
    return amount is None or amount > stepup_amount
