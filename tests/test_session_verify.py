"""`facegate verify` end to end: real video, real models, real lockout database, subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PORTRAIT, PORTRAIT_SPLIT, require_data

from edge.camera import open_source
from edge.config import Config
from edge.session.lockout import LockoutStore
from edge.vision.pipeline import VisionPipeline

pytestmark = pytest.mark.slow
# Sessions run on the first half of the portrait video (`portrait_verify`, blinks at 0.4, 1.7,
# 3.4 ... s); alice's reference comes from frame 300 of the original, in the other half.
PORTRAIT_REFERENCE_FRAME = 300
OTHER = "liveness/videos/blink_webcam_7blinks_30fps.mp4"


def reference_from(video: Path, frame_index: int) -> np.ndarray:
    """An embedding of the person in `video` at `frame_index`."""
    pipeline = VisionPipeline.from_config(Config(), with_embedder=True)
    with open_source(f"file:{video}", realtime=False) as src:
        for frame in src:
            if frame.index == frame_index:
                face = pipeline.observe(frame.image)[0]
                assert face.landmarks is not None
                return pipeline.embed(frame.image, face.landmarks)
    raise AssertionError("frame not found")


@pytest.fixture(scope="module")
def alice() -> np.ndarray:
    """The portrait man's reference, from a frame the verification video does not contain."""
    assert PORTRAIT_REFERENCE_FRAME >= PORTRAIT_SPLIT
    return reference_from(require_data(PORTRAIT), PORTRAIT_REFERENCE_FRAME)


@pytest.fixture
def kiosk(state_dir: Path, tmp_path: Path) -> Path:
    cfg = tmp_path / "kiosk.toml"
    cfg.write_text("[camera]\nrealtime = false\n")
    return cfg


def enrol(state_dir: Path, subject: str, emb: np.ndarray) -> None:
    """Enrol through the real encrypted template store (device keys created first)."""
    from edge.templates.store import open_store

    if not (state_dir / "keys").exists():
        keys = subprocess.run(
            [sys.executable, "-m", "edge", "keys", "init"], capture_output=True, text=True,
            timeout=120,
        )
        assert keys.returncode == 0, keys.stderr
    with open_store(state_dir, Config().device.id) as store:
        store.enrol(subject, emb, validity_s=3600)


def verify(
    config: Path, subject: str, source: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", "verify", subject, "--source", f"file:{source}",
         "--config", str(config), "--json", *extra],
        capture_output=True, text=True, timeout=300,
    )


def test_the_enrolled_person_blinking_on_request_is_accepted(
    kiosk: Path, state_dir: Path, alice: np.ndarray, portrait_verify: Path
) -> None:
    enrol(state_dir, "alice", alice)
    proc = verify(kiosk, "alice", portrait_verify, "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["decision"] == "accept" and d["liveness"]["blinks"] == 1
    assert d["score"] >= Config().verify.threshold
    assert d["latency_ms"] is not None
    assert "prompt: blink now" in proc.stderr


def test_another_person_is_rejected_as_a_mismatch(
    kiosk: Path, state_dir: Path, portrait_verify: Path
) -> None:
    enrol(state_dir, "alice", reference_from(require_data(OTHER), 20))
    proc = verify(kiosk, "alice", portrait_verify, "--seed", "1")
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["reason"] == "mismatch"


def test_a_locked_claim_is_refused_before_the_camera_is_used(
    kiosk: Path, state_dir: Path, alice: np.ndarray, portrait_verify: Path
) -> None:
    enrol(state_dir, "alice", alice)
    with LockoutStore.open(state_dir, Config().session) as store:
        for _ in range(5):
            store.record_failure("alice")
    proc = verify(kiosk, "alice", portrait_verify)
    assert proc.returncode == 1
    d = json.loads(proc.stdout)
    assert d["reason"] == "locked_out" and 0 < d["lockout_s"] <= 30
    assert d["timing_ms"]["total"] == 0.0


def test_unknown_subject_is_a_usage_error_naming_the_fix(
    kiosk: Path, state_dir: Path, alice: np.ndarray, portrait_verify: Path
) -> None:
    enrol(state_dir, "alice", alice)
    proc = verify(kiosk, "nobody", portrait_verify)
    assert proc.returncode == 2
    assert "'nobody'" in proc.stderr and "facegate enroll" in proc.stderr


def test_a_subject_that_is_not_a_safe_name_is_refused(
    kiosk: Path, state_dir: Path, alice: np.ndarray, portrait_verify: Path
) -> None:
    enrol(state_dir, "alice", alice)
    proc = verify(kiosk, "../etc", portrait_verify)
    assert proc.returncode == 2
    assert "not a valid subject id" in proc.stderr
