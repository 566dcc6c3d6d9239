"""`facegate demo`: the whole flow on the clip shipped inside the package, no camera needed.

One person (the embedded LivePortrait clip, MIT) is enrolled from the end of the clip, then
verified with a blink on an earlier, disjoint part of it; then an attacker holds up a still of
the same face. Both decisions become signed events in the outbox; when a broker answers on
127.0.0.1:1883 a reference backend (its own process, as deployed) books them into a local
ledger, otherwise the demo says they are queued. A recording cannot react to a prompt, so the
demo times the prompt just before the blink it knows the clip holds.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge.camera import open_source
from edge.camera.base import Frame
from edge.camera.demo import embedded_clip
from edge.config import Config
from edge.kiosk.claims import Claim
from edge.kiosk.display.dispatcher import Dispatcher
from edge.kiosk.display.state import KioskState
from edge.kiosk.profiles import event_for
from edge.session.decision import Decision
from edge.session.verification import PipelineVision, VerificationSession
from edge.templates.enroll import EnrolmentCapture, build_template, enrol_template
from edge.templates.store import TemplateStore, db_path
from edge.transport.mqtt import MqttLink
from edge.transport.outbox import OUTBOX_FILE, Outbox
from edge.trust.events import EventFactory
from edge.trust.keys import init_keys, public_keys
from edge.vision.pipeline import VisionPipeline
from edge.vision.track import FaceTracker

SUBJECT = "demo-visitor"
ENROL_FROM = 300  # frames 300.. hold a blink (332): enrolment
VERIFY = (170, 300)  # frames 170..299 hold the blink at 221: the verified session
BLINK_FRAME = 221
PROMPT_LEAD_S = 0.4  # the prompt is shown this long before the recorded blink
ATTACK_FRAME, ATTACK_S = 100, 3.0  # the same face held still
AMOUNT = 12.5
BROKER = ("127.0.0.1", 1883)

Say = Callable[[str], None]


def _frames(uri: str, cfg: Config) -> Iterator[Frame]:
    with open_source(uri, cfg.camera, realtime=False) as src:
        yield from src


def _enrol(cfg: Config, pipeline: VisionPipeline, store: TemplateStore, uri: str) -> None:
    capture = EnrolmentCapture(cfg, pipeline, cfg.templates.enroll_frames)
    for frame in _frames(uri, cfg):
        if frame.index >= ENROL_FROM and capture.step(frame, pipeline.observe(frame)):
            break
    min_agreement = cfg.templates.enroll_min_agreement
    template = build_template(capture.finish(), capture.n_frames, min_agreement)
    enrol_template(store, SUBJECT, template, cfg)


def _session(
    cfg: Config, pipeline: VisionPipeline, refs: list[Any], frames: Iterator[Frame],
    prompt_after_s: float | None, publish: Callable[[KioskState], None],
) -> Decision:
    """One session over `frames` (streamed); the prompt `prompt_after_s` after the first one."""
    first = next(frames)
    t0 = first.t_monotonic
    prompt_t = None if prompt_after_s is None else t0 + prompt_after_s
    vision = FaceTracker(pipeline, cfg.vision.detect_every)  # a live stream: tracked
    session = VerificationSession(
        cfg, PipelineVision(vision), rng=random.Random(0),
        prompt_at=(lambda t: max(t, prompt_t)) if prompt_t is not None else None,
    )  # fmt: skip
    session.wait_for_claim(t0)
    early = session.claim(SUBJECT, refs, t0, amount=AMOUNT)
    if early is not None:
        return early
    shown = None
    last_t = t0
    for frame in itertools.chain([first], frames):
        last_t = frame.t_monotonic
        decision = session.step(frame, vision.observe(frame))
        if session.prompt != shown and session.prompt:
            end = session.challenge_window_end_t
            left = {} if end is None else {"seconds_left": round(end - frame.t_monotonic, 1)}
            publish(KioskState("blink", left))
        shown = session.prompt
        if decision is not None:
            return decision
    return session.end_of_stream(last_t)


def _verify_frames(source: Iterator[Frame], kept: dict[str, Frame]) -> Iterator[Frame]:
    """Frames VERIFY[0]..VERIFY[1]-1 of one pass over the clip, streamed (not held in memory);
    the still for the attack is kept on the way."""
    for frame in source:
        if frame.index == ATTACK_FRAME:
            kept["still"] = frame
        if frame.index >= VERIFY[1]:
            return
        if frame.index >= VERIFY[0]:
            yield frame


def _attack_frames(still: Frame, fps: float) -> Iterator[Frame]:
    """The same frame held still for ATTACK_S seconds."""
    return (Frame(still.image, k / fps, k) for k in range(int(ATTACK_S * fps)))


def _broker_up() -> bool:
    try:
        with socket.create_connection(BROKER, timeout=0.5):
            return True
    except OSError:
        return False


def _backend(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.backend.cli", *args], text=True,
                          capture_output=True, timeout=60, check=False, **kw)  # fmt: skip


def _wait_subscribed(worker: subprocess.Popen[str], timeout_s: float = 15.0) -> None:
    """Read the worker's log until it has subscribed (its `subscribed to` line)."""
    assert worker.stderr is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and worker.poll() is None:
        line = worker.stderr.readline()
        if "subscribed to" in line:
            return


def _book(cfg: Config, outbox: Outbox, signing_public: str, state: Path, say: Say) -> None:
    """Publish the outbox to the local broker and book it with a reference backend worker."""
    ledger = state / "demo-ledger.db"
    db = ["--db", str(ledger)]
    _backend(["devices", "add", cfg.device.id, signing_public, "--site", cfg.device.site, *db])
    worker = subprocess.Popen(
        [sys.executable, "-m", "edge.backend.cli", "run", "--broker", f"mqtt://{BROKER[0]}:{BROKER[1]}",
         *db, "--group", f"demo{os.getpid()}", "--client-id", f"demo-backend-{os.getpid()}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_subscribed(worker)  # events published before that would find nobody
        mcfg = dataclasses.replace(
            cfg.mqtt, enabled=True, host=BROKER[0], port=BROKER[1], tls=False
        )
        link = MqttLink(
            mcfg, cfg.device.id, cfg.device.site, outbox, announce_status=False,
            persistent_session=False, client_id=f"facegate-demo-{os.getpid()}",
        )  # fmt: skip
        link.start()
        try:
            link.drain(15.0)
        finally:
            link.stop()
        totals: dict[str, Any] = {}
        for _ in range(50):
            r = _backend(["ledger", "--json", *db])
            totals = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else {}
            if totals.get("events", 0) >= 2:
                break
            time.sleep(0.2)
        say(f"booked by the reference backend into {ledger}: {json.dumps(totals, sort_keys=True)}")
    finally:
        worker.terminate()
        worker.wait(timeout=10)


def run_demo(cfg: Config, state: Path, dispatcher: Dispatcher | None, say: Say = print) -> int:
    """The demo flow (module doc) in a fresh state directory `state`."""
    publish = dispatcher.publish if dispatcher is not None else (lambda s: None)
    uri = f"file:{embedded_clip()}"
    keys = init_keys(state, cfg.device.id)
    pipeline = VisionPipeline.from_config(cfg)
    say(f"1/4 enrolling {SUBJECT!r} from frames {ENROL_FROM}.. of {embedded_clip().name}")
    publish(KioskState("look"))
    with TemplateStore(db_path(state), keys) as store:
        _enrol(cfg, pipeline, store, uri)
        refs = [store.reference(SUBJECT)]
    kept: dict[str, Frame] = {}
    bakery = dataclasses.replace(cfg, profile="bakery")
    claim = Claim(SUBJECT, AMOUNT, "demo-1", "keypad")
    with Outbox(state / OUTBOX_FILE, cfg.outbox.max_events) as outbox:
        factory = EventFactory(cfg.device.id, cfg.device.site, keys.signing_key)

        def show_and_sign(d: Decision) -> None:
            publish(KioskState("approved", {"kind": "payment", "amount": AMOUNT,
                                            "currency": cfg.bakery.currency})
                    if d.accepted else KioskState("denied", {"reason": d.reason or "rejected"}))
            made = event_for(bakery, claim, d)
            event = outbox.emit(factory, made[0], **made[1]) if made else None
            say(json.dumps({**d.to_dict(), "event": event.type if event else None,
                            "seq": event.seq if event else None}, sort_keys=True))  # fmt: skip

        with open_source(uri, cfg.camera, realtime=False) as src:
            fps = float(getattr(src, "fps", cfg.camera.fps))
            prompt_after = (BLINK_FRAME - VERIFY[0]) / fps - PROMPT_LEAD_S
            say("2/4 verified session with a blink (frames 170-299)")
            show_and_sign(_session(cfg, pipeline, refs, _verify_frames(iter(src), kept),
                                   prompt_after, publish))  # fmt: skip
        say("3/4 attack: the same face held still for 3 s")
        show_and_sign(
            _session(cfg, pipeline, refs, _attack_frames(kept["still"], fps), None, publish)
        )
        say("4/4 signed events in the outbox:")
        for item in outbox.peek(10):
            ev = json.loads(item.payload)
            say(f"  {ev['type']} seq={ev['seq']} subject={ev['subject']} "
                f"decision={ev['decision']} sig={ev['sig'][:16]}…")  # fmt: skip
        if _broker_up():
            _book(cfg, outbox, public_keys(keys)["signing_public"], state, say)
        else:
            say(f"no broker at {BROKER[0]}:{BROKER[1]}: {outbox.status()['pending']} events "
                f"stay queued in {state / OUTBOX_FILE}; `facegate outbox drain` sends them")
    return 0

