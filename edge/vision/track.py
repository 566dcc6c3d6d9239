"""The vision of a live verification stream: faces tracked from frame to frame, and the
mirrored chip embedded only when it can change a decision.

Tracking (as MediaPipe's face-mesh graph does): once FaceMesh has found a face, the next frame's
region of interest comes from this frame's landmarks, so the detector is not needed while the
face stays. It still runs

- on every `detect_every`-th frame, so a newcomer (a second face at the kiosk, the next person
  in the queue) is seen within that many frames (N = 2: 67 ms at 30 fps; N = 5 would be 170 ms,
  still within the continuity monitor's 250 ms gap and the queue's 300 ms cool-down);
- on any frame where a tracked face's mesh presence drops below 0.5 (the face left, turned
  away or was covered), on that same frame;
- on any frame where a tracked face moved more than `MAX_TRACK_STEP` of its size;
- whenever nothing is tracked, and when the frame size changes.

A tracked face's box is the detector's box carried by the landmarks: on the frame where the
detector found it, the box's offset and size relative to the landmarks' bounding box are
stored and re-applied to each tracked frame's landmarks, and the mesh runs on that box's ROI
exactly as on a detection's (`roi_transform`: 1.5x the box, levelled on the eye keypoints, here
the mesh's eye centres). So continuity (IoU, scale step), the quality gates and the passive crop
see boxes of the same kind on detected and tracked frames, and the eye opening the blink
detector reads comes from crops of the same geometry.

Why N = 2 and not MediaPipe's landmark-box ROI or a longer interval: FaceMesh's eye points
shift with the crop, so a tracked ROI of another geometry (MediaPipe's: the landmarks' bounding
box, levelled on the outer eye corners) or a carried ROI drifting for several frames changes
the eye opening by up to 0.1 on the synthetic LivePortrait clips of the developer data, which
the blink detector (calibrated on detection ROIs) then reads as blinks: with N = 3 or 5,
liveportrait_d12 shows 3 blinks that are not there, with MediaPipe's ROI d10 one and d19 misses
its blink. With N = 2 and the motion rule every live video of ../shared/data/liveness gives
exactly the blinks of detection on every frame, and none false at 15 or 10 fps
(tests/test_liveness_real.py runs through this tracker).

Adaptive flip TTA: `embed` returns the one-chip embedding and keeps the chip (in memory, for a
few embeddings); `refine` adds the mirrored chip's descriptor to it on request. The session asks
for it only when the one-chip score lies within `vision.flip_tta_margin` of the threshold in use
(models/README.md). Enrolment does not use this class: templates always average both chips.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.errors import ModelError
from edge.vision import quality as quality_mod
from edge.vision.align import align_chip, five_points
from edge.vision.geometry import box_iou
from edge.vision.landmarks import roi_transform
from edge.vision.pipeline import MIN_PRESENCE, FaceObservation, VisionPipeline, _image
from edge.vision.types import Embedding, FaceBox, Landmarks

# Tracked faces whose boxes overlap this much have converged on one face: detect again.
MERGED_IOU = 0.5
# A tracked face whose box moved more than this share of its size since the last frame is found
# again by the detector on that frame: the carried ROI lags a moving face, and at low frame
# rates (a face moves further between frames) the lag shifts the eye points enough to fake a
# blink on the synthetic clips. 0.015: no false blink at 30, 15 and 10 fps on the developer
# data, while the detector still runs on only ~53 % of 30 fps frames (module doc); 0.03 let one
# through at 8 fps.
MAX_TRACK_STEP = 0.015
# Chips kept for `refine`: one session embeds at most 1 + verify.frames (<= 31) faces.
MAX_CHIPS = 32
# FaceMesh points standing in for BlazeFace's six keypoints on tracked boxes: eye centres
# (mean of the corners), nose tip, mouth centre, the two tragions.
_KP_MESH = ((33, 133), (263, 362), (1,), (13,), (234,), (454,))


@dataclass
class _Track:
    landmarks: Landmarks
    rel: tuple[float, float, float, float]  # detector box vs landmark bbox: dx, dy, w, h / side


@dataclass
class TrackStats:
    """Frames seen and how many of them ran the detector (the rest were tracked)."""

    frames: int = 0
    detected: int = 0
    refined: int = 0  # embeddings that needed the mirrored chip


def _moved(before: FaceBox, after: FaceBox) -> float:
    """How far a face moved between two frames, in units of its size (centre shift)."""
    dx = (after.x1 + after.x2 - before.x1 - before.x2) / 2
    dy = (after.y1 + after.y2 - before.y1 - before.y2) / 2
    return float(np.hypot(dx, dy)) / max(before.size_px, 1e-6)


def _frame_of(points: NDArray[np.float32]) -> tuple[float, float, float]:
    """Centre x, y and longer side of the landmarks' bounding box."""
    xy = points[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    return float(lo[0] + hi[0]) / 2, float(lo[1] + hi[1]) / 2, max(float((hi - lo).max()), 1e-6)


def _relative(box: FaceBox, points: NDArray[np.float32]) -> tuple[float, float, float, float]:
    cx, cy, side = _frame_of(points)
    bx, by = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
    return (bx - cx) / side, (by - cy) / side, box.width / side, box.height / side


def carried_box(marks: Landmarks, rel: tuple[float, float, float, float]) -> FaceBox:
    """The detector-like box of a tracked face: `rel` (from its last detection) applied to
    this frame's landmarks; keypoints from the mesh, score = mesh presence."""
    cx, cy, side = _frame_of(marks.points)
    dx, dy, w, h = rel
    x, y = cx + dx * side, cy + dy * side
    kps = np.array(
        [marks.points[list(ids), :2].mean(axis=0) for ids in _KP_MESH], dtype=np.float32
    )
    half_w, half_h = w * side / 2, h * side / 2
    return FaceBox(x - half_w, y - half_h, x + half_w, y + half_h, marks.score, kps)


class FaceTracker:
    """`observe` with tracking over a `VisionPipeline`; the rest of the pipeline's interface
    (quality, pad_score, embed, has_embedder, has_pad) passes through, `embed` one chip first.

    One tracker per camera stream: `observe` expects consecutive frames of one source."""

    def __init__(
        self, pipeline: VisionPipeline, detect_every: int = 5, *, one_chip: bool = True
    ) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every {detect_every}: give N >= 1")
        self.pipeline = pipeline
        self.detect_every = detect_every
        self.one_chip = one_chip  # False: `embed` is the pipeline's (full flip TTA)
        self.stats = TrackStats()
        self._tracks: list[_Track] = []
        self._since_detect = 0
        self._shape: tuple[int, ...] | None = None
        # one-chip embedding bytes -> [raw descriptor, chip, refined embedding or None]
        self._chips: OrderedDict[bytes, list[Any]] = OrderedDict()

    @property
    def has_embedder(self) -> bool:
        return self.pipeline.has_embedder

    @property
    def has_pad(self) -> bool:
        return self.pipeline.has_pad

    def reset(self) -> None:
        """Forget the tracked faces (a new stream): the next frame runs the detector."""
        self._tracks, self._since_detect, self._shape = [], 0, None

    def observe(self, image: Any) -> list[FaceObservation]:
        """Faces in this frame, as `VisionPipeline.observe` returns them (module doc: the
        detector runs on some frames, the others follow the last frame's landmarks)."""
        img = _image(image)
        self.stats.frames += 1
        if img.shape != self._shape:
            self.reset()
            self._shape = img.shape
        if self._tracks and self._since_detect + 1 < self.detect_every:
            tracked = self._track(img)
            if tracked is not None:
                self._since_detect += 1
                return tracked
        return self._detect(img)

    def _detect(self, img: NDArray[np.uint8]) -> list[FaceObservation]:
        """The pipeline's own `observe` (detector, then FaceMesh on each detection's ROI);
        each face with landmarks starts a track, with its box relative to its landmarks."""
        self.stats.detected += 1
        out = self.pipeline.observe(img)
        self._tracks = [
            _Track(o.landmarks, _relative(o.box, o.landmarks.points))
            for o in out
            if o.landmarks is not None
        ]
        self._since_detect = 0
        return out

    def _track(self, img: NDArray[np.uint8]) -> list[FaceObservation] | None:
        """Every tracked face on the ROI of its carried box; None (detect instead) when one
        is lost, shrank below the mesh's size, or two tracks merged."""
        out: list[FaceObservation] = []
        tracks: list[_Track] = []
        for tr in self._tracks:
            # The detection ROI's geometry (roi_transform of a detector-like box), not
            # MediaPipe's landmark-bbox ROI: FaceMesh's eye points move with the crop, and the
            # blink detector was calibrated on detection ROIs (module doc).
            marks = self.pipeline.landmarks.predict_roi(
                img, roi_transform(carried_box(tr.landmarks, tr.rel))
            )
            if marks.score < MIN_PRESENCE:
                return None
            box = carried_box(marks, tr.rel)
            if box.size_px < self.pipeline.min_face_px:
                return None
            if any(box_iou(box, o.box) > MERGED_IOU for o in out):
                return None
            if _moved(carried_box(tr.landmarks, tr.rel), box) > MAX_TRACK_STEP:
                return None
            out.append(FaceObservation(box, marks))
            tracks.append(_Track(marks, tr.rel))
        self._tracks = tracks
        return out

    # -- the rest of the pipeline ---------------------------------------------------------

    def quality(self, image: Any, obs: FaceObservation) -> quality_mod.Quality:
        return self.pipeline.quality(image, obs)

    def pad_score(self, image: Any, obs: FaceObservation) -> float | None:
        return self.pipeline.pad_score(image, obs)

    def embed(self, image: Any, landmarks: Landmarks) -> Embedding:
        """(128,) L2-normalised embedding of ONE chip (no mirror): `refine` adds the mirror
        when the caller's score is close to its threshold. Without flip TTA configured
        (`vision.flip_tta = false`) `refine` never does."""
        embedder = self.pipeline.embedder
        if embedder is None:
            raise ModelError("vision pipeline built without the embedder; load it with_embedder")
        if not self.one_chip:
            return self.pipeline.embed(image, landmarks)
        from edge.vision.embed import unit

        chip = align_chip(_image(image), five_points(landmarks))
        raw_fn = getattr(embedder, "raw", None)
        if raw_fn is None:  # an embedder without the one-chip call: its full embedding
            return embedder.embed(chip)
        raw = np.asarray(raw_fn(chip), dtype=np.float32)
        emb = unit(raw)
        if getattr(embedder, "flip_tta", False):
            self._chips[emb.tobytes()] = [raw, chip, None]
            while len(self._chips) > MAX_CHIPS:
                self._chips.popitem(last=False)
        return emb

    def refine(self, embedding: Embedding) -> Embedding | None:
        """The flip-TTA embedding (chip + mirror) of a one-chip embedding `embed` returned
        recently, or None (unknown embedding, or flip TTA off)."""
        kept = self._chips.get(np.asarray(embedding, dtype=np.float32).tobytes())
        embedder = self.pipeline.embedder
        if kept is None or embedder is None:
            return None
        from edge.vision.embed import mirror, unit

        raw, chip, refined = kept
        if refined is None:
            self.stats.refined += 1
            mirrored = np.asarray(embedder.raw(mirror(chip)), dtype=np.float32)  # type: ignore[attr-defined]
            refined = kept[2] = unit(raw + mirrored)
        out: Embedding = refined
        return out
