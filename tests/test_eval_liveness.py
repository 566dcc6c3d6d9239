"""The liveness evaluation's data parsing, blink scoring rules and still presentation."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.errors import DataError
from edge.liveness.blink import Blink
from edge.measure.eval_liveness import Annotation, read_data, score_blinks, seeded, still_frames
from edge.measure.liveness_data import false_alarms


def make_folder(root: Path, videos: str, blinks: str, attacks: str) -> Path:
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "a.mp4").write_bytes(b"x")
    (root / "videos.csv").write_text(videos)
    (root / "blinks.csv").write_text(blinks)
    (root / "attacks.csv").write_text(attacks)
    return root


VIDEOS = "video,frames,fps,width,height,blinks,kind\nvideos/a.mp4,10,30,64,64,1,live_blink\n"
ATTACKS = "file,label,presentation,source\nvideos/a.mp4,screen_replay,video,ours\n"


def test_annotations_are_matched_by_file_name(tmp_path: Path) -> None:
    blinks = "video,start_frame,end_frame,source,label\na.mp4,3,5,ours,blink\n"
    data = read_data(make_folder(tmp_path, VIDEOS, blinks, ATTACKS))
    assert data.videos[0].annotations == (Annotation(3, 5, "blink"),)
    assert data.attacks[0].presentation == "video"


@pytest.mark.parametrize(
    ("blinks", "message"),
    [
        ("video,start_frame,end_frame,source,label\na.mp4,x,5,ours,blink\n", "blinks.csv:2"),
        ("video,start_frame,end_frame,source,label\na.mp4,5,3,ours,blink\n", "end >= start"),
        ("video,start_frame,end_frame,source,label\na.mp4,3,5,ours,wink\n", "blink/ambiguous"),
        ("video,start,end\n", "missing column"),
    ],
)
def test_malformed_annotations_name_the_file_and_problem(
    tmp_path: Path, blinks: str, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        read_data(make_folder(tmp_path, VIDEOS, blinks, ATTACKS))


def test_a_listed_file_that_is_missing_is_named(tmp_path: Path) -> None:
    videos = VIDEOS + "videos/gone.mp4,10,30,64,64,0,live_open\n"
    blinks = "video,start_frame,end_frame,source,label\n"
    with pytest.raises(DataError, match="gone.mp4 is listed but missing"):
        read_data(make_folder(tmp_path, videos, blinks, ATTACKS))


def test_a_missing_csv_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="blinks.csv is missing"):
        read_data(tmp_path)


def blink(start: int, end: int) -> Blink:
    return Blink(start / 30, end / 30, start, end, 0.5)


def test_scoring_allows_two_frames_and_ignores_ambiguous_rows() -> None:
    anns = [
        Annotation(10, 13, "blink"),
        Annotation(40, 43, "blink"),
        Annotation(70, 74, "ambiguous"),
    ]
    score = score_blinks([blink(15, 16), blink(71, 72), blink(100, 102)], anns)
    # 15 is within 2 frames of 13: a hit. 71 lies on an ambiguous row: neutral. 100: false.
    assert (score.annotated, score.found, score.detected, score.correct) == (2, 1, 2, 1)
    # The one false alarm is named (the eval's `blink_false_alarms`), the others are not.
    alarms = false_alarms([blink(15, 16), blink(71, 72), blink(100, 102)], anns)
    assert [(b.start_index, b.end_index) for b in alarms] == [(100, 102)]


def test_a_detection_three_frames_away_is_not_a_hit() -> None:
    score = score_blinks([blink(17, 18)], [Annotation(10, 14, "blink")])
    assert (score.found, score.detected, score.correct) == (0, 1, 0)


def test_a_still_presented_frozen_repeats_the_same_pixels() -> None:
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    frames = list(still_frames(image, 1.0, 30.0, random.Random(0), handheld=False))
    assert len(frames) == 30
    assert all(np.array_equal(f.image, image) for f in frames)
    assert [f.t_monotonic for f in frames[:3]] == [0.0, 1 / 30, 2 / 30]


def test_a_handheld_still_moves_a_little_and_has_sensor_noise() -> None:
    image = np.zeros((1200, 1600, 3), dtype=np.uint8)
    image[500:700, 700:900] = 255  # a bright square to follow
    frames = list(still_frames(image, 2.0, 30.0, random.Random(1), handheld=True))
    assert frames[0].image.shape == (480, 640, 3)  # shrunk to a camera-sized frame
    centres = []
    for f in frames:
        ys, xs = np.nonzero(f.image[:, :, 0] > 128)
        centres.append((xs.mean(), ys.mean()))
    shift = np.ptp(np.asarray(centres), axis=0)
    assert 0.2 < shift.max() < 12.0  # a few pixels of drift, never a jump
    assert not np.array_equal(frames[0].image, frames[1].image)


def test_seeded_random_sources_depend_only_on_their_labels() -> None:
    assert seeded(0, "a", 1).random() == seeded(0, "a", 1).random()
    assert seeded(0, "a", 1).random() != seeded(0, "a", 2).random()
    assert seeded(0, "a", 1).random() != seeded(1, "a", 1).random()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(alphabet=st.sampled_from(list("abc,0123456789-\n\"x ")), max_size=200))
def test_any_blinks_csv_parses_or_is_a_data_error(tmp_path_factory, text: str) -> None:
    root = tmp_path_factory.mktemp("data")
    header = "video,start_frame,end_frame,source,label\n"
    folder = make_folder(root, VIDEOS, header + text, ATTACKS)
    try:
        data = read_data(folder)
    except DataError:
        return
    for a in data.videos[0].annotations:
        assert a.label in ("blink", "ambiguous") and a.end >= a.start
