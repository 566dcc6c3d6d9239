"""FaceMesh 468 landmarks on the rotated region of interest around a detected face.

The ROI follows MediaPipe's face_detection_front_detection_to_roi: the detection box centre,
a square 1.5x the box's longer side, rotated so the line between the two eye keypoints is
horizontal. The model sees that ROI as 192x192 RGB in [0, 1]; its (x, y) outputs are pixels of
that crop, mapped back to the frame with the same affine transform.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from edge.errors import DataError
from edge.vision.detect import check_image
from edge.vision.runtime import load_interpreter
from edge.vision.types import KP_LEFT_EYE, KP_RIGHT_EYE, FaceBox, Landmarks

INPUT = 192
ROI_SCALE = 1.5
NUM_POINTS = 468


def roi_transform(box: FaceBox, scale: float = ROI_SCALE, size: int = INPUT) -> NDArray[np.float64]:
    """(2, 3) affine matrix mapping crop pixels (u, v) in [0, size) to image pixels (x, y)."""
    cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
    side = max(box.width, box.height) * scale
    eye_r, eye_l = box.keypoints[KP_RIGHT_EYE], box.keypoints[KP_LEFT_EYE]
    # The subject's right eye is on the image's left: for an upright face the vector points +x.
    angle = math.atan2(float(eye_l[1] - eye_r[1]), float(eye_l[0] - eye_r[0]))
    c, s = math.cos(angle), math.sin(angle)
    k = side / size
    # p = centre + R(angle) @ ((u - size/2) * k, (v - size/2) * k)
    return np.array(
        [
            [c * k, -s * k, cx - (c - s) * k * size / 2],
            [s * k, c * k, cy - (s + c) * k * size / 2],
        ],
        dtype=np.float64,
    )


class LandmarkModel:
    """FaceMesh (face_landmark.tflite) on one interpreter."""

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        self._interp = load_interpreter(model_path, threads)
        inp = self._interp.get_input_details()[0]
        if tuple(inp["shape"]) != (1, INPUT, INPUT, 3):
            raise DataError(f"{model_path} is not FaceMesh (input {inp['shape']})")
        self._in = int(inp["index"])
        outs = {
            int(np.prod(d["shape"])): int(d["index"]) for d in self._interp.get_output_details()
        }
        self._mesh, self._presence = outs[NUM_POINTS * 3], outs[1]
        # Reused every frame: a fresh 432 KB float input per call is a fresh mmap (page faults)
        # and evicts more of the model's weights from the cache than the warp itself.
        self._crop = np.empty((INPUT, INPUT, 3), dtype=np.uint8)
        self._x = np.empty((1, INPUT, INPUT, 3), dtype=np.float32)

    def predict(self, image: NDArray[np.uint8], box: FaceBox) -> Landmarks:
        """468 landmarks of the face in `box`: x/y image pixels, z relative depth in pixel scale.

        image (H, W, 3) uint8 RGB; `score` is the model's face-presence probability.
        """
        image = check_image(image)
        if not (box.width > 0 and box.height > 0):
            raise DataError(f"face box has no area ({box.width:.1f}x{box.height:.1f} px)")
        return self.predict_roi(image, roi_transform(box))

    def predict_roi(self, image: NDArray[np.uint8], m: NDArray[np.float64]) -> Landmarks:
        """468 landmarks in the ROI `m` (crop px -> image px, e.g. `roi_transform` of a box
        carried from the last frame, edge.vision.track) of an (H, W, 3) uint8 RGB frame."""
        cv2.warpAffine(
            image,
            m,
            (INPUT, INPUT),
            dst=self._crop,
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
        )
        np.multiply(self._crop, np.float32(1.0 / 255.0), out=self._x[0], casting="unsafe")
        self._interp.set_tensor(self._in, self._x)
        self._interp.invoke()
        raw = self._interp.get_tensor(self._mesh).reshape(NUM_POINTS, 3).astype(np.float64)
        logit = float(self._interp.get_tensor(self._presence).reshape(-1)[0])
        pts = np.empty((NUM_POINTS, 3), dtype=np.float32)
        pts[:, :2] = raw[:, :2] @ m[:, :2].T + m[:, 2]
        pts[:, 2] = raw[:, 2] * math.hypot(m[0, 0], m[1, 0])
        score = 1.0 / (1.0 + math.exp(-max(-100.0, min(100.0, logit))))
        return Landmarks(points=pts, score=score)
