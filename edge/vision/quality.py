"""Quality gates: is this face good enough to verify or enrol? Each failing gate names a reason.

Gates (thresholds in `QualityConfig`): `size` (inter-ocular distance), `yaw` and `pitch` (head
pose from the 3-D FaceMesh), `blur` (variance of the Laplacian on the face crop), `dark` and
`bright` (mean luminance of the face crop). Reasons read `quality:<gate>`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from edge.config import QualityConfig
from edge.vision.detect import check_image
from edge.vision.types import FaceBox, Landmarks

# FaceMesh indices: eye corners (subject's right eye = image left), mouth corners.
R_EYE_OUTER, R_EYE_INNER, L_EYE_INNER, L_EYE_OUTER = 33, 133, 362, 263
MOUTH_R, MOUTH_L = 61, 291
CROP_PX = 112  # face crop is resampled to this size so sharpness does not depend on face size


@dataclass(frozen=True)
class Quality:
    """Outcome of the gates; `reasons` is empty when `ok`."""

    ok: bool
    reasons: tuple[str, ...]
    interocular_px: float
    yaw_deg: float
    pitch_deg: float
    sharpness: float
    brightness: float


def eye_centres(points: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(right, left) eye centres (x, y) px: midpoints of each eye's two corners."""
    p = points.astype(np.float64)
    return (p[R_EYE_OUTER, :2] + p[R_EYE_INNER, :2]) / 2, (
        p[L_EYE_OUTER, :2] + p[L_EYE_INNER, :2]
    ) / 2


def head_pose(points: NDArray[np.float32]) -> tuple[float, float]:
    """(yaw, pitch) in degrees from the 3-D mesh: 0 facing the camera; yaw > 0 face turned
    towards the image's right, pitch > 0 looking up.

    The face's x axis is the eye-corner line, its y axis the mouth-to-eyes line made orthogonal;
    their depth components give the out-of-plane angles, with no camera intrinsics needed.
    The eyes-to-mouth line (rather than forehead-to-chin) is near vertical on a frontal face,
    so a neutral pose reads ~0 pitch (measured: -9..4 degrees on frontal frames of the
    liveness videos).
    """
    p = points.astype(np.float64)
    x = p[L_EYE_OUTER] - p[R_EYE_OUTER]
    x /= max(float(np.linalg.norm(x)), 1e-9)
    eyes = (p[R_EYE_OUTER] + p[R_EYE_INNER] + p[L_EYE_INNER] + p[L_EYE_OUTER]) / 4
    up = eyes - (p[MOUTH_R] + p[MOUTH_L]) / 2
    up -= float(np.dot(up, x)) * x
    up /= max(float(np.linalg.norm(up)), 1e-9)
    # z grows away from the camera: the left eye further away means the face turned right.
    yaw = math.degrees(math.asin(float(np.clip(x[2], -1.0, 1.0))))
    pitch = math.degrees(math.asin(float(np.clip(up[2], -1.0, 1.0))))
    return yaw, pitch


def face_crop_gray(image: NDArray[np.uint8], box: FaceBox) -> NDArray[np.uint8]:
    """Grayscale (CROP_PX, CROP_PX) crop of the inner face (box shrunk by 10 % per side)."""
    h, w = image.shape[:2]
    mx, my = 0.1 * box.width, 0.1 * box.height
    x1, y1 = max(0, int(box.x1 + mx)), max(0, int(box.y1 + my))
    x2, y2 = min(w, int(math.ceil(box.x2 - mx))), min(h, int(math.ceil(box.y2 - my)))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return np.zeros((CROP_PX, CROP_PX), np.uint8)
    gray = cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_RGB2GRAY)
    interp = cv2.INTER_AREA if (x2 - x1) > CROP_PX else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(gray, (CROP_PX, CROP_PX), interpolation=interp), dtype=np.uint8)


def assess(
    image: NDArray[np.uint8], box: FaceBox, landmarks: Landmarks, cfg: QualityConfig
) -> Quality:
    """Run every gate on one face of an (H, W, 3) uint8 RGB frame."""
    image = check_image(image)
    right, left = eye_centres(landmarks.points)
    iod = float(np.linalg.norm(left - right))
    yaw, pitch = head_pose(landmarks.points)
    crop = face_crop_gray(image, box)
    sharpness = float(cv2.Laplacian(crop, cv2.CV_64F).var())
    brightness = float(crop.mean())
    reasons = []
    if iod < cfg.min_interocular_px:
        reasons.append("quality:size")
    if abs(yaw) > cfg.max_yaw_deg:
        reasons.append("quality:yaw")
    if abs(pitch) > cfg.max_pitch_deg:
        reasons.append("quality:pitch")
    if sharpness < cfg.min_sharpness:
        reasons.append("quality:blur")
    if brightness < cfg.min_brightness:
        reasons.append("quality:dark")
    if brightness > cfg.max_brightness:
        reasons.append("quality:bright")
    return Quality(
        ok=not reasons,
        reasons=tuple(reasons),
        interocular_px=iod,
        yaw_deg=yaw,
        pitch_deg=pitch,
        sharpness=sharpness,
        brightness=brightness,
    )
