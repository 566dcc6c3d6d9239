"""FaceMesh landmarks land on the face, in image pixels, whatever the head roll."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import require_data

from edge.errors import DataError
from edge.vision.detect import FaceDetector
from edge.vision.landmarks import LandmarkModel
from edge.vision.types import FaceBox, Landmarks

MODELS = Path(__file__).resolve().parent.parent / "models"
Models = tuple[FaceDetector, LandmarkModel]
R_EYE_OUTER, L_EYE_OUTER, UPPER_LIP, LOWER_LIP, NOSE_TIP = 33, 263, 13, 14, 1
R_EYE = [33, 160, 158, 133, 153, 144]
L_EYE = [362, 385, 387, 263, 373, 380]


@pytest.fixture(scope="module")
def models() -> tuple[FaceDetector, LandmarkModel]:
    return (
        FaceDetector(MODELS / "face_detection_short_range.tflite"),
        LandmarkModel(MODELS / "face_landmark.tflite"),
    )


def video_frame(rel: str, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(require_data(rel)))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, bgr = cap.read()
    cap.release()
    assert ok, rel
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def photo(rel: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(require_data(rel))), cv2.COLOR_BGR2RGB)


def mesh(models: Models, image: np.ndarray) -> list[tuple[FaceBox, Landmarks]]:
    det, lm = models
    return [(f, lm.predict(image, f)) for f in det.detect(image)]


def assert_on_face(box: FaceBox, marks: Landmarks) -> None:
    p = marks.points
    assert p.shape == (468, 3) and p.dtype == np.float32
    assert marks.score > 0.9
    # The mesh covers forehead to chin, a little beyond BlazeFace's box; never far outside.
    mx, my = 0.25 * box.width, 0.35 * box.height
    assert np.all((p[:, 0] > box.x1 - mx) & (p[:, 0] < box.x2 + mx))
    assert np.all((p[:, 1] > box.y1 - my) & (p[:, 1] < box.y2 + my))
    assert p[R_EYE_OUTER, 0] < p[NOSE_TIP, 0] < p[L_EYE_OUTER, 0]
    eyes_y = max(p[R_EYE_OUTER, 1], p[L_EYE_OUTER, 1])
    assert eyes_y < p[NOSE_TIP, 1] < p[UPPER_LIP, 1] <= p[LOWER_LIP, 1] + 1
    # The mesh's eye centres agree with the detector's eye keypoints.
    for ids, kp in ((R_EYE, box.keypoints[0]), (L_EYE, box.keypoints[1])):
        assert np.linalg.norm(p[ids, :2].mean(0) - kp) < 0.12 * box.width


@pytest.mark.parametrize(
    ("rel", "index"),
    [
        ("liveness/videos/blink_webcam_7blinks_30fps.mp4", 10),
        ("liveness/videos/blink_portrait_24fps.mp4", 40),
        ("liveness/videos/live_headturns_30fps.mp4", 0),
    ],
)
def test_landmarks_land_on_the_face_in_real_video(models: Models, rel: str, index: int) -> None:
    found = mesh(models, video_frame(rel, index))
    assert len(found) == 1
    assert_on_face(*found[0])


def test_every_face_of_a_group_photo_gets_its_own_mesh(models: Models) -> None:
    found = mesh(models, photo("detection/images/2008_001322.jpg"))
    assert len(found) == 3
    for box, marks in found:
        assert_on_face(box, marks)


def test_rolled_head_gives_the_same_points_rotated(models: Models) -> None:
    """The ROI is de-rotated for the model and the points rotated back to the frame."""
    image = video_frame("liveness/videos/blink_webcam_7blinks_30fps.mp4", 10)
    h, w = image.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), 35, 1.0)
    rolled = cv2.warpAffine(image, rot, (w, h))
    ((box, upright),) = mesh(models, image)
    ((_, tilted),) = mesh(models, rolled)
    expected = upright.points[:, :2] @ rot[:, :2].T + rot[:, 2]
    err = np.linalg.norm(tilted.points[:, :2] - expected, axis=1)
    assert np.median(err) < 0.03 * box.width
    assert tilted.score > 0.9


def test_box_on_a_wall_gives_low_face_presence(models: Models) -> None:
    _, lm = models
    image = photo("detection/images/noface_skimage_brick.png")
    kps = np.array(
        [[200, 200], [300, 200], [250, 250], [250, 300], [150, 220], [350, 220]], np.float32
    )
    marks = lm.predict(image, FaceBox(150, 150, 350, 350, 0.9, kps))
    assert marks.score < 0.5


def test_degenerate_box_or_image_is_refused(models: Models) -> None:
    _, lm = models
    kps = np.zeros((6, 2), np.float32)
    with pytest.raises(DataError, match="no area"):
        lm.predict(np.zeros((100, 100, 3), np.uint8), FaceBox(10, 10, 10, 40, 0.9, kps))
    with pytest.raises(DataError):
        lm.predict(np.zeros((0, 100, 3), np.uint8), FaceBox(10, 10, 40, 40, 0.9, kps))
    # A box hanging off the frame still yields finite points (border is padded), no crash.
    marks = lm.predict(np.zeros((50, 50, 3), np.uint8), FaceBox(-20, -20, 30, 30, 0.9, kps))
    assert np.isfinite(marks.points).all()
