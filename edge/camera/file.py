"""Replay of a video file, a single image or a folder of images, at recorded speed or max speed."""

from __future__ import annotations

import stat
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import cv2
import imagesize
import numpy as np

from edge.camera.base import Frame, ImageRGB
from edge.config import CameraConfig
from edge.errors import SourceError

# Bounds on a file source, checked before decoding: 12.6 MP holds the full frame of every
# Raspberry Pi camera (HQ 4056x3040, Module 3 4608x2592) and a file size no such image needs.
# `facegate enroll` peaks at 213 MB resident on a 12 MP photo, 246 MB on 16.8 MP (budget 250).
MAX_IMAGE_PIXELS = 4096 * 3072
MAX_IMAGE_FILE_BYTES = 64 << 20
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"})


def to_rgb(image: np.ndarray) -> ImageRGB:
    """Any decoded OpenCV image (gray, BGR, BGRA, 16-bit) -> (H, W, 3) uint8 RGB."""
    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)
        else:
            image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_GRAY2RGB))
    if image.shape[2] == 4:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGRA2RGB))
    if image.shape[2] == 1:
        return np.ascontiguousarray(cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB))
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))


def check_image_size(path: Path, uri: str) -> None:
    """Refuse an image file over MAX_IMAGE_FILE_BYTES, or whose header declares more than
    MAX_IMAGE_PIXELS, before a byte of pixels is decoded (a 20000x20000 PNG of zeros is 390 KB
    on disk and 1.2 GB decoded)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise SourceError(f"{uri}: cannot read {path} ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        raise SourceError(f"{uri}: cannot read {path} (empty or not a file)")
    if st.st_size > MAX_IMAGE_FILE_BYTES:
        raise SourceError(
            f"{uri}: {path} is {st.st_size / 1e6:.0f} MB, over the {MAX_IMAGE_FILE_BYTES >> 20} "
            "MiB an image source may be; give a camera-sized image"
        )
    try:
        width, height = imagesize.get(path)  # reads the header only
    except (OSError, ValueError) as exc:
        raise SourceError(f"{uri}: cannot read the image header of {path} ({exc})") from None
    if width <= 0 or height <= 0:
        raise SourceError(f"{uri}: {path} is not a decodable image (corrupt or unknown format)")
    _check_pixels(uri, path, width, height)


def _check_pixels(uri: str, path: Path, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise SourceError(
            f"{uri}: {path} is {width}x{height} ({width * height / 1e6:.0f} MP), over the "
            f"{MAX_IMAGE_PIXELS / 1e6:.1f} MP (4096x3072) a source frame may have; scale it down"
        )


def read_image(path: Path, uri: str) -> ImageRGB:
    """Decode one image file as RGB, raising SourceError naming the URI when it cannot be read
    or is larger than the bounds (checked from the file size and header, before decoding)."""
    check_image_size(path, uri)
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    del data
    if image is None or image.size == 0:
        raise SourceError(f"{uri}: {path} is not a decodable image (corrupt or unknown format)")
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: no second full copy
        return typing.cast(ImageRGB, image)
    return to_rgb(image)


class FileSource:
    """Frames from `file:<video|image|dir>`.

    Timestamps follow the recording's timeline (index / fps from the container) from the moment
    of opening, so liveness timing is the same whether replay runs at recorded or maximum speed.
    """

    def __init__(
        self,
        uri: str,
        path: Path,
        cfg: CameraConfig,
        *,
        realtime: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        decode_threads: int = 0,
    ) -> None:
        self.uri = uri
        # 0 = the decoder's default (frame threads that keep decoding ahead in the background);
        # 1 = decode inside each read, so nothing runs between reads (what `bench` needs).
        self._decode_threads = decode_threads
        self.path = path
        self.realtime = cfg.realtime if realtime is None else realtime
        self._default_fps = cfg.fps
        self._clock, self._sleep = clock, sleep
        self._cap: cv2.VideoCapture | None = None
        self._images: list[Path] = []
        self.fps = cfg.fps
        self.frame_count: int | None = None
        if not path.exists():
            raise SourceError(
                f"{uri}: {path} does not exist; give an existing video, image or folder"
            )
        if path.is_dir():
            self._images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._images:
                kinds = ", ".join(sorted(IMAGE_SUFFIXES))
                raise SourceError(f"{uri}: folder {path} holds no images ({kinds})")
            self.frame_count = len(self._images)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            self._images = [path]
            self.frame_count = 1
        else:
            self._open_video()

    def _open_video(self) -> None:
        params = [cv2.CAP_PROP_N_THREADS, self._decode_threads] if self._decode_threads else []
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"{self.uri}: cannot open {self.path} as a video (corrupt or unsupported codec)"
            )
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        try:
            _check_pixels(self.uri, self.path, width, height)  # before the first frame decodes
        except SourceError:
            cap.release()
            raise
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.5 <= fps <= 1000.0 else self._default_fps
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 else None
        self._cap = cap

    def __enter__(self) -> FileSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _pace(self, t0: float, t_media: float) -> float:
        """Sleep until the media time is due when replaying at recorded speed; return the stamp."""
        if self.realtime:
            delay = t0 + t_media - self._clock()
            if delay > 0:
                self._sleep(delay)
        return t0 + t_media

    def __iter__(self) -> Iterator[Frame]:
        t0 = self._clock()
        if self._images:
            for i, p in enumerate(self._images):
                yield Frame(read_image(p, self.uri), self._pace(t0, i / self.fps), i)
            return
        if self._cap is None:
            self._open_video()
        assert self._cap is not None
        index = 0
        while True:
            ok, bgr = self._cap.read()
            if not ok or bgr is None:
                break
            yield Frame(to_rgb(bgr), self._pace(t0, index / self.fps), index)
            index += 1
        if index == 0:
            raise SourceError(f"{self.uri}: {self.path} has no decodable frames")
