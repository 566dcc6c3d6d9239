"""Alignment geometry: a face's five points go to the canonical chip positions exactly."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import DataError
from edge.vision.align import (
    CHIP_POINTS,
    CHIP_SIZE,
    LEFT_EYE_CONTOUR,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    NOSE_TIP,
    RIGHT_EYE_CONTOUR,
    align_chip,
    chip_transform,
    five_points,
    similarity,
)
from edge.vision.types import Landmarks


def similarity_matrix(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


@settings(max_examples=200, deadline=None)
@given(
    angle=st.floats(-math.pi, math.pi),
    scale=st.floats(0.05, 20.0),
    tx=st.floats(-2000, 2000),
    ty=st.floats(-2000, 2000),
)
def test_points_moved_by_a_known_similarity_map_back_exactly(
    angle: float, scale: float, tx: float, ty: float
) -> None:
    # image points = known similarity applied to the canonical chip points
    known = similarity_matrix(angle, scale, tx, ty)
    image_pts = apply(known, CHIP_POINTS)
    m = chip_transform(image_pts)
    np.testing.assert_allclose(apply(m, image_pts), CHIP_POINTS, atol=1e-6)
    # and the recovered transform is the inverse of the known one
    np.testing.assert_allclose(m, cv2.invertAffineTransform(known), rtol=1e-7, atol=1e-6)


def test_similarity_is_least_squares_and_never_a_reflection() -> None:
    mirrored = CHIP_POINTS * np.array([-1.0, 1.0])  # a mirror image of the template
    m = similarity(mirrored, CHIP_POINTS)
    assert np.linalg.det(m[:, :2]) > 0


def test_degenerate_or_mismatched_points_are_refused() -> None:
    with pytest.raises(DataError, match="degenerate"):
        chip_transform(np.full((5, 2), 3.0))
    with pytest.raises(DataError, match="not finite"):
        chip_transform(np.where(np.eye(5, 2) > 0, np.nan, CHIP_POINTS))
    with pytest.raises(DataError, match="matching"):
        similarity(np.zeros((4, 2)), np.zeros((5, 2)))


def _face_image(m_chip_to_img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A synthetic face: bright discs at the five canonical points, moved into the image."""
    img = np.zeros((size[1], size[0], 3), np.uint8)
    radius = 3.0 * math.hypot(m_chip_to_img[0, 0], m_chip_to_img[1, 0])
    for x, y in apply(m_chip_to_img, CHIP_POINTS):
        cv2.circle(
            img,
            (round(x * 16), round(y * 16)),
            round(radius * 16),
            (255, 255, 255),
            -1,
            cv2.LINE_AA,
            shift=4,
        )
    return img


def _blob_centres(chip: np.ndarray) -> np.ndarray:
    grey = chip[:, :, 0].astype(np.float64)
    out = []
    for cx, cy in CHIP_POINTS:
        x0, y0 = int(cx) - 8, int(cy) - 8
        win = grey[y0 : y0 + 17, x0 : x0 + 17]
        ys, xs = np.mgrid[y0 : y0 + 17, x0 : x0 + 17]
        out.append([(win * xs).sum() / win.sum(), (win * ys).sum() / win.sum()])
    return np.array(out)


@pytest.mark.parametrize(
    ("angle_deg", "scale", "size"),
    [
        (0.0, 1.0, (320, 240)),
        (25.0, 2.2, (640, 480)),
        (-40.0, 0.8, (300, 300)),
        (10.0, 6.0, (1400, 1200)),
    ],
)
def test_eyes_and_mouth_land_at_the_canonical_chip_positions(
    angle_deg: float, scale: float, size: tuple[int, int]
) -> None:
    # scale 6 exercises the area pre-shrink used for large faces
    known = similarity_matrix(math.radians(angle_deg), scale, size[0] * 0.3, size[1] * 0.2)
    img = _face_image(known, size)
    chip = align_chip(img, apply(known, CHIP_POINTS))
    assert chip.shape == (CHIP_SIZE, CHIP_SIZE, 3) and chip.dtype == np.uint8
    np.testing.assert_allclose(_blob_centres(chip), CHIP_POINTS, atol=0.35)


def test_five_points_are_eye_centres_nose_tip_and_mouth_corners() -> None:
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 500, (468, 3)).astype(np.float32)
    p5 = five_points(Landmarks(pts, 0.99))
    assert p5.shape == (5, 2) and p5.dtype == np.float32
    np.testing.assert_allclose(p5[0], pts[list(RIGHT_EYE_CONTOUR), :2].mean(0), rtol=1e-5)
    np.testing.assert_allclose(p5[1], pts[list(LEFT_EYE_CONTOUR), :2].mean(0), rtol=1e-5)
    np.testing.assert_array_equal(p5[2:], pts[[NOSE_TIP, MOUTH_RIGHT, MOUTH_LEFT], :2])


def test_canonical_points_describe_an_upright_frontal_face() -> None:
    r_eye, l_eye, nose, m_r, m_l = CHIP_POINTS
    assert r_eye[0] < nose[0] < l_eye[0] and m_r[0] < m_l[0]  # subject's right on the left
    assert max(r_eye[1], l_eye[1]) < nose[1] < min(m_r[1], m_l[1])
    assert np.all((CHIP_POINTS > 0) & (CHIP_POINTS < CHIP_SIZE))


def test_bad_inputs_give_clear_errors() -> None:
    with pytest.raises(DataError, match="468"):
        five_points(Landmarks(np.zeros((68, 3), np.float32), 1.0))
    with pytest.raises(DataError, match="uint8 RGB"):
        align_chip(np.zeros((100, 100), np.uint8), CHIP_POINTS)
    with pytest.raises(DataError, match="uint8 RGB"):
        align_chip(np.zeros((0, 100, 3), np.uint8), CHIP_POINTS)


def test_fine_detail_of_a_large_face_is_averaged_not_aliased() -> None:
    # 1-px stripes on a face 5x larger than the chip: the chip must see their average (grey);
    # plain bilinear sampling would pick individual stripes and show a false pattern.
    big = np.zeros((1000, 1000, 3), np.uint8)
    big[:, ::2] = 255
    pts = (CHIP_POINTS + 25.0) * 5.0
    chip = align_chip(big, pts).astype(np.float64)[10:-10, 10:-10]
    assert abs(chip.mean() - 127.5) < 3.0
    assert chip.std() < 3.0
    plain = cv2.warpAffine(big, chip_transform(pts), (CHIP_SIZE, CHIP_SIZE), flags=cv2.INTER_LINEAR)
    assert plain[10:-10, 10:-10].std() > 30.0  # the aliasing this guards against
