"""An adaptive blink detector on the eye aspect ratio, working on frame timestamps.

The detector works on frame *timestamps*, never on frame counts, so the same thresholds hold at
10 fps and at 60 fps. The open-eye level is learnt per session (a robust running percentile of
recent open-eye values), because eye shape, glasses and camera angle change the absolute eye
aspect ratio far more than a fixed threshold tolerates.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edge.config import LivenessConfig

# Baseline: the open level is this percentile of open-eye values seen in the last window; high
# enough to ignore half-closed frames around a blink, low enough to ignore a single outlier.
BASELINE_PERCENTILE = 80.0
BASELINE_WINDOW_S = 2.0
# Windows are compared with this tolerance: they are often whole numbers of frame intervals,
# and timestamps far from zero (monotonic clocks) must not flip a comparison by rounding.
TIME_EPS_S = 0.004
# No blink is reported before the baseline has this much history (time and frames).
MIN_HISTORY_S = 0.2
MIN_HISTORY_FRAMES = 3
# Onset: the EAR must fall by MIN_DROP x baseline from its highest value in the last ONSET_S
# (or the previous frame, at lower frame rates): lids close in about 0.1 s.
ONSET_S = 0.1
MIN_DROP = 0.08
# ... and the closure starts on a frame that itself fell by MIN_STEP x baseline (the fall is
# happening now, not a plateau reached earlier).
MIN_STEP = 0.04
# A closure ends once the EAR has recovered this share of the dip (from its lowest point back
# to the level before the closure).
REOPEN_RECOVERY = 0.5
# The lowest EAR of a blink is at most this share of the level the eyes reopen to within POST_S.
POST_DEPTH = 0.80
POST_S = 0.15


@dataclass(frozen=True)
class Blink:
    """One blink: closure from `start_t` to `end_t` (s, frame timeline), frames inclusive."""

    start_t: float
    end_t: float
    start_index: int
    end_index: int
    depth: float  # lowest EAR / baseline during the closure

    @property
    def duration_ms(self) -> float:
        return (self.end_t - self.start_t) * 1000.0


class BlinkDetector:
    """Online blink detector: feed one EAR per frame, get a `Blink` once the eyes have reopened.

    A closure starts when the EAR falls below `closed_fraction` x baseline *fast* (by MIN_DROP x
    baseline within ONSET_S: lids drop in ~100 ms, a glance down or a squint does not), ends when
    the EAR has recovered REOPEN_RECOVERY of the dip, and counts as a blink when it lasted
    `min_blink_ms`..`max_blink_ms` and its lowest point is at most POST_DEPTH of the level the
    eyes reopen to (within POST_S): a change of expression (wide eyes relaxing) falls and stays.
    Edges are placed half-way between the last open and the first closed frame (and back), so
    the estimated duration does not depend on the frame rate.
    """

    def __init__(self, cfg: LivenessConfig) -> None:
        self.closed_fraction = cfg.closed_fraction
        self.min_s = cfg.min_blink_ms / 1000.0
        self.max_s = cfg.max_blink_ms / 1000.0
        self._history: deque[tuple[float, float]] = deque()  # open-eye (t, EAR), baseline
        self._recent: deque[tuple[float, float]] = deque()  # every frame of the last ONSET_S
        self._last_t: float | None = None
        self._closure: list[tuple[float, int, float]] = []  # closed frames (t, index, EAR)
        self._start_t = 0.0
        self._pre_level = 0.0  # highest EAR just before the closure
        self._reopen: tuple[float, float] | None = None  # (blink end t, reopen frame t)
        self._post_level = 0.0

    @property
    def baseline(self) -> float | None:
        """Current open-eye EAR level, or None while there is too little history."""
        if len(self._history) < MIN_HISTORY_FRAMES:
            return None
        if self._history[-1][0] - self._history[0][0] < MIN_HISTORY_S - TIME_EPS_S:
            return None
        return _percentile(sorted(v for _, v in self._history), BASELINE_PERCENTILE)

    @property
    def closed(self) -> bool:
        """True while a closure is in progress or waiting for its reopening to be confirmed."""
        return bool(self._closure)

    def reset(self) -> None:
        """Forget everything (face lost: the next face may be someone else)."""
        self._history.clear()
        self.gap()

    def gap(self) -> None:
        """A frame without landmarks: abandon a closure in progress (it cannot be verified)."""
        self._closure, self._reopen, self._last_t = [], None, None
        self._recent.clear()

    def update(self, t: float, ear: float, index: int) -> Blink | None:
        """Feed the EAR of the frame at time `t` (s); returns a blink when one is confirmed."""
        base = self.baseline
        prev_t, self._last_t = self._last_t, t
        recent = [e for tt, e in self._recent if t - tt <= ONSET_S + TIME_EPS_S]
        if not recent and self._recent:
            recent = [self._recent[-1][1]]  # slower than 1/ONSET_S fps: the previous frame
        self._recent.append((t, ear))
        while len(self._recent) > 1 and t - self._recent[0][0] > ONSET_S + TIME_EPS_S:
            self._recent.popleft()
        if base is None or prev_t is None or not recent:
            self._add_open(t, ear)
            return None
        if self._reopen is not None:
            return self._confirm(t, ear)
        step = (recent[-1] - ear) / base  # fall since the previous frame
        if not self._closure:
            if (
                ear < self.closed_fraction * base
                and (max(recent) - ear) / base >= MIN_DROP
                and step >= MIN_STEP
            ):
                self._start(t, prev_t, index, ear, max(recent))
            else:
                self._add_open(t, ear)
            return None
        # A fresh fast fall after a partial reopening inside a closure (a blink while looking
        # down) starts a new closure; the earlier part becomes open-level history.
        lowest = min(range(len(self._closure)), key=lambda k: self._closure[k][2])
        after_low = self._closure[lowest + 1 :]
        inside = [e for ct, _, e in after_low if t - ct <= ONSET_S + TIME_EPS_S]
        if not inside and after_low:
            inside = [after_low[-1][2]]
        if (
            inside
            and (max(inside) - self._closure[lowest][2]) / base >= MIN_STEP
            and step >= MIN_STEP
            and (max(inside) - ear) / base >= MIN_DROP
        ):
            self._abandon()
            self._start(t, prev_t, index, ear, max(inside))
            return None
        low = min(ear, min(e for _, _, e in self._closure))
        if ear < low + REOPEN_RECOVERY * (self._pre_level - low):
            self._closure.append((t, index, ear))
            if t - self._start_t > self.max_s:
                self._abandon()
            return None
        end_t = 0.5 * (self._closure[-1][0] + t)
        if not (self.min_s <= end_t - self._start_t <= self.max_s):
            self._abandon()
            self._add_open(t, ear)
            return None
        self._reopen, self._post_level = (end_t, t), ear
        return self._confirm(t, ear)

    def _start(self, t: float, prev_t: float, index: int, ear: float, pre_level: float) -> None:
        self._closure = [(t, index, ear)]
        self._start_t = 0.5 * (prev_t + t)
        self._pre_level = pre_level

    def _confirm(self, t: float, ear: float) -> Blink | None:
        assert self._reopen is not None
        end_t, reopen_t = self._reopen
        self._add_open(t, ear)
        if t - reopen_t > POST_S + TIME_EPS_S:
            # The eyes did not come back to their open level soon enough: not a blink.
            self._closure, self._reopen = [], None
            return None
        self._post_level = max(self._post_level, ear)
        low = min(e for _, _, e in self._closure)
        if low <= POST_DEPTH * self._post_level:
            base = self.baseline or self._post_level
            blink = Blink(
                start_t=self._start_t,
                end_t=end_t,
                start_index=self._closure[0][1],
                end_index=self._closure[-1][1],
                depth=low / base,
            )
            self._closure, self._reopen = [], None
            return blink
        return None

    def _abandon(self) -> None:
        # Eyes kept low (looking down, squinting) or a too-short flicker: not a blink. The
        # frames become open-level history so the baseline follows a lasting change.
        for ct, _, ce in self._closure:
            self._add_open(ct, ce)
        self._closure, self._reopen = [], None

    def _add_open(self, t: float, ear: float) -> None:
        self._history.append((t, ear))
        while self._history and t - self._history[0][0] > BASELINE_WINDOW_S + TIME_EPS_S:
            self._history.popleft()


def _percentile(ordered: list[float], q: float) -> float:
    """numpy.percentile's default (linear) on an already sorted list: the same value, without
    numpy's per-call overhead (~0.1 ms on 60 values, paid on every frame of a session)."""
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def detect_blinks(
    times: NDArray[np.float64] | list[float],
    ears: list[float | None],
    cfg: LivenessConfig,
    indices: list[int] | None = None,
) -> list[Blink]:
    """Run a fresh detector over a whole sequence (None = frame without landmarks)."""
    det = BlinkDetector(cfg)
    out: list[Blink] = []
    for k, (t, ear) in enumerate(zip(times, ears, strict=True)):
        if ear is None:
            det.gap()
            continue
        blink = det.update(float(t), ear, indices[k] if indices is not None else k)
        if blink is not None:
            out.append(blink)
    return out
