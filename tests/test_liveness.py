"""Blink detector, challenge timing, motion and continuity checks on synthetic inputs."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.config import LivenessConfig
from edge.liveness.blink import Blink, detect_blinks
from edge.liveness.challenge import challenge_at, schedule_challenge
from edge.liveness.continuity import ContinuityMonitor
from edge.liveness.eye import LEFT_EYE, RIGHT_EYE, eye_aspect_ratio, eye_openness
from edge.liveness.motion import MotionMonitor, nonrigid_motion

CFG = LivenessConfig()
OPEN_EAR = 0.30


def blink_profile(t: float, start: float, close_s: float = 0.08, hold_s: float = 0.05,
                  open_s: float = 0.15, depth: float = 0.35) -> float:
    """EAR of a blink starting at `start`: fast closing, short hold, slower reopening."""
    u = t - start
    low = OPEN_EAR * depth
    if u < 0 or u > close_s + hold_s + open_s:
        return OPEN_EAR
    if u < close_s:
        return OPEN_EAR - (OPEN_EAR - low) * u / close_s
    if u < close_s + hold_s:
        return low
    return low + (OPEN_EAR - low) * (u - close_s - hold_s) / open_s


def sampled(fn: object, seconds: float, fps: float, noise: float = 0.0,
            seed: int = 0, phase: float = 0.0) -> tuple[list[float], list[float | None]]:
    rng = np.random.default_rng(seed)
    times = [phase + k / fps for k in range(int(seconds * fps))]
    ears: list[float | None] = [
        float(fn(t)) + float(rng.normal(0, noise)) for t in times  # type: ignore[operator]
    ]
    return times, ears


# -- eye aspect ratio ----------------------------------------------------------------------


def face_points(ear_right: float, ear_left: float) -> np.ndarray:
    """(468, 3) points: eyes drawn with the given EARs, 60 px apart; the rest a fixed cloud."""
    pts = np.random.default_rng(1).uniform(0, 200, (468, 3)).astype(np.float32)
    for eye, cx, ear in ((RIGHT_EYE, 70.0, ear_right), (LEFT_EYE, 130.0, ear_left)):
        w, h = 30.0, 30.0 * ear  # EAR = (2h) / (2w)
        p1, p2, p3, p4, p5, p6 = eye
        pts[p1, :2] = (cx - w / 2, 100)
        pts[p4, :2] = (cx + w / 2, 100)
        pts[p2, :2] = (cx - 5, 100 - h / 2)
        pts[p6, :2] = (cx - 5, 100 + h / 2)
        pts[p3, :2] = (cx + 5, 100 - h / 2)
        pts[p5, :2] = (cx + 5, 100 + h / 2)
    return pts


def test_eye_aspect_ratio_is_lid_opening_over_eye_width() -> None:
    pts = face_points(0.3, 0.1)
    assert eye_aspect_ratio(pts, RIGHT_EYE) == pytest.approx(0.3, abs=1e-5)
    assert eye_aspect_ratio(pts, LEFT_EYE) == pytest.approx(0.1, abs=1e-5)
    assert eye_openness(pts) == pytest.approx(0.2, abs=1e-5)


def test_eye_aspect_ratio_does_not_depend_on_face_size() -> None:
    pts = face_points(0.25, 0.25)
    assert eye_openness(pts * 3.7) == pytest.approx(eye_openness(pts), abs=1e-5)


# -- blink detector ------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [10.0, 15.0, 24.0, 30.0, 60.0])
def test_one_blink_is_found_once_at_any_frame_rate(fps: float) -> None:
    times, ears = sampled(lambda t: blink_profile(t, 1.5), 3.0, fps, noise=0.003)
    blinks = detect_blinks(times, ears, CFG)
    assert len(blinks) == 1
    b = blinks[0]
    # Start within one frame interval of the true onset; duration plausible at every rate.
    assert abs(b.start_t - 1.5) <= 1.0 / fps + 0.03
    assert 40 <= b.duration_ms <= 400


@pytest.mark.parametrize("phase", [0.0, 0.013, 0.029, 0.051])
def test_detection_does_not_depend_on_frame_phase(phase: float) -> None:
    times, ears = sampled(lambda t: blink_profile(t, 1.2), 2.5, 15.0, phase=phase)
    assert len(detect_blinks(times, ears, CFG)) == 1


def test_two_blinks_are_two_blinks() -> None:
    times, ears = sampled(
        lambda t: min(blink_profile(t, 1.0), blink_profile(t, 1.8)), 3.0, 30.0, noise=0.002
    )
    starts = [round(b.start_t, 1) for b in detect_blinks(times, ears, CFG)]
    assert starts == [1.0, 1.8]


def test_slow_glance_down_is_not_a_blink() -> None:
    # The lids lower over 0.6 s and stay low: a glance at the keypad, not a blink.
    def glance(t: float) -> float:
        return OPEN_EAR * (1.0 - 0.4 * min(max((t - 1.0) / 0.6, 0.0), 1.0))

    times, ears = sampled(glance, 4.0, 30.0, noise=0.002)
    assert detect_blinks(times, ears, CFG) == []


def test_eyes_closed_longer_than_max_blink_is_not_a_blink() -> None:
    times, ears = sampled(lambda t: blink_profile(t, 1.0, hold_s=1.2), 4.0, 30.0)
    assert detect_blinks(times, ears, CFG) == []


def test_closure_without_reopening_is_not_a_blink() -> None:
    times, ears = sampled(lambda t: OPEN_EAR if t < 1.0 else OPEN_EAR * 0.3, 1.4, 30.0)
    assert detect_blinks(times, ears, CFG) == []


def test_wide_eyes_relaxing_to_normal_is_not_a_blink() -> None:
    # Surprise (wide eyes) relaxing: a fast fall that stays at the new level.
    def relax(t: float) -> float:
        return OPEN_EAR if t < 2.0 else OPEN_EAR * 0.78

    times, ears = sampled(relax, 4.0, 30.0, noise=0.002)
    assert detect_blinks(times, ears, CFG) == []


def test_single_frame_flicker_at_high_frame_rate_is_too_short() -> None:
    def flicker(t: float) -> float:
        return OPEN_EAR * 0.4 if 1.0 <= t < 1.0 + 1 / 60 else OPEN_EAR

    times, ears = sampled(flicker, 2.0, 60.0)
    assert detect_blinks(times, ears, CFG) == []


def test_a_frame_without_landmarks_abandons_the_closure() -> None:
    times, ears = sampled(lambda t: blink_profile(t, 1.0, hold_s=0.1), 2.0, 30.0)
    k = int(1.12 * 30)
    ears[k] = None
    assert detect_blinks(times, ears, CFG) == []


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), fps=st.sampled_from([10.0, 15.0, 30.0, 60.0]))
def test_open_eyes_with_landmark_noise_never_blink(seed: int, fps: float) -> None:
    # 2 % EAR jitter frame to frame (measured FaceMesh noise on open eyes is below this).
    times, ears = sampled(lambda t: OPEN_EAR, 10.0, fps, noise=0.006, seed=seed)
    assert detect_blinks(times, ears, CFG) == []


def test_no_blink_is_reported_before_the_baseline_exists() -> None:
    times, ears = sampled(lambda t: blink_profile(t, 0.05), 1.0, 30.0)
    assert detect_blinks(times, ears, CFG) == []


# -- challenge -----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), acquired=st.floats(0, 1e5))
def test_prompt_comes_a_random_configured_delay_after_acquisition(
    seed: int, acquired: float
) -> None:
    ch = schedule_challenge(acquired, CFG, random.Random(seed))
    assert CFG.prompt_delay_min_s <= ch.prompt_t - acquired <= CFG.prompt_delay_max_s + 1e-9
    assert ch.window_end_t - ch.prompt_t == pytest.approx(CFG.response_window_s)
    # Same seed, same prompt: sessions are reproducible in tests.
    assert schedule_challenge(acquired, CFG, random.Random(seed)) == ch


def test_prompt_times_vary_with_the_random_source() -> None:
    delays = {round(schedule_challenge(0.0, CFG, random.Random(s)).prompt_t, 3) for s in range(20)}
    assert len(delays) > 10


def _blink(start: float) -> Blink:
    return Blink(start, start + 0.15, 0, 3, 0.4)


def test_only_blinks_starting_inside_the_response_window_count() -> None:
    ch = challenge_at(10.0, CFG)
    assert not ch.counts(_blink(9.99))
    assert ch.counts(_blink(10.0))
    assert ch.counts(_blink(10.0 + CFG.response_window_s))
    assert not ch.counts(_blink(10.01 + CFG.response_window_s))


def test_prompt_text_asks_for_the_configured_number_of_blinks() -> None:
    assert challenge_at(0.0, CFG).text == "blink now"
    assert challenge_at(0.0, replace(CFG, blinks_required=2)).text == "blink 2 times"


# -- motion --------------------------------------------------------------------------------


def similarity(
    points: np.ndarray, scale: float, angle_deg: float, shift: tuple[float, float]
) -> np.ndarray:
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    out = points.copy()
    out[:, :2] = (points[:, :2] @ rot.T) * scale + np.asarray(shift)
    return out


def test_a_photo_moved_by_hand_shows_no_nonrigid_motion() -> None:
    pts = face_points(0.3, 0.3)
    moved = similarity(pts, 1.07, 4.0, (12.0, -5.0))
    assert nonrigid_motion(pts, moved) < 1e-3


def test_lids_moving_is_nonrigid_motion_whatever_the_face_size() -> None:
    small, blinking = face_points(0.3, 0.3), face_points(0.15, 0.15)
    m = nonrigid_motion(small, blinking)
    assert m > 0.35
    assert nonrigid_motion(small * 4, blinking * 4) == pytest.approx(m, rel=1e-3)


def test_motion_monitor_flags_frozen_landmarks_after_the_window() -> None:
    mon = MotionMonitor(window_s=2.0, threshold=0.35)
    pts = face_points(0.3, 0.3)
    for k in range(61):
        mon.update(k / 30, similarity(pts, 1 + 0.01 * math.sin(k), k * 0.1, (k * 0.5, 0)))
    assert mon.is_static(60 / 30)


def test_motion_monitor_reads_the_trackers_two_alternating_configurations_as_static() -> None:
    """Detection and carried ROIs in turn give a frozen face two configurations: not motion."""
    mon = MotionMonitor(window_s=0.6, threshold=0.1, settle_frames=2)
    a, b = face_points(0.3, 0.3), face_points(0.2, 0.3)
    for k in range(19):
        mon.update(k / 30, a if k % 2 == 0 else b)
    assert mon.is_static(18 / 30)
    mon.update(19 / 30, face_points(0.3, 0.15))  # a third: the other lid moved
    assert not mon.is_static(19 / 30) and not mon.is_static(19 / 30 + 0.59)
    assert mon.is_static(19 / 30 + 0.6)


def test_motion_monitor_keeps_a_moving_face_live() -> None:
    mon = MotionMonitor(window_s=2.0, threshold=0.35)
    rng = np.random.default_rng(3)
    for k in range(90):  # a blink every 0.67 s, and the face never quite still
        ear = 0.15 if k % 20 == 0 else 0.3
        pts = face_points(ear, ear)
        pts[:, :2] += rng.normal(0.0, 0.4, (len(pts), 2))
        mon.update(k / 30, pts)
    assert not mon.is_static(89 / 30)


# -- continuity ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float


def test_a_steady_track_has_no_violation() -> None:
    mon = ContinuityMonitor(min_iou=0.3, min_face_px=40)
    for k in range(30):
        idx, why = mon.update(k / 30, [Box(100 + k, 100, 300 + k, 300)])
        assert (idx, why) == (0, None)


def test_a_jump_of_the_face_box_is_a_changed_face() -> None:
    mon = ContinuityMonitor(min_iou=0.3, min_face_px=40)
    mon.update(0.0, [Box(100, 100, 300, 300)])
    assert mon.update(1 / 30, [Box(400, 100, 600, 300)])[1] == "face_changed"


def test_a_sudden_change_of_face_size_is_a_changed_face() -> None:
    mon = ContinuityMonitor(min_iou=0.3, min_face_px=40)
    mon.update(0.0, [Box(100, 100, 300, 300)])
    # Same centre, 1.4x larger: IoU 0.51 passes the floor, the size step does not.
    assert mon.update(1 / 30, [Box(60, 60, 340, 340)])[1] == "face_changed"


def test_a_second_face_entering_fails_closed() -> None:
    mon = ContinuityMonitor(min_iou=0.3, min_face_px=40)
    mon.update(0.0, [Box(100, 100, 300, 300)])
    # Someone stepping in beside the person: a face of comparable size (0.75x).
    idx, why = mon.update(1 / 30, [Box(400, 100, 550, 250), Box(101, 100, 301, 300)])
    assert (idx, why) == (1, "face_changed")


def test_a_smaller_face_further_back_in_a_queue_does_not_break_the_track() -> None:
    mon = ContinuityMonitor(min_iou=0.3, min_face_px=40)
    mon.update(0.0, [Box(100, 100, 300, 300)])
    # Half the size: someone waiting behind, not at the kiosk (a fare gate must not stall).
    assert mon.update(1 / 30, [Box(500, 100, 600, 200), Box(101, 100, 301, 300)]) == (1, None)


def test_a_tiny_background_detection_is_not_a_second_face() -> None:
    mon = ContinuityMonitor(min_iou=0.3, min_face_px=40)
    mon.update(0.0, [Box(100, 100, 300, 300)])
    assert mon.update(1 / 30, [Box(101, 100, 301, 300), Box(500, 10, 520, 30)]) == (0, None)


def test_a_short_detector_miss_is_tolerated_but_a_lost_track_is_not() -> None:
    mon = ContinuityMonitor(min_iou=0.3, min_face_px=40)
    mon.update(0.0, [Box(100, 100, 300, 300)])
    assert mon.update(0.1, []) == (None, None)
    assert mon.update(0.15, [Box(102, 100, 302, 300)]) == (0, None)
    assert mon.update(0.5, [])[1] == "face_changed"
