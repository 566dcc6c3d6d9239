"""Eye aspect ratio (EAR) from FaceMesh landmarks: how open the eyes are."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

# MediaPipe FaceMesh indices, in the 6-point EAR order p1..p6: p1/p4 the eye corners, p2/p6 and
# p3/p5 upper/lower lid pairs. "Right" is the subject's right eye (image left).
RIGHT_EYE = (33, 160, 158, 133, 153, 144)
LEFT_EYE = (362, 385, 387, 263, 373, 380)

def eye_aspect_ratio(points: NDArray[np.float32], eye: tuple[int, ...]) -> float:
    """EAR of one eye from (468, 2+) landmark points: lid opening over corner distance."""
    p = np.asarray(points, dtype=np.float64)[list(eye), :2]
    vertical = float(np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4]))
    horizontal = float(np.linalg.norm(p[0] - p[3]))
    return vertical / (2.0 * horizontal) if horizontal > 1e-6 else 0.0


def eye_openness(points: NDArray[np.float32]) -> float:
    """Mean EAR of both eyes from (468, 2+) FaceMesh points (a blink closes both)."""
    return 0.5 * (eye_aspect_ratio(points, RIGHT_EYE) + eye_aspect_ratio(points, LEFT_EYE))
