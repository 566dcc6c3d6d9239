"""Plain values passed between the vision stages (see notes/VISION_API contract)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edge.vision.geometry import box_iou, box_size

Embedding = NDArray[np.float32]
"""(128,) float32, L2-normalised identity vector."""

# BlazeFace keypoint order (subject's right/left, so the right eye appears on the image's left).
KP_RIGHT_EYE, KP_LEFT_EYE, KP_NOSE, KP_MOUTH, KP_RIGHT_EAR, KP_LEFT_EAR = range(6)


@dataclass(frozen=True)
class FaceBox:
    """A detected face in image pixels; `keypoints` is (6, 2) float32 (x, y) px in BlazeFace order:
    right eye, left eye, nose tip, mouth, right ear, left ear."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    keypoints: NDArray[np.float32]

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def size_px(self) -> float:
        """Longer side of the box in pixels."""
        return box_size(self)

    def iou(self, other: FaceBox) -> float:
        """Intersection over union of the two boxes."""
        return box_iou(self, other)


@dataclass(frozen=True)
class Landmarks:
    """FaceMesh output: `points` (468, 3) float32, x/y image pixels, z relative depth (px scale);
    `score` the face-presence confidence in [0, 1]."""

    points: NDArray[np.float32]
    score: float
