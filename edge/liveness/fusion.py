"""Fusion of the passive anti-spoofing score with the rest of liveness.

Every decision, blink or no blink, needs the passive score of the session: the median of the
real-face scores of several crops spread over the session. The median ignores fewer than half
of the crops whatever their values (a motion-blurred frame, a half-turned head, a box that
slipped), so one confident frame can neither pass an attack nor fail a live person. The blink,
when asked for, proves timing on top; it never replaces the passive score.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

# Frame times come from the camera's clock: 6 frames at 30 fps can sum to 0.19999 s. A crop is
# due when the spacing is reached within this slack, so `pad_every_s` = 0.2 means every 6th
# frame at 30 fps, not every 7th.
PAD_SLACK_S = 0.005


def pad_due(t: float, last_t: float, every_s: float) -> bool:
    """True when a crop at frame time `t` (s) keeps `every_s` from the last one at `last_t`."""
    return t - last_t >= every_s - PAD_SLACK_S


def fuse_passive(scores: Iterable[float]) -> float | None:
    """One passive score for a session from per-crop scores in [0, 1] (the median); None when
    there are none. Non-finite or out-of-range values count as 0 (an attack-like crop)."""
    values = [float(s) if math.isfinite(s) and 0.0 <= s <= 1.0 else 0.0 for s in scores]
    if not values:
        return None
    return float(np.median(np.asarray(values, dtype=np.float64)))


def passive_verdict(scores: Iterable[float], threshold: float, min_crops: int) -> str | None:
    """None when the passive score passes, else the rejection reason `spoof` (too few crops
    is not a pass: the caller keeps collecting until it has `min_crops`)."""
    values = list(scores)
    fused = fuse_passive(values)
    if fused is None or len(values) < min_crops or fused < threshold:
        return "spoof"
    return None
