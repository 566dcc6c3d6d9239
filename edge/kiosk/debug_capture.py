"""Explicit, temporary debug capture of decision frames: tmpfs only, private, auto-deleted.

Off unless `[debug] capture_frames = true`. A field technician turns it on to see why a kiosk
rejects people; the frames never touch persistent storage (the directory must be on tmpfs or
ramfs, so they vanish at power-off) and each is deleted after `capture_ttl_s`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from edge.config import DebugConfig
from edge.errors import FacegateError

RAM_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def filesystem_type(path: Path, mounts: str = "/proc/mounts") -> str:
    """Type of the filesystem holding `path` (longest matching mount point)."""
    target = os.path.realpath(path)
    best, kind = "", "unknown"
    with open(mounts, encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1].replace("\\040", " ")
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, kind = mount, parts[2]
    return kind


class DebugCapture:
    """Writes JPEGs of decision frames to a RAM directory and deletes them after the TTL."""

    def __init__(self, cfg: DebugConfig, clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.clock = cfg, clock
        self.dir = Path(cfg.capture_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        kind = filesystem_type(self.dir)
        if kind not in RAM_FILESYSTEMS:
            raise FacegateError(
                f"debug.capture_dir = {str(self.dir)!r} is on {kind}, not tmpfs: face images "
                "must never reach persistent storage; use a directory under /dev/shm"
            )
        self.purge()

    def purge(self) -> int:
        """Delete captures older than the TTL; returns how many were deleted."""
        cutoff = self.clock() - self.cfg.capture_ttl_s
        removed = 0
        for p in self.dir.glob("*.jpg"):
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def save(self, image: NDArray[np.uint8], label: str) -> Path:
        """Store one (H, W, 3) uint8 RGB frame as JPEG, mode 0600; older captures are purged."""
        self.purge()
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:40]
        path = self.dir / f"{int(self.clock() * 1000)}-{safe}.jpg"
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise FacegateError("debug capture: JPEG encoding failed")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.tobytes())
        return path
