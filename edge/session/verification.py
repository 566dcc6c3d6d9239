"""One verification session: idle -> claim -> acquire -> challenge -> verify -> decide.

The session is fed frames with the faces the vision pipeline found in them and returns a
`Decision` once it has one. It never reads the camera or runs detection itself, so the kiosk
loop, `facegate verify`, the liveness evaluation and the tests drive it identically. Session time
is the frames' own timeline (`Frame.t_monotonic`), so a file replayed at full speed behaves like
the live camera; the decision latency is measured on an injected performance clock.
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.camera.base import Frame
from edge.config import Config
from edge.liveness.blink import BlinkDetector
from edge.liveness.challenge import Challenge, challenge_at, schedule_challenge
from edge.liveness.continuity import ContinuityMonitor
from edge.liveness.eye import eye_openness
from edge.liveness.fusion import fuse_passive, pad_due, passive_verdict
from edge.liveness.motion import MotionMonitor
from edge.session.decision import Decision, challenge_required
from edge.session.lockout import LockoutStore
from edge.session.ports import LandmarksLike, ObservationLike, QualityLike, SessionVision
from edge.vision.geometry import BoxLike, box_size

Embedding = NDArray[np.float32]

# No landmark motion for this long after acquisition (and no blink) = a still presentation.
STATIC_WINDOW_S = 2.0
# Reasons that count as a failed attempt for the lockout. Nobody in view (`no_face`) or a bad
# frame (`quality:*`) is not an attempt; `locked_out` must not extend its own lock.
COUNTED_REASONS = frozenset(
    {"no_blink", "static", "spoof", "face_changed", "mismatch", "timeout"}
)
# The session was cut short (SIGTERM, the end of the stream): nobody's attempt, never counted.
ABANDONED = "abandoned"
# A mismatch by a face far from every reference (1:few door): never counted (DESIGN §6).
STRANGER = "stranger"
# A face too far for a reliable passive crop is asked to come closer, one filling the frame to
# step back; it is never passed on an unreliable crop.
MOVE_PROMPTS = {"quality:too_far": "Please come closer", "quality:too_close": "Please step back"}
# At most this many passive scores are kept per session (the median needs no more).
MAX_PAD_CROPS = 32


class PipelineVision:
    """`SessionVision` over `edge.vision.pipeline.VisionPipeline` (embed is None without the
    embedder, so the session runs liveness only)."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def quality(self, frame: Frame, obs: Any) -> QualityLike:
        result: QualityLike = self.pipeline.quality(frame.image, obs)
        return result

    def embed(self, frame: Frame, landmarks: Any) -> Embedding | None:
        if not getattr(self.pipeline, "has_embedder", False):
            return None
        emb: Embedding = self.pipeline.embed(frame.image, landmarks)
        return emb

    def pad_score(self, frame: Frame, obs: Any) -> float | None:
        if not getattr(self.pipeline, "has_pad", False):
            return None
        score: float | None = self.pipeline.pad_score(frame.image, obs)
        return score

    def refine(self, embedding: Embedding) -> Embedding | None:
        """The flip-TTA embedding of a one-chip one (edge.vision.track), when the pipeline
        embeds one chip first; None otherwise."""
        refine = getattr(self.pipeline, "refine", None)
        return None if refine is None else refine(embedding)


class State(enum.Enum):
    IDLE = "idle"
    CLAIM = "claim"
    ACQUIRE = "acquire"
    CHALLENGE = "challenge"
    VERIFY = "verify"
    DONE = "done"


class VerificationSession:
    """The state machine for one claim. Create one per attempt."""

    def __init__(
        self,
        cfg: Config,
        vision: SessionVision,
        *,
        lockout: LockoutStore | None = None,
        rng: random.Random | None = None,
        perf_clock: Callable[[], float] = time.perf_counter,
        prompt_at: Callable[[float], float] | None = None,
        stranger_below: float | None = None,
        uncounted: frozenset[str] = frozenset(),
    ) -> None:
        """`stranger_below`: at a 1:few door, a failure whose face scores below it against every
        reference is a stranger's and is not counted for the lockout (None: every failure of
        COUNTED_REASONS counts). `uncounted`: reasons this kiosk does not hold against the
        person (the door's own unseen blink prompt, `no_blink`)."""
        self.cfg = cfg
        self.vision = vision
        self.lockout = lockout
        self.rng = rng if rng is not None else random.SystemRandom()
        self._perf = perf_clock
        self._prompt_at = prompt_at
        self._stranger_below = stranger_below
        self._uncounted = uncounted
        self.state = State.IDLE
        self.prompt: str | None = None
        self.decision: Decision | None = None
        self.subject = ""
        self._claim_id = ""
        self._references: list[Embedding] | None = None
        self._payment = False
        self._need_challenge = True
        self._t0 = 0.0
        self._state_t0 = 0.0
        self._timing: dict[str, float] = {}
        self._seen_face = False
        self._quality_reason: str | None = None
        lv = cfg.liveness
        self._blinks = BlinkDetector(lv)
        # Tracked frames (edge.vision.track) cycle through detect_every ROIs: motion.py doc.
        settle = cfg.vision.detect_every
        self._motion = MotionMonitor(STATIC_WINDOW_S, lv.static_motion_px, settle)
        self._continuity = ContinuityMonitor(lv.continuity_min_iou, cfg.vision.min_face_px)
        self._challenge: Challenge | None = None
        self._counted: list[float] = []  # end times of counted blinks
        self._acq_embeddings: list[Embedding] = []
        self._post_embeddings: list[Embedding] = []
        self._blink_end_perf: float | None = None
        # Passive liveness: crops scored at most every `pad_every_s`, and on the no-blink path
        # a motion rule that can fire within the session (`passive_min_s`).
        self._pad_scores: deque[float] = deque(maxlen=MAX_PAD_CROPS)
        self._pad_last_t = -math.inf
        self._passive_motion = MotionMonitor(lv.passive_min_s, lv.passive_motion_px, settle)
        self._acquired_t = 0.0
        self.mirrored = False  # adaptive flip TTA: the mirrored chips were needed (_near)

    @property
    def tracked_box(self) -> BoxLike | None:
        """The box of the face this session tracks (None before acquisition)."""
        return self._continuity.last_box

    @property
    def challenge_window_end_t(self) -> float | None:
        """When the blink response window closes (frame time, s), while a challenge runs."""
        ch = self._challenge
        return ch.window_end_t if ch is not None and self.state == State.CHALLENGE else None

    # -- transitions -------------------------------------------------------------------------

    def wait_for_claim(self, t: float) -> None:
        """idle -> claim: the kiosk asks for a phone number / QR / card."""
        self._enter(State.CLAIM, t)
        self._t0 = t

    def claim(
        self,
        subject: str,
        references: Sequence[Embedding] | None,
        t: float,
        *,
        claim_id: str | None = None,
        amount: float | None = None,
    ) -> Decision | None:
        """claim -> acquire. `references` None runs liveness only (no identity comparison).

        Returns a decision at once when the claim is locked out.
        """
        if self.state == State.IDLE:
            self._t0 = t
        self.subject = subject
        self._claim_id = claim_id if claim_id is not None else subject
        self._references = None if references is None else list(references)
        self._payment = amount is not None
        s = self.cfg.session
        self._need_challenge = challenge_required(s.challenge, s.stepup_amount, amount)
        self._enter(State.ACQUIRE, t)
        if self.lockout is not None:
            remaining = self.lockout.remaining_s(self._claim_id)
            if remaining > 0:
                return self._finish(t, "locked_out", count=False)
        return None

    def tick(self, t: float) -> Decision | None:
        """Time passes without a frame (claim entry); applies the claim timeout."""
        if self.state == State.CLAIM and t - self._state_t0 > self.cfg.session.claim_timeout_s:
            return self._finish(t, "timeout", count=False)
        return None

    def end_of_stream(self, t: float) -> Decision:
        """The source ran out: decide with what the session has (never an accept)."""
        if self.decision is not None:
            return self.decision
        if self.state == State.ACQUIRE:
            return self._acquire_failure(t)
        if self.state == State.CHALLENGE:
            return self._finish(t, self._no_blink_reason(t))
        return self._finish(t, "timeout")

    def abandon(self, t: float) -> Decision:
        """The kiosk stops (SIGTERM) or its source ends mid-session: nobody failed, nothing is
        counted for the lockout; a session already decided keeps its decision."""
        if self.decision is not None:
            return self.decision
        return self._finish(t, ABANDONED, count=False)

    def step(
        self, frame: Frame, faces: Sequence[ObservationLike], received_perf: float | None = None
    ) -> Decision | None:
        """Feed one frame and the faces found in it; returns the decision when there is one.

        `received_perf` is the perf-clock time the frame arrived (before detection), so the
        latency after the blink includes the vision work on the frame that ended it.
        """
        arrived = self._perf() if received_perf is None else received_perf
        t = frame.t_monotonic
        if self.state == State.ACQUIRE:
            return self._acquire(frame, faces, t)
        if self.state == State.CHALLENGE:
            return self._challenge_step(frame, faces, t, arrived)
        if self.state == State.VERIFY:
            return self._verify_step(frame, faces, t)
        if self.state == State.CLAIM:
            return self.tick(t)
        return None

    # -- states ------------------------------------------------------------------------------

    def _acquire(self, frame: Frame, faces: Sequence[ObservationLike], t: float) -> Decision | None:
        if t - self._state_t0 > self.cfg.session.acquire_timeout_s:
            return self._acquire_failure(t)
        with_marks = [o for o in faces if o.landmarks is not None]
        if faces:
            self._seen_face = True
        if not with_marks:
            return None
        obs = max(with_marks, key=lambda o: box_size(o.box))
        quality = self.vision.quality(frame, obs)
        if not quality.ok:
            self._quality_reason = quality.reasons[0] if quality.reasons else "quality:unknown"
            self.prompt = MOVE_PROMPTS.get(self._quality_reason)
            return None
        self.prompt = None
        _, why = self._continuity.update(t, [o.box for o in faces])
        if why is not None:
            return self._finish(t, why)
        assert obs.landmarks is not None
        self._acquired_t = t
        self._track(frame, obs.landmarks, t)
        self._passive_motion.update(t, obs.landmarks.points)
        self._sample_pad(frame, obs, t)
        emb = self.vision.embed(frame, obs.landmarks)
        if emb is not None:
            self._acq_embeddings.append(emb)
        if self._need_challenge:
            self._enter(State.CHALLENGE, t)
            prompt_t = self._prompt_at(t) if self._prompt_at else None
            self._challenge = (
                challenge_at(prompt_t, self.cfg.liveness)
                if prompt_t is not None
                else schedule_challenge(t, self.cfg.liveness, self.rng)
            )
        else:
            self._enter(State.VERIFY, t)
        return None

    def _acquire_failure(self, t: float) -> Decision:
        if not self._seen_face:
            return self._finish(t, "no_face", count=False)
        if self._quality_reason is not None:
            return self._finish(t, self._quality_reason, count=False)
        return self._finish(t, "timeout", count=False)

    def _challenge_step(
        self, frame: Frame, faces: Sequence[ObservationLike], t: float, arrived: float
    ) -> Decision | None:
        ch = self._challenge
        assert ch is not None
        self.prompt = ch.text if t >= ch.prompt_t else None
        idx, why = self._continuity.update(t, [o.box for o in faces])
        if why is not None:
            return self._finish(t, why)
        marks = faces[idx].landmarks if idx is not None else None
        if marks is None:
            self._blinks.gap()
        else:
            assert idx is not None
            self._sample_pad(frame, faces[idx], t)
            blink = self._blinks.update(t, eye_openness(marks.points), frame.index)
            self._motion.update(t, marks.points)
            if blink is not None and ch.counts(blink):
                self._counted.append(blink.end_t)
                if len(self._counted) >= ch.blinks_required:
                    self._blink_end_perf = arrived
                    self.prompt = None
                    self._enter(State.VERIFY, t)
                    return self._verify_step(frame, faces, t, tracked=idx)
        if t - self._state_t0 > self.cfg.session.challenge_timeout_s:
            return self._finish(t, "timeout")
        # A closure that began inside the window may finish after it: let it end first.
        if t > ch.window_end_t and not self._blinks.closed:
            return self._finish(t, self._no_blink_reason(t))
        if self._motion.is_static(t) and not self._blinks.closed:
            return self._finish(t, "static")
        return None

    def _no_blink_reason(self, t: float) -> str:
        return "static" if self._motion.is_static(t) else "no_blink"

    def _verify_step(
        self,
        frame: Frame,
        faces: Sequence[ObservationLike],
        t: float,
        tracked: int | None = None,
    ) -> Decision | None:
        if tracked is None:
            tracked, why = self._continuity.update(t, [o.box for o in faces])
            if why is not None:
                return self._finish(t, why)
        if t - self._state_t0 > self.cfg.session.verify_timeout_s:
            # (also a face whose crops never scored: too far or too close; never passed)
            return self._finish(t, "timeout")
        marks = faces[tracked].landmarks if tracked is not None else None
        if marks is None:
            return None
        assert tracked is not None
        lv = self.cfg.liveness
        self._sample_pad(frame, faces[tracked], t)
        if not self._need_challenge:
            # Passive path: the landmarks must still move like a live face's would.
            self._track(frame, marks, t)
            self._passive_motion.update(t, marks.points)
            if self._motion.is_static(t):
                return self._finish(t, "static")
        wanted = 1 if self._need_challenge else self.cfg.verify.frames
        if len(self._post_embeddings) < wanted:
            emb = self.vision.embed(frame, marks)
            if emb is not None:
                self._post_embeddings.append(emb)
                if len(self._post_embeddings) < wanted:
                    return None
        if not self._need_challenge:
            # Watch long enough for the motion rule to be able to fire (a frozen frame).
            if t - self._acquired_t < lv.passive_min_s:
                return None
            if self._passive_motion.is_static(t):
                return self._finish(t, "static")
        if lv.pad and len(self._pad_scores) < lv.pad_min_crops:
            return None  # keep scoring crops; the verify timeout ends a face that never scores
        return self._decide(t)

    def _sample_pad(self, frame: Frame, obs: ObservationLike, t: float) -> None:
        lv = self.cfg.liveness
        if not lv.pad or not pad_due(t, self._pad_last_t, lv.pad_every_s):
            return
        score = self.vision.pad_score(frame, obs)
        if score is not None:
            self._pad_scores.append(score)
            self._pad_last_t = t

    def _track(self, frame: Frame, marks: LandmarksLike, t: float) -> None:
        self._blinks.update(t, eye_openness(marks.points), frame.index)
        self._motion.update(t, marks.points)

    def _near(self, score: float, threshold: float, sides: int = 1) -> bool:
        """Adaptive flip TTA: a one-chip score this close to its threshold is recomputed with
        the mirrored chips; further away the mirror changes nothing. The margin
        (vision.flip_tta_margin) bounds how far one probe's mirror moves its score against a
        template; `sides` = 2 when both vectors compared are one-chip probes (the continuity
        check). Marks the session `mirrored`; the stored embeddings become the refined ones."""
        refine = getattr(self.vision, "refine", None)
        if refine is None or abs(score - threshold) >= sides * self.cfg.vision.flip_tta_margin:
            return False
        if self.mirrored:
            return False  # already refined: the score is the TTA one
        for store in (self._acq_embeddings, self._post_embeddings):
            store[:] = [r if (r := refine(e)) is not None else e for e in store]
        self.mirrored = True
        return True

    def _decide(self, t: float) -> Decision:
        before, after = self._acq_embeddings, self._post_embeddings
        if before and after:
            floor = self.cfg.liveness.continuity_min_similarity
            similarity = float(np.dot(_mean_unit(before), _mean_unit(after)))
            if self._near(similarity, floor, sides=2):
                similarity = float(np.dot(_mean_unit(before), _mean_unit(after)))
            if similarity < floor:
                return self._finish(t, "face_changed")
        lv = self.cfg.liveness
        if lv.pad:
            # The blink proves timing; the passive score proves a real face. Both must pass,
            # and the passive verdict comes before any identity comparison.
            spoof = passive_verdict(self._pad_scores, lv.pad_threshold, lv.pad_min_crops)
            if spoof is not None:
                return self._finish(t, spoof)
        if self._references is None:
            return self._finish(t, None)
        probes = before + after
        if not probes or not self._references:
            return self._finish(t, "mismatch")
        v = self.cfg.verify
        threshold = v.payment_threshold if self._payment else v.threshold
        score = max(float(np.dot(_mean_unit(probes), r)) for r in self._references)
        if self._near(score, threshold):
            probes = before + after
            score = max(float(np.dot(_mean_unit(probes), r)) for r in self._references)
        return self._finish(t, None if score >= threshold else "mismatch", score=score)

    # -- bookkeeping -------------------------------------------------------------------------

    def _enter(self, state: State, t: float) -> None:
        if self.state not in (State.IDLE, State.DONE):
            self._timing[self.state.value] = (t - self._state_t0) * 1000.0
        self.state, self._state_t0 = state, t

    def _finish(
        self, t: float, reason: str | None, *, score: float | None = None, count: bool = True
    ) -> Decision:
        self._enter(State.DONE, t)
        self._timing["total"] = (t - self._t0) * 1000.0
        self.prompt = None
        lock_s = 0.0
        count = count and reason in COUNTED_REASONS and reason not in self._uncounted
        stranger = count and self._is_stranger()
        if stranger:
            count = False
            reason = STRANGER if reason == "mismatch" else reason
            if score is None:
                score = self._best_score()
        if self.lockout is not None:
            if reason is None:
                self.lockout.record_success(self._claim_id)
            elif count:
                lock_s = self.lockout.record_failure(self._claim_id)
            else:
                lock_s = self.lockout.remaining_s(self._claim_id)
        ch = self._challenge
        latency = None
        if self._blink_end_perf is not None:
            latency = (self._perf() - self._blink_end_perf) * 1000.0
        self.decision = Decision(
            subject=self.subject,
            accepted=reason is None,
            reason=reason,
            score=score,
            blinks=len(self._counted),
            challenge_ms=(
                (self._counted[-1] - ch.prompt_t) * 1000.0 if ch and self._counted else None
            ),
            challenge_required=self._need_challenge,
            timing_ms=dict(self._timing),
            latency_ms=latency,
            lockout_s=lock_s,
            pad_score=fuse_passive(self._pad_scores),
            pad_crops=len(self._pad_scores),
            stranger=stranger,
        )
        return self.decision

    def _best_score(self) -> float | None:
        """Best cosine similarity of the session's face to any reference (None: no probe)."""
        probes = self._acq_embeddings + self._post_embeddings
        if not probes or not self._references:
            return None
        probe = _mean_unit(probes)
        return max(float(np.dot(probe, r)) for r in self._references)

    def _is_stranger(self) -> bool:
        """A failure by a face far from every reference (only with `stranger_below`)."""
        if self._stranger_below is None:
            return False
        best = self._best_score()
        return best is not None and best < self._stranger_below


def _mean_unit(vectors: list[Embedding]) -> NDArray[np.float64]:
    m: NDArray[np.float64] = np.mean(np.asarray(vectors, dtype=np.float64), axis=0)
    n = float(np.linalg.norm(m))
    return m / n if n > 0 else m
