"""What a kiosk run counts, in memory that does not grow with the number of sessions.

A kiosk runs for months: every per-session record is either a counter or a ring
(`collections.deque(maxlen=...)`) of the most recent entries, so a busy gate holds the same
few hundred kilobytes on day 90 as on day 1 (the unit's MemoryMax is 400M). The exit summary
is built from the counters (totals by outcome and event type) and the rings (the last
decisions and events, p50/p95 of the session and per-frame times).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RECENT_DECISIONS = 100  # decisions kept for the exit summary (the last ones)
RECENT_EVENTS = 1000  # "type:seq" of the last events committed
RECENT_PROMPTS = 32
TIMING_RING = 1024  # session / frame times behind the p50/p95


def percentiles(values: deque[float]) -> dict[str, float] | None:
    """{p50_ms, p95_ms, n} of a ring of milliseconds (None when empty)."""
    if not values:
        return None
    arr = np.fromiter(values, dtype=np.float64, count=len(values))
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p95_ms": round(float(np.percentile(arr, 95)), 1),
        "n": len(values),
    }


@dataclass
class KioskStats:
    """Counters and bounded rings of one `Kiosk.run` (module doc)."""

    frames: int = 0
    frames_with_face: int = 0
    bad_frames: int = 0  # frames vision could not use (DataError), skipped
    store_failures: int = 0  # events that could not be committed (failed closed)
    actuator_faults: int = 0  # relay pulses that failed after a committed accept
    abandoned: int = 0  # sessions cut by SIGTERM or the end of the stream
    strangers: int = 0  # smart lock: failures by faces far from every tenant
    camera_loans: int = 0  # times the camera was lent to an enrolment (edge/camera/lease.py)
    outcomes: Counter[str] = field(default_factory=Counter)  # "accept", "reject:<reason>"
    event_counts: Counter[str] = field(default_factory=Counter)  # by event type
    prompts: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_PROMPTS))
    decisions: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=RECENT_DECISIONS)
    )
    events: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    session_ms: deque[float] = field(default_factory=lambda: deque(maxlen=TIMING_RING))
    frame_ms: deque[float] = field(default_factory=lambda: deque(maxlen=TIMING_RING))
    elapsed_s: float = 0.0

    def add_decision(self, summary: dict[str, Any]) -> None:
        """One decided (or abandoned) session: counted, kept in the ring of recent ones."""
        reason = summary.get("reason")
        self.outcomes["accept" if summary.get("decision") == "accept" else f"reject:{reason}"] += 1
        total = (summary.get("timing_ms") or {}).get("total")
        if total is not None:
            self.session_ms.append(float(total))
        self.decisions.append(summary)

    def add_event(self, type_: str, seq: int) -> None:
        self.event_counts[type_] += 1
        self.events.append(f"{type_}:{seq}")

    def totals(self) -> dict[str, Any]:
        """The counters and percentiles for the exit summary (JSON values)."""
        return {
            "sessions": sum(self.outcomes.values()),
            "outcomes": dict(sorted(self.outcomes.items())),
            "events_total": sum(self.event_counts.values()),
            "events_by_type": dict(sorted(self.event_counts.items())),
            "bad_frames": self.bad_frames,
            "store_failures": self.store_failures,
            "actuator_faults": self.actuator_faults,
            "abandoned": self.abandoned,
            "strangers": self.strangers,
            "camera_loans": self.camera_loans,
            "session_ms": percentiles(self.session_ms),
            "frame_ms": percentiles(self.frame_ms),
        }
