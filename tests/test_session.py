"""The verification session state machine, driven by synthetic faces and an injected clock.

The faces are generated here (boxes, 468 landmarks with controllable eye opening and a little
live non-rigid motion); the vision stand-in answers quality and embeddings per frame, so every
path of the state machine runs deterministically without models.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
from test_liveness import OPEN_EAR, blink_profile, face_points

from edge.camera.base import Frame
from edge.config import Config
from edge.session.decision import Decision, challenge_required
from edge.session.lockout import LockoutStore
from edge.session.verification import State, VerificationSession

FPS = 30.0
PIXEL = np.zeros((1, 1, 3), dtype=np.uint8)
CFG = Config()
ALICE = np.eye(128, dtype=np.float32)[0]
BOB = np.eye(128, dtype=np.float32)[1]


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 0.9

    @property
    def size_px(self) -> float:
        return max(self.x2 - self.x1, self.y2 - self.y1)


@dataclass(frozen=True)
class Marks:
    points: np.ndarray
    score: float = 1.0


@dataclass(frozen=True)
class Obs:
    box: Box
    landmarks: Marks | None


@dataclass(frozen=True)
class Q:
    ok: bool
    reasons: tuple[str, ...] = ()


@dataclass
class FakeVision:
    """Quality and identity per frame index; records which frames were embedded."""

    identity: Callable[[int], np.ndarray | None] = lambda i: ALICE
    bad_quality: Callable[[int], str | None] = lambda i: None
    passive: Callable[[int], float | None] = lambda i: 0.99  # a real face's PAD score
    embedded: list[int] = field(default_factory=list)
    pad_scored: list[int] = field(default_factory=list)

    def quality(self, frame: Frame, obs: object) -> Q:
        why = self.bad_quality(frame.index)
        return Q(False, (why,)) if why else Q(True)

    def embed(self, frame: Frame, landmarks: object) -> np.ndarray | None:
        self.embedded.append(frame.index)
        return self.identity(frame.index)

    def pad_score(self, frame: Frame, obs: object) -> float | None:
        self.pad_scored.append(frame.index)
        return self.passive(frame.index)


def live_face(
    t: float, ear: float, box: Box = Box(100, 100, 300, 300), frozen: bool = False
) -> Obs:
    """A face whose eyes have the given EAR; unless `frozen`, the mouth moves a little."""
    pts = face_points(ear, ear).copy()
    if not frozen:
        pts[:60, 1] += 4.0 * math.sin(2 * math.pi * t)  # talking / breathing: non-rigid
    pts[:, 0] += box.x1 - 100
    pts[:, 1] += box.y1 - 100
    return Obs(box, Marks(pts))


def scene(
    seconds: float,
    *,
    blinks: tuple[float, ...] = (),
    faces: Callable[[float, float], list[Obs]] | None = None,
) -> list[tuple[Frame, list[Obs]]]:
    """Frames at FPS: one live face blinking at the given times (s)."""
    out = []
    for k in range(int(seconds * FPS)):
        t = k / FPS
        ear = min([blink_profile(t, b) for b in blinks] or [OPEN_EAR])
        obs = faces(t, ear) if faces else [live_face(t, ear)]
        out.append((Frame(PIXEL, t, k), obs))
    return out


class Perf:
    """Injected performance clock: advances 2 ms per call."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.002
        return self.t


def run(
    frames: list[tuple[Frame, list[Obs]]],
    *,
    cfg: Config = CFG,
    vision: FakeVision | None = None,
    references: list[np.ndarray] | None = None,
    prompt_t: float | None = None,
    seed: int = 7,
    amount: float | None = None,
    lockout: LockoutStore | None = None,
    claim: str = "alice",
) -> Decision:
    session = VerificationSession(
        cfg,
        vision or FakeVision(),
        lockout=lockout,
        rng=random.Random(seed),
        perf_clock=Perf(),
        prompt_at=(lambda t: max(t, prompt_t)) if prompt_t is not None else None,
    )
    early = session.claim(claim, references, 0.0, amount=amount)
    if early is not None:
        return early
    for frame, obs in frames:
        d = session.step(frame, obs)
        if d is not None:
            assert session.state == State.DONE
            return d
    return session.end_of_stream(frames[-1][0].t_monotonic + 1 / FPS)


# -- the happy path ------------------------------------------------------------------------


def test_a_blink_after_the_prompt_by_the_claimed_person_is_accepted() -> None:
    d = run(scene(4.0, blinks=(1.6,)), references=[ALICE], prompt_t=1.2)
    assert d.accepted and d.decision == "accept" and d.reason is None
    assert d.blinks == 1
    assert d.score == pytest.approx(1.0)
    # challenge_ms: prompt (1.2 s) to the end of the blink (~1.6 + 0.2 s).
    assert d.challenge_ms is not None and 500 < d.challenge_ms < 800
    assert set(d.timing_ms) >= {"acquire", "challenge", "verify", "total"}


def test_decision_latency_is_measured_from_the_frame_that_ended_the_blink() -> None:
    d = run(scene(4.0, blinks=(1.6,)), references=[ALICE], prompt_t=1.2)
    # Injected perf clock ticks 2 ms per reading: the frame's arrival and the decision.
    assert d.latency_ms == pytest.approx(2.0)


def test_the_decision_has_every_field_an_event_needs_and_no_biometrics() -> None:
    d = run(scene(4.0, blinks=(1.6,)), references=[ALICE], prompt_t=1.2).to_dict()
    assert {"subject", "decision", "score", "reason", "liveness", "timing_ms"} <= set(d)
    assert set(d["liveness"]) >= {"blinks", "challenge_ms"}
    assert "embedding" not in str(d) and "landmarks" not in str(d)


def test_the_prompt_is_shown_only_after_its_random_moment() -> None:
    session = VerificationSession(CFG, FakeVision(), rng=random.Random(3), perf_clock=Perf())
    session.claim("alice", [ALICE], 0.0)
    shown = []
    for frame, obs in scene(2.5):
        session.step(frame, obs)
        shown.append((frame.t_monotonic, session.prompt))
    first = next(t for t, p in shown if p == "blink now")
    lo, hi = CFG.liveness.prompt_delay_min_s, CFG.liveness.prompt_delay_max_s
    assert lo <= first <= hi + 1 / FPS


# -- liveness failures ---------------------------------------------------------------------


def test_a_blink_before_the_prompt_does_not_count() -> None:
    d = run(scene(6.0, blinks=(0.9,)), references=[ALICE], prompt_t=1.2)
    assert (d.accepted, d.reason, d.blinks) == (False, "no_blink", 0)


def test_no_blink_in_the_response_window_is_rejected_when_the_window_ends() -> None:
    d = run(scene(8.0), references=[ALICE], prompt_t=1.0)
    assert d.reason == "no_blink"
    # Decided when the window closed, not at the end of the stream.
    window_end_ms = (1.0 + CFG.liveness.response_window_s) * 1000
    assert d.timing_ms["total"] == pytest.approx(window_end_ms, abs=50)


def test_a_blink_after_the_window_is_too_late() -> None:
    late = 1.0 + CFG.liveness.response_window_s + 0.3
    d = run(scene(8.0, blinks=(late,)), references=[ALICE], prompt_t=1.0)
    assert d.reason == "no_blink"


def test_frozen_landmarks_are_rejected_as_static() -> None:
    frames = scene(6.0, faces=lambda t, ear: [live_face(t, ear, frozen=True)])
    d = run(frames, references=[ALICE], prompt_t=1.0)
    assert d.reason == "static"


def test_two_blinks_are_needed_when_configured() -> None:
    cfg = replace(CFG, liveness=replace(CFG.liveness, blinks_required=2))
    one = run(scene(6.0, blinks=(1.5,)), cfg=cfg, references=[ALICE], prompt_t=1.0)
    two = run(scene(6.0, blinks=(1.5, 2.3)), cfg=cfg, references=[ALICE], prompt_t=1.0)
    assert (one.reason, one.blinks) == ("no_blink", 1)
    assert (two.accepted, two.blinks) == (True, 2)


# -- acquisition failures ------------------------------------------------------------------


def test_nobody_in_view_is_no_face_after_the_acquire_timeout() -> None:
    frames = scene(10.0, faces=lambda t, ear: [])
    d = run(frames, references=[ALICE])
    assert d.reason == "no_face"
    assert d.timing_ms["total"] == pytest.approx(CFG.session.acquire_timeout_s * 1000, abs=50)


def test_a_face_that_never_passes_quality_names_the_gate() -> None:
    vision = FakeVision(bad_quality=lambda i: "quality:blur")
    d = run(scene(10.0), vision=vision, references=[ALICE])
    assert d.reason == "quality:blur"


def test_acquisition_waits_for_a_good_frame() -> None:
    vision = FakeVision(bad_quality=lambda i: "quality:dark" if i < 20 else None)
    d = run(scene(5.0, blinks=(2.5,)), vision=vision, references=[ALICE], prompt_t=2.0)
    assert d.accepted
    assert d.timing_ms["acquire"] == pytest.approx(20 / FPS * 1000, abs=1)


# -- continuity ----------------------------------------------------------------------------


def test_a_face_swapped_before_the_blink_fails_closed() -> None:
    # Same place, same size: only the embedding tells the people apart.
    vision = FakeVision(identity=lambda i: ALICE if i < 40 else BOB)
    d = run(scene(4.0, blinks=(1.6,)), vision=vision, references=[ALICE, BOB], prompt_t=1.2)
    assert d.reason == "face_changed"


def test_a_face_jumping_across_the_frame_fails_closed() -> None:
    def faces(t: float, ear: float) -> list[Obs]:
        box = Box(100, 100, 300, 300) if t < 1.3 else Box(400, 120, 600, 320)
        return [live_face(t, ear, box)]

    d = run(scene(4.0, blinks=(1.6,), faces=faces), references=[ALICE], prompt_t=1.2)
    assert d.reason == "face_changed"


def test_a_second_face_entering_fails_closed() -> None:
    def faces(t: float, ear: float) -> list[Obs]:
        main = live_face(t, ear)
        return [main] if t < 1.0 else [main, live_face(t, OPEN_EAR, Box(400, 100, 560, 260))]

    d = run(scene(4.0, blinks=(1.6,), faces=faces), references=[ALICE], prompt_t=1.2)
    assert d.reason == "face_changed"


def test_losing_the_face_for_longer_than_a_blink_fails_closed() -> None:
    def faces(t: float, ear: float) -> list[Obs]:
        return [] if 1.3 < t < 1.8 else [live_face(t, ear)]

    d = run(scene(4.0, blinks=(2.2,), faces=faces), references=[ALICE], prompt_t=1.2)
    assert d.reason == "face_changed"


# -- identity ------------------------------------------------------------------------------


def test_a_live_stranger_is_a_mismatch_with_a_score() -> None:
    vision = FakeVision(identity=lambda i: BOB)
    d = run(scene(4.0, blinks=(1.6,)), vision=vision, references=[ALICE], prompt_t=1.2)
    assert d.reason == "mismatch"
    assert d.score == pytest.approx(0.0)


def test_payments_use_the_stricter_threshold() -> None:
    # Cosine 0.91: above verify.threshold (0.90), below payment_threshold (0.93).
    probe = np.zeros(128, dtype=np.float32)
    probe[0], probe[1] = 0.91, math.sqrt(1 - 0.91**2)
    vision = FakeVision(identity=lambda i: probe)
    frames = scene(4.0, blinks=(1.6,))
    plain = run(frames, vision=vision, references=[ALICE], prompt_t=1.2)
    paying = run(frames, vision=vision, references=[ALICE], prompt_t=1.2, amount=500.0)
    assert plain.accepted and plain.score == pytest.approx(0.91, abs=1e-4)
    assert paying.reason == "mismatch"


def test_liveness_only_session_accepts_without_references() -> None:
    vision = FakeVision(identity=lambda i: None)
    d = run(scene(4.0, blinks=(1.6,)), vision=vision, references=None, prompt_t=1.2)
    assert d.accepted and d.score is None


# -- step-up policy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "amount", "required"),
    [
        ("always", None, True),
        ("always", 1.0, True),
        ("never", 1e6, False),
        ("above_amount", 99.0, False),
        ("above_amount", 100.0, False),
        ("above_amount", 100.5, True),
        ("above_amount", None, True),
    ],
)
def test_step_up_policy(policy: str, amount: float | None, required: bool) -> None:
    assert challenge_required(policy, 100.0, amount) is required


def test_small_payment_without_step_up_is_decided_without_a_blink() -> None:
    cfg = replace(CFG, session=replace(CFG.session, challenge="above_amount", stepup_amount=50.0))
    vision = FakeVision()
    d = run(scene(3.0), cfg=cfg, vision=vision, references=[ALICE], amount=20.0)
    assert d.accepted and not d.challenge_required and d.blinks == 0
    assert len(vision.embedded) == 1 + CFG.verify.frames  # acquisition + verify frames


def test_large_payment_requires_the_blink() -> None:
    cfg = replace(CFG, session=replace(CFG.session, challenge="above_amount", stepup_amount=50.0))
    d = run(scene(8.0), cfg=cfg, references=[ALICE], amount=80.0, prompt_t=1.0)
    assert d.challenge_required and d.reason == "no_blink"


# -- lockout -------------------------------------------------------------------------------


def test_five_failures_lock_the_claim_and_a_locked_claim_is_refused_at_once(
    state_dir: Path,
) -> None:
    clock = [1000.0]
    with LockoutStore.open(state_dir, CFG.session, lambda: clock[0]) as store:
        stranger = FakeVision(identity=lambda i: BOB)
        frames = scene(4.0, blinks=(1.6,))
        outcomes = [
            run(frames, vision=stranger, references=[ALICE], prompt_t=1.2, lockout=store)
            for _ in range(5)
        ]
        assert [d.reason for d in outcomes] == ["mismatch"] * 5
        assert outcomes[-1].lockout_s == 30.0
        # Even the right person is refused while the lock lasts, without a camera session.
        d = run(frames, references=[ALICE], prompt_t=1.2, lockout=store)
        assert (d.reason, d.lockout_s) == ("locked_out", 30.0)
        clock[0] += 31.0
        assert run(frames, references=[ALICE], prompt_t=1.2, lockout=store).accepted
        assert store.failures("alice") == 0


def test_nobody_showing_up_is_not_a_failed_attempt(state_dir: Path) -> None:
    with LockoutStore.open(state_dir, CFG.session) as store:
        for _ in range(6):
            run(scene(9.0, faces=lambda t, ear: []), references=[ALICE], lockout=store)
        assert store.failures("alice") == 0


# -- claim timeout -------------------------------------------------------------------------


def test_claim_entry_times_out() -> None:
    session = VerificationSession(CFG, FakeVision(), rng=random.Random(0))
    session.wait_for_claim(100.0)
    assert session.state == State.CLAIM
    assert session.tick(100.0 + CFG.session.claim_timeout_s - 1) is None
    d = session.tick(100.0 + CFG.session.claim_timeout_s + 1)
    assert d is not None and d.reason == "timeout"


def test_same_seed_same_session() -> None:
    frames = scene(6.0, blinks=(1.5, 2.6))
    a = run(frames, references=[ALICE], seed=11)
    b = run(frames, references=[ALICE], seed=11)
    assert a == b


# -- passive anti-spoofing on every path -----------------------------------------------------

NEVER = replace(CFG, session=replace(CFG.session, challenge="never"))


def test_a_recapture_that_blinks_on_cue_is_rejected_as_spoof() -> None:
    vision = FakeVision(passive=lambda i: 0.02)  # a screen replay: the PAD sees the screen
    d = run(scene(4.0, blinks=(1.6,)), vision=vision, references=[ALICE], prompt_t=1.2)
    assert not d.accepted and d.reason == "spoof" and d.blinks == 1
    assert d.score is None  # the identity was never compared for an attack


def test_a_recapture_is_rejected_as_spoof_with_the_blink_off() -> None:
    d = run(scene(3.0), cfg=NEVER, vision=FakeVision(passive=lambda i: 0.1), references=[ALICE])
    assert not d.accepted and d.reason == "spoof" and not d.challenge_required


def test_the_passive_score_is_the_median_of_crops_spread_over_the_session() -> None:
    given = [0.0, 0.97, 0.99, 0.98, 0.96, 0.99, 0.98, 0.97, 0.99, 0.98]
    scores = iter(given)
    vision = FakeVision(passive=lambda i: next(scores, 0.98))
    d = run(scene(3.0), cfg=NEVER, vision=vision, references=[ALICE])
    assert d.accepted, d  # one bad crop (the first) does not fail a live face
    gaps = np.diff(vision.pad_scored) / FPS
    assert len(vision.pad_scored) >= CFG.liveness.pad_min_crops
    assert gaps.min() >= CFG.liveness.pad_every_s - 1e-9  # spread, not one frame scored N times
    used = given[: len(vision.pad_scored)]
    assert d.pad_crops == len(used) and d.pad_score == pytest.approx(float(np.median(used)))


def test_an_attack_with_one_lucky_frame_is_still_rejected() -> None:
    scores = iter([0.99] + [0.05] * 40)
    d = run(scene(3.0), cfg=NEVER, vision=FakeVision(passive=lambda i: next(scores, 0.05)),
            references=[ALICE])  # fmt: skip
    assert d.reason == "spoof"


def test_a_face_whose_crops_never_score_is_never_passed() -> None:
    for cfg in (CFG, NEVER):
        d = run(scene(8.0, blinks=(1.6,)), cfg=cfg, vision=FakeVision(passive=lambda i: None),
                references=[ALICE], prompt_t=1.2)  # fmt: skip
        assert not d.accepted and d.reason == "timeout", (cfg.session.challenge, d)


def test_a_frozen_frame_is_rejected_as_static_with_the_blink_off() -> None:
    frames = scene(3.0, faces=lambda t, ear: [live_face(t, ear, frozen=True)])
    d = run(frames, cfg=NEVER, references=[ALICE])
    assert not d.accepted and d.reason == "static"
    assert d.timing_ms["total"] < 1000  # the motion rule fires within the session (0.6 s)


def test_the_no_blink_path_watches_the_face_for_passive_min_s_before_deciding() -> None:
    d = run(scene(3.0), cfg=NEVER, references=[ALICE])
    assert d.accepted and not d.challenge_required
    assert d.timing_ms["verify"] + d.timing_ms["acquire"] >= CFG.liveness.passive_min_s * 1000
    assert d.timing_ms["total"] < 1000  # and not much longer: fare gates need throughput


@pytest.mark.parametrize(
    "reason,prompt", [("quality:too_far", "Please come closer"),
                      ("quality:too_close", "Please step back")],
)  # fmt: skip
def test_a_face_too_far_or_too_close_for_a_reliable_crop_is_asked_to_move(
    reason: str, prompt: str
) -> None:
    session = VerificationSession(NEVER, FakeVision(bad_quality=lambda i: reason),
                                  rng=random.Random(1), perf_clock=Perf())  # fmt: skip
    session.claim("alice", [ALICE], 0.0)
    prompts, decision = set(), None
    for frame, obs in scene(NEVER.session.acquire_timeout_s + 1.0):
        decision = session.step(frame, obs)
        prompts.add(session.prompt)
        if decision is not None:
            break
    assert prompt in prompts
    assert decision is not None and not decision.accepted and decision.reason == reason
