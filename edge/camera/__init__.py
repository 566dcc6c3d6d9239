"""Camera sources selected by URI; every source is a context manager yielding `Frame`s."""

from __future__ import annotations

from pathlib import Path

from edge.camera.base import Frame, ImageRGB, Source
from edge.camera.file import FileSource, read_image, to_rgb
from edge.camera.live import LiveSource, OpenCVCapture, Picamera2Capture
from edge.camera.uri import SourceSpec, parse_source_uri
from edge.config import CameraConfig

__all__ = [
    "FileSource",
    "Frame",
    "ImageRGB",
    "LiveSource",
    "Source",
    "SourceSpec",
    "open_source",
    "parse_source_uri",
    "read_image",
    "to_rgb",
]


def open_source(
    uri: str,
    cfg: CameraConfig | None = None,
    *,
    realtime: bool | None = None,
    decode_threads: int = 0,
) -> FileSource | LiveSource:
    """Open the source named by `uri`; SourceError (exit 2) names the URI when it cannot be opened.

    `file:` naming a FIFO is read as a live camera stream (y4m), with the stall watchdog.

    `realtime` overrides `camera.realtime` for file replay (False = as fast as possible);
    `decode_threads` sets a video file's decoder threads (0 = the decoder's default).
    """
    cfg = cfg or CameraConfig()
    spec = parse_source_uri(uri)
    if spec.kind == "file" and Path(spec.target).expanduser().is_fifo():
        # A FIFO is a live stream from a camera helper: an end of stream or a stall is a camera
        # stall (reopen with back-off, then give up), not the end of a replay.
        fifo = str(Path(spec.target).expanduser())
        return LiveSource(uri, lambda: OpenCVCapture(uri, "fifo", fifo, cfg), cfg)
    if spec.kind == "file":
        return FileSource(
            uri,
            Path(spec.target).expanduser(),
            cfg,
            realtime=realtime,
            decode_threads=decode_threads,
        )
    if spec.kind == "picamera2":
        return LiveSource(uri, lambda: Picamera2Capture(uri, spec.index, cfg), cfg)
    return LiveSource(uri, lambda: OpenCVCapture(uri, spec.kind, spec.target, cfg), cfg)
