"""A queue at the fare gate, replayed through `facegate run` with the fare_gate profile: one
decision per rider, with no empty scene between riders, and a small face further back in the
queue never blocks the rider at the gate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from _cli import cli_env, facegate
from conftest import require_data

pytestmark = pytest.mark.slow
W, H, FPS = 640, 480, 25.0
SUBJECT = "s-rider-1"
WEBCAM = "liveness/videos/blink_webcam_7blinks_30fps.mp4"
RIDERS = [  # (video, first frame, frames): three different people, back to back
    (WEBCAM, 0, 125),  # the enrolled rider (enrolled from frames 150 on: never the same frames)
    ("liveness/videos/liveportrait_d10_30fps.mp4", 0, 125),
    ("liveness/videos/liveportrait_d19_30fps.mp4", 0, 125),
]
BEHIND = "liveness/videos/liveportrait_d12_25fps.mp4"  # someone further back in the queue


def _frames(rel: str, first: int, count: int) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(require_data(rel)))
    cap.set(cv2.CAP_PROP_POS_FRAMES, first)
    for _ in range(count):
        ok, bgr = cap.read()
        if not ok:
            break
        yield bgr
    cap.release()


def _fit(bgr: np.ndarray) -> np.ndarray:
    """Fill a 640x480 camera frame (scale to cover, crop the middle): no bars, which the
    passive model would rightly read as a screen's bezel."""
    h, w = bgr.shape[:2]
    k = max(W / w, H / h)
    big = cv2.resize(bgr, (round(w * k), round(h * k)), interpolation=cv2.INTER_AREA)
    y, x = (big.shape[0] - H) // 2, (big.shape[1] - W) // 2
    return np.ascontiguousarray(big[y : y + H, x : x + W])


def _queue_video(path: Path, with_face_behind: bool) -> Path:
    behind = list(_frames(BEHIND, 0, 200))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    k = 0
    for rel, first, count in RIDERS:
        for bgr in _frames(rel, first, count):
            frame = _fit(bgr)
            if with_face_behind:  # a small face in the corner, behind the rider
                small = cv2.resize(behind[k % len(behind)], (110, 110))
                frame[10:120, 10:120] = small
            writer.write(frame)
            k += 1
    writer.release()
    return path


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory, video_part: Any) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("queue")
    cfg = root / "fare_gate.toml"
    cfg.write_text(
        f'profile = "fare_gate"\n[device]\nid = "gate-queue-1"\nsite = "metro"\n'
        f'[paths]\nstate_dir = "{root / "state"}"\n'
        "[camera]\nrealtime = false\nreopen_attempts = 0\nread_timeout_s = 2.0\n"
        '[session]\nchallenge = "never"\nmax_failures = 100\n[mqtt]\nenabled = false\n'
    )
    env = cli_env(cfg)
    assert facegate(env, "keys", "init").returncode == 0
    r = facegate(env, "enroll", SUBJECT, "--source", f"file:{video_part(WEBCAM, 150)}")
    assert r.returncode == 0, r.stderr
    return {"root": root, "cfg": cfg}


@pytest.mark.parametrize("with_face_behind", [False, True], ids=["queue", "face_behind"])
def test_a_replayed_queue_gets_one_decision_per_rider(
    gate: dict[str, Path], with_face_behind: bool
) -> None:
    video = _queue_video(gate["root"] / f"queue-{with_face_behind}.avi", with_face_behind)
    r = facegate(cli_env(gate["cfg"]), "run", "--source", f"file:{video}", "--claim", SUBJECT,
                 timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    decisions = json.loads(r.stdout.strip().splitlines()[-1])["decisions"]
    assert len(decisions) == len(RIDERS), [(d["decision"], d["reason"]) for d in decisions]
    # The enrolled rider first, then two strangers with the same claim: mismatches, not a
    # stalled gate and not a carried-over accept.
    got = [(d["decision"], d["reason"], d["score"]) for d in decisions]
    assert [d["decision"] for d in decisions] == ["accept", "reject", "reject"], got
    assert all(d["reason"] in (None, "mismatch") for d in decisions), decisions
