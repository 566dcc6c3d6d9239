"""BlazeFace short-range detector: real faces found, none invented, bad input refused cleanly."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import require_data
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import DataError
from edge.vision.detect import FaceDetector, ssd_anchors, weighted_nms
from edge.vision.types import KP_LEFT_EYE, KP_MOUTH, KP_NOSE, KP_RIGHT_EYE, FaceBox

MODELS = Path(__file__).resolve().parent.parent / "models"
# Photos whose faces fill enough of the frame for the single-inference kiosk path.
CLOSE_UP = ["couple.jpg", "two_people.jpg", "2008_001009.jpg", "2008_001322.jpg"]


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(MODELS / "face_detection_short_range.tflite")


def rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def annotated(name: str) -> list[tuple[float, float, float, float]]:
    rows = require_data("detection/boxes.csv").read_text().splitlines()[1:]
    return [
        tuple(float(v) for v in r.split(",")[1:5])  # type: ignore[misc]
        for r in rows
        if r.split(",")[0] == f"images/{name}" and r.split(",")[5] == "0"
    ]


def iou(f: FaceBox, b: tuple[float, float, float, float]) -> float:
    return f.iou(FaceBox(*b, score=1.0, keypoints=np.zeros((6, 2), np.float32)))


def test_anchor_grid_matches_blazeface_short_range() -> None:
    anchors = ssd_anchors()
    assert anchors.shape == (896, 2)
    assert np.all((anchors > 0) & (anchors < 1))
    assert len(np.unique(anchors[:512], axis=0)) == 16 * 16
    assert len(np.unique(anchors[512:], axis=0)) == 8 * 8


@pytest.mark.parametrize("name", CLOSE_UP)
def test_full_frame_finds_every_close_up_face_at_iou_50(detector: FaceDetector, name: str) -> None:
    image = rgb(require_data(f"detection/images/{name}"))
    faces = detector.detect(image)
    truth = annotated(name)
    assert len(faces) == len(truth)
    for b in truth:
        assert max(iou(f, b) for f in faces) >= 0.5
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)


def test_no_face_photos_give_no_detection(detector: FaceDetector) -> None:
    folder = require_data("detection/images")
    nofaces = sorted(folder.glob("noface_*"))
    assert len(nofaces) >= 10
    found = {p.name: len(detector.detect(rgb(p))) for p in nofaces}
    assert sum(found.values()) == 0, found


def test_tiled_mode_reaches_small_faces_the_full_frame_misses(detector: FaceDetector) -> None:
    image = rgb(require_data("detection/images/2007_007763.jpg"))  # 7 faces of ~40 px
    truth = annotated("2007_007763.jpg")
    full = detector.detect(image)
    tiled = detector.detect_tiled(image, min_face_px=40)
    hits_full = sum(any(iou(f, b) >= 0.5 for f in full) for b in truth)
    hits_tiled = sum(any(iou(f, b) >= 0.5 for f in tiled) for b in truth)
    assert hits_tiled == len(truth) > hits_full


def test_keypoints_sit_on_an_upright_face(detector: FaceDetector) -> None:
    image = rgb(require_data("detection/images/2008_001322.jpg"))
    for f in detector.detect(image):
        kp = f.keypoints
        assert kp.shape == (6, 2) and kp.dtype == np.float32
        assert kp[KP_RIGHT_EYE, 0] < kp[KP_LEFT_EYE, 0]  # subject's right eye is on image left
        assert max(kp[KP_RIGHT_EYE, 1], kp[KP_LEFT_EYE, 1]) < kp[KP_NOSE, 1] < kp[KP_MOUTH, 1]
        assert np.all((kp[:4, 0] > f.x1) & (kp[:4, 0] < f.x2))
        assert np.all((kp[:4, 1] > f.y1) & (kp[:4, 1] < f.y2))


def test_boxes_are_in_image_pixels_whatever_the_padding(detector: FaceDetector) -> None:
    image = rgb(require_data("detection/images/two_people.jpg"))
    # 661x1126 padded on top to 961x1126: same scale in the model, different letterbox offset;
    # a face spans ~20 model pixels, so one pixel of jitter is ~5 % of the box.
    shifted = cv2.copyMakeBorder(image, 300, 0, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    a = sorted(detector.detect(image), key=lambda f: f.x1)
    b = sorted(detector.detect(shifted), key=lambda f: f.x1)
    assert len(a) == len(b) == 2
    for fa, fb in zip(a, b, strict=True):
        assert abs((fb.y1 - 300) - fa.y1) < 0.1 * fa.height
        assert abs((fb.y2 - 300) - fa.y2) < 0.1 * fa.height
        assert abs(fb.x1 - fa.x1) < 0.1 * fa.width


def test_weighted_nms_merges_overlaps_by_score_and_keeps_separate_faces() -> None:
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.3, 0.8], np.float32)
    kps = np.zeros((3, 6, 2), np.float32)
    out = weighted_nms(boxes, scores, kps, iou=0.3)
    assert [round(f.score, 2) for f in out] == [0.9, 0.8]
    assert out[0].x1 == pytest.approx((0 * 0.9 + 2 * 0.3) / 1.2)
    assert out[1].x1 == 50


@pytest.mark.parametrize(
    "bad",
    [
        None,
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((4, 4, 2), np.uint8),
    ],
    ids=["none", "empty", "float", "two-channel"],
)
def test_non_images_are_refused_with_a_data_error(detector: FaceDetector, bad: object) -> None:
    with pytest.raises(DataError):
        detector.detect(bad)  # type: ignore[arg-type]


def test_undecodable_file_bytes_are_refused_not_crashed(detector: FaceDetector) -> None:
    decoded = cv2.imdecode(np.frombuffer(b"\xff\xd8\xff not a jpeg", np.uint8), cv2.IMREAD_COLOR)
    with pytest.raises(DataError):
        detector.detect(decoded)


def test_odd_but_valid_images_give_faces_or_no_face(detector: FaceDetector) -> None:
    image = rgb(require_data("detection/images/2008_001009.jpg"))
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    assert len(detector.detect(gray)) == 2  # grayscale is expanded to three channels
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    assert len(detector.detect(rgba)) == 2
    assert detector.detect(np.zeros((1, 1, 3), np.uint8)) == []
    assert detector.detect(np.zeros((3, 5000, 3), np.uint8)) == []
    huge = np.zeros((4000, 6000, 3), np.uint8)
    assert detector.detect(huge) == []
    assert detector.detect_tiled(np.zeros((2, 2, 3), np.uint8)) == []


box_sets = st.lists(
    st.tuples(
        st.floats(0, 500),
        st.floats(0, 500),
        st.floats(1, 200),
        st.floats(1, 200),
        st.floats(0.01, 1.0),
    ),
    min_size=1,
    max_size=30,
)


@given(box_sets, st.floats(0.05, 0.95))
@settings(max_examples=200, deadline=None)
def test_weighted_nms_keeps_the_best_scores_in_order_and_never_invents_area(
    raw: list[tuple[float, float, float, float, float]], iou: float
) -> None:
    arr = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in raw], np.float32)
    scores = np.array([s for *_, s in raw], np.float32)
    kps = np.repeat(((arr[:, :2] + arr[:, 2:]) / 2)[:, None, :], 6, axis=1)
    out = weighted_nms(arr, scores, kps, iou)
    assert 1 <= len(out) <= len(raw)
    assert out[0].score == pytest.approx(float(scores.max()))
    assert [f.score for f in out] == sorted((f.score for f in out), reverse=True)
    assert set(round(f.score, 5) for f in out) <= set(round(float(s), 5) for s in scores)
    lo, hi = arr.min(0), arr.max(0)
    for f in out:  # a weighted mean stays inside the span of the boxes it merges
        assert lo[0] - 1e-3 <= f.x1 <= f.x2 <= hi[2] + 1e-3
        assert lo[1] - 1e-3 <= f.y1 <= f.y2 <= hi[3] + 1e-3


@given(
    st.integers(1, 64),
    st.integers(1, 64),
    st.sampled_from([None, 1, 3, 4]),
    st.integers(0, 2**32 - 1),
)
@settings(max_examples=40, deadline=None)
def test_any_small_uint8_image_gives_a_list_never_a_crash(
    detector: FaceDetector, h: int, w: int, channels: int | None, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels is None else (h, w, channels)
    faces = detector.detect(rng.integers(0, 256, shape, dtype=np.uint8))
    assert isinstance(faces, list)
