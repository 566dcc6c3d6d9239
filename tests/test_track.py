"""Face tracking (edge/vision/track.py) on real frames, and adaptive flip TTA in the session.

Tracking replaces the detector on most frames; these check it keeps what the detector gave the
session: the same boxes and eye openness on a live face, a second face seen within the detect
interval (the one-person rule), a face that leaves is gone at once, and the one-chip embedding
plus its refinement is exactly the full flip-TTA embedding enrolment uses.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import require_data
from test_session import ALICE, CFG, FakeVision, scene

from edge.config import Config
from edge.liveness.continuity import ContinuityMonitor
from edge.liveness.eye import eye_openness
from edge.session.verification import VerificationSession
from edge.vision.pipeline import VisionPipeline
from edge.vision.track import FaceTracker

VIDEO = "liveness/videos/blink_webcam_7blinks_30fps.mp4"
N = 2


@pytest.fixture(scope="module")
def pipeline() -> VisionPipeline:
    return VisionPipeline.from_config(Config(), with_embedder=True, with_pad=False)


def frames(path: Path, n: int, size: tuple[int, int] = (640, 480)) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    try:
        for _ in range(n):
            ok, bgr = cap.read()
            assert ok
            h, w = bgr.shape[:2]
            cw = h * size[0] // size[1]
            crop = bgr[:, (w - cw) // 2 : (w + cw) // 2]
            yield np.ascontiguousarray(cv2.resize(crop, size, cv2.INTER_AREA)[:, :, ::-1])
    finally:
        cap.release()


def test_tracked_frames_give_the_detectors_boxes_and_eyes_with_one_detection_in_n(
    pipeline: VisionPipeline,
) -> None:
    video = require_data(VIDEO)
    tracker = FaceTracker(pipeline, N)
    mon = ContinuityMonitor(CFG.liveness.continuity_min_iou, CFG.vision.min_face_px)
    ious, ears = [], []
    for k, img in enumerate(frames(video, 60)):
        tracked, detected = tracker.observe(img), pipeline.observe(img)
        assert len(tracked) == len(detected) == 1
        assert mon.update(k / 30, [o.box for o in tracked])[1] is None
        a, b = tracked[0], detected[0]
        assert a.landmarks is not None and b.landmarks is not None
        ious.append(a.box.iou(b.box))
        ears.append(abs(eye_openness(a.landmarks.points) - eye_openness(b.landmarks.points)))
    assert tracker.stats.frames == 60 and tracker.stats.detected == 60 // N
    assert min(ious) > 0.85 and float(np.median(ious)) > 0.93, ious
    assert float(np.median(ears)) < 0.01 and max(ears) < 0.04, ears


def test_a_second_face_is_seen_within_the_detect_interval_and_a_face_that_left_at_once(
    pipeline: VisionPipeline,
) -> None:
    """Two 320x240 tiles of a 640x480 frame: the person on the left, from frame 12 a second
    person on the right (the same clip, mirrored), from frame 30 nobody."""
    video = require_data(VIDEO)
    wide = 5  # a longer interval than the default shows the bound: seen within `wide` frames
    tracker = FaceTracker(pipeline, wide)
    mon = ContinuityMonitor(CFG.liveness.continuity_min_iou, CFG.vision.min_face_px)
    enters, leaves = 11, 30  # entering off the detector's cadence (it runs on 0, 5, 10, 15)
    seen_two = broke = None
    for k, img in enumerate(frames(video, 34, (320, 240))):
        canvas = np.zeros((480, 640, 3), np.uint8)
        if k < leaves:
            canvas[120:360, :320] = img
        if enters <= k < leaves:
            canvas[120:360, 320:] = img[:, ::-1]
        faces = [o for o in tracker.observe(canvas) if o.landmarks is not None]
        if k >= leaves:
            assert faces == [], f"frame {k}: a face tracked into an empty frame"
            continue
        if len(faces) == 2 and seen_two is None:
            seen_two = k
        if mon.update(k / 30, [o.box for o in faces])[1] == "face_changed" and broke is None:
            broke = k
    assert seen_two is not None and enters <= seen_two < enters + wide, seen_two
    assert seen_two == 15  # the next detector frame, not before (tracking alone never finds it)
    assert broke == seen_two  # the one-person rule fires on the frame the newcomer is seen


def test_one_chip_then_refine_is_exactly_the_full_flip_tta_embedding(
    pipeline: VisionPipeline,
) -> None:
    img = next(frames(require_data(VIDEO), 1))
    tracker = FaceTracker(pipeline, N)
    marks = tracker.observe(img)[0].landmarks
    assert marks is not None
    first = tracker.embed(img, marks)
    full = pipeline.embed(img, marks)  # enrolment's: chip + mirror, always
    refined = tracker.refine(first)
    assert refined is not None and tracker.stats.refined == 1
    assert float(np.abs(refined - full).max()) < 1e-6
    assert 0.97 < float(np.dot(first, full)) < 0.99999  # the mirror moves it, a little
    assert tracker.refine(-first) is None  # not an embedding it made


# -- adaptive flip TTA in the session ----------------------------------------------------------


def _at(similarity: float) -> np.ndarray:
    """A unit vector with the given cosine similarity to ALICE."""
    other = np.zeros_like(ALICE)
    other[1 if ALICE[0] else 0] = 1.0
    other -= float(np.dot(other, ALICE)) * ALICE
    other /= np.linalg.norm(other)
    a = math.acos(similarity)
    return (math.cos(a) * ALICE + math.sin(a) * other).astype(np.float32)


class RefiningVision(FakeVision):
    """One-chip embeddings at `first` to ALICE; refine() moves them to `refined`."""

    def __init__(self, first: float, refined: float) -> None:
        super().__init__(identity=lambda i: _at(first))
        self.target, self.refined = refined, 0

    def refine(self, embedding: np.ndarray) -> np.ndarray:
        self.refined += 1
        return _at(self.target)


@pytest.mark.parametrize(
    ("first", "refined", "mirrored", "accepted"),
    [
        (0.80, 0.99, False, False),  # far below the threshold: no mirror, a mismatch
        (0.98, 0.50, False, True),  # far above: no mirror, accepted
        (0.900, 0.910, True, True),  # 0.004 below 0.904: the mirror decides
        (0.910, 0.900, True, False),
    ],
)
def test_the_mirror_is_embedded_only_when_the_score_is_near_the_threshold(
    first: float, refined: float, mirrored: bool, accepted: bool
) -> None:
    vision = RefiningVision(first, refined)
    session = VerificationSession(
        CFG, vision, rng=random.Random(3), prompt_at=lambda t: max(t, 1.2)
    )
    assert session.claim("alice", [ALICE], 0.0) is None
    decision = None
    for frame, obs in scene(4.0, blinks=(1.6,)):
        decision = session.step(frame, obs)
        if decision is not None:
            break
    assert decision is not None and decision.accepted is accepted, decision
    assert session.mirrored is mirrored
    assert (vision.refined > 0) is mirrored
    assert decision.score == pytest.approx(refined if mirrored else first, abs=1e-5)


@pytest.mark.parametrize("every", [1, N, 5])
def test_a_frozen_frame_is_static_on_the_no_blink_path_whatever_the_detect_interval(
    pipeline: VisionPipeline, every: int
) -> None:
    """The tracker alternates detection and carried ROIs, so on a frozen frame FaceMesh returns
    two configurations in turn; the motion rule must still call it static (it once read the
    alternation as motion and let frozen photos through the fare gate's path)."""
    from dataclasses import replace

    from edge.measure.eval_liveness import Analyser, run_session, still_frames

    image = next(frames(require_data(VIDEO), 1))
    cfg = replace(  # no PAD model loaded here
        CFG,
        liveness=replace(CFG.liveness, pad=False),
        vision=replace(CFG.vision, detect_every=every),
    )
    still = still_frames(image, 2.0, 30.0, random.Random(0), handheld=False)
    records = Analyser(FaceTracker(pipeline, every)).run(still, embed=False)
    run = run_session(records, cfg, random.Random(1), challenge="never")
    assert (run.decision.accepted, run.decision.reason) == (False, "static")
