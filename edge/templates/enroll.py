"""On-device enrolment: capture N good live frames of one person, build a template, store it.

Two layers, so the logic is testable on plain values:
- `build_template(embeddings, n_frames, min_agreement)`: mean of the L2-normalised embeddings,
  refused when any two frames disagree (two people, a swap mid-capture);
  `check_not_duplicate(store, subject, template, threshold)`: refused when the face already
  matches another enrolled subject (the same person under two pseudonyms).
- `EnrolmentCapture`: fed `(frame, faces)` from the vision pipeline; keeps frames that pass the
  quality gates, spaced in time, from ONE continuous face track, and requires liveness on
  that track: `liveness.blinks_required` natural blinks and a face that is not static (the
  liveness module's BlinkDetector, MotionMonitor and ContinuityMonitor). Enrolment is attended
  by a technician, so it asks for natural blinks during the capture rather than a timed
  challenge; a print, a still screen or a second face fails it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from edge.camera.base import Frame
from edge.config import Config
from edge.errors import FacegateError
from edge.liveness.blink import BlinkDetector
from edge.liveness.continuity import ContinuityMonitor
from edge.liveness.eye import eye_openness
from edge.liveness.motion import MotionMonitor
from edge.session.ports import LandmarksLike, ObservationLike, QualityLike
from edge.templates.store import TemplateInfo, TemplateStore

Embedding = NDArray[np.float32]

# Consecutive video frames are near copies; spacing samples gives the mean more variety
# (slight pose and expression changes) for the same capture length.
MIN_SAMPLE_GAP_S = 0.1
# Same static window as a verification session: no landmark motion this long = a still image.
STATIC_WINDOW_S = 2.0


class EnrolmentRefused(FacegateError):
    """Enrolment did not produce a template (exit 1): the reason and what to do."""

    exit_code = 1
    prefix = "enrolment refused"


@dataclass(frozen=True)
class EnrolTemplate:
    """A freshly built template; the embedding stays in memory until it is encrypted."""

    embedding: Embedding = field(repr=False)  # (dim,) L2-normalised float32
    frames: int
    min_agreement: float  # lowest pairwise cosine similarity between the frames used


def _unit(v: NDArray[np.floating]) -> NDArray[np.float64]:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    n = float(np.linalg.norm(a))
    if a.size == 0 or not np.isfinite(n) or n == 0.0:
        raise EnrolmentRefused("an embedding is empty or not finite; check the embedder model")
    return a / n


def build_template(
    embeddings: Sequence[NDArray[np.floating]], n_frames: int, min_agreement: float
) -> EnrolTemplate:
    """Average the first `n_frames` good-frame embeddings; refuse when any two disagree."""
    if n_frames < 1:
        raise ValueError("n_frames must be at least 1")
    if len(embeddings) < n_frames:
        raise EnrolmentRefused(
            f"only {len(embeddings)} of {n_frames} good frames; keep the face in view, "
            f"well lit and facing the camera, or lower --frames"
        )
    units = [_unit(e) for e in embeddings[:n_frames]]
    if len({u.shape for u in units}) != 1:
        raise EnrolmentRefused("embeddings have different dimensions; check the embedder model")
    lowest = min((float(np.dot(a, b)) for a, b in itertools.combinations(units, 2)), default=1.0)
    if lowest < min_agreement:
        raise EnrolmentRefused(
            f"frames disagree (lowest pairwise similarity {lowest:.3f} < "
            f"templates.enroll_min_agreement {min_agreement:.3f}): more than one person or a "
            f"face swap during capture; enrol one person at a time"
        )
    mean = np.mean(np.stack(units), axis=0)
    template = (mean / np.linalg.norm(mean)).astype(np.float32)
    return EnrolTemplate(template, n_frames, lowest)


def check_not_duplicate(
    store: TemplateStore, subject: str, template: EnrolTemplate, threshold: float
) -> None:
    """Refuse a face that already matches another active subject at or above `threshold`."""
    best = store.best_match(template.embedding, exclude=subject)
    if best is not None and best[1] >= threshold:
        raise EnrolmentRefused(
            f"subject {subject!r}: this face already matches subject {best[0]!r} "
            f"(similarity {best[1]:.3f} >= verify.threshold {threshold:.3f}); one person, one "
            f"enrolment - revoke {best[0]!r} first if it is the same person"
        )


def enrol_template(
    store: TemplateStore, subject: str, template: EnrolTemplate, cfg: Config
) -> TemplateInfo:
    """Duplicate check, then encrypt and store the template with the configured validity."""
    check_not_duplicate(store, subject, template, cfg.verify.threshold)
    return store.enrol(subject, template.embedding, validity_s=cfg.templates.validity_days * 86400)


# -- capture -------------------------------------------------------------------------------------


class EnrolVision(Protocol):
    """What enrolment needs from the vision pipeline (VisionPipeline satisfies it)."""

    def quality(self, image: Any, obs: Any) -> QualityLike: ...

    def embed(self, image: Any, landmarks: Any) -> Embedding: ...


@dataclass
class CaptureReport:
    """What the capture saw (no biometric data): shown to the technician on failure."""

    frames: int = 0
    frames_with_face: int = 0
    quality_rejects: dict[str, int] = field(default_factory=dict)
    blinks: int = 0
    samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "frames_with_face": self.frames_with_face,
            "quality_rejects": dict(sorted(self.quality_rejects.items())),
            "blinks": self.blinks,
            "samples": self.samples,
        }


class EnrolmentCapture:
    """Collects `n_frames` good embeddings from one live, continuous face track."""

    def __init__(self, cfg: Config, vision: EnrolVision, n_frames: int) -> None:
        self.cfg = cfg
        self.vision = vision
        self.n_frames = n_frames
        lv = cfg.liveness
        self.blinks_required = lv.blinks_required
        self.timeout_s = cfg.session.acquire_timeout_s + cfg.session.challenge_timeout_s
        self._blinks = BlinkDetector(lv)
        self._motion = MotionMonitor(STATIC_WINDOW_S, lv.static_motion_px)
        self._continuity = ContinuityMonitor(lv.continuity_min_iou, cfg.vision.min_face_px)
        self._embeddings: list[Embedding] = []
        self._last_sample_t: float | None = None
        self._first_face_t: float | None = None
        self.report = CaptureReport()
        self.failure: str | None = None

    @property
    def done(self) -> bool:
        """True when enough live samples are in, or the capture has failed."""
        if self.failure is not None:
            return True
        return len(self._embeddings) >= self.n_frames and self.report.blinks >= self.blinks_required

    def step(self, frame: Frame, faces: Sequence[ObservationLike]) -> bool:
        """Feed one frame and the faces found in it; returns `done`."""
        if self.done:
            return True
        t = frame.t_monotonic
        self.report.frames += 1
        if faces:
            self.report.frames_with_face += 1
            if self._first_face_t is None:
                self._first_face_t = t
        if self._first_face_t is not None and t - self._first_face_t > self.timeout_s:
            self.failure = self._timeout_reason()
            return True
        idx, why = self._continuity.update(t, [o.box for o in faces])
        if why is not None:
            self.failure = (
                "more than one face, or the face changed during capture; enrol one person "
                "at a time, alone in view"
            )
            return True
        marks = faces[idx].landmarks if idx is not None else None
        if idx is None or marks is None:
            self._blinks.gap()
            return False
        blink = self._blinks.update(t, eye_openness(marks.points), frame.index)
        if blink is not None:
            self.report.blinks += 1
        self._motion.update(t, marks.points)
        if self._motion.is_static(t) and not self._blinks.closed:
            self.failure = (
                "the face does not move like a live face (static presentation); the person "
                "must stand in front of the camera themselves"
            )
            return True
        self._maybe_sample(frame, faces[idx], marks, t)
        return self.done

    def _maybe_sample(
        self, frame: Frame, obs: ObservationLike, marks: LandmarksLike, t: float
    ) -> None:
        if len(self._embeddings) >= self.n_frames or self._blinks.closed:
            return  # enough samples, or eyes closing: a closed-eye frame is a poor template
        if self._last_sample_t is not None and t - self._last_sample_t < MIN_SAMPLE_GAP_S:
            return
        quality = self.vision.quality(frame, obs)
        if not quality.ok:
            for r in quality.reasons or ("quality:unknown",):
                self.report.quality_rejects[r] = self.report.quality_rejects.get(r, 0) + 1
            return
        self._embeddings.append(self.vision.embed(frame, marks))
        self._last_sample_t = t
        self.report.samples = len(self._embeddings)

    def _timeout_reason(self) -> str:
        if self.report.blinks < self.blinks_required:
            return (
                f"no natural blink seen ({self.report.blinks} of {self.blinks_required}) "
                f"within {self.timeout_s:.0f} s; ask the person to look at the camera and blink"
            )
        return self._quality_advice()

    def _quality_advice(self) -> str:
        worst = max(self.report.quality_rejects.items(), key=lambda kv: kv[1], default=None)
        hint = f" (most frames failed {worst[0]})" if worst else ""
        return (
            f"only {len(self._embeddings)} of {self.n_frames} good frames{hint}; improve "
            f"lighting and face the camera"
        )

    def finish(self) -> list[Embedding]:
        """The sampled embeddings once `done`; EnrolmentRefused with the reason otherwise."""
        if self.failure is not None:
            raise EnrolmentRefused(self.failure)
        if self.report.frames_with_face == 0:
            raise EnrolmentRefused("no face seen in the source; check the camera and lighting")
        if self.report.blinks < self.blinks_required:
            raise EnrolmentRefused(
                f"liveness not shown: {self.report.blinks} of {self.blinks_required} natural "
                f"blinks seen before the source ended; ask the person to blink"
            )
        if len(self._embeddings) < self.n_frames:
            raise EnrolmentRefused(self._quality_advice())
        return list(self._embeddings)
