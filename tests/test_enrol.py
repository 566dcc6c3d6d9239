"""Enrolment: template building, duplicate refusal, and the live capture on landmark tracks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require_data

from edge.camera.base import Frame
from edge.config import Config
from edge.liveness.eye import LEFT_EYE, RIGHT_EYE
from edge.templates.enroll import (
    EnrolmentCapture,
    EnrolmentRefused,
    build_template,
    check_not_duplicate,
    enrol_template,
)
from edge.templates.store import TemplateStore, db_path
from edge.trust.keys import init_keys
from edge.vision.pipeline import FaceObservation
from edge.vision.quality import Quality
from edge.vision.types import FaceBox, Landmarks

CFG = Config()
FPS = 30.0


def unit(seed: int, dim: int = 128) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray, noise: float, seed: int) -> np.ndarray:
    w = v + noise * np.random.default_rng(seed).standard_normal(v.size).astype(np.float32)
    return (w / np.linalg.norm(w)).astype(np.float32)


# -- build_template ------------------------------------------------------------------------


def test_template_is_the_normalised_mean_of_the_first_n_frames() -> None:
    person = unit(1)
    frames = [near(person, 0.02, s) * (1 + s) for s in range(6)]  # scale must not matter
    tpl = build_template(frames, 5, 0.85)
    expected = np.mean([f / np.linalg.norm(f) for f in frames[:5]], axis=0)
    np.testing.assert_allclose(tpl.embedding, expected / np.linalg.norm(expected), atol=1e-6)
    assert tpl.frames == 5 and 0.85 <= tpl.min_agreement <= 1.0
    assert "embedding" not in repr(tpl)


def test_frames_of_two_different_people_are_refused() -> None:
    a, b = unit(1), unit(2)
    frames = [near(a, 0.02, 1), near(a, 0.02, 2), near(b, 0.02, 3), near(a, 0.02, 4)]
    with pytest.raises(EnrolmentRefused, match="frames disagree.*more than one person"):
        build_template(frames, 4, CFG.templates.enroll_min_agreement)


def test_too_few_good_frames_are_refused() -> None:
    with pytest.raises(EnrolmentRefused, match="only 2 of 5 good frames"):
        build_template([unit(1), unit(1)], 5, 0.85)


# -- duplicate enrolment -------------------------------------------------------------------


@pytest.fixture
def store(state_dir: Path) -> Any:
    with TemplateStore(db_path(state_dir), init_keys(state_dir, "kiosk-1")) as s:
        yield s


def test_face_matching_another_subject_is_refused_naming_that_subject(store: Any) -> None:
    alice = unit(10)
    store.enrol("alice", alice, validity_s=86400)
    store.enrol("bob", unit(11), validity_s=86400)
    again = build_template([near(alice, 0.03, s) for s in range(5)], 5, 0.85)
    with pytest.raises(EnrolmentRefused, match="'carol'.*already matches subject 'alice'"):
        enrol_template(store, "carol", again, CFG)
    assert [i.subject for i in store.list_all()] == ["alice", "bob"]


def test_a_new_face_enrols_and_verifies(store: Any) -> None:
    store.enrol("alice", unit(10), validity_s=86400)
    carol = unit(12)
    tpl = build_template([near(carol, 0.03, s) for s in range(5)], 5, 0.85)
    info = enrol_template(store, "carol", tpl, CFG)
    assert info.version == 1 and info.expires_s - info.created_s == 365 * 86400
    assert float(np.dot(store.reference("carol"), carol)) > CFG.verify.threshold


def test_revoked_subject_does_not_block_the_same_face(store: Any) -> None:
    alice = unit(10)
    store.enrol("alice", alice, validity_s=86400)
    store.revoke("alice")
    tpl = build_template([near(alice, 0.03, s) for s in range(3)], 3, 0.85)
    check_not_duplicate(store, "alice2", tpl, CFG.verify.threshold)  # no exception


# -- live capture on landmark tracks ---------------------------------------------------------
# Landmark sequences are built directly (the eye lids set to a chosen aspect ratio, plus the
# small non-rigid jitter every live face shows); the vision stand-in returns the quality verdict
# and an embedding per frame, since those stages are covered by their own tests.


def mesh(ear: float, rng: np.random.Generator | None, dx: float = 0.0) -> np.ndarray:
    base = np.random.default_rng(0).uniform(100, 220, size=(468, 3)).astype(np.float32)
    for eye, x0 in ((RIGHT_EYE, 120.0), (LEFT_EYE, 170.0)):
        p1, p2, p3, p4, p5, p6 = eye
        h = ear * 30.0
        base[p1, :2] = (x0, 140)
        base[p4, :2] = (x0 + 30, 140)
        base[p2, :2] = (x0 + 10, 140 - h / 2)
        base[p3, :2] = (x0 + 20, 140 - h / 2)
        base[p6, :2] = (x0 + 10, 140 + h / 2)
        base[p5, :2] = (x0 + 20, 140 + h / 2)
    if rng is not None:  # live jitter on the rest of the face; the lids follow `ear` exactly
        rest = np.setdiff1d(np.arange(468), np.array(RIGHT_EYE + LEFT_EYE))
        base[rest, :2] += rng.normal(0, 0.8, size=(rest.size, 2)).astype(np.float32)
    base[:, 0] += dx
    return base


def box(dx: float = 0.0) -> FaceBox:
    return FaceBox(90 + dx, 90, 250 + dx, 250, 0.9, np.zeros((6, 2), np.float32))


def ear_track(n: int, blinks_at: tuple[int, ...]) -> list[float]:
    ears = [0.3] * n
    for b in blinks_at:
        for k, e in enumerate((0.2, 0.08, 0.05, 0.08, 0.2)):
            if b + k < n:
                ears[b + k] = e
    return ears


class Vision:
    """Stand-in for VisionPipeline.quality/embed: verdicts and embeddings chosen per frame."""

    def __init__(self, person: np.ndarray, bad: frozenset[int] = frozenset()) -> None:
        self.person, self.bad = person, bad

    def quality(self, frame: Frame, obs: Any) -> Quality:
        ok = frame.index not in self.bad
        return Quality(ok, () if ok else ("quality:blur",), 60.0, 0.0, 0.0, 100.0, 120.0)

    def embed(self, frame: Frame, landmarks: Any) -> np.ndarray:
        return near(self.person, 0.03, frame.index)


def run_capture(
    observations: list[list[FaceObservation]], vision: Vision, n_frames: int = 5
) -> EnrolmentCapture:
    cap = EnrolmentCapture(CFG, vision, n_frames)
    image = np.zeros((8, 8, 3), np.uint8)
    for i, faces in enumerate(observations):
        if cap.step(Frame(image, i / FPS, i), faces):
            break
    return cap


def live_person(n: int, blinks_at: tuple[int, ...], still: bool = False) -> list[list[Any]]:
    rng = np.random.default_rng(5)
    return [
        [FaceObservation(box(), Landmarks(mesh(e, None if still else rng), 0.99))]
        for e in ear_track(n, blinks_at)
    ]


def test_live_person_who_blinks_gives_n_spaced_good_frames() -> None:
    cap = run_capture(live_person(90, (40,)), Vision(unit(3)))
    emb = cap.finish()
    assert len(emb) == 5 and cap.report.blinks == 1
    assert cap.report.frames < 90  # stopped as soon as it had everything
    tpl = build_template(emb, 5, CFG.templates.enroll_min_agreement)
    assert float(np.dot(tpl.embedding, unit(3))) > 0.99


def test_still_photo_is_refused_as_static() -> None:
    cap = run_capture(live_person(120, (), still=True), Vision(unit(3)))
    with pytest.raises(EnrolmentRefused, match="static presentation"):
        cap.finish()


def test_moving_face_that_never_blinks_is_refused_for_liveness() -> None:
    cap = run_capture(live_person(60, ()), Vision(unit(3)))
    with pytest.raises(EnrolmentRefused, match="0 of 1 natural blinks"):
        cap.finish()


def test_second_face_in_view_is_refused() -> None:
    obs = live_person(90, (40,))
    obs[20] = [*obs[20], FaceObservation(box(dx=300), obs[20][0].landmarks)]
    cap = run_capture(obs, Vision(unit(3)))
    with pytest.raises(EnrolmentRefused, match="more than one face"):
        cap.finish()


def test_frames_failing_quality_are_not_used_and_the_reason_is_reported() -> None:
    cap = run_capture(live_person(90, (40,)), Vision(unit(3), bad=frozenset(range(90))))
    with pytest.raises(EnrolmentRefused, match=r"only 0 of 5 good frames.*quality:blur"):
        cap.finish()
    assert cap.report.quality_rejects["quality:blur"] > 0


def test_no_face_at_all_is_refused() -> None:
    cap = run_capture([[] for _ in range(30)], Vision(unit(3)))
    with pytest.raises(EnrolmentRefused, match="no face seen"):
        cap.finish()


# -- the real pipeline on recorded video (research data; needs the embedder model) ------------


def _facegate(env: dict[str, str], *args: str) -> Any:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.fixture(scope="module")
def enrolled(
    tmp_path_factory: pytest.TempPathFactory, portrait_enrol: Path
) -> tuple[dict[str, str], Any]:
    """A device with `alice` enrolled through `facegate enroll` from the second half of a live
    blinking video; every later command sees only the first half (`portrait_verify`)."""
    import json
    import os

    state = tmp_path_factory.mktemp("state")
    env = {**os.environ, "FACEGATE_STATE_DIR": str(state)}
    for var in ("FACEGATE_CONFIG", "CREDENTIALS_DIRECTORY"):
        env.pop(var, None)
    assert _facegate(env, "keys", "init").returncode == 0
    r = _facegate(env, "enroll", "alice", "--source", f"file:{portrait_enrol}", "--frames", "5")
    assert r.returncode == 0, r.stderr
    return env, json.loads(r.stdout.strip().splitlines()[-1])


def test_enrol_from_a_live_blinking_video_stores_one_encrypted_template(
    enrolled: tuple[dict[str, str], Any],
) -> None:
    env, out = enrolled
    assert (out["subject"], out["version"], out["state"]) == ("alice", 1, "active")
    assert out["frames"] == 5 and out["capture"]["blinks"] >= 1
    assert out["min_agreement"] >= CFG.templates.enroll_min_agreement
    assert "embedding" not in out


def test_same_face_under_another_subject_is_refused_naming_the_first(
    enrolled: tuple[dict[str, str], Any], portrait_verify: Path
) -> None:
    env, _ = enrolled
    # Other frames of the same man (not those alice was enrolled from): still a duplicate.
    r = _facegate(env, "enroll", "bob", "--source", f"file:{portrait_verify}", "--frames", "5")
    assert r.returncode == 1
    assert "already matches subject 'alice'" in r.stderr
    listed = _facegate(env, "templates", "list").stdout
    assert '"bob"' not in listed


@pytest.mark.parametrize(
    "relpath, reason",
    [
        ("liveness/stills/facerec_biden.jpg", "liveness not shown"),
        ("liveness/videos/live_open_dim_30fps.mp4", "liveness not shown"),
        ("liveness/videos/replay_phone_handheld_30fps.mp4", "liveness not shown"),
    ],
)
def test_presentations_without_liveness_are_not_enrolled(
    enrolled: tuple[dict[str, str], Any], relpath: str, reason: str
) -> None:
    env, _ = enrolled
    r = _facegate(env, "enroll", "mallory", "--source", f"file:{require_data(relpath)}")
    assert r.returncode == 1 and reason in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2  # the prompt line and one error line


def test_verify_reads_the_encrypted_store_and_refuses_after_revocation(
    enrolled: tuple[dict[str, str], Any], tmp_path: Path, portrait_verify: Path
) -> None:
    import shutil

    env, _ = enrolled
    state = tmp_path / "state"  # a copy, so the revocation does not leak into other tests
    shutil.copytree(env["FACEGATE_STATE_DIR"], state)
    env = {**env, "FACEGATE_STATE_DIR": str(state)}
    video = f"file:{portrait_verify}"
    r = _facegate(env, "verify", "alice", "--source", video, "--seed", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert '"decision": "accept"' in r.stdout
    assert _facegate(env, "templates", "revoke", "alice").returncode == 0
    r = _facegate(env, "verify", "alice", "--source", video, "--seed", "1")
    assert r.returncode == 2
    assert "template error: subject 'alice': template version 1 is revoked" in r.stderr
