"""QR claim tokens read from camera frames: a real QR PNG from `facegate-backend claims issue`,
composited beside a real face photo and degraded like a camera would, read by the kiosk."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from conftest import require_data
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.backend.claim_tokens import qr_image
from edge.kiosk.claims import Claim, ClaimQueue
from edge.kiosk.claims.qr import QrClaimReader
from edge.trust.claim_tokens import UsedTokens, verify_claim_token
from edge.trust.keys import parse_ed25519_public

FACE = "liveness/stills_live/chamindu_live.jpg"
Image = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Issued:
    token: str
    png: Path
    public_hex: str


def _backend(*args: str, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "edge.backend.cli", *args], env=env,
                          capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    root = tmp_path_factory.mktemp("backend")
    env = {**os.environ, "FACEGATE_BACKEND_KEYS": str(root / "keys")}
    public_hex = _backend("keys", "init", env=env)
    png = root / "rider.png"
    token = _backend("claims", "issue", "rider-000042", "--ttl", "600", "--png", str(png), env=env)
    return Issued(token, png, public_hex)


def camera_frame(qr: Image | None, size: tuple[int, int], qr_px: int, seed: int = 0) -> Image:
    """(H, W, 3) uint8 RGB: the face photo with a phone-held QR code beside it, slightly rotated,
    blurred, noisy and JPEG-compressed like a webcam frame."""
    w, h = size
    face = cv2.imread(str(require_data(FACE)))
    frame = cv2.resize(face, (w, h), interpolation=cv2.INTER_AREA)
    if qr is not None:
        tile = cv2.resize(qr, (qr_px, qr_px), interpolation=cv2.INTER_AREA)
        rot = cv2.getRotationMatrix2D((qr_px / 2, qr_px / 2), 7.0, 1.0)
        tile = cv2.warpAffine(tile, rot, (qr_px, qr_px), borderValue=255)
        y, x = (h - qr_px) // 2, w - qr_px - w // 40
        frame[y : y + qr_px, x : x + qr_px] = (tile[..., None] * 0.8 + 30).astype(np.uint8)
    frame = cv2.GaussianBlur(frame, (3, 3), 0.8)
    noise = np.random.default_rng(seed).normal(0, 4, frame.shape)
    frame = np.clip(frame + noise, 0, 255).astype(np.uint8)
    ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return cv2.cvtColor(cv2.imdecode(jpg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _reader(issued: Issued, tmp_path: Path, **kw: object) -> QrClaimReader:
    used = UsedTokens(tmp_path / "used-tokens.sqlite")
    key = parse_ed25519_public(issued.public_hex, "backend key", "")
    return QrClaimReader(key, used, **kw)  # type: ignore[arg-type]


def _png(issued: Issued) -> Image:
    return cv2.imread(str(issued.png), cv2.IMREAD_GRAYSCALE)


@pytest.mark.parametrize(("size", "qr_px"), [((640, 480), 190), ((1280, 720), 300)])
def test_token_shown_to_the_camera_becomes_a_qr_claim(
    issued: Issued, tmp_path: Path, size: tuple[int, int], qr_px: int
) -> None:
    queue = ClaimQueue(timeout_s=20)
    reader = _reader(issued, tmp_path, queue=queue)
    result = reader.scan(camera_frame(_png(issued), size, qr_px), t=1.0)
    assert result is not None and result.refusal is None
    assert result.claim == Claim("rider-000042", None, "", "qr")
    assert queue.take(1.5) == result.claim


def test_frame_without_a_qr_code_gives_nothing(issued: Issued, tmp_path: Path) -> None:
    reader = _reader(issued, tmp_path)
    assert reader.scan(camera_frame(None, (640, 480), 0), t=1.0) is None
    assert reader.scans == 1


def test_used_token_is_refused_even_after_a_restart(issued: Issued, tmp_path: Path) -> None:
    frame = camera_frame(_png(issued), (640, 480), 190)
    first = _reader(issued, tmp_path)
    assert first.scan(frame, t=1.0).claim is not None  # type: ignore[union-attr]
    again = _reader(issued, tmp_path)  # the kiosk restarted: same used-tokens file
    result = again.scan(frame, t=2.0)
    assert result is not None and result.claim is None and result.refusal == "used_token"


def test_code_held_in_view_is_reported_once(issued: Issued, tmp_path: Path) -> None:
    frame = camera_frame(_png(issued), (640, 480), 190)
    reader = _reader(issued, tmp_path, repeat_s=5.0)
    assert reader.scan(frame, t=1.0).claim is not None  # type: ignore[union-attr]
    for t in (1.1, 3.0, 7.0, 11.5):  # still held: each sighting restarts the window
        assert reader.scan(frame, t=t) is None
    result = reader.scan(frame, t=30.0)  # shown again much later: it was used
    assert result is not None and result.refusal == "used_token"


def test_expired_token_is_refused(issued: Issued, tmp_path: Path) -> None:
    reader = _reader(issued, tmp_path, wall_clock=lambda: time.time() + 3600)
    result = reader.scan(camera_frame(_png(issued), (640, 480), 190), t=1.0)
    assert result is not None and result.refusal == "expired_token" and result.claim is None


def test_token_of_another_backend_is_forged(issued: Issued, tmp_path: Path) -> None:
    stranger = Ed25519PrivateKey.generate().public_key()
    reader = QrClaimReader(stranger, UsedTokens(tmp_path / "u.sqlite"))
    result = reader.scan(camera_frame(_png(issued), (640, 480), 190), t=1.0)
    assert result is not None and result.refusal == "forged_token"


def test_qr_code_that_is_not_a_token_is_malformed(issued: Issued, tmp_path: Path) -> None:
    other = qr_image("https://example.com/menu?table=12")
    result = _reader(issued, tmp_path).scan(camera_frame(other, (640, 480), 190), t=1.0)
    assert result is not None and result.refusal == "malformed_token"


def test_only_one_idle_frame_in_n_is_scanned(issued: Issued, tmp_path: Path) -> None:
    frame = camera_frame(None, (640, 480), 0)
    reader = _reader(issued, tmp_path, every_frames=3)
    for i in range(9):
        reader.on_idle_frame(frame, t=float(i))
    assert reader.scans == 3


def test_token_text_is_never_logged(
    issued: Issued, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    frame = camera_frame(_png(issued), (640, 480), 190)
    reader = _reader(issued, tmp_path, repeat_s=0.0)
    reader.scan(frame, t=1.0)
    reader.scan(frame, t=2.0)  # refused as used
    assert caplog.records and issued.token not in caplog.text
    assert issued.token[:40] not in caplog.text


def test_scan_cost_is_bounded(issued: Issued, tmp_path: Path) -> None:
    # Generous bounds for a loaded CI core; the measured figures are in the final report.
    public = parse_ed25519_public(issued.public_hex, "backend key", "")
    assert verify_claim_token(issued.token, public, time.time())
    reader = _reader(issued, tmp_path, repeat_s=0.0, wall_clock=lambda: 0.0)  # no DB writes
    for size, qr_px, bound_ms in (((640, 480), 190, 150), ((1280, 720), 300, 300)):
        for qr in (None, _png(issued)):
            frame = camera_frame(qr, size, qr_px)
            times = []
            for i in range(7):
                t0 = time.perf_counter()
                reader.scan(frame, t=float(i))
                times.append((time.perf_counter() - t0) * 1000)
            assert float(np.median(times)) < bound_ms, (size, qr is not None, times)


def test_frame_of_the_wrong_shape_is_refused(issued: Issued, tmp_path: Path) -> None:
    reader = _reader(issued, tmp_path)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        reader.scan(np.zeros((480, 640), np.uint8), t=0.0)
