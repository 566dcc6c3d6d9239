"""Live cameras (V4L2 / USB index / GStreamer via OpenCV, picamera2, a FIFO stream) with a
stall watchdog.

A camera read can block forever when a USB camera is unplugged or a CSI pipeline wedges, so
frames are read on a daemon thread and handed over through a one-slot queue (the newest frame
wins: the kiosk wants the freshest face, not a backlog). When no frame arrives within
`read_timeout_s` the capture is released and reopened with exponential back-off; after
`reopen_attempts` failed reopenings, or `reopen_give_up_s` after the stall, the source raises
SourceError instead of hanging, and the process ends for systemd to restart it.

Every wait here (for a frame, a back-off, a reopening that may itself hang) is cut into slices
and calls the `keepalive` the kiosk attached, so the systemd watchdog is pinged through a
recovery that is still within its bounds, and each back-off step is capped at half the
watchdog interval.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Protocol

from edge.camera.base import Frame, ImageRGB
from edge.config import CameraConfig
from edge.errors import SourceError

log = logging.getLogger(__name__)


class Capture(Protocol):
    """What the watchdog needs from a camera driver: a blocking read of one RGB frame."""

    def read(self) -> ImageRGB | None: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[], Capture]
MAX_BACKOFF_S = 30.0  # the cap of one back-off step without a watchdog
WAIT_SLICE_S = 0.25  # the longest wait between two keepalive calls (less with a short watchdog)
OPEN_TIMEOUT_S = 5.0  # a reopening that takes longer counts as failed (a wedged driver)


class LiveSource:
    """A live camera as a `Source`; `open_capture` raises SourceError when the device is absent."""

    def __init__(
        self,
        uri: str,
        open_capture: CaptureFactory,
        cfg: CameraConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.uri = uri
        self._open_capture = open_capture
        self._cfg = cfg
        self._clock, self._sleep = clock, sleep
        self._capture: Capture | None = open_capture()  # fail fast when the camera is absent
        self._queue: queue.Queue[tuple[int, ImageRGB | None]] = queue.Queue(maxsize=1)
        self._generation = 0
        self._closed = threading.Event()
        self._reader_thread: threading.Thread | None = None
        self.reopen_count = 0
        self._keepalive: Callable[[], None] = _nothing
        self._slice_s = WAIT_SLICE_S
        self._max_backoff_s = MAX_BACKOFF_S
        self._start_reader()

    def set_keepalive(self, keepalive: Callable[[], None], watchdog_s: float | None) -> None:
        """Call `keepalive` at least every watchdog_s / 8 while waiting; cap each back-off step
        at watchdog_s / 2 so the schedule fits inside the interval (None: no watchdog)."""
        self._keepalive = keepalive
        if watchdog_s is not None and watchdog_s > 0:
            self._slice_s = min(WAIT_SLICE_S, watchdog_s / 8)
            self._max_backoff_s = min(MAX_BACKOFF_S, watchdog_s / 2)

    def _wait(self, seconds: float) -> None:
        """Sleep `seconds` (less if closed), calling keepalive between slices."""
        end = self._clock() + seconds
        while not self._closed.is_set():
            self._keepalive()
            left = end - self._clock()
            if left <= 0:
                return
            self._sleep(min(left, self._slice_s))

    def _open_bounded(self, timeout_s: float) -> Capture:
        """open_capture on a helper thread, so a hanging driver (or a FIFO without a writer)
        cannot stop the keepalive; SourceError when it fails or takes longer than timeout_s."""
        result: queue.Queue[Capture | BaseException] = queue.Queue(maxsize=1)
        lock = threading.Lock()
        abandoned = False

        def opener() -> None:
            try:
                item: Capture | BaseException = self._open_capture()
            except Exception as exc:
                item = exc
            with lock:
                if not abandoned:
                    result.put(item)
                    return
            if not isinstance(item, BaseException):
                with contextlib.suppress(Exception):
                    item.release()  # opened after we gave up on it

        threading.Thread(target=opener, name="camera-open", daemon=True).start()
        end = self._clock() + timeout_s
        while True:
            try:
                got = result.get(timeout=max(0.0, min(self._slice_s, end - self._clock())))
            except queue.Empty:
                self._keepalive()
                if self._clock() < end and not self._closed.is_set():
                    continue
                with lock:
                    abandoned = True
                    if result.empty():
                        raise SourceError(
                            f"{self.uri}: opening the camera did not finish within "
                            f"{timeout_s:.1f} s"
                        ) from None
                    got = result.get_nowait()
            if isinstance(got, BaseException):
                raise got
            return got

    def _start_reader(self) -> None:
        self._generation += 1
        gen, cap = self._generation, self._capture
        thread = threading.Thread(
            target=self._reader, args=(gen, cap), name=f"camera-{gen}", daemon=True
        )
        thread.start()
        self._reader_thread = thread

    def _put(self, item: tuple[int, ImageRGB | None]) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                self._queue.get_nowait()
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(item)

    def _reader(self, gen: int, cap: Capture | None) -> None:
        while cap is not None and not self._closed.is_set() and gen == self._generation:
            try:
                image = cap.read()
            except Exception as exc:  # a driver error is a stall as far as the kiosk is concerned
                log.warning("camera %s read failed: %s", self.uri, exc)
                image = None
            if gen != self._generation or self._closed.is_set():
                return
            self._put((gen, image))
            if image is None:
                return

    def _reopen(self) -> None:
        """Release the stalled capture and reopen with back-off; SourceError if it never returns."""
        old, self._capture = self._capture, None
        self._generation += 1  # orphan the stalled reader thread
        if old is not None:
            # releasing a dead device may fail; we are replacing it anyway
            with contextlib.suppress(Exception):
                old.release()
        started = self._clock()
        give_up_at = started + self._cfg.reopen_give_up_s
        delay = min(self._cfg.reopen_backoff_s, self._max_backoff_s)
        attempt = 0
        while attempt < self._cfg.reopen_attempts and self._clock() < give_up_at:
            attempt += 1
            self._wait(min(delay, max(0.0, give_up_at - self._clock())))
            if self._closed.is_set():
                return
            try:
                timeout = max(0.1, min(OPEN_TIMEOUT_S, give_up_at - self._clock()))
                self._capture = self._open_bounded(timeout)
            except SourceError as exc:
                log.warning("camera %s reopen %d failed: %s", self.uri, attempt, exc)
                delay = min(delay * 2 if delay > 0 else 0.1, self._max_backoff_s)
                continue
            self.reopen_count += 1
            log.warning("camera %s reopened after a stall (attempt %d)", self.uri, attempt)
            self._start_reader()
            return
        raise SourceError(
            f"{self.uri}: camera stopped delivering frames and did not come back after "
            f"{attempt} reopen attempts in {self._clock() - started:.1f} s (limits: "
            f"camera.reopen_attempts = {self._cfg.reopen_attempts}, camera.reopen_give_up_s = "
            f"{self._cfg.reopen_give_up_s:g}); check the cable, power and that no other process "
            "holds the device"
        )

    def _next_item(self) -> tuple[int, ImageRGB | None] | None:
        """The next item from the reader, or None after read_timeout_s (keepalive meanwhile)."""
        end = self._clock() + self._cfg.read_timeout_s
        while True:
            left = end - self._clock()
            if left <= 0 or self._closed.is_set():
                return None
            try:
                return self._queue.get(timeout=min(left, self._slice_s))
            except queue.Empty:
                self._keepalive()

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while not self._closed.is_set():
            item = self._next_item()
            if item is None:
                if self._closed.is_set():
                    return
                log.warning("camera %s: no frame for %.1f s", self.uri, self._cfg.read_timeout_s)
                self._reopen()
                continue
            gen, image = item
            if gen != self._generation:
                continue  # a late frame from a capture we already replaced
            if image is None:
                self._reopen()
                continue
            yield Frame(image, self._clock(), index)
            index += 1

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def suspend(self) -> None:
        """Release the device for another process (edge/camera/lease.py); `resume` opens it
        again. Call it between two frames, from the thread that iterates."""
        self._stop_reader()
        with contextlib.suppress(queue.Empty):
            self._queue.get_nowait()

    def _stop_reader(self) -> None:
        """End the reader after the read under way, then release its capture: a capture is
        not safe to release while another thread reads it. That read ends within a frame
        period on a working camera; a stalled one is released after `read_timeout_s`
        regardless, as `_reopen` does."""
        self._generation += 1
        cap, self._capture = self._capture, None
        reader = self._reader_thread
        if reader is not None and reader is not threading.current_thread():
            reader.join(self._cfg.read_timeout_s)
        if cap is not None:
            with contextlib.suppress(Exception):
                cap.release()

    def resume(self) -> None:
        """Open the device again after `suspend`; one that does not open at once goes through
        the stall recovery (back-off, then SourceError), as a camera that dropped out would."""
        if self._capture is not None or self._closed.is_set():
            return
        try:
            self._capture = self._open_bounded(OPEN_TIMEOUT_S)
        except SourceError as exc:
            log.warning("camera %s did not reopen after it was lent: %s", self.uri, exc)
            self._reopen()
            return
        self._start_reader()

    def close(self) -> None:
        self._closed.set()
        self._stop_reader()


def _nothing() -> None:
    """The keepalive of a source nobody watches."""


class OpenCVCapture:
    """cv2.VideoCapture on a V4L2 index/device, a GStreamer pipeline or a FIFO stream (kind
    "fifo": a y4m stream that a camera helper such as `ffmpeg -f yuv4mpegpipe` writes),
    returning RGB frames."""

    def __init__(self, uri: str, kind: str, target: str, cfg: CameraConfig) -> None:
        import cv2

        self._cv2 = cv2
        if kind == "gst":
            info = cv2.getBuildInformation()
            gst_line = next((ln for ln in info.splitlines() if "GStreamer" in ln), "")
            if "YES" not in gst_line:
                raise SourceError(
                    f"{uri}: this OpenCV build has no GStreamer support; on a Jetson use the "
                    "system OpenCV from JetPack (python3-opencv) in a venv with "
                    "--system-site-packages"
                )
            cap = cv2.VideoCapture(target, cv2.CAP_GSTREAMER)
        elif kind == "fifo":
            if not Path(target).exists():
                raise SourceError(f"{uri}: the FIFO is gone (the camera stream ended)")
            cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG)  # blocks until a writer opens it
        elif kind == "cam":
            cap = cv2.VideoCapture(int(target), cv2.CAP_V4L2)
        else:
            cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            if kind == "fifo":
                raise SourceError(f"{uri}: cannot read a video stream from the FIFO {target} "
                                  "(write y4m into it, e.g. ffmpeg ... -f yuv4mpegpipe)")
            raise SourceError(
                f"{uri}: cannot open the camera (not connected, busy, or no permission: add "
                "the service user to group 'video')"
            )
        if kind in ("cam", "v4l2"):
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
            cap.set(cv2.CAP_PROP_FPS, cfg.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._cap = cap

    def read(self) -> ImageRGB | None:
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        from edge.camera.file import to_rgb

        return to_rgb(bgr)

    def release(self) -> None:
        self._cap.release()


class Picamera2Capture:
    """Raspberry Pi camera through picamera2 (imported only when this source is used)."""

    def __init__(self, uri: str, index: int, cfg: CameraConfig) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError(
                f"{uri}: picamera2 is not installed; on Raspberry Pi OS run "
                "'sudo apt install python3-picamera2' and create the venv with "
                "--system-site-packages (or pip install 'facegate[pi]')"
            ) from None
        try:
            cam = Picamera2(index)
            # "RGB888" in libcamera terms is B,G,R byte order in memory; we convert below.
            config = cam.create_video_configuration(
                main={"size": (cfg.width, cfg.height), "format": "RGB888"},
                controls={"FrameRate": cfg.fps},
            )
            cam.configure(config)
            cam.start()
        except (IndexError, RuntimeError, OSError) as exc:
            raise SourceError(f"{uri}: cannot start the Pi camera ({exc}); check the ribbon cable "
                              "and that no other process uses the camera") from None
        self._cam = cam

    def read(self) -> ImageRGB | None:
        bgr = self._cam.capture_array("main")
        if bgr is None:
            return None
        from edge.camera.file import to_rgb

        # cv2.cvtColor, not a reversed numpy view made contiguous: 0.35 ms vs 14 ms per
        # 1620x1080 frame on one core (the same channels: 2, 1, 0; X of XBGR dropped).
        return to_rgb(bgr)

    def release(self) -> None:
        self._cam.stop()
        self._cam.close()
