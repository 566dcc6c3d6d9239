"""Passive presentation-attack detection (PAD): is the face in this frame a real one?

Two MiniFASNet classifiers from Silent-Face-Anti-Spoofing (Apache-2.0, converted to TFLite and
checked against the original PyTorch weights, models/README.md) each look at one 80x80 BGR crop
of the face and its surroundings: MiniFASNetV2 at 2.7x the face box, MiniFASNetV1SE at 4.0x. The
score is the geometric mean of their class-1 ("real face") softmax: both must call the face real
(the source project averages them; the geometric mean, calibrated in models/README.md, kept
every replay session of the developer data 0.16 below the threshold where the plain mean let one
through). They see recapture cues (screen moire and glare, bezels, paper texture); a digital
image fed straight in as frames carries none of those, and on the developer data masks, cut-outs
and one glossy held print also score as real, so the motion rule and the blink must catch those.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np
from numpy.typing import NDArray

from edge.errors import DataError, ModelError
from edge.vision.detect import check_image
from edge.vision.models import model_path
from edge.vision.runtime import Interpreter, load_interpreter
from edge.vision.types import FaceBox

PAD_V2 = "minifasnet_v2_2.7_float32.tflite"
PAD_V1SE = "minifasnet_v1se_4.0_float32.tflite"

CROP = 80
SCALE_V2 = 2.7
SCALE_V1SE = 4.0
REAL_CLASS = 1

# The crop is cut around the BlazeFace box as it is. The source project's boxes come from its
# own RetinaFace-style detector; growing, shrinking or stretching our box (x0.9 to x1.2, or
# 1.2x taller and raised) did not separate live faces from recaptures better on the developer
# data (models/tools/pad_scores.py --box-scan, figures in models/README.md).

# The 2.7x region must reach the model without upsampling: 80 px / 2.7 = 30 px of face. Below
# that the crop is interpolated and the recapture texture the model looks for is gone: live
# faces shrunk to 24 px score a median 0.955 (minimum 0.64), at 40 px 0.998 (minimum 0.90);
# 40 px is also the pipeline's `vision.min_face_px` default, below which FaceMesh is not run.
MIN_FACE_PX = 40.0
# The crop keeps the box's context only while the frame holds it; a face filling the frame
# leaves the model a framing it was not trained on. Live faces with the frame cut to 1.0-1.15x
# the box score a median 0.57-0.85 (the 96x128 low-res clip: 1.02x, median 0.19), 0.989 at
# 1.3x, >= 0.999 from 1.5x; a recapture gains as its bezel leaves the frame (0.25 at 1.3x). A
# face cut closer than 1.25x is asked to step back: that keeps phone-framed selfies (1.3-1.4x,
# e.g. live_headturns) in and the face-filling frame out. Kiosk cameras should frame a face at
# no more than half the frame height (2x).
MIN_FIT_SCALE = 1.25


def fit_scale(box: FaceBox, image_shape: tuple[int, ...], scale: float) -> float:
    """The crop scale actually used: `scale`, shrunk so the scaled box fits in the image."""
    h, w = int(image_shape[0]), int(image_shape[1])
    if not (box.width > 0 and box.height > 0):
        raise DataError(f"face box has no area ({box.width:.1f}x{box.height:.1f} px)")
    return min((h - 1) / box.height, (w - 1) / box.width, scale)


def crop_region(
    box: FaceBox, image_shape: tuple[int, ...], scale: float
) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) inclusive pixel bounds of the PAD crop, as the source project cuts it.

    The box is scaled by `scale` about its centre (the scale shrinks when the result would be
    larger than the image), then shifted, not clipped, to lie inside the image.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    s = fit_scale(box, image_shape, scale)
    cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
    bw, bh = box.width, box.height
    x1, x2 = cx - bw * s / 2, cx + bw * s / 2
    y1, y2 = cy - bh * s / 2, cy + bh * s / 2
    if x1 < 0:
        x1, x2 = 0.0, x2 - x1
    if y1 < 0:
        y1, y2 = 0.0, y2 - y1
    if x2 > w - 1:
        x1, x2 = x1 - (x2 - (w - 1)), float(w - 1)
    if y2 > h - 1:
        y1, y2 = y1 - (y2 - (h - 1)), float(h - 1)
    # The source truncates with int(); after the shift every bound is >= 0, so it is a floor.
    return max(0, int(x1)), max(0, int(y1)), int(x2), int(y2)


def crop_for_pad(image_rgb: NDArray[np.uint8], box: FaceBox, scale: float) -> NDArray[np.uint8]:
    """(80, 80, 3) uint8 BGR crop of the face at `scale` x its box, from an (H, W, 3) uint8 RGB
    frame; the region is cut as the source project cuts it and resized bilinearly (aspect ratio
    not kept, as in the source)."""
    image = check_image(image_rgb)
    x1, y1, x2, y2 = crop_region(box, image.shape, scale)
    if x2 < x1 or y2 < y1:
        raise DataError(f"face box {box.x1:.0f},{box.y1:.0f},{box.x2:.0f},{box.y2:.0f} is empty")
    region = image[y1 : y2 + 1, x1 : x2 + 1]
    resized = cv2.resize(region, (CROP, CROP), interpolation=cv2.INTER_LINEAR)
    return np.asarray(cv2.cvtColor(np.asarray(resized), cv2.COLOR_RGB2BGR), dtype=np.uint8)


def crop_problem(
    box: FaceBox,
    image_shape: tuple[int, ...],
    min_face_px: float = MIN_FACE_PX,
    min_fit_scale: float = MIN_FIT_SCALE,
) -> str | None:
    """Why the passive score of this face cannot be trusted, or None when it can:
    "pad:face_too_small" (box under `min_face_px`: ask to come closer) or "pad:face_too_close"
    (the frame holds less than `min_fit_scale` x the box: ask to step back)."""
    if not (box.width > 0 and box.height > 0) or box.size_px < min_face_px:
        return "pad:face_too_small"
    if fit_scale(box, image_shape, SCALE_V2) < min_fit_scale:
        return "pad:face_too_close"
    return None


def crop_is_reliable(
    box: FaceBox,
    image_shape: tuple[int, ...],
    min_face_px: float = MIN_FACE_PX,
    min_fit_scale: float = MIN_FIT_SCALE,
) -> bool:
    """Whether the face is big enough (>= `min_face_px`, so the 2.7x crop is downsampled, never
    upsampled) and the frame holds enough around it (>= `min_fit_scale` x the box) for a
    reliable 80x80 PAD crop. A face failing this is never passed on its passive score."""
    return crop_problem(box, image_shape, min_face_px, min_fit_scale) is None


def _softmax_real(logits: NDArray[np.float32]) -> float:
    z = logits.astype(np.float64).reshape(-1)
    z = np.exp(z - z.max())
    p = float(z[REAL_CLASS] / z.sum())
    if not math.isfinite(p):
        raise DataError("passive PAD model produced a non-finite score (corrupt model?)")
    return p


class _Classifier:
    """One MiniFASNet TFLite model: (80, 80, 3) uint8 BGR crop -> 3 logits."""

    def __init__(self, path: Path, threads: int) -> None:
        self._interp: Interpreter = load_interpreter(path, threads)
        inp = self._interp.get_input_details()[0]
        out = self._interp.get_output_details()[0]
        if tuple(inp["shape"]) != (1, CROP, CROP, 3) or int(np.prod(out["shape"])) != 3:
            raise ModelError(
                f"{path} is not a MiniFASNet PAD model (input {list(inp['shape'])}, output "
                f"{list(out['shape'])}); run `make models` to restore models/"
            )
        if np.dtype(inp["dtype"]) != np.float32:
            raise ModelError(f"{path}: expected a float32 input, got {np.dtype(inp['dtype'])}")
        self._in, self._out = int(inp["index"]), int(out["index"])

    def logits(self, crop_bgr: NDArray[np.uint8]) -> NDArray[np.float32]:
        self._interp.set_tensor(self._in, crop_bgr.astype(np.float32)[None])
        self._interp.invoke()
        return np.asarray(self._interp.get_tensor(self._out), dtype=np.float32).reshape(3)


class PassiveScorer:
    """The two MiniFASNet models on their own interpreters; `score` is the fused real-face
    probability of one face. Close it (or use it as a context manager) to free them."""

    def __init__(self, v2_path: Path, v1se_path: Path, threads: int = 1) -> None:
        self._models: tuple[tuple[_Classifier, float], ...] | None = (
            (_Classifier(v2_path, threads), SCALE_V2),
            (_Classifier(v1se_path, threads), SCALE_V1SE),
        )

    @classmethod
    def from_models_dir(cls, models_dir: Path, threads: int = 1) -> PassiveScorer:
        """Both models from `models_dir`, each refused (ModelError) unless models/MANIFEST.toml
        lists it with a matching sha256."""
        return cls(model_path(models_dir, PAD_V2), model_path(models_dir, PAD_V1SE), threads)

    def _loaded(self) -> tuple[tuple[_Classifier, float], ...]:
        if self._models is None:
            raise ModelError("passive PAD scorer used after close(); create a new one")
        return self._models

    def model_scores(self, image_rgb: NDArray[np.uint8], box: FaceBox) -> tuple[float, float]:
        """Class-1 (real) softmax of MiniFASNetV2 (2.7x crop) and MiniFASNetV1SE (4.0x crop)
        for the face in `box` of an (H, W, 3) uint8 RGB frame."""
        image = check_image(image_rgb)
        v2, v1se = (
            _softmax_real(model.logits(crop_for_pad(image, box, scale)))
            for model, scale in self._loaded()
        )
        return v2, v1se

    def score(self, image_rgb: NDArray[np.uint8], box: FaceBox) -> float:
        """Real-face score in [0, 1] of the face in `box` of an (H, W, 3) uint8 RGB frame: the
        geometric mean of the two models' class-1 softmax (high = real, low = attack)."""
        v2, v1se = self.model_scores(image_rgb, box)
        return math.sqrt(v2 * v1se)

    def close(self) -> None:
        """Release both interpreters; later calls to `score` raise ModelError."""
        self._models = None

    def __enter__(self) -> PassiveScorer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
