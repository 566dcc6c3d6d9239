"""The one claim queue every input feeds: newest claim wins, claims expire, none is carried over.

Times are monotonic seconds (`time.monotonic()` or a frame's `t_monotonic`), injected by the
caller so tests are deterministic. Thread-safe: the card reader and the bridge offer from their
own threads while the kiosk loop takes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge.kiosk.claims.base import Claim


@dataclass(frozen=True)
class ClaimQueueStats:
    """Counters since start: claims offered, taken, superseded by a newer one, expired unused,
    refused as older than the last take/clear."""

    offered: int
    taken: int
    superseded: int
    expired: int
    stale: int


class ClaimQueue:
    """Holds at most one waiting claim: the newest offered within `timeout_s` seconds."""

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not timeout_s > 0:
            raise ValueError("timeout_s must be > 0")
        self.timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: tuple[Claim, float] | None = None
        self._floor_t = float("-inf")  # nothing offered before the last take/clear comes back
        self._last_t = float("-inf")
        self._offered = self._taken = self._superseded = self._expired = self._stale = 0

    def _expire(self, t: float) -> None:
        if self._waiting is not None and t - self._waiting[1] >= self.timeout_s:
            self._waiting = None
            self._expired += 1

    def offer(self, claim: Claim, t: float) -> bool:
        """Queue `claim` made at `t` (s); it replaces a waiting one. False if older than the
        last take/clear or than the waiting claim (dropped, counted as stale)."""
        with self._lock:
            self._offered += 1
            self._last_t = max(self._last_t, t)
            if t < self._floor_t or (self._waiting is not None and t < self._waiting[1]):
                self._stale += 1
                return False
            self._expire(t)
            if self._waiting is not None:
                self._superseded += 1
            self._waiting = (claim, t)
            return True

    def take(self, t: float) -> Claim | None:
        """The waiting claim if still fresh at `t` (s), once; nothing offered before `t` after."""
        with self._lock:
            self._expire(t)
            self._floor_t = max(self._floor_t, t)
            waiting, self._waiting = self._waiting, None
            if waiting is None:
                return None
            self._taken += 1
            return waiting[0]

    def pending(self, t: float) -> bool:
        """True if a fresh claim is waiting at `t` (s) (it stays queued)."""
        with self._lock:
            self._expire(t)
            return self._waiting is not None

    def clear(self, t: float | None = None) -> None:
        """Drop the waiting claim; no claim made before `t` (default: the newest seen) returns."""
        with self._lock:
            self._waiting = None
            self._floor_t = max(self._floor_t, self._last_t if t is None else t)

    def poll(self) -> Claim | None:
        """`ClaimSource.poll`: take at the queue's own clock."""
        return self.take(self._clock())

    def stats(self) -> ClaimQueueStats:
        with self._lock:
            return ClaimQueueStats(
                self._offered, self._taken, self._superseded, self._expired, self._stale
            )
