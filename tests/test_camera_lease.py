"""Lending the kiosk's camera to a technician's enrolment (edge/camera/lease.py).

The lock and request files with real `flock` locks, a requester SIGKILLed while it holds the
camera, `LiveSource.suspend/resume`, and the technician's flow as wired: `facegate run` streams a
camera (a FIFO fed with y4m by a helper, as a camera helper such as ffmpeg would; like a V4L2
device it delivers each frame to one reader), `facegate enroll` with the kiosk's own camera
source takes the camera over, enrols, and the kiosk streams again.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from _cli import REPO, cli_env
from conftest import require_data

from edge.camera import open_source
from edge.camera.lease import REQUEST_FILE, CameraLease, borrowed_if_kiosks
from edge.camera.live import LiveSource
from edge.config import CameraConfig
from edge.errors import SourceError

PORTRAIT = "liveness/videos/blink_portrait_24fps.mp4"


def test_the_camera_lock_is_exclusive_and_a_request_is_seen_while_it_lives(
    tmp_path: Path,
) -> None:
    kiosk, technician = CameraLease(tmp_path), CameraLease(tmp_path)
    assert kiosk.try_hold() and not technician.try_hold()
    assert not kiosk.requested()
    # A kiosk that does not hand over: the borrow fails naming the holder, and withdraws.
    t0 = time.monotonic()
    refused = pytest.raises(SourceError, match=f"pid {os.getpid()}.*not released within 0.3 s")
    with refused, technician.borrow(0.3):
        pass
    assert 0.3 <= time.monotonic() - t0 < 5.0
    assert not kiosk.requested() and not (tmp_path / REQUEST_FILE).exists()
    # The kiosk lets go: the borrower has the camera, and the kiosk sees the request all along.
    kiosk.release()
    with technician.borrow(1.0):
        assert technician.held
        assert kiosk.requested()
        assert not kiosk.try_hold()
    assert not technician.held
    assert not kiosk.requested() and not (tmp_path / REQUEST_FILE).exists()
    assert kiosk.try_hold()


def test_a_borrower_killed_with_the_camera_gives_it_back(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from edge.camera.lease import CameraLease\n"
        "with CameraLease(Path(sys.argv[1])).borrow(5.0):\n"
        "    print('borrowed', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "borrowed"
        kiosk = CameraLease(tmp_path)
        assert kiosk.requested() and not kiosk.try_hold()
        assert f"pid {proc.pid}" == kiosk.holder()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    # The kernel dropped both locks: the stale request is removed and the camera is free.
    assert not kiosk.requested()
    assert not (tmp_path / REQUEST_FILE).exists()
    assert kiosk.try_hold()


class _Capture:
    """A camera driver stand-in that fails the way a real one does on misuse: reading after
    release raises, and releasing during a read is recorded as a fault."""

    def __init__(self, number: int, log: list[str]) -> None:
        self.number, self.log = number, log
        self.released = False
        self.reading = False
        log.append(f"open {number}")

    def read(self) -> np.ndarray:
        if self.released:
            raise RuntimeError("read after release")
        self.reading = True
        time.sleep(0.02)
        self.reading = False
        return np.full((8, 8, 3), self.number, np.uint8)

    def release(self) -> None:
        if self.reading:
            self.log.append(f"FAULT: release {self.number} during a read")
        self.released = True
        self.log.append(f"release {self.number}")


def test_live_source_suspend_frees_the_device_and_resume_reopens_it() -> None:
    log: list[str] = []
    opened: list[_Capture] = []

    def open_capture() -> _Capture:
        opened.append(_Capture(len(opened) + 1, log))
        return opened[-1]

    cfg = CameraConfig(read_timeout_s=1.0)
    with LiveSource("test:lease", open_capture, cfg) as src:
        frames = iter(src)
        assert int(next(frames).image[0, 0, 0]) == 1
        src.suspend()
        assert opened[0].released and len(opened) == 1  # free, and nothing reopened yet
        time.sleep(0.1)
        src.resume()
        seen = {int(next(frames).image[0, 0, 0]) for _ in range(5)}
    assert seen == {2}, seen  # no stale frame of the lent capture after the resume
    assert not [line for line in log if line.startswith("FAULT")], log
    assert log[:3] == ["open 1", "release 1", "open 2"], log


# -- the technician's flow, wired -----------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory path (the FIFO and state files live here)."""
    with tempfile.TemporaryDirectory(prefix="fg-lease-") as d:
        yield Path(d)


class FifoCamera:
    """A camera helper: streams a video's frames (looped) as y4m into a FIFO, to one reader at a
    time; when the reader goes away it waits for the next one. Records each connection's
    frame count and when it ended."""

    def __init__(self, fifo: Path, frames: list[np.ndarray], fps: int) -> None:
        self.fifo, self.frames, self.fps = fifo, frames, fps
        self.connections: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _open(self) -> int | None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody reads
                time.sleep(0.02)
                continue
            os.set_blocking(fd, True)
            return fd
        return None

    def _run(self) -> None:
        h, w = self.frames[0].shape[:2]
        k = 0
        while not self._stop.is_set():
            fd = self._open()
            if fd is None:
                return
            conn = {"start": time.monotonic(), "frames": 0.0, "end": 0.0}
            self.connections.append(conn)
            try:
                os.write(fd, f"YUV4MPEG2 W{w} H{h} F{self.fps}:1 Ip A1:1 C444\n".encode())
                while not self._stop.is_set():
                    yuv = cv2.cvtColor(self.frames[k % len(self.frames)], cv2.COLOR_RGB2YUV)
                    planes = np.ascontiguousarray(yuv.transpose(2, 0, 1))
                    os.write(fd, b"FRAME\n" + planes.tobytes())
                    conn["frames"] += 1
                    k += 1
                    self._pause(fd, 1 / self.fps)
            except BrokenPipeError:
                pass
            finally:
                conn["end"] = time.monotonic()
                with contextlib.suppress(OSError):
                    os.close(fd)

    @staticmethod
    def _pause(fd: int, seconds: float) -> None:
        """Wait for the next frame, watching the pipe: a device's stream ends with its reader,
        but a FIFO outlives it while we hold the write end, and a new reader would join the old
        stream mid-frame. So the end is noticed within 2 ms (POLLERR: no reader left)."""
        poller = select.poll()
        poller.register(fd, select.POLLERR | select.POLLHUP)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if poller.poll(min(left, 0.002) * 1000):
                raise BrokenPipeError

    def wait_for(self, connections: int, frames: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.connections) >= connections and (
                self.connections[connections - 1]["frames"] >= frames
            ):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _video_frames(path: Path, scale: float = 0.5) -> list[np.ndarray]:
    """The recording's RGB frames, shrunk (a smaller y4m stream through the FIFO)."""
    with open_source(f"file:{path}", realtime=False) as src:
        return [
            cv2.resize(f.image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            for f in src
        ]


def _fifo_kiosk(short_dir: Path, read_timeout_s: float) -> tuple[Path, Path, Path]:
    """A demo kiosk's config whose camera is a FIFO: (fifo, config, state dir)."""
    fifo, cfg, state = short_dir / "cam.fifo", short_dir / "kiosk.toml", short_dir / "state"
    os.mkfifo(fifo)
    cfg.write_text(
        f'profile = "demo"\n[device]\nid = "kiosk-lease-0001"\nsite = "lab"\n'
        f'[paths]\nstate_dir = "{state}"\n[camera]\nsource = "file:{fifo}"\n'
        f"read_timeout_s = {read_timeout_s}\n[mqtt]\nenabled = false\n"
    )
    return fifo, cfg, state


def test_enrolment_at_the_console_borrows_the_running_kiosks_camera_and_gives_it_back(
    short_dir: Path,
) -> None:
    frames = _video_frames(require_data(PORTRAIT))
    fifo, cfg, _ = _fifo_kiosk(short_dir, read_timeout_s=2.0)
    env = cli_env(cfg)
    keys = subprocess.run(
        [sys.executable, "-m", "edge", "keys", "init"], env=env, cwd=REPO, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert keys.returncode == 0, keys.stderr
    camera = FifoCamera(fifo, frames, fps=24)
    kiosk = subprocess.Popen(
        [sys.executable, "-m", "edge", "run"], env=env, cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert camera.wait_for(1, 48, 60), "the kiosk never read the camera"
        t_enrol = time.monotonic()
        enrol = subprocess.run(
            [sys.executable, "-m", "edge", "enroll", "s-tech", "--source", f"file:{fifo}",
             "--frames", "5"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        enrolled_at = time.monotonic()
        assert enrol.returncode == 0, enrol.stderr[-2000:]
        assert json.loads(enrol.stdout.strip().splitlines()[-1])["subject"] == "s-tech"
        # The kiosk takes its camera back and streams again.
        assert camera.wait_for(3, 48, 30), camera.connections
    finally:
        kiosk.send_signal(signal.SIGTERM)
        try:
            out, err = kiosk.communicate(timeout=30)
        finally:
            camera.stop()
    detail = f"connections {camera.connections}\nstderr: {err[-3000:]}"
    assert kiosk.returncode == 0, detail
    first, lent, back = camera.connections[:3]
    # The kiosk let go of the device before the enrolment read it, within a fraction of a
    # second of the request (the enrolment's own start-up comes first).
    assert t_enrol < first["end"] <= lent["start"] < enrolled_at, detail
    assert lent["end"] <= back["start"], detail
    assert lent["frames"] >= 5, detail
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["camera_loans"] == 1, summary
    assert "camera lent to an enrolment" in err and "camera back from the enrolment" in err
    assert "[kiosk] Out of service - maintenance" in out
    assert "Traceback" not in err, detail


def test_only_a_command_on_the_kiosks_own_camera_borrows_it(tmp_path: Path) -> None:
    state = tmp_path / "st"
    kiosk_uri = "v4l2:/dev/video0"
    for other in ("file:/tmp/recording.mp4", "v4l2:/dev/video1"):
        assert isinstance(borrowed_if_kiosks(other, kiosk_uri, state), contextlib.nullcontext)
    assert isinstance(borrowed_if_kiosks(kiosk_uri, "", state), contextlib.nullcontext)
    # A kiosk camera.source that does not parse (not checked at config load) streams nothing;
    # a bad source of the command itself is left to the source to report.
    assert isinstance(borrowed_if_kiosks(kiosk_uri, "bogus", state), contextlib.nullcontext)
    assert isinstance(borrowed_if_kiosks("bogus", kiosk_uri, state), contextlib.nullcontext)
    borrowed = borrowed_if_kiosks(kiosk_uri, kiosk_uri, state)
    assert not isinstance(borrowed, contextlib.nullcontext)
    holder = CameraLease(state)
    with borrowed:
        assert holder.requested() and not holder.try_hold()
    assert holder.try_hold()


def test_a_kiosk_starting_while_an_enrolment_has_the_camera_waits_for_it(tmp_path: Path) -> None:
    state = tmp_path / "st"
    state.mkdir(mode=0o700)
    env = {**os.environ, "FACEGATE_STATE_DIR": str(state)}
    technician = CameraLease(state)
    assert technician.try_hold()
    kiosk = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", "config/demo.toml", "--max-frames",
         "10"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert kiosk.stderr is not None
        line = ""
        while "waiting for the camera" not in line:
            line = kiosk.stderr.readline()
            assert line, "the kiosk ended without waiting for the camera"
        assert f"pid {os.getpid()} is using it" in line, line
        time.sleep(0.5)
        assert kiosk.poll() is None  # still waiting, not failed
        technician.release()
        out, err = kiosk.communicate(timeout=120)
    finally:
        if kiosk.poll() is None:
            kiosk.kill()
    assert kiosk.returncode == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["frames"] == 10


def test_a_kiosk_stopped_while_its_camera_is_lent_exits_at_once_without_reopening_it(
    short_dir: Path,
) -> None:
    frames = [np.full((120, 160, 3), 128, np.uint8)]  # no face needed: only the stream counts
    fifo, cfg, state = _fifo_kiosk(short_dir, read_timeout_s=10.0)
    camera = FifoCamera(fifo, frames, fps=20)
    kiosk = subprocess.Popen(
        [sys.executable, "-m", "edge", "run"], env=cli_env(cfg), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert camera.wait_for(1, 20, 60), "the kiosk never read the camera"
        with CameraLease(state).borrow(10.0):  # the technician has the camera
            # The kiosk closed the device before it let go of the lock; the helper notices
            # within its 2 ms poll, or later on a loaded machine.
            deadline = time.monotonic() + 10
            while camera.connections[0]["end"] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert camera.connections[0]["end"] > 0  # the kiosk let go of the device
            kiosk.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            out, err = kiosk.communicate(timeout=30)
            stopped_s = time.monotonic() - t0
    finally:
        if kiosk.poll() is None:
            kiosk.kill()
        camera.stop()
    assert kiosk.returncode == 0, err[-2000:]
    assert stopped_s < 6.0, (stopped_s, err[-2000:])  # not after a 10 s read timeout + reopen
    assert len(camera.connections) == 1, camera.connections  # the camera was not reopened
    assert json.loads(out.strip().splitlines()[-1])["camera_loans"] == 1
