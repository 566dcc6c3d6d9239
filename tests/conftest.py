"""Shared test fixtures: research data, required services, condition waits and video parts."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest
from hypothesis import settings

# Property tests check properties, not speed: on a shared 2-core machine under load one example
# can take longer than hypothesis' 200 ms default deadline, which would fail a correct test.
settings.register_profile("facegate", deadline=None)
settings.load_profile("facegate")

REPO = Path(__file__).resolve().parent.parent

# blink_portrait_24fps.mp4: 334 frames at 23.86 fps, one man, blinks at frames 10, 40, 82, 111,
# 221 and 239 (liveness/blinks.csv). Enrolment and verification never see the same frames:
# enrolment uses the second half, verification the first (each half holds blinks).
PORTRAIT = "liveness/videos/blink_portrait_24fps.mp4"
PORTRAIT_SPLIT = 167


def data_root() -> Path | None:
    raw = os.environ.get("FACEGATE_DATA")
    if raw:
        return Path(raw)
    guess = REPO.parent / "shared" / "data"
    return guess if guess.is_dir() else None


def require_data(relpath: str) -> Path:
    """A path under $FACEGATE_DATA; skip (fail under FACEGATE_REQUIRE_DATA=1) when absent."""
    root = data_root()
    strict = os.environ.get("FACEGATE_REQUIRE_DATA") == "1"
    if root is None:
        msg = "FACEGATE_DATA is not set and ../shared/data is absent: research data not available"
        if strict:
            pytest.fail(msg)
        pytest.skip(msg)
    path = root / relpath
    if not path.exists():
        msg = f"research data file missing: {path}"
        if strict:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def require_service(name: str, reason: str) -> NoReturn:
    """A service or tool the test needs (PostgreSQL, Mosquitto, strace) is not available:
    skip, or fail under FACEGATE_REQUIRE_SERVICES=1 (CI), where a skip would hide a red test."""
    msg = f"{name} not available: {reason}"
    if os.environ.get("FACEGATE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{msg} (FACEGATE_REQUIRE_SERVICES=1: this run must provide it)")
    pytest.skip(msg)


def wait_until(
    predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.02
) -> None:
    """Poll `predicate` until it is true; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def write_video_part(src: Path, dst: Path, start: int, stop: int | None) -> Path:
    """Frames [start, stop) of the video `src` as an MJPG AVI at the source's frame rate."""
    import cv2

    cap = cv2.VideoCapture(str(src))
    assert cap.isOpened(), f"cannot open {src}"
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    writer: cv2.VideoWriter | None = None
    index = written = 0
    try:
        while stop is None or index < stop:
            ok, bgr = cap.read()
            if not ok:
                break
            if index >= start:
                if writer is None:
                    h, w = bgr.shape[:2]
                    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
                    assert writer.isOpened(), "OpenCV cannot write an MJPG AVI here"
                    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 95)
                writer.write(bgr)
                written += 1
            index += 1
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    assert written > 0 and (stop is None or written == stop - start), (src, start, stop, written)
    return dst


@pytest.fixture(scope="session")
def video_part(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`video_part(relpath, start, stop)`: frames [start, stop) of a research video, written
    once per session to a temp file (never into the repo or the data folder)."""
    root = tmp_path_factory.mktemp("video-parts")
    made: dict[tuple[str, int, int | None], Path] = {}

    def part(relpath: str, start: int, stop: int | None = None) -> Path:
        key = (relpath, start, stop)
        if key not in made:
            dst = root / f"{Path(relpath).stem}_{start}-{stop if stop is not None else 'end'}.avi"
            made[key] = write_video_part(require_data(relpath), dst, start, stop)
        return made[key]

    return part


@pytest.fixture(scope="session")
def portrait_enrol(video_part: Callable[..., Path]) -> Path:
    """The second half of the portrait video: the only frames enrolment may use."""
    return video_part(PORTRAIT, PORTRAIT_SPLIT)


@pytest.fixture(scope="session")
def portrait_verify(video_part: Callable[..., Path]) -> Path:
    """The first half of the portrait video: the only frames verification may use."""
    return video_part(PORTRAIT, 0, PORTRAIT_SPLIT)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state directory for one test, exported as FACEGATE_STATE_DIR."""
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("FACEGATE_STATE_DIR", str(d))
    return d
