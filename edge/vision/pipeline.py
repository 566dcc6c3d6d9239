"""The vision stages wired for the kiosk: detect -> landmarks -> quality -> passive PAD score ->
align + embed."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from edge.config import Config, QualityConfig
from edge.errors import ModelError
from edge.vision import quality as quality_mod
from edge.vision.detect import FaceDetector, check_image
from edge.vision.landmarks import LandmarkModel
from edge.vision.models import DETECTOR, EMBEDDER, LANDMARKER, model_path
from edge.vision.pad import PassiveScorer, crop_problem
from edge.vision.types import Embedding, FaceBox, Landmarks

# A face whose PAD crop is not reliable is asked to move (quality reasons, never passed).
PAD_QUALITY_REASONS = {
    "pad:face_too_small": "quality:too_far",
    "pad:face_too_close": "quality:too_close",
}

# FaceMesh's own presence threshold (MediaPipe's default for keeping a face); a detection the
# mesh model calls "no face" is dropped as a detector false positive.
MIN_PRESENCE = 0.5


@dataclass(frozen=True)
class FaceObservation:
    """One face in a frame; `landmarks` is None for faces below `vision.min_face_px`."""

    box: FaceBox
    landmarks: Landmarks | None


class _Embedder(Protocol):
    def embed(self, chip: NDArray[np.uint8]) -> Embedding: ...


def _image(frame_or_image: Any) -> NDArray[np.uint8]:
    """Accept a `Frame` (uses `.image`) or an (H, W, 3) uint8 RGB array."""
    image = getattr(frame_or_image, "image", frame_or_image)
    return check_image(image)


class VisionPipeline:
    """Detector + FaceMesh (+ optional aligner/embedder) with the thresholds of one config."""

    def __init__(
        self,
        detector: FaceDetector,
        landmarks: LandmarkModel,
        quality_cfg: QualityConfig,
        min_face_px: float,
        embedder: _Embedder | None = None,
        pad: PassiveScorer | None = None,
    ) -> None:
        self.detector = detector
        self.landmarks = landmarks
        self.quality_cfg = quality_cfg
        self.min_face_px = min_face_px
        self.embedder = embedder
        self.pad = pad

    @classmethod
    def from_config(
        cls, cfg: Config, *, with_embedder: bool = True, with_pad: bool | None = None
    ) -> VisionPipeline:
        """Load every model from `cfg.models_dir` (hash-checked) with `cfg.vision` settings;
        the passive PAD models when `with_pad` (default: `liveness.pad`)."""
        v, d = cfg.vision, cfg.models_dir
        detector = FaceDetector(
            model_path(d, DETECTOR), v.threads, score_threshold=v.detect_score, nms_iou=v.nms_iou
        )
        marks = LandmarkModel(model_path(d, LANDMARKER), v.threads)
        embedder: _Embedder | None = None
        if with_embedder:
            try:
                embed_mod = importlib.import_module("edge.vision.embed")
            except ImportError as exc:
                msg = f"embedder module unavailable ({exc}); reinstall facegate"
                raise ModelError(msg) from exc
            embedder = embed_mod.Embedder(model_path(d, EMBEDDER), v.threads, v.flip_tta)
        pad = None
        if cfg.liveness.pad if with_pad is None else with_pad:
            pad = PassiveScorer.from_models_dir(d, v.threads)
        return cls(detector, marks, cfg.quality, float(v.min_face_px), embedder, pad)

    @property
    def has_embedder(self) -> bool:
        return self.embedder is not None

    @property
    def has_pad(self) -> bool:
        return self.pad is not None

    def observe(self, image: Any) -> list[FaceObservation]:
        """Faces in one frame (Frame or (H, W, 3) uint8 RGB), best first; landmarks for faces
        at least `min_face_px` wide. Detections FaceMesh rejects (presence < 0.5) are dropped."""
        img = _image(image)
        out: list[FaceObservation] = []
        for box in self.detector.detect(img):
            if box.size_px < self.min_face_px:
                out.append(FaceObservation(box, None))
                continue
            marks = self.landmarks.predict(img, box)
            if marks.score >= MIN_PRESENCE:
                out.append(FaceObservation(box, marks))
        return out

    def quality(self, image: Any, obs: FaceObservation) -> quality_mod.Quality:
        """Quality gates of one observed face; a face without landmarks fails `quality:size`."""
        img = _image(image)
        if obs.landmarks is None:
            return quality_mod.Quality(False, ("quality:size",), 0.0, 0.0, 0.0, 0.0, 0.0)
        q = quality_mod.assess(img, obs.box, obs.landmarks, self.quality_cfg)
        problem = crop_problem(obs.box, img.shape) if self.pad is not None else None
        if problem is None:
            return q
        return replace(q, ok=False, reasons=(*q.reasons, PAD_QUALITY_REASONS[problem]))

    def pad_score(self, image: Any, obs: FaceObservation) -> float | None:
        """Real-face score in [0, 1] of one face (both MiniFASNet crops), or None when no PAD
        model is loaded or the face's crop is not reliable (too small, or too close)."""
        if self.pad is None:
            return None
        img = _image(image)
        if crop_problem(obs.box, img.shape) is not None:
            return None
        return self.pad.score(img, obs.box)

    def embed(self, image: Any, landmarks: Landmarks) -> Embedding:
        """(128,) L2-normalised embedding: 5-point alignment to the 150x150 chip, then the
        int8 embedder. ModelError if the pipeline was built with `with_embedder=False`."""
        if self.embedder is None:
            raise ModelError("vision pipeline built without the embedder; load it with_embedder")
        from edge.vision.align import align_chip, five_points

        chip = align_chip(_image(image), five_points(landmarks))
        return self.embedder.embed(chip)
