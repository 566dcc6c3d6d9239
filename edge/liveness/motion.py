"""Motion/static rule: landmark motion a hand-held photo (one similarity transform) cannot make."""

from __future__ import annotations

from collections import deque

import numpy as np
from numpy.typing import NDArray

from edge.liveness.eye import LEFT_EYE, RIGHT_EYE


def interocular_px(points: NDArray[np.float32]) -> float:
    """Distance between the two eye centres in pixels, from (468, 2+) points."""
    p = np.asarray(points, dtype=np.float64)[:, :2]
    return float(np.linalg.norm(p[list(RIGHT_EYE)].mean(0) - p[list(LEFT_EYE)].mean(0)))


def nonrigid_motion(before: NDArray[np.float32], after: NDArray[np.float32]) -> float:
    """Landmark motion a 2-D similarity transform cannot explain, in px at 100 px interocular.

    A photo moved by hand (shift, rotation, scale) moves every landmark by one similarity
    transform, so the residual stays at the landmark model's noise floor; a live face also
    moves its lids, lips and (turning in 3-D) its parallax, which no similarity explains.
    The fit is the closed-form complex least squares z' = a z + b (a = scale * rotation).
    """
    a = np.asarray(before, dtype=np.float64)[:, :2]
    b = np.asarray(after, dtype=np.float64)[:, :2]
    za = (a[:, 0] - a[:, 0].mean()) + 1j * (a[:, 1] - a[:, 1].mean())
    zb = (b[:, 0] - b[:, 0].mean()) + 1j * (b[:, 1] - b[:, 1].mean())
    denom = float(np.vdot(za, za).real)
    if denom <= 1e-9:
        return 0.0
    scale_rot = np.vdot(za, zb) / denom
    residual = zb - scale_rot * za
    rms = float(np.sqrt(np.mean(np.abs(residual) ** 2)))
    iod = interocular_px(after)
    return 100.0 * rms / iod if iod > 1e-6 else 0.0


class MotionMonitor:
    """Flags a presentation whose landmarks show no non-rigid motion for `window_s` seconds.

    Each frame is compared with the landmark configurations seen so far (the last
    `MAX_ANCHORS`); a frame within `threshold` (see `nonrigid_motion`) of one of them shows
    nothing new, any other is a new configuration and restarts the window. Static = no new
    configuration for the whole window. Comparing against anchors (not the previous frame) lets
    slow live motion accumulate, so the rule does not depend on the frame rate, while a photo's
    landmark noise does not accumulate.

    Several anchors, and the first `settle_frames` frames after a reset exempt, because of the
    tracker (edge.vision.track): it runs FaceMesh on a detection ROI every `detect_every`-th
    frame and on ROIs carried from the last landmarks between them, so on a frozen frame it
    returns the same short cycle of slightly different configurations, one per ROI, over and
    over. The first cycle is not motion (a reset starts a session), and later cycles match an
    anchor; with one anchor the cycle read as motion on every frame.
    """

    MAX_ANCHORS = 8  # > the longest tracker cycle (vision.detect_every <= 7)

    def __init__(self, window_s: float, threshold: float, settle_frames: int = 1) -> None:
        self.window_s = window_s
        self.threshold = threshold
        self.settle_frames = max(1, settle_frames)
        self._anchors: deque[NDArray[np.float32]] = deque(maxlen=self.MAX_ANCHORS)
        self._since: float | None = None  # time of the last new configuration
        self._frames = 0  # frames fed since the reset
        self.last_motion = 0.0

    def reset(self) -> None:
        self._anchors.clear()
        self._since = None
        self._frames = 0

    def update(self, t: float, points: NDArray[np.float32]) -> None:
        """Feed the landmarks of the frame at `t` (s)."""
        self._frames += 1
        if not self._anchors:
            self._anchors.append(points)
            self._since = t
            return
        self.last_motion = min(nonrigid_motion(a, points) for a in self._anchors)
        if self.last_motion > self.threshold:
            self._anchors.append(points)
            if self._frames > self.settle_frames:
                self._since = t

    def static_since(self, t: float) -> float:
        """Seconds for which the presentation has been static at time `t` (0 when unknown)."""
        return 0.0 if self._since is None else t - self._since

    def is_static(self, t: float) -> bool:
        return self._since is not None and t - self._since >= self.window_s
