"""The kiosk main loop: frames -> faces -> claim -> verification session -> event -> actuator.

Order on a decision is the contract of DESIGN §5: the signed event is committed to the outbox
(SQLite, synchronous=FULL) before the display shows the result and before the relay moves; if
the event cannot be stored the kiosk fails closed (no door, no payment) and offers the non-face
alternative. The MQTT link publishes the outbox on its own thread, so a broker outage never
stalls the camera loop.

Containment: nothing one frame, one session or one part does ends the loop. A frame vision
cannot use (a DataError from landmarks, align or embed) is logged, counted (`bad_frames`) and
skipped. Between the commit of an accept and the relay nothing runs but the relay; a relay
that fails after the commit leaves a signed `actuator.fault` (the accept's seq) and sends the
person to the alternative. SIGTERM or the end of the stream mid-session abandons the session:
no lockout failure, no denial event.

Lending the camera (edge/camera/lease.py): a technician's enrolment asks for the camera; the
kiosk sees the request within LEASE_CHECK_S, abandons the session under way as a SIGTERM
would, releases the device, shows `maintenance` and waits (pinging the watchdog) until the
request is withdrawn or its requester died, then takes the camera back.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import numpy as np

from edge.camera import Source
from edge.camera.base import Frame
from edge.camera.lease import CameraLease
from edge.config import Config
from edge.errors import DataError, FacegateError
from edge.kiosk.actuators import Actuator, ActuatorError, NoActuator
from edge.kiosk.claims import Claim, ClaimSource
from edge.kiosk.debug_capture import DebugCapture
from edge.kiosk.display.dispatcher import Dispatcher
from edge.kiosk.display.state import KioskState
from edge.kiosk.household import StrangerReports, household_subjects
from edge.kiosk.ports import (
    ActiveSession,
    CapturingVision,
    Embedding,
    QrReader,
    ReferenceStore,
    Vision,
)
from edge.kiosk.presence import PresenceStore
from edge.kiosk.profiles import CLAIM_PROMPTS, event_for
from edge.kiosk.queue_rule import NextPerson, at_the_kiosk
from edge.kiosk.sdnotify import Notifier
from edge.kiosk.stats import KioskStats
from edge.session.decision import Decision
from edge.session.lockout import LockoutStore, stranger_below
from edge.session.verification import ABANDONED, VerificationSession
from edge.transport.outbox import Outbox, OutboxError, OutboxFullError
from edge.trust.events import EventFactory

log = logging.getLogger(__name__)

Display = Callable[[str], None]
MAINTENANCE_EVERY_S = 3600.0
LEASE_CHECK_S = 0.25  # how often the loop looks for a request to lend the camera
LEASE_WAIT_S = 0.2  # how often a kiosk that lent its camera looks whether it is back
SESSION_PROMPT_STATES = {"Please come closer": "closer", "Please step back": "step_back"}
BAD_FRAME_LOG_EVERY_S = 10.0  # a camera gone bad logs its first bad frame, then one a while
# What the person is told when the face path cannot complete (no stored event, a relay fault).
UNAVAILABLE = "Service unavailable - please pay or open with PIN or card"
RELAY_FAULT = "Door or gate did not open - please use PIN or card"
TIMED_OUT = re.compile(r"time[ds]? ?out", re.IGNORECASE)  # "Write timeout", "timed out"
__all__ = ["Kiosk", "KioskStats", "at_the_kiosk", "install_signal_handlers"]


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
        lease: CameraLease | None = None,
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
        self.lease = lease  # held by the caller; None: the camera is never lent
        self._lease_checked_at = -1e18
        self._queue_checked_at = -1e18
        self._queue_waiting = False
        self._frame: Frame | None = None
        self._last_prompt = ""
        self._active: ActiveSession | None = None
        self._next = NextPerson(cfg.verify.threshold)  # the queue rule (queue_rule.py)
        self._last_maintenance = -1e18
        self._bad_frame_logged_t = -1e18
        self._strangers = StrangerReports()
        self._stranger_held: tuple[str, dict[str, Any]] | None = None

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

    def _emit(self, type_: str, fields: dict[str, Any], stats: KioskStats) -> int | None:
        """Commit one signed event: its seq, 0 when no event pipeline is configured (a
        camera-only run), None (fail closed) when it cannot be stored."""
        if self.outbox is None or self.factory is None:
            return 0
        try:
            event = self.outbox.emit(self.factory, type_, **fields)
        except (OutboxError, OutboxFullError, FacegateError, OSError, sqlite3.Error) as exc:
            # OutboxError: SQLite could not store it (disk full, I/O error, read-only card);
            # OutboxFullError: only unsent payments left; a raw sqlite3.Error from any layer
            # of the outbox is the same failure. No stored event, no door, no payment.
            log.error("event %s not stored: %s", type_, exc)
            stats.store_failures += 1
            self._status_alert("event_not_stored", type_)
            return None
        stats.add_event(type_, event.seq)
        return event.seq

    def _status_alert(self, problem: str, what: str) -> None:
        """Tell the operator (journal, and the retained status state through the dispatcher)
        that the face path failed closed; the person's own screen says what to do instead."""
        log.error("ALERT %s (%s): the kiosk failed closed and offers the PIN/card alternative",
                  problem, what)  # fmt: skip
        if self.dispatcher is not None:
            self.dispatcher.publish(KioskState("service_unavailable", {"problem": problem}))

    # ---- sessions --------------------------------------------------------------------------

    def _household(self) -> list[str]:
        """The door's tenants (edge.kiosk.household): configured, else the store's templates."""
        try:
            return household_subjects(self.cfg.smart_lock.household, self.store)
        except (FacegateError, sqlite3.Error) as exc:
            log.error("template store: cannot list the household: %s", exc)
            return []

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
        vision = CapturingVision(self.vision)  # type: ignore[arg-type]
        door = claim.method == "household"
        session = VerificationSession(
            self.cfg, vision, lockout=self.lockout, rng=self.rng,
            # DESIGN §6: strangers cannot lock the tenants out; nor can the door's own
            # unseen blink prompt.
            stranger_below=stranger_below(self.cfg.verify.threshold) if door else None,
            uncounted=frozenset({"no_blink"}) if door else frozenset(),
        )  # fmt: skip
        session.wait_for_claim(t)
        references = None if claim.method == "liveness" else list(refs.values())
        early = session.claim(
            claim.subject, references, t, claim_id=claim.subject, amount=claim.amount
        )
        if early is not None:
            self._decide(claim, early, refs, None, stats, faces_in_view=1)
            return
        self._active = ActiveSession(claim, session, vision, refs)

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
        if decision.reason == ABANDONED:
            self._abandoned(decision, stats)
            return
        decision = self._identify(claim, decision, refs, probe)
        unknown = max(1, faces_in_view) if decision.reason == "mismatch" else 0
        event = event_for(self.cfg, claim, decision, unknown_faces=unknown)
        if event is not None and decision.stranger:
            event = self._stranger_event(event, stats)
        seq = self._emit(event[0], event[1], stats) if event is not None else 0
        # The relay moves right after the commit: nothing else (display, debug capture,
        # bookkeeping) may fail or stall between a booked accept and the door.
        fault = self._pulse() if seq is not None and decision.accepted else None
        summary = decision.to_dict()
        summary["event"] = event[0] if event else None
        summary["stored"] = seq is not None
        stats.add_decision(summary)
        if decision.stranger:
            stats.strangers += 1
        self._after_decision(decision)
        if seq is None:
            self._prompt(UNAVAILABLE, stats, "service_unavailable")
            return
        if fault is not None:
            self._actuator_fault(fault, seq, stats)
            return
        if decision.accepted:
            self._prompt("Verified - thank you", stats, "approved", **self._approved(claim))
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

    def _identify(
        self, claim: Claim, decision: Decision, refs: dict[str, Embedding], probe: Embedding | None
    ) -> Decision:
        """At a 1:few door, the accepted tenant is the household member nearest the probe."""
        if not (decision.accepted and claim.method == "household" and probe is not None and refs):
            return decision
        tenant = max(refs, key=lambda s: float(np.dot(refs[s], probe)))
        if self.presence is not None:
            try:
                self.presence.seen(tenant)
            except sqlite3.Error as exc:  # welfare bookkeeping never blocks the door
                log.error("presence store: %s", exc)
        return dataclasses.replace(decision, subject=tenant)

    def _stranger_event(
        self, event: tuple[str, dict[str, Any]], stats: KioskStats
    ) -> tuple[str, dict[str, Any]] | None:
        """A stranger's door.denied, rate-limited (edge.kiosk.household): None when this one
        is only counted, to be reported with the next."""
        count = self._strangers.add(self.clock())
        if count is None:
            self._stranger_held = event
            return None
        self._stranger_held = None
        return event[0], {**event[1], "unknown_faces": count}

    def _pulse(self) -> str | None:
        """Pulse the actuator; None, or the reason word of its failure."""
        try:
            self.actuator.pulse()
        except (ActuatorError, OSError) as exc:
            # ActuatorError: the relay refused or timed out (the actuator's own wrapping);
            # OSError: a serial write timeout or an unplugged board below it.
            log.error("actuator: pulse failed after a committed accept: %s", exc)
            timed_out = isinstance(exc, TimeoutError) or TIMED_OUT.search(str(exc))
            return "timeout" if timed_out else "error"
        return None

    def _actuator_fault(self, reason: str, accept_seq: int, stats: KioskStats) -> None:
        """The accept is booked but nothing opened: a signed `actuator.fault` naming the
        accept lets the backend compensate (void the fare or payment); the person is sent
        to the alternative and the operator alerted."""
        stats.actuator_faults += 1
        fields = {"actuator": self.cfg.actuator.kind, "accept_seq": accept_seq, "reason": reason}
        if accept_seq > 0:
            self._emit("actuator.fault", fields, stats)
        self._status_alert("actuator_fault", reason)
        self._prompt(RELAY_FAULT, stats, "alternative", reason="actuator_fault")

    def _abandoned(self, decision: Decision, stats: KioskStats) -> None:
        """SIGTERM or the end of the stream mid-session: not held against the person (no
        lockout failure, no denial event), only counted."""
        summary = decision.to_dict()
        summary["event"] = None
        summary["stored"] = None
        stats.add_decision(summary)
        stats.abandoned += 1
        self._after_decision(decision)

    def _after_decision(self, decision: Decision) -> None:
        """Bookkeeping after the decision (and the relay): the debug frame, the claim queue,
        the wait for the next person."""
        if self.debug_capture is not None and self._frame is not None:
            try:
                self.debug_capture.save(
                    self._frame.image, f"{decision.decision}-{decision.reason}"
                )
            except (OSError, FacegateError) as exc:  # ENOSPC on the tmpfs: never the loop's end
                log.warning("debug capture skipped: %s", exc)
        # A claim that arrived during this session is not carried over to the next person.
        clear = getattr(self.claims, "clear", None)
        if callable(clear):
            clear()
        # Whatever happened, the next session waits until this person has stepped away (or
        # someone else is at the kiosk: queue_rule.py).
        self._next.wait()

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

    def _abandon_session(self, t: float, stats: KioskStats) -> None:
        """SIGTERM, the end of the stream or a camera loan mid-session: the person did not
        fail (module doc)."""
        if self._active is None:
            return
        active, self._active = self._active, None
        decision = active.session.abandon(t)
        self._decide(active.claim, decision, active.refs, active.vision.last, stats,
                     faces_in_view=0)

    def _lend_camera_if_asked(self, t: float, stats: KioskStats) -> bool:
        """Lend the camera when an enrolment asks for it (module doc); True when it was lent
        (and is back, or the kiosk is stopping)."""
        lease = self.lease
        now = self.clock()
        if lease is None or now - self._lease_checked_at < LEASE_CHECK_S:
            return False
        self._lease_checked_at = now
        if not lease.requested():
            return False
        log.warning("camera lent to an enrolment: kiosk out of service until it is back")
        self._abandon_session(t, stats)
        suspend = getattr(self.source, "suspend", None)
        if callable(suspend):
            suspend()
        self._prompt("Out of service - maintenance", stats, "maintenance")
        lease.release()
        stats.camera_loans += 1
        while not self.stop_event.is_set():
            if not lease.requested() and lease.try_hold():
                break
            self.notifier.keepalive()
            self.stop_event.wait(LEASE_WAIT_S)
        if self.stop_event.is_set():
            return True
        reset = getattr(self.vision, "reset", None)
        if callable(reset):
            reset()  # the face tracked before the loan is not the one in view now
        resume = getattr(self.source, "resume", None)
        if callable(resume):
            resume()
        log.warning("camera back from the enrolment: kiosk in service")
        self._prompt("Please look at the camera", stats)
        return True

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
        household = self._household()
        try:
            self.presence.register(household)
            due = self.presence.due(household, sl.welfare_days)
        except sqlite3.Error as exc:
            log.error("presence store: welfare check skipped: %s", exc)
            return
        for subject, days, last in due:
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
                self._next.decided(active.session.tracked_box, active.vision.last)
                self._decide(active.claim, decision, active.refs, active.vision.last, stats,
                             faces_in_view=len(faces))
            return
        present = at_the_kiosk(faces, frame.image.shape[1])
        self._scan_qr(frame, stats)
        vision = self.vision
        embed = None if vision is None else (lambda marks: vision.embed(frame.image, marks))
        if not self._next.ready(t, present, embed):
            return
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

    def _vision_step(self, frame: Frame, stats: KioskStats) -> None:
        faces = self.vision.observe(frame.image) if self.vision is not None else []
        if faces:
            stats.frames_with_face += 1
        if self.vision is not None:
            self._on_frame(frame, faces, stats)

    def _bad_frame(self, frame: Frame, exc: DataError, stats: KioskStats) -> None:
        """A frame vision could not use (odd pixels, degenerate landmarks): counted and
        skipped; a running session simply sees one frame fewer. Logged at most once every
        BAD_FRAME_LOG_EVERY_S, so a failing camera cannot flood the journal."""
        stats.bad_frames += 1
        t = frame.t_monotonic
        if t - self._bad_frame_logged_t >= BAD_FRAME_LOG_EVERY_S:
            self._bad_frame_logged_t = t
            log.warning("frame %d skipped (%d so far): %s", frame.index, stats.bad_frames, exc)

    def _state_store_failed(self, exc: sqlite3.Error, stats: KioskStats) -> None:
        """The lockout store (or another state database of the session) could not be read or
        written: the session cannot be trusted to be counted, so it fails closed."""
        log.error("session state not stored: %s", exc)
        active, self._active = self._active, None
        stats.store_failures += 1
        self._status_alert("lockout_not_stored", "session")
        if active is not None:
            self._after_decision(Decision(active.claim.subject, False, "store_error", None, 0,
                                          None, False))  # fmt: skip
        self._prompt(UNAVAILABLE, stats, "service_unavailable")

    def _report_strangers(self, stats: KioskStats) -> None:
        """At the end of the run, strangers counted since the last report get theirs."""
        held = self._stranger_held
        if held is None or not self._strangers.pending:
            return
        self._stranger_held = None
        fields = {**held[1], "unknown_faces": self._strangers.take(self.clock())}
        self._emit(held[0], fields, stats)

    def run(self, max_frames: int | None = None) -> KioskStats:
        stats = KioskStats()
        t_start = self.clock()
        attach = getattr(self.source, "set_keepalive", None)  # live cameras: ping while reopening
        if callable(attach):
            attach(self.notifier.keepalive, self.notifier.watchdog_s)
        self.notifier.ready(f"watching {self.source.uri}")
        self._prompt("Please look at the camera", stats)
        last_t = 0.0
        perf = time.perf_counter
        ended_cleanly = False
        try:
            for frame in self.source:
                if self.stop_event.is_set():
                    break
                if self._lend_camera_if_asked(frame.t_monotonic, stats):
                    if self.stop_event.is_set():
                        break  # stopped while lent: never reopen a camera only to close it
                    continue  # the frame read before the loan is stale
                stats.frames += 1
                last_t = frame.t_monotonic
                self._frame = frame
                t0 = perf()
                try:
                    self._vision_step(frame, stats)
                except DataError as exc:
                    self._bad_frame(frame, exc, stats)
                except sqlite3.Error as exc:
                    self._state_store_failed(exc, stats)
                stats.frame_ms.append((perf() - t0) * 1000.0)
                self._maintenance(frame.t_monotonic, stats)
                self.notifier.keepalive()
                if max_frames is not None and stats.frames >= max_frames:
                    break
            self._abandon_session(last_t, stats)
            self._report_strangers(stats)
            ended_cleanly = True
        finally:
            # A stop or the end of the stream lets a door pulse under way run its course (the
            # accepted person is walking through); an exception closes the relay at once.
            self.actuator.close(finish_pulse=ended_cleanly)
            stats.elapsed_s = self.clock() - t_start
            self.notifier.stopping()
        return stats


def install_signal_handlers(kiosk: Kiosk) -> None:
    """SIGTERM (systemd stop) and SIGINT end the loop after the current frame."""
    signal.signal(signal.SIGTERM, kiosk.request_stop)
    signal.signal(signal.SIGINT, kiosk.request_stop)
