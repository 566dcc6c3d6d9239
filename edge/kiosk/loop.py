"""The kiosk main loop: frames -> faces -> claim -> verification session -> event -> actuator.

Order on a decision is the contract of DESIGN §5: the signed event is committed to the outbox
(SQLite, synchronous=FULL) before the display shows the result and before the relay moves; if
the event cannot be stored the kiosk fails closed (no door, no payment) and offers the non-face
alternative. The MQTT link publishes the outbox on its own thread, so a broker outage never
stalls the camera loop.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from edge.camera import Source
from edge.camera.base import Frame
from edge.config import Config
from edge.errors import FacegateError
from edge.kiosk.actuators import Actuator, NoActuator
from edge.kiosk.claims import Claim, ClaimSource
from edge.kiosk.debug_capture import DebugCapture
from edge.kiosk.display.dispatcher import Dispatcher
from edge.kiosk.display.state import KioskState
from edge.kiosk.presence import PresenceStore
from edge.kiosk.profiles import CLAIM_PROMPTS, event_for
from edge.kiosk.sdnotify import Notifier
from edge.session.decision import Decision
from edge.session.lockout import LockoutStore
from edge.session.verification import VerificationSession
from edge.transport.outbox import Outbox, OutboxError, OutboxFullError
from edge.trust.events import EventFactory
from edge.vision.geometry import box_iou, box_size

log = logging.getLogger(__name__)

Display = Callable[[str], None]
Embedding = NDArray[np.float32]
# Queues: the person at the kiosk is a face with landmarks, centred (its centre in the middle
# of the frame's width) and not much smaller than the largest face; a smaller face further back
# never blocks. After a decision the next session starts once the decided face has left (no
# such face for COOLDOWN_NO_FACE_S), or a face stands elsewhere, or the face in the same place
# is someone else (its embedding below the match threshold against the decided face's).
COOLDOWN_NO_FACE_S = 0.3
CENTRAL_FRACTION = 0.6
AT_KIOSK_SIZE_RATIO = 0.6
SAME_PLACE_IOU = 0.3
IDENTITY_CHECK_EVERY = 5  # frames between embeddings of the face in the decided place
MAINTENANCE_EVERY_S = 3600.0
SESSION_PROMPT_STATES = {"Please come closer": "closer", "Please step back": "step_back"}


class ReferenceStore(Protocol):
    """The part of TemplateStore the kiosk needs: decrypt references for some subjects."""

    def references(
        self, subjects: list[str] | None = None
    ) -> tuple[dict[str, Embedding], dict[str, Any]]: ...

    def expire(self) -> list[str]: ...


class QrReader(Protocol):
    """edge.kiosk.claims.qr.QrClaimReader: scans 1 idle frame in N for a claim token."""

    def on_idle_frame(self, image: Any, t: float) -> Any: ...


class Vision(Protocol):
    def observe(self, image: Any) -> list[Any]: ...
    def quality(self, image: Any, obs: Any) -> Any: ...
    def embed(self, image: Any, landmarks: Any) -> Embedding: ...
    def pad_score(self, image: Any, obs: Any) -> float | None: ...


class _CapturingVision:
    """Passes through to the pipeline, keeping the last embedding in memory (1:few identity)."""

    def __init__(self, vision: Vision) -> None:
        self.vision = vision
        self.last: Embedding | None = None

    def quality(self, frame: Frame, obs: Any) -> Any:
        return self.vision.quality(frame, obs)

    def embed(self, frame: Frame, landmarks: Any) -> Embedding | None:
        self.last = self.vision.embed(frame, landmarks)
        return self.last

    def pad_score(self, frame: Frame, obs: Any) -> float | None:
        return self.vision.pad_score(frame, obs)

    def refine(self, embedding: Embedding) -> Embedding | None:
        """Adaptive flip TTA (edge.vision.track): the mirrored chip's help, when available."""
        refine = getattr(self.vision, "refine", None)
        return None if refine is None else refine(embedding)


@dataclass
class KioskStats:
    frames: int = 0
    frames_with_face: int = 0
    prompts: list[str] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # "type:seq"
    elapsed_s: float = 0.0


@dataclass
class _Active:
    claim: Claim
    session: VerificationSession
    vision: _CapturingVision
    refs: dict[str, Embedding]


class Kiosk:
    """Runs the loop over one `Source` for the configured profile."""

    def __init__(
        self,
        cfg: Config,
        source: Source,
        *,
        vision: Vision | None,
        display: Display,
        claims: ClaimSource | None = None,
        store: ReferenceStore | None = None,
        outbox: Outbox | None = None,
        factory: EventFactory | None = None,
        actuator: Actuator | None = None,
        lockout: LockoutStore | None = None,
        presence: PresenceStore | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        debug_capture: DebugCapture | None = None,
        dispatcher: Dispatcher | None = None,
        qr: QrReader | None = None,
        link_up: Callable[[], bool] | None = None,
    ) -> None:
        self.cfg, self.source, self.vision, self.display = cfg, source, vision, display
        self.claims, self.store = claims, store
        self.outbox, self.factory = outbox, factory
        self.actuator = actuator or NoActuator()
        self.lockout, self.presence = lockout, presence
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.rng = rng
        self.stop_event = threading.Event()
        self.debug_capture = debug_capture  # None unless [debug] capture_frames = true
        # Kiosk states go out once, to every listener (the display page, ...); `display` is the
        # journal's plain-English line of the same state.
        self.dispatcher = dispatcher
        self.qr = qr  # QR claim tokens read from idle frames (fare gate)
        self.link_up = link_up  # None: no MQTT link configured
        self._queue_checked_at = -1e18
        self._queue_waiting = False
        self._frame: Frame | None = None
        self._last_prompt = ""
        self._active: _Active | None = None
        self._cooldown_until_absent = False
        self._absent_since: float | None = None
        self._decided_box: Any = None
        self._decided_embedding: Embedding | None = None
        self._cooldown_frames = 0
        self._last_maintenance = -1e18

    # ---- plumbing --------------------------------------------------------------------------

    def _prompt(self, text: str, stats: KioskStats, state: str = "look", **detail: Any) -> None:
        """Show a kiosk state: the journal line `text` and, to the listeners, `state`. While
        the broker is unreachable and events wait in the outbox, the idle screen says so."""
        if state == "look" and self._offline_with_queue():
            text, state = "Offline - transactions are stored and will be sent", "offline_queued"
        if text and text != self._last_prompt:
            self._last_prompt = text
            stats.prompts.append(text)
            self.display(text)
            if self.dispatcher is not None:
                self.dispatcher.publish(KioskState(state, detail))

    def _offline_with_queue(self) -> bool:
        """The link is down and events wait; the outbox is read at most once a second (the
        idle prompt is shown on every frame with nobody in view)."""
        if self.link_up is None or self.outbox is None or self.link_up():
            return False
        now = self.clock()
        if now - self._queue_checked_at >= 1.0:
            self._queue_checked_at = now
            try:
                self._queue_waiting = int(self.outbox.status().get("pending", 0)) > 0
            except (FacegateError, sqlite3.Error):  # a status read must never stop the loop
                self._queue_waiting = False
        return self._queue_waiting

    def _session_prompt(self, session: VerificationSession, t: float, stats: KioskStats) -> None:
        text = session.prompt
        if not text:
            return
        if text in SESSION_PROMPT_STATES:
            self._prompt(text, stats, SESSION_PROMPT_STATES[text])
            return
        end = session.challenge_window_end_t
        left = round(max(0.0, end - t), 1) if end is not None else None
        self._prompt(text, stats, "blink", **({"seconds_left": left} if left is not None else {}))

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self.stop_event.set()

    def _emit(self, type_: str, fields: dict[str, Any], stats: KioskStats) -> bool:
        """Commit one signed event; False (fail closed) if it cannot be stored."""
        if self.outbox is None or self.factory is None:
            return True  # no event pipeline configured (camera-only run)
        try:
            event = self.outbox.emit(self.factory, type_, **fields)
        except (OutboxError, OutboxFullError, FacegateError, OSError) as exc:
            # OutboxError: SQLite could not store it (disk full, I/O error, read-only card);
            # OutboxFullError: only unsent payments left. No stored event, no door, no payment.
            log.error("event %s not stored: %s", type_, exc)
            return False
        stats.events.append(f"{type_}:{event.seq}")
        return True

    # ---- sessions --------------------------------------------------------------------------

    def _household(self) -> list[str]:
        return list(self.cfg.smart_lock.household)

    def _next_claim(self) -> Claim | None:
        if self.cfg.profile == "smart_lock":
            return Claim(self.cfg.smart_lock.door, None, self.cfg.smart_lock.door, "household")
        return self.claims.poll() if self.claims is not None else None

    def _references(self, claim: Claim) -> tuple[dict[str, Embedding], str | None]:
        """Decrypted references for a claim (in memory only), or a refusal reason."""
        if claim.method == "liveness":
            return {}, None  # demo: liveness only, no identity comparison
        if self.store is None:
            return {}, "no_template"
        subjects = None if claim.method == "household" else [claim.subject]
        if claim.method == "household" and self._household():
            subjects = self._household()
        try:
            refs, refused = self.store.references(subjects)
        except FacegateError as exc:
            log.error("template store: %s", exc)
            return {}, "template_error"
        if refused:
            for subject, problem in refused.items():
                log.warning("template for %s refused: %s", subject, problem)
        if not refs:
            return {}, "no_template"
        return refs, None

    def _start(self, frame: Frame, stats: KioskStats) -> None:
        claim = self._next_claim()
        if claim is None:
            self._prompt(CLAIM_PROMPTS.get(self.cfg.profile, "Please look at the camera"), stats,
                         "claim", profile=self.cfg.profile)
            return
        refs, refusal = self._references(claim)
        t = frame.t_monotonic
        if refusal is not None:
            decision = Decision(claim.subject, False, refusal, None, 0, None, False)
            self._decide(claim, decision, {}, None, stats, faces_in_view=1)
            return
        vision = _CapturingVision(self.vision)  # type: ignore[arg-type]
        session = VerificationSession(self.cfg, vision, lockout=self.lockout, rng=self.rng)
        session.wait_for_claim(t)
        references = None if claim.method == "liveness" else list(refs.values())
        early = session.claim(
            claim.subject, references, t, claim_id=claim.subject, amount=claim.amount
        )
        if early is not None:
            self._decide(claim, early, refs, None, stats, faces_in_view=1)
            return
        self._active = _Active(claim, session, vision, refs)

    def _decide(
        self,
        claim: Claim,
        decision: Decision,
        refs: dict[str, Embedding],
        probe: Embedding | None,
        stats: KioskStats,
        *,
        faces_in_view: int,
    ) -> None:
        if decision.accepted and claim.method == "household" and probe is not None and refs:
            tenant = max(refs, key=lambda s: float(np.dot(refs[s], probe)))
            decision = dataclasses.replace(decision, subject=tenant)
            if self.presence is not None:
                self.presence.seen(tenant)
        unknown = max(1, faces_in_view) if decision.reason == "mismatch" else 0
        event = event_for(self.cfg, claim, decision, unknown_faces=unknown)
        stored = event is None or self._emit(event[0], event[1], stats)
        summary = decision.to_dict()
        summary["event"] = event[0] if event else None
        summary["stored"] = stored
        stats.decisions.append(summary)
        if self.debug_capture is not None and self._frame is not None:
            self.debug_capture.save(self._frame.image, f"{decision.decision}-{decision.reason}")
        # A claim that arrived during this session is not carried over to the next person.
        clear = getattr(self.claims, "clear", None)
        if callable(clear):
            clear()
        # Whatever happened, the next session waits until this person has stepped away (or
        # someone else is at the kiosk: `_next_person`).
        self._cooldown_until_absent = True
        self._absent_since = None
        self._cooldown_frames = 0
        if not stored:
            self._prompt("Service unavailable - please pay or open with PIN or card", stats,
                         "service_unavailable")
            return
        if decision.accepted:
            self._prompt("Verified - thank you", stats, "approved", **self._approved(claim))
            self.actuator.pulse()
        elif decision.reason == "locked_out":
            self._prompt(
                f"Too many attempts - try again in {decision.lockout_s:.0f} s or use PIN/card",
                stats, "locked_out", seconds_left=round(decision.lockout_s),
            )  # fmt: skip
        elif decision.reason == "spoof":
            self._prompt("Not verified - live face not confirmed; please use PIN or card", stats,
                         "denied", reason="spoof")
        else:
            self._prompt("Not verified - please use PIN or card, or try again", stats,
                         "denied", reason=decision.reason or "rejected")

    def _approved(self, claim: Claim) -> dict[str, Any]:
        """What the display shows with an approval: the amount, the fare or the door."""
        if self.cfg.profile == "bakery" and claim.amount is not None:
            return {"kind": "payment", "amount": claim.amount, "currency": self.cfg.bakery.currency}
        if self.cfg.profile == "fare_gate":
            fg = self.cfg.fare_gate
            return {"kind": "fare", "amount": fg.fare, "currency": fg.currency}
        if self.cfg.profile == "smart_lock":
            return {"kind": "door", "door": self.cfg.smart_lock.door}
        return {}

    def _maintenance(self, t: float, stats: KioskStats) -> None:
        """Hourly: destroy past-due templates, raise welfare alerts (smart lock)."""
        if t - self._last_maintenance < MAINTENANCE_EVERY_S:
            return
        self._last_maintenance = t
        if self.store is not None:
            try:
                expired = self.store.expire()
            except FacegateError as exc:
                log.error("template expiry failed: %s", exc)
            else:
                if expired:
                    log.info("expired %d templates", len(expired))
        if self.cfg.profile != "smart_lock" or self.presence is None:
            return
        sl = self.cfg.smart_lock
        self.presence.register(self._household())
        for subject, days, last in self.presence.due(self._household(), sl.welfare_days):
            self._emit("welfare.alert", {"subject": subject, "household": sl.door,
                                         "days_unseen": days, "last_seen_ts": last,
                                         "door": sl.door}, stats)

    # ---- the loop --------------------------------------------------------------------------

    def _on_frame(self, frame: Frame, faces: Sequence[Any], stats: KioskStats) -> None:
        t = frame.t_monotonic
        if self._active is not None:
            active = self._active
            decision = active.session.step(frame, faces)
            self._session_prompt(active.session, t, stats)
            if decision is not None:
                self._active = None
                self._decided_box = active.session.tracked_box
                self._decided_embedding = active.vision.last
                self._decide(active.claim, decision, active.refs, active.vision.last, stats,
                             faces_in_view=len(faces))
            return
        present = at_the_kiosk(faces, frame.image.shape[1])
        self._scan_qr(frame, stats)
        if self._cooldown_until_absent and not self._next_person(frame, present):
            return
        self._cooldown_until_absent = False
        if not present:
            self._prompt("Please look at the camera", stats)
        elif len(present) > 1:
            self._prompt("One person at a time, please", stats, "one_person")
        else:
            self._start(frame, stats)

    def _scan_qr(self, frame: Frame, stats: KioskStats) -> None:
        """On frames with no session running: a shown QR claim token joins the claim queue
        (the reader offers it); a refused one is shown with its reason."""
        if self.qr is None:
            return
        try:
            result = self.qr.on_idle_frame(frame.image, frame.t_monotonic)
        except (FacegateError, ValueError) as exc:
            log.warning("QR scan skipped: %s", exc)
            return
        if result is not None and result.refusal is not None:
            self._prompt(f"Ticket refused ({result.refusal}) - please use a valid QR code or card",
                         stats, "denied", reason=result.refusal)  # fmt: skip

    def _next_person(self, frame: Frame, present: list[Any]) -> bool:
        """After a decision: has the decided person left, or is someone else at the kiosk?"""
        t = frame.t_monotonic
        same_place = [
            o for o in present
            if self._decided_box is not None and box_iou(o.box, self._decided_box) >= SAME_PLACE_IOU
        ]  # fmt: skip
        if not present:
            self._absent_since = t if self._absent_since is None else self._absent_since
            return t - self._absent_since >= COOLDOWN_NO_FACE_S
        self._absent_since = None
        if len(present) == 1 and not same_place:
            return True  # a face stands where the decided one did not: the next person
        if len(same_place) != 1 or self._decided_embedding is None or self.vision is None:
            return False
        self._cooldown_frames += 1
        if self._cooldown_frames % IDENTITY_CHECK_EVERY:
            return False
        marks = same_place[0].landmarks
        try:
            probe = self.vision.embed(frame.image, marks)
        except FacegateError as exc:
            log.warning("identity check after a decision skipped: %s", exc)
            return False
        similarity = float(np.dot(probe, self._decided_embedding))
        return similarity < self.cfg.verify.threshold  # not the decided person: start anew

    def run(self, max_frames: int | None = None) -> KioskStats:
        stats = KioskStats()
        t_start = self.clock()
        last_ping = t_start
        self.notifier.ready(f"watching {self.source.uri}")
        self._prompt("Please look at the camera", stats)
        last_t = 0.0
        try:
            for frame in self.source:
                if self.stop_event.is_set():
                    break
                stats.frames += 1
                last_t = frame.t_monotonic
                self._frame = frame
                faces = self.vision.observe(frame.image) if self.vision is not None else []
                if faces:
                    stats.frames_with_face += 1
                if self.vision is not None:
                    self._on_frame(frame, faces, stats)
                self._maintenance(frame.t_monotonic, stats)
                now = self.clock()
                if now - last_ping >= 1.0:
                    self.notifier.watchdog()
                    last_ping = now
                if max_frames is not None and stats.frames >= max_frames:
                    break
            if self._active is not None:
                active, self._active = self._active, None
                decision = active.session.end_of_stream(last_t)
                self._decide(active.claim, decision, active.refs, active.vision.last, stats,
                             faces_in_view=0)
        finally:
            self.actuator.close()
            stats.elapsed_s = self.clock() - t_start
            self.notifier.stopping()
        return stats


def at_the_kiosk(faces: Sequence[Any], frame_width: int) -> list[Any]:
    """The faces that count as someone at the kiosk (module doc: centred, with landmarks, not
    much smaller than the largest); faces too small for landmarks never count."""
    marked = [o for o in faces if o.landmarks is not None]
    if not marked:
        return []
    largest = max(box_size(o.box) for o in marked)
    margin = (1.0 - CENTRAL_FRACTION) / 2 * frame_width
    return [
        o for o in marked
        if box_size(o.box) >= AT_KIOSK_SIZE_RATIO * largest
        and margin <= (o.box.x1 + o.box.x2) / 2 <= frame_width - margin
    ]  # fmt: skip


def install_signal_handlers(kiosk: Kiosk) -> None:
    """SIGTERM (systemd stop) and SIGINT end the loop after the current frame."""
    signal.signal(signal.SIGTERM, kiosk.request_stop)
    signal.signal(signal.SIGINT, kiosk.request_stop)
