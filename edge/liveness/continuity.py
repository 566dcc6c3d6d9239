"""Identity continuity: one face track from acquisition to decision; a swap or second face fails."""

from __future__ import annotations

from edge.vision.geometry import BoxLike, box_iou, box_size

# Track continuity: a face may go undetected this long (blur, a detector miss) without the
# session assuming someone else stepped in; longer and the track is lost.
MAX_GAP_S = 0.25
# Largest plausible change of box size between two frames of one track (a factor).
MAX_SCALE_STEP = 1.3
# A second face breaks the track only when it is at least this share of the tracked face's
# size: someone stepping in beside the person. A face further back in a queue is smaller and is
# no threat to the session (and must not stall a fare gate).
SECOND_FACE_RATIO = 0.6


class ContinuityMonitor:
    """One face track from acquisition to decision; a swap or a second face fails closed.

    `update` returns the tracked box for the frame (None when missing) and, on a violation,
    the reason `face_changed`.
    """

    def __init__(self, min_iou: float, min_face_px: float) -> None:
        self.min_iou = min_iou
        self.min_face_px = min_face_px
        self._last: tuple[float, BoxLike] | None = None

    def update(
        self, t: float, boxes: list[BoxLike]
    ) -> tuple[int | None, str | None]:
        """Index into `boxes` of the tracked face (or None) and a violation reason (or None)."""
        if self._last is None:
            if not boxes:
                return None, None
            first = max(range(len(boxes)), key=lambda i: box_size(boxes[i]))
            self._last = (t, boxes[first])
            if any(i != first for i in self._rivals(boxes, boxes[first])):
                return first, "face_changed"
            return first, None
        last_t, last_box = self._last
        if not boxes:
            return None, ("face_changed" if t - last_t > MAX_GAP_S else None)
        if t - last_t > MAX_GAP_S:
            return None, "face_changed"
        best = max(range(len(boxes)), key=lambda i: box_iou(boxes[i], last_box))
        box = boxes[best]
        self._last = (t, box)
        if any(i != best for i in self._rivals(boxes, box)):
            return best, "face_changed"
        if box_iou(box, last_box) < self.min_iou:
            return best, "face_changed"
        step = box_size(box) / max(box_size(last_box), 1e-6)
        if step > MAX_SCALE_STEP or step < 1.0 / MAX_SCALE_STEP:
            return best, "face_changed"
        return best, None

    @property
    def last_box(self) -> BoxLike | None:
        """The tracked face's latest box."""
        return None if self._last is None else self._last[1]

    def _rivals(self, boxes: list[BoxLike], tracked: BoxLike) -> list[int]:
        """Faces big enough to be a second person at the kiosk (module constants)."""
        floor = max(self.min_face_px, SECOND_FACE_RATIO * box_size(tracked))
        return [i for i, b in enumerate(boxes) if box_size(b) >= floor]
