"""What the kiosk loop needs of the parts it drives (protocols), and the session's view of the
vision pipeline that keeps the last embedding for the 1:few door."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from edge.camera.base import Frame
from edge.kiosk.claims import Claim
from edge.session.verification import VerificationSession

Embedding = NDArray[np.float32]


class ReferenceStore(Protocol):
    """The part of TemplateStore the kiosk needs: decrypt references for some subjects."""

    def references(
        self, subjects: list[str] | None = None
    ) -> tuple[dict[str, Embedding], dict[str, Any]]: ...

    def expire(self) -> list[str]: ...


class QrReader(Protocol):
    """edge.kiosk.claims.qr.QrClaimReader: scans 1 idle frame in N for a claim token."""

    def on_idle_frame(self, image: Any, t: float) -> Any: ...


class Vision(Protocol):
    def observe(self, image: Any) -> list[Any]: ...
    def quality(self, image: Any, obs: Any) -> Any: ...
    def embed(self, image: Any, landmarks: Any) -> Embedding: ...
    def pad_score(self, image: Any, obs: Any) -> float | None: ...


class CapturingVision:
    """Passes through to the pipeline, keeping the last embedding in memory (1:few identity)."""

    def __init__(self, vision: Vision) -> None:
        self.vision = vision
        self.last: Embedding | None = None

    def quality(self, frame: Frame, obs: Any) -> Any:
        return self.vision.quality(frame, obs)

    def embed(self, frame: Frame, landmarks: Any) -> Embedding | None:
        self.last = self.vision.embed(frame, landmarks)
        return self.last

    def pad_score(self, frame: Frame, obs: Any) -> float | None:
        return self.vision.pad_score(frame, obs)

    def refine(self, embedding: Embedding) -> Embedding | None:
        """Adaptive flip TTA (edge.vision.track): the mirrored chip's help, when available."""
        refine = getattr(self.vision, "refine", None)
        return None if refine is None else refine(embedding)


@dataclass
class ActiveSession:
    """The session under way: its claim, the session, its vision view and the references."""

    claim: Claim
    session: VerificationSession
    vision: CapturingVision
    refs: dict[str, Embedding]
