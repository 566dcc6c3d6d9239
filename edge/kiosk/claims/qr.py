"""QR claim tokens read from the kiosk's own camera frames (OpenCV's QR detector and decoder).

Cost is bounded per frame: only one idle frame in `every_frames` is scanned, frames larger than
`max_side_px` on the long side are downscaled first, and OpenCV's ArUco-based QR detector is used
because it rejects a frame without a QR code several times faster than `cv2.QRCodeDetector`'s
classic finder-pattern search (about 2.5 ms against 19 ms on a 640x480 face frame, one x86
core), which matters because nearly every scanned frame holds no code. Decoding is OpenCV's.

The token text is never logged: it is a bearer credential until it expires.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.kiosk.claims.base import Claim
from edge.kiosk.claims.queue import ClaimQueue
from edge.trust.claim_tokens import ClaimTokenError, UsedTokens, verify_claim_token

log = logging.getLogger(__name__)
MAX_SIDE_PX = 960
REPEAT_S = 5.0  # the same code held in view is reported once, not on every scanned frame
_RECENT_MAX = 16
# ClaimTokenError reasons -> refusal reasons the kiosk shows.
REFUSALS = {
    "malformed": "malformed_token",
    "forged": "forged_token",
    "expired": "expired_token",
    "too_far_in_future": "future_token",
    "used": "used_token",
}
GUARD_ERROR = "replay_guard_error"  # the used-token file failed: refused, never accepted


@dataclass(frozen=True)
class QrResult:
    """One decoded QR code: a claim (method "qr") or a refusal reason; `scan_ms` of the scan."""

    claim: Claim | None
    refusal: str | None
    scan_ms: float


class QrClaimReader:
    """Finds and checks claim tokens in camera frames; accepted claims also go to `queue`."""

    def __init__(
        self,
        backend_public_key: Ed25519PublicKey,
        used: UsedTokens,
        *,
        every_frames: int = 3,
        queue: ClaimQueue | None = None,
        wall_clock: Callable[[], float] = time.time,
        max_side_px: int = MAX_SIDE_PX,
        repeat_s: float = REPEAT_S,
    ) -> None:
        if every_frames < 1 or max_side_px < 64:
            raise ValueError("every_frames must be >= 1 and max_side_px >= 64")
        self._key = backend_public_key
        self._used = used
        self._queue = queue
        self._wall = wall_clock
        self.every_frames = every_frames
        self.max_side_px = max_side_px
        self.repeat_s = repeat_s
        self._detector = cv2.QRCodeDetectorAruco()
        self._idle_frames = 0
        self._recent: OrderedDict[bytes, float] = OrderedDict()  # sha256(text) -> last seen, s
        self.scans = 0
        self.last_scan_ms = 0.0
        self.errors = 0  # OpenCV failures (frame skipped)

    def on_idle_frame(self, image: npt.NDArray[np.uint8], t: float) -> QrResult | None:
        """Scan one idle frame in `every_frames`; `image` (H, W, 3) uint8 RGB, `t` monotonic s."""
        self._idle_frames += 1
        if (self._idle_frames - 1) % self.every_frames:
            return None
        return self.scan(image, t)

    def scan(self, image: npt.NDArray[np.uint8], t: float) -> QrResult | None:
        """Look for a QR code now; None if there is none (or it is the code just reported)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError("image must be (H, W, 3) uint8 RGB")
        t0 = time.perf_counter()
        text = self._decode(image)
        self.scans += 1
        if not text:
            self.last_scan_ms = (time.perf_counter() - t0) * 1000.0
            return None
        if self._repeated(text, t):
            self.last_scan_ms = (time.perf_counter() - t0) * 1000.0
            return None
        claim, refusal = self._check(text, t)
        self.last_scan_ms = (time.perf_counter() - t0) * 1000.0
        return QrResult(claim, refusal, self.last_scan_ms)

    def _decode(self, image: npt.NDArray[np.uint8]) -> str:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        h, w = gray.shape
        if max(h, w) > self.max_side_px:
            scale = self.max_side_px / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        try:
            found, points = self._detector.detect(gray)
            if not found or points is None:
                return ""
            # Decoding a crop around the found code is about twice as fast as the whole frame.
            corners = np.asarray(points, dtype=np.float32).reshape(-1, 2)
            lo, hi = corners.min(axis=0), corners.max(axis=0)
            margin = 0.1 * float((hi - lo).max()) + 8.0
            x0, y0 = (np.maximum(lo - margin, 0)).astype(int)
            x1, y1 = (hi + margin).astype(int) + 1
            crop = np.ascontiguousarray(gray[y0:y1, x0:x1])
            local = (corners - np.array([x0, y0], np.float32)).reshape(1, -1, 2)
            text, _ = self._detector.decode(crop, local)
        except cv2.error:
            self.errors += 1
            log.warning("QR scan failed in OpenCV; frame skipped")
            return ""
        return text if isinstance(text, str) else ""

    def _repeated(self, text: str, t: float) -> bool:
        digest = hashlib.sha256(text.encode("utf-8", "replace")).digest()
        last = self._recent.pop(digest, None)
        self._recent[digest] = t  # held in view: the window restarts with every sighting
        while len(self._recent) > _RECENT_MAX:
            self._recent.popitem(last=False)
        return last is not None and t - last < self.repeat_s

    def _check(self, text: str, t: float) -> tuple[Claim | None, str | None]:
        now = self._wall()
        try:
            token = verify_claim_token(text, self._key, now)
            self._used.use(token, now)
        except ClaimTokenError as exc:
            log.info("QR claim token refused: %s", exc.reason)
            return None, REFUSALS[exc.reason]
        except sqlite3.Error as exc:
            log.error("QR claim refused: used-token file failed (%s)", type(exc).__name__)
            return None, GUARD_ERROR
        claim = Claim(token.subject, None, "", "qr")
        if self._queue is not None:
            self._queue.offer(claim, t)
        log.info("QR claim accepted")
        return claim, None
