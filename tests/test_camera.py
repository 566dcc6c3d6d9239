"""Camera sources: URI parsing, file replay of the real videos, stalled-camera watchdog."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import require_data

from edge.camera import FileSource, LiveSource, open_source, parse_source_uri
from edge.camera.base import ImageRGB
from edge.config import CameraConfig
from edge.errors import SourceError


@pytest.mark.parametrize(
    ("uri", "kind", "target"),
    [
        ("picamera2:0", "picamera2", "0"),
        ("cam:1", "cam", "1"),
        ("v4l2:/dev/video0", "v4l2", "/dev/video0"),
        ("gst:nvarguscamerasrc ! appsink", "gst", "nvarguscamerasrc ! appsink"),
        ("file:/tmp/a.mp4", "file", "/tmp/a.mp4"),
        ("file:///tmp/a.mp4", "file", "/tmp/a.mp4"),
        ("file:rel/dir", "file", "rel/dir"),
    ],
)
def test_source_uris_parse(uri: str, kind: str, target: str) -> None:
    spec = parse_source_uri(uri)
    assert (spec.kind, spec.target) == (kind, target)


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("", "empty source URI"),
        ("video.mp4", "has no scheme"),
        ("rtsp://cam", "unknown scheme 'rtsp'"),
        ("cam:", "nothing after 'cam:'"),
        ("cam:front", "takes a camera index"),
        ("picamera2:-1", "takes a camera index"),
        ("v4l2:video0", "takes a device path"),
        ("file:a\x00b", "NUL character"),
    ],
)
def test_bad_uris_name_the_uri_and_the_accepted_forms(uri: str, fragment: str) -> None:
    with pytest.raises(SourceError) as err:
        parse_source_uri(uri)
    assert fragment in str(err.value)


def _manifest_rows() -> list[dict[str, str]]:
    path = require_data("liveness/videos.csv")
    with path.open() as fh:
        return [r for r in csv.DictReader(fh) if r["video"].startswith("videos/")]


def test_replay_of_every_real_video_matches_opencv_frame_count_and_order() -> None:
    root = require_data("liveness")
    rows = _manifest_rows()
    assert len(rows) >= 14
    for row in rows:
        path = root / row["video"]
        with open_source(f"file:{path}", realtime=False) as src:
            frames = list(src)
        assert len(frames) == int(row["frames"]), row["video"]
        assert [f.index for f in frames] == list(range(len(frames)))
        h, w = int(row["height"]), int(row["width"])
        assert frames[0].image.shape == (h, w, 3) and frames[0].image.dtype == np.uint8
        gaps = np.diff([f.t_monotonic for f in frames])
        assert np.allclose(gaps, 1.0 / float(row["fps"]), rtol=1e-3), row["video"]


def test_replayed_frames_are_rgb_and_identical_to_opencv_decoding() -> None:
    path = require_data("liveness/videos/blink_glasses_lowres_25fps.mp4")
    cap = cv2.VideoCapture(str(path))
    expected = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        expected.append(bgr[:, :, ::-1])
    cap.release()
    for decode_threads in (0, 1):  # bench decodes on one thread: same frames, same order
        with open_source(f"file:{path}", realtime=False, decode_threads=decode_threads) as src:
            got = [f.image for f in src]
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert np.array_equal(a, b)


def test_realtime_replay_paces_frames_on_the_recorded_timeline() -> None:
    path = require_data("liveness/videos/blink_glasses_lowres_25fps.mp4")
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    src = FileSource(f"file:{path}", path, CameraConfig(), realtime=True,
                     clock=lambda: now[0], sleep=sleep)
    with src:
        stamps = [f.t_monotonic for f in src]
    assert stamps[0] == 100.0
    assert stamps[-1] == pytest.approx(100.0 + 74 / 25.0)
    assert sum(slept) == pytest.approx(74 / 25.0)


def test_image_and_folder_sources(tmp_path: Path) -> None:
    img = np.zeros((20, 30, 3), np.uint8)
    img[:, :, 2] = 255  # red in BGR
    cv2.imwrite(str(tmp_path / "b.png"), img)
    cv2.imwrite(str(tmp_path / "a.png"), np.full((20, 30), 7, np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    with open_source(f"file:{tmp_path}", realtime=False) as src:
        frames = list(src)
    assert [f.index for f in frames] == [0, 1]
    assert frames[0].image.shape == (20, 30, 3) and int(frames[0].image[0, 0, 0]) == 7
    assert tuple(frames[1].image[0, 0]) == (255, 0, 0)  # RGB order
    with open_source(f"file:{tmp_path / 'b.png'}") as src:
        assert len(list(src)) == 1


@pytest.mark.parametrize(
    ("content", "name", "fragment"),
    [
        (b"", "empty.jpg", "empty or not a file"),
        (b"\xff\xd8\xff garbage", "corrupt.jpg", "not a decodable image"),
        (b"not a video at all", "clip.mp4", "cannot open"),
    ],
)
def test_unreadable_files_give_a_clear_error_naming_the_uri(
    tmp_path: Path, content: bytes, name: str, fragment: str
) -> None:
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(SourceError) as err, open_source(f"file:{p}") as src:
        list(src)
    assert fragment in str(err.value) and f"file:{p}" in str(err.value)


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_source(f"file:{tmp_path / 'nope.mp4'}")
    with pytest.raises(SourceError, match="holds no images"):
        open_source(f"file:{tmp_path}")


def test_absent_camera_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match="cannot open the camera"):
        open_source("v4l2:/dev/video-facegate-absent")


def test_gstreamer_without_support_or_absent_pipeline_is_a_clear_error() -> None:
    with pytest.raises(SourceError) as err:
        open_source("gst:videotestsrc num-buffers=1 ! appsink")
    assert "GStreamer" in str(err.value) or "cannot open the camera" in str(err.value)


class _StallingCapture:
    """A camera driver that delivers `good` frames and then blocks, like an unplugged USB cam."""

    def __init__(self, good: int, opened: list[_StallingCapture]) -> None:
        self.good = good
        self.released = threading.Event()
        opened.append(self)

    def read(self) -> ImageRGB | None:
        if self.good > 0:
            self.good -= 1
            return np.zeros((4, 4, 3), np.uint8)
        self.released.wait(5.0)  # blocks until the watchdog releases us
        return None

    def release(self) -> None:
        self.released.set()


def test_stalled_camera_is_reopened_instead_of_hanging() -> None:
    opened: list[_StallingCapture] = []
    cfg = CameraConfig(read_timeout_s=0.2, reopen_backoff_s=0.01, reopen_attempts=3)
    src = LiveSource("cam:0", lambda: _StallingCapture(2, opened), cfg)
    with src:
        frames = []
        for f in src:
            frames.append(f)
            if len(frames) == 5:
                break
    assert len(opened) >= 3 and src.reopen_count >= 2
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert opened[0].released.is_set()


def test_camera_that_never_comes_back_raises_after_the_reopen_budget() -> None:
    attempts = []

    def factory() -> _StallingCapture:
        if attempts:
            attempts.append(1)
            raise SourceError("cam:0: cannot open the camera")
        attempts.append(1)
        return _StallingCapture(1, [])

    cfg = CameraConfig(read_timeout_s=0.1, reopen_backoff_s=0.01, reopen_attempts=3)
    with LiveSource("cam:0", factory, cfg) as src, pytest.raises(
        SourceError, match="did not come back after 3 reopen attempts"
    ):
        list(src)
    assert len(attempts) == 4


def test_a_hanging_reopen_keeps_the_watchdog_fed_and_gives_up_in_time() -> None:
    """A driver whose open never returns (a wedged USB camera, a FIFO without a writer) must
    neither stop the keepalive nor outlast camera.reopen_give_up_s."""
    hang = threading.Event()
    calls: list[float] = []

    def factory() -> _StallingCapture:
        calls.append(time.monotonic())
        if len(calls) > 1:
            hang.wait(30.0)  # the open that never returns
        return _StallingCapture(1, [])

    pings: list[float] = []
    cfg = CameraConfig(read_timeout_s=0.3, reopen_backoff_s=0.05, reopen_attempts=100,
                       reopen_give_up_s=1.0)  # fmt: skip
    src = LiveSource("cam:0", factory, cfg)
    src.set_keepalive(lambda: pings.append(time.monotonic()), watchdog_s=0.8)
    t0 = time.monotonic()
    try:
        with pytest.raises(SourceError, match=r"reopen_give_up_s = 1\b"):
            list(src)
    finally:
        hang.set()
        src.close()
    took = time.monotonic() - t0
    assert 1.0 <= took <= 2.0, took
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert len(calls) >= 2 and pings[-1] - pings[0] >= 0.9
    assert max(gaps) <= 0.8 / 2, max(gaps)  # at least every half watchdog interval
