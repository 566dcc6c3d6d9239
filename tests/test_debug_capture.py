"""Debug capture is explicit, RAM-only, private and self-deleting."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from edge.config import DebugConfig
from edge.errors import FacegateError
from edge.kiosk.debug_capture import DebugCapture, filesystem_type

SHM = Path("/dev/shm")


@pytest.fixture
def shm_dir(tmp_path: Path) -> Path:
    if filesystem_type(SHM) != "tmpfs":
        pytest.skip("/dev/shm is not a tmpfs on this machine")
    d = SHM / f"facegate-test-{os.getpid()}-{tmp_path.name}"
    yield d
    for p in d.glob("*"):
        p.unlink()
    if d.exists():
        d.rmdir()


def test_capture_refuses_a_directory_on_persistent_storage(tmp_path: Path) -> None:
    assert filesystem_type(tmp_path) not in ("tmpfs", "ramfs") or pytest.skip("tmp is tmpfs")
    with pytest.raises(FacegateError, match="not tmpfs"):
        DebugCapture(DebugConfig(capture_frames=True, capture_dir=str(tmp_path / "cap")))


def test_captures_are_private_jpegs_deleted_after_the_ttl(shm_dir: Path) -> None:
    now = [1_800_000_000.0]
    cap = DebugCapture(
        DebugConfig(capture_frames=True, capture_dir=str(shm_dir), capture_ttl_s=60.0),
        clock=lambda: now[0],
    )
    assert stat.S_IMODE(shm_dir.stat().st_mode) == 0o700
    path = cap.save(np.zeros((48, 64, 3), np.uint8), "reject-no_blink")
    assert path.read_bytes()[:2] == b"\xff\xd8"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.utime(path, (now[0], now[0]))
    now[0] += 61
    assert cap.purge() == 1 and not path.exists()


def test_filesystem_type_uses_the_longest_mount_point(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/vda / ext4 rw 0 0\ntmpfs /run tmpfs rw 0 0\n")
    assert filesystem_type(Path("/run/x"), str(mounts)) == "tmpfs"
    assert filesystem_type(Path("/runner"), str(mounts)) == "ext4"
