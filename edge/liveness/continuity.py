"""Identity continuity: one face track from acquisition to decision; a swap or second face fails."""

from __future__ import annotations

from edge.vision.geometry import BoxLike, box_iou, box_size

# Track continuity: a face may go undetected this long (blur, a detector miss) without the
# session assuming someone else stepped in; longer and the track is lost.
MAX_GAP_S = 0.25
# Largest plausible change of box size between two frames of one track (a factor).
MAX_SCALE_STEP = 1.3


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
        big = [i for i, b in enumerate(boxes) if box_size(b) >= self.min_face_px]
        if self._last is None:
            if not boxes:
                return None, None
            first = max(range(len(boxes)), key=lambda i: box_size(boxes[i]))
            self._last = (t, boxes[first])
            if len([i for i in big if i != first]) > 0:
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
        if any(i != best for i in big):
            return best, "face_changed"
        if box_iou(box, last_box) < self.min_iou:
            return best, "face_changed"
        step = box_size(box) / max(box_size(last_box), 1e-6)
        if step > MAX_SCALE_STEP or step < 1.0 / MAX_SCALE_STEP:
            return best, "face_changed"
        return best, None
