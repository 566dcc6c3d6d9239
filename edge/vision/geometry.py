"""Box geometry in image pixels: the one size and IoU used by detection scoring, tracking,
continuity and the session (pure arithmetic; no model, no image)."""

from __future__ import annotations

from typing import Protocol


class BoxLike(Protocol):
    """Anything with box corners in pixels (edge.vision.types.FaceBox, test doubles)."""

    @property
    def x1(self) -> float: ...
    @property
    def y1(self) -> float: ...
    @property
    def x2(self) -> float: ...
    @property
    def y2(self) -> float: ...


def box_size(box: BoxLike) -> float:
    """Longer side of the box in pixels."""
    return max(box.x2 - box.x1, box.y2 - box.y1)


def box_iou(a: BoxLike, b: BoxLike) -> float:
    """Intersection over union of two boxes (0 when they do not overlap or are empty)."""
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0
