"""Who is at the kiosk, and when the next session may start (the queue rule).

The person at the kiosk is a face with landmarks, centred (its centre in the middle
`CENTRAL_FRACTION` of the frame's width) and not much smaller than the largest face; a smaller
face further back never blocks. After a decision the next session starts once the decided face
has left (no such face for COOLDOWN_NO_FACE_S), or a face stands elsewhere, or the face in the
same place is someone else (its embedding, taken every IDENTITY_CHECK_EVERY frames, below the
match threshold against the decided face's).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.errors import FacegateError
from edge.vision.geometry import box_iou, box_size

log = logging.getLogger(__name__)

COOLDOWN_NO_FACE_S = 0.3
CENTRAL_FRACTION = 0.6
AT_KIOSK_SIZE_RATIO = 0.6
SAME_PLACE_IOU = 0.3
IDENTITY_CHECK_EVERY = 5  # frames between embeddings of the face in the decided place
Embedding = NDArray[np.float32]


def at_the_kiosk(faces: Sequence[Any], frame_width: int) -> list[Any]:
    """The faces that count as someone at the kiosk (module doc: centred, with landmarks, not
    much smaller than the largest); faces too small for landmarks never count."""
    marked = [o for o in faces if o.landmarks is not None]
    if not marked:
        return []
    largest = max(box_size(o.box) for o in marked)
    margin = (1.0 - CENTRAL_FRACTION) / 2 * frame_width
    return [
        o for o in marked
        if box_size(o.box) >= AT_KIOSK_SIZE_RATIO * largest
        and margin <= (o.box.x1 + o.box.x2) / 2 <= frame_width - margin
    ]  # fmt: skip


class NextPerson:
    """The wait after a decision until the decided person has gone (module doc)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold  # the match threshold: below it, someone else
        self.waiting = False
        self._absent_since: float | None = None
        self._box: Any = None
        self._embedding: Embedding | None = None
        self._frames = 0

    def decided(self, box: Any, embedding: Embedding | None) -> None:
        """A session decided on the face in `box` (its last embedding, if any)."""
        self._box, self._embedding = box, embedding

    def wait(self) -> None:
        """After any decision: the next session waits for this person to step away."""
        self.waiting = True
        self._absent_since = None
        self._frames = 0

    def ready(
        self, t: float, present: list[Any], embed: Callable[[Any], Embedding] | None
    ) -> bool:
        """True when the next session may start (and stop waiting): the decided person has
        left, or someone else is at the kiosk. `embed(landmarks)` embeds a face of this frame
        (None: no identity check)."""
        if self.waiting and not self._gone(t, present, embed):
            return False
        self.waiting = False
        return True

    def _gone(
        self, t: float, present: list[Any], embed: Callable[[Any], Embedding] | None
    ) -> bool:
        same_place = [
            o for o in present
            if self._box is not None and box_iou(o.box, self._box) >= SAME_PLACE_IOU
        ]  # fmt: skip
        if not present:
            self._absent_since = t if self._absent_since is None else self._absent_since
            return t - self._absent_since >= COOLDOWN_NO_FACE_S
        self._absent_since = None
        if len(present) == 1 and not same_place:
            return True  # a face stands where the decided one did not: the next person
        if len(same_place) != 1 or self._embedding is None or embed is None:
            return False
        self._frames += 1
        if self._frames % IDENTITY_CHECK_EVERY:
            return False
        try:
            probe = embed(same_place[0].landmarks)
        except FacegateError as exc:
            log.warning("identity check after a decision skipped: %s", exc)
            return False
        return float(np.dot(probe, self._embedding)) < self.threshold  # someone else: start anew
