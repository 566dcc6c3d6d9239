"""5-point similarity alignment of a face to the 150x150 chip the dlib-derived embedder expects.

The embedder was trained on dlib's chips (`get_face_chip(..., size=150, padding=0.25)`, cut with
dlib's own 5-point predictor).  We use FaceMesh points instead, so `CHIP_POINTS` holds where
*our* five points land, on average, in dlib's chips: measured by cutting LFW faces both ways
(models/tools/derive_chip_points.py, people absent from pairs_dev.txt).  Enrolment and
verification both go through `align_chip`, so thresholds are calibrated on this exact pipeline.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from edge.errors import DataError
from edge.vision.types import Landmarks

CHIP_SIZE = 150

# FaceMesh indices (subject's right eye is on the image's left for a frontal face).
RIGHT_EYE_CONTOUR = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE_CONTOUR = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
NOSE_TIP = 1
MOUTH_RIGHT, MOUTH_LEFT = 61, 291

# (5, 2) chip pixels: right-eye centre, left-eye centre, nose tip, right and left mouth corner.
CHIP_POINTS = np.array(
    [
        [47.21, 46.17],
        [100.61, 46.07],
        [73.61, 80.50],
        [50.90, 104.32],
        [97.30, 104.15],
    ],
    dtype=np.float64,
)  # mean over 637 LFW faces; std 1.6-2.0 px for the eyes, 4-7 px for nose and mouth (pose)


def five_points(landmarks: Landmarks) -> NDArray[np.float32]:
    """(5, 2) float32 image px: eye centres (subject's right, left), nose tip, mouth corners."""
    p = np.asarray(landmarks.points, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 468 or p.shape[1] < 2:
        raise DataError(f"expected (468, 3) FaceMesh points, got shape {p.shape}")
    xy = p[:, :2]
    out = np.stack(
        [
            xy[list(RIGHT_EYE_CONTOUR)].mean(axis=0),
            xy[list(LEFT_EYE_CONTOUR)].mean(axis=0),
            xy[NOSE_TIP],
            xy[MOUTH_RIGHT],
            xy[MOUTH_LEFT],
        ]
    )
    return out.astype(np.float32)


def similarity(src: NDArray[np.floating], dst: NDArray[np.floating]) -> NDArray[np.float64]:
    """(2, 3) least-squares similarity (rotation, uniform scale, translation) mapping src to dst.

    Umeyama's closed form, no RANSAC: every point counts, and the result is deterministic.
    """
    s = np.asarray(src, dtype=np.float64)
    d = np.asarray(dst, dtype=np.float64)
    if s.shape != d.shape or s.ndim != 2 or s.shape[1] != 2 or len(s) < 2:
        raise DataError(f"similarity needs matching (N>=2, 2) point sets, got {s.shape}, {d.shape}")
    if not (np.isfinite(s).all() and np.isfinite(d).all()):
        raise DataError("face points are not finite (NaN/inf landmarks): cannot align")
    ms, md = s.mean(axis=0), d.mean(axis=0)
    sc, dc = s - ms, d - md
    var = float((sc**2).sum()) / len(s)
    if var <= 1e-12:
        raise DataError("face points are degenerate (all at one place): cannot align")
    cov = dc.T @ sc / len(s)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[1, 1] = -1.0  # a reflection is never a valid face alignment
    rot = u @ fix @ vt
    scale = float(np.trace(np.diag(sig) @ fix)) / var
    t = md - scale * rot @ ms
    return np.hstack([scale * rot, t[:, None]])


def chip_transform(points5: NDArray[np.floating]) -> NDArray[np.float64]:
    """(2, 3) affine mapping image px to chip px for the given (5, 2) face points."""
    return similarity(np.asarray(points5, dtype=np.float64).reshape(5, 2), CHIP_POINTS)


def align_chip(image: NDArray[np.uint8], points5: NDArray[np.floating]) -> NDArray[np.uint8]:
    """(150, 150, 3) uint8 RGB chip of the face whose (5, 2) points are given in image px."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or 0 in img.shape:
        raise DataError(f"expected an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
    m = chip_transform(points5)
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    if scale < 0.5:
        # Shrinking a large face straight to the chip with bilinear sampling aliases (skips
        # pixels); pre-shrink just the face's region with area averaging first, as dlib does
        # with its pyramid, then warp the rest of the way.
        img, m = _preshrink(img, m, scale)
    chip = cv2.warpAffine(
        img, m, (CHIP_SIZE, CHIP_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    return np.asarray(chip, dtype=np.uint8)


def _preshrink(
    img: NDArray[np.uint8], m: NDArray[np.float64], scale: float
) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    inv = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0, 1], [CHIP_SIZE, 0, 1], [0, CHIP_SIZE, 1], [CHIP_SIZE, CHIP_SIZE, 1]])
    xy = corners @ inv.T
    h, w = img.shape[:2]
    x0, y0 = (int(max(0, np.floor(v))) for v in xy.min(axis=0))
    x1, y1 = int(min(w, np.ceil(xy[:, 0].max()) + 1)), int(min(h, np.ceil(xy[:, 1].max()) + 1))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return img, m  # the chip lies outside the frame: nothing to gain
    # Halve by 2x2 block means (a box pyramid, as dlib builds one) until the remaining bilinear
    # step is at most 2:1: the box removes the finest detail that bilinear sampling would alias,
    # and OpenCV's 2:1 area resize is a fast path.
    small = img[y0:y1, x0:x1]
    k = 1
    while scale * k < 0.5 and min(small.shape[:2]) >= 4:
        hh, ww = small.shape[0] // 2, small.shape[1] // 2
        half = cv2.resize(small[: 2 * hh, : 2 * ww], (ww, hh), interpolation=cv2.INTER_AREA)
        small = np.asarray(half, dtype=np.uint8)
        k *= 2
    # pyramid pixel (u, v) is centred on image pixel (x0 + k*u + (k-1)/2, y0 + k*v + (k-1)/2)
    c = (k - 1) / 2
    m2 = np.empty((2, 3), dtype=np.float64)
    m2[:, 0] = m[:, 0] * k
    m2[:, 1] = m[:, 1] * k
    m2[:, 2] = m[:, 2] + m[:, 0] * (x0 + c) + m[:, 1] * (y0 + c)
    return np.ascontiguousarray(small), m2
