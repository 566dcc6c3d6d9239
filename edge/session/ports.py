"""Structural types of what the vision pipeline hands to the session and to enrolment.

Protocols rather than the concrete `edge.vision` classes, so the session and enrolment can be
driven in tests by plain objects, and so neither depends on how vision is implemented.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from edge.camera.base import Frame
from edge.vision.geometry import BoxLike


class LandmarksLike(Protocol):
    @property
    def points(self) -> NDArray[np.float32]: ...


class ObservationLike(Protocol):
    """One face in a frame (edge.vision.pipeline.FaceObservation)."""

    @property
    def box(self) -> BoxLike: ...
    @property
    def landmarks(self) -> LandmarksLike | None: ...


class QualityLike(Protocol):
    @property
    def ok(self) -> bool: ...
    @property
    def reasons(self) -> tuple[str, ...]: ...


class SessionVision(Protocol):
    """What the session needs from the vision pipeline for the frames it is fed."""

    def quality(self, frame: Frame, obs: Any) -> QualityLike:
        """Quality gates of one face; reasons like `quality:blur`."""
        ...

    def embed(self, frame: Frame, landmarks: Any) -> NDArray[np.float32] | None:
        """(128,) L2-normalised embedding of the face, or None when no embedder is loaded."""
        ...

    def pad_score(self, frame: Frame, obs: Any) -> float | None:
        """Passive real-face score in [0, 1] of one face, or None when it cannot be scored
        (no PAD model, or the face's crop is not reliable)."""
        ...
