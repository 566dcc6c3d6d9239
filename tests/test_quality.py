"""Quality gates name why a face is refused; the pipeline wires detect, mesh and gates."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import require_data

from edge.camera.base import Frame
from edge.config import QualityConfig, parse_config
from edge.errors import ModelError
from edge.vision.pipeline import FaceObservation, VisionPipeline
from edge.vision.quality import Quality

VIDEOS = "liveness/videos"


@pytest.fixture(scope="module")
def pipeline() -> VisionPipeline:
    return VisionPipeline.from_config(parse_config(""), with_embedder=False)


def frame(video: str, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(require_data(f"{VIDEOS}/{video}")))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, bgr = cap.read()
    cap.release()
    assert ok
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def gates(pipeline: VisionPipeline, image: np.ndarray) -> Quality:
    (obs,) = pipeline.observe(image)
    return pipeline.quality(image, obs)


def test_frontal_well_lit_face_passes_every_gate(pipeline: VisionPipeline) -> None:
    image = frame("blink_webcam_7blinks_30fps.mp4", 10)
    q = gates(pipeline, image)
    assert q.ok and q.reasons == ()
    assert abs(q.yaw_deg) < 10 and abs(q.pitch_deg) < 10
    (obs,) = pipeline.observe(image)
    kp_iod = float(np.linalg.norm(obs.box.keypoints[1] - obs.box.keypoints[0]))
    assert q.interocular_px == pytest.approx(kp_iod, rel=0.15)


def test_blurred_face_fails_blur_only(pipeline: VisionPipeline) -> None:
    image = cv2.GaussianBlur(frame("blink_webcam_7blinks_30fps.mp4", 10), (0, 0), 10)
    assert gates(pipeline, image).reasons == ("quality:blur",)


def test_under_and_over_exposed_faces_fail_dark_and_bright(pipeline: VisionPipeline) -> None:
    image = frame("blink_portrait_24fps.mp4", 40)
    dark = (image * 0.2).astype(np.uint8)
    bright = np.clip(image.astype(np.int32) * 5 // 2 + 60, 0, 255).astype(np.uint8)
    assert "quality:dark" in gates(pipeline, dark).reasons
    assert "quality:bright" in gates(pipeline, bright).reasons


@pytest.mark.parametrize(
    ("index", "reason", "sign"),
    [(120, "quality:yaw", +1), (360, "quality:pitch", -1), (440, "quality:pitch", +1)],
    ids=["turned-right", "looking-down", "looking-up"],
)
def test_turned_or_tilted_head_fails_the_pose_gate(
    pipeline: VisionPipeline, index: int, reason: str, sign: int
) -> None:
    q = gates(pipeline, frame("live_headturns_30fps.mp4", index))
    assert reason in q.reasons
    angle = q.yaw_deg if reason == "quality:yaw" else q.pitch_deg
    assert sign * angle > 20


def test_small_face_fails_size(pipeline: VisionPipeline) -> None:
    image = frame("blink_webcam_7blinks_30fps.mp4", 10)  # eyes ~180 px apart at 1620 px
    small = cv2.resize(image, None, fx=0.12, fy=0.12, interpolation=cv2.INTER_AREA)
    obs = pipeline.observe(small)
    assert obs, "face still detected at 12 % scale"
    q = pipeline.quality(small, obs[0])
    assert "quality:size" in q.reasons and q.interocular_px < QualityConfig().min_interocular_px


def test_pipeline_accepts_camera_frames_and_finds_nobody_in_an_empty_scene(
    pipeline: VisionPipeline,
) -> None:
    f = Frame(image=frame("blink_portrait_24fps.mp4", 40), t_monotonic=0.0, index=40)
    (obs,) = pipeline.observe(f)
    assert obs.landmarks is not None and obs.landmarks.points.shape == (468, 3)
    assert pipeline.quality(f, obs).ok
    assert pipeline.observe(frame("noface_dashcam_25fps.mp4", 50)) == []


def test_face_without_landmarks_is_refused_for_size_and_no_embedder_is_an_error(
    pipeline: VisionPipeline,
) -> None:
    image = frame("blink_portrait_24fps.mp4", 40)
    (obs,) = pipeline.observe(image)
    q = pipeline.quality(image, FaceObservation(obs.box, None))
    assert not q.ok and q.reasons == ("quality:size",)
    assert obs.landmarks is not None
    with pytest.raises(ModelError, match="without the embedder"):
        pipeline.embed(image, obs.landmarks)
