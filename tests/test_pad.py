"""Passive PAD (MiniFASNet): hash-checked models, the source project's crop geometry, the
reliability rule, robust fusion, and live faces scoring high where recaptures score low."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import require_data

from edge.config import parse_config
from edge.errors import DataError, ModelError
from edge.liveness.fusion import fuse_passive as fuse_scores
from edge.liveness.fusion import passive_verdict
from edge.vision.models import MANIFEST, read_manifest, sha256_file
from edge.vision.pad import (
    CROP,
    MIN_FACE_PX,
    PAD_V1SE,
    PAD_V2,
    SCALE_V1SE,
    SCALE_V2,
    PassiveScorer,
    crop_for_pad,
    crop_is_reliable,
    crop_problem,
    crop_region,
)
from edge.vision.pipeline import VisionPipeline
from edge.vision.types import FaceBox

MODELS = Path(__file__).resolve().parent.parent / "models"
# Calibrated on the developer data (models/README.md, "Passive anti-spoofing"): live session
# medians >= 0.54, recaptures <= 0.09. The tests use wider bounds than that threshold.
LIVE_ABOVE, ATTACK_BELOW = 0.9, 0.2


def box(x1: float, y1: float, x2: float, y2: float) -> FaceBox:
    return FaceBox(x1, y1, x2, y2, 0.9, np.zeros((6, 2), np.float32))


@pytest.fixture(scope="module")
def scorer() -> PassiveScorer:
    return PassiveScorer.from_models_dir(MODELS)


@pytest.fixture(scope="module")
def pipeline() -> VisionPipeline:
    return VisionPipeline.from_config(parse_config(""), with_embedder=False)


@pytest.fixture
def models_copy(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    for name in (MANIFEST, PAD_V2, PAD_V1SE):
        shutil.copy(MODELS / name, d / name)
    return d


def rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def video_frames(path: Path, step: int, limit: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out, i = [], 0
    while len(out) < limit:
        ok, bgr = cap.read()
        if not ok:
            break
        if i % step == 0:
            out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        i += 1
    cap.release()
    assert out, f"no frames decoded from {path}"
    return out


def largest_face(pipe: VisionPipeline, image: np.ndarray) -> FaceBox:
    faces = [o.box for o in pipe.observe(image) if o.landmarks is not None]
    assert faces, "no face found"
    return max(faces, key=lambda b: b.size_px)


# -- models ------------------------------------------------------------------------------------


def test_pad_models_are_listed_with_their_licence_and_pass_the_hash_check() -> None:
    entries = read_manifest(MODELS)
    for name in (PAD_V2, PAD_V1SE):
        assert entries[name].license == "Apache-2.0 (models/LICENSE-minifasnet-Apache-2.0.txt)"
        assert "Silent-Face-Anti-Spoofing" in entries[name].source
        assert sha256_file(MODELS / name) == entries[name].sha256
    licence = (MODELS / "LICENSE-minifasnet-Apache-2.0.txt").read_text(encoding="utf-8")
    assert licence.lstrip().startswith("Apache License")


@pytest.mark.parametrize("name", [PAD_V2, PAD_V1SE])
def test_a_tampered_pad_model_is_refused_with_the_fix(models_copy: Path, name: str) -> None:
    data = bytearray((models_copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (models_copy / name).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="tampered or corrupted.*make models"):
        PassiveScorer.from_models_dir(models_copy)
    # Loading the file directly still goes through the manifest next to it.
    with pytest.raises(ModelError):
        PassiveScorer(models_copy / PAD_V2, models_copy / PAD_V1SE)


def test_a_missing_pad_model_is_a_model_error(models_copy: Path) -> None:
    (models_copy / PAD_V1SE).unlink()
    with pytest.raises(ModelError, match="missing"):
        PassiveScorer.from_models_dir(models_copy)


def test_another_model_in_place_of_a_pad_model_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "detector.tflite"
    shutil.copy(MODELS / "face_detection_short_range.tflite", other)
    with pytest.raises(ModelError, match="not a MiniFASNet"):
        PassiveScorer(other, MODELS / PAD_V1SE)


def test_a_closed_scorer_refuses_to_score() -> None:
    image = np.zeros((200, 200, 3), np.uint8)
    with PassiveScorer.from_models_dir(MODELS) as pad:
        assert 0.0 <= pad.score(image, box(70, 70, 130, 130)) <= 1.0
    with pytest.raises(ModelError, match="after close"):
        pad.score(image, box(70, 70, 130, 130))


# -- crop geometry -----------------------------------------------------------------------------


def test_crop_is_the_box_scaled_about_its_centre() -> None:
    # 100 px box centred at (500, 400): x2.7 -> 270 px, from 365 to 635 horizontally.
    assert crop_region(box(450, 350, 550, 450), (1000, 1000, 3), 2.7) == (365, 265, 635, 535)


def test_crop_is_shifted_not_clipped_at_the_image_edges() -> None:
    x1, y1, x2, y2 = crop_region(box(0, 500, 100, 600), (1000, 1000, 3), 2.7)
    assert x1 == 0 and x2 == 270  # moved right by the 135 px that stuck out, full width kept
    x1, y1, x2, y2 = crop_region(box(900, 900, 1000, 1000), (1000, 1000, 3), 2.7)
    assert (x2, y2) == (999, 999) and (x2 - x1, y2 - y1) == (270, 270)


def test_crop_scale_shrinks_when_the_scaled_box_does_not_fit() -> None:
    # A 300 px face in a 640x480 frame: x4.0 would be 1200 px; the scale becomes 479/300.
    x1, y1, x2, y2 = crop_region(box(170, 90, 470, 390), (480, 640, 3), SCALE_V1SE)
    assert (y1, y2) == (0, 479)
    assert x2 - x1 == 479 and x1 == 80  # still centred horizontally on the face


def test_crop_is_80x80_uint8_bgr_resized_from_the_region() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    image[:, :320] = (255, 0, 0)  # left half pure red (RGB)
    face = box(280, 190, 360, 290)
    crop = crop_for_pad(image, face, SCALE_V2)
    assert crop.shape == (CROP, CROP, 3) and crop.dtype == np.uint8
    x1, y1, x2, y2 = crop_region(face, image.shape, SCALE_V2)
    expected = cv2.resize(image[y1 : y2 + 1, x1 : x2 + 1], (CROP, CROP))[:, :, ::-1]
    np.testing.assert_array_equal(crop, expected)
    # BGR: the red left edge is in the last channel.
    assert crop[40, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize(
    "image",
    [None, np.zeros((0, 10, 3), np.uint8), np.zeros((10, 10, 3), np.float32), "frame.jpg"],
)
def test_bad_images_are_data_errors(scorer: PassiveScorer, image: object) -> None:
    with pytest.raises(DataError):
        crop_for_pad(image, box(1, 1, 8, 8), SCALE_V2)  # type: ignore[arg-type]
    with pytest.raises(DataError):
        scorer.score(image, box(1, 1, 8, 8))  # type: ignore[arg-type]


def test_a_box_without_area_is_a_data_error(scorer: PassiveScorer) -> None:
    with pytest.raises(DataError, match="no area"):
        scorer.score(np.zeros((100, 100, 3), np.uint8), box(50, 50, 50, 80))


# -- reliability -------------------------------------------------------------------------------


def test_a_small_face_is_asked_to_come_closer() -> None:
    assert crop_problem(box(300, 200, 330, 230), (480, 640, 3)) == "pad:face_too_small"
    assert not crop_is_reliable(box(300, 200, 300 + MIN_FACE_PX - 1, 239), (480, 640, 3))
    assert crop_is_reliable(box(300, 200, 300 + MIN_FACE_PX, 240), (480, 640, 3))


def test_a_face_filling_the_frame_is_asked_to_step_back() -> None:
    # The 96x128 low-res clip: a ~93 px face in a 96 px wide frame has no context around it.
    assert crop_problem(box(2, 20, 95, 113), (128, 96, 3)) == "pad:face_too_close"
    assert crop_is_reliable(box(250, 150, 400, 300), (480, 640, 3))


# -- fusion ------------------------------------------------------------------------------------


def test_fused_score_ignores_one_outlier_frame() -> None:
    assert fuse_scores([0.98, 0.97, 0.99, 0.0, 0.96]) > 0.95  # one bad crop of a live face
    assert fuse_scores([0.01, 0.02, 0.99, 0.0, 0.03]) < 0.05  # one lucky frame of an attack
    assert fuse_scores([0.4]) == pytest.approx(0.4)


def test_fusing_nothing_gives_no_score_and_bad_values_count_as_attack_crops() -> None:
    assert fuse_scores([]) is None
    assert fuse_scores([0.9, float("nan"), float("nan")]) == 0.0
    assert fuse_scores([0.9, 1.5, -0.1]) == 0.0


def test_passive_verdict_needs_enough_crops_above_the_threshold() -> None:
    assert passive_verdict([0.9, 0.95, 0.99], 0.3, 3) is None
    assert passive_verdict([0.9, 0.95], 0.3, 3) == "spoof"  # too few crops is never a pass
    assert passive_verdict([0.1, 0.2, 0.99], 0.3, 3) == "spoof"


# -- real data ---------------------------------------------------------------------------------


def test_the_score_is_the_mean_of_the_two_models(
    scorer: PassiveScorer, pipeline: VisionPipeline
) -> None:
    path = require_data("liveness/videos/blink_webcam_7blinks_30fps.mp4")
    image = video_frames(path, 1, 1)[0]
    face = largest_face(pipeline, image)
    v2, v1se = scorer.model_scores(image, face)
    assert 0.0 <= v2 <= 1.0 and 0.0 <= v1se <= 1.0
    assert scorer.score(image, face) == pytest.approx((v2 * v1se) ** 0.5)


@pytest.mark.parametrize(
    "video",
    ["blink_webcam_7blinks_30fps.mp4", "liveportrait_d20_25fps.mp4", "live_open_dim_30fps.mp4"],
)
def test_live_video_frames_score_high(
    scorer: PassiveScorer, pipeline: VisionPipeline, video: str
) -> None:
    frames = video_frames(require_data(f"liveness/videos/{video}"), 15, 6)
    scores = []
    for image in frames:
        face = largest_face(pipeline, image)
        assert crop_is_reliable(face, image.shape)
        scores.append(scorer.score(image, face))
    assert fuse_scores(scores) > LIVE_ABOVE, scores


@pytest.mark.parametrize(
    "video", ["replay_laptop_screen_30fps.mp4", "replay_phone_handheld_30fps.mp4"]
)
def test_screen_replay_frames_score_low(
    scorer: PassiveScorer, pipeline: VisionPipeline, video: str
) -> None:
    frames = video_frames(require_data(f"liveness/videos/{video}"), 15, 6)
    scores = [scorer.score(image, largest_face(pipeline, image)) for image in frames]
    assert fuse_scores(scores) < ATTACK_BELOW, scores
    assert max(scores) < 0.5, scores


def test_the_recaptured_silent_face_photo_scores_low_and_the_live_one_high(
    scorer: PassiveScorer, pipeline: VisionPipeline
) -> None:
    spoof = rgb(require_data("liveness/stills/silentface_F1_spoof.jpg"))
    live = rgb(require_data("liveness/stills/silentface_T1_live.jpg"))
    assert scorer.score(spoof, largest_face(pipeline, spoof)) < ATTACK_BELOW
    assert scorer.score(live, largest_face(pipeline, live)) > LIVE_ABOVE


def test_the_low_res_clip_face_is_flagged_unreliable(pipeline: VisionPipeline) -> None:
    path = require_data("liveness/videos/blink_glasses_lowres_25fps.mp4")
    image = video_frames(path, 1, 1)[0]
    assert not crop_is_reliable(largest_face(pipeline, image), image.shape)
