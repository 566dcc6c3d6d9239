"""The kiosk loop end to end on real videos: claim -> liveness -> 1:1 / 1:few -> signed event.

The event must be committed to the outbox before the actuator moves; a kiosk that cannot store
the event fails closed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _broker import start_mosquitto
from conftest import require_data
from gpiozero.pins.mock import MockFactory
from test_outbox import outbox_on_a_full_disk

from edge.camera import open_source
from edge.config import ActuatorConfig, Config, parse_config
from edge.kiosk.actuators import GpioRelay
from edge.kiosk.claims import Claim, FixedClaim, LineClaims, parse_claim_line
from edge.kiosk.loop import Kiosk, KioskStats
from edge.kiosk.presence import DAY_S, PresenceStore
from edge.session.lockout import STRANGER_BELOW, LockoutStore
from edge.templates.store import TemplateStore, db_path
from edge.transport.outbox import Outbox
from edge.trust.events import EventFactory, verify_event
from edge.trust.keys import init_keys
from edge.vision.pipeline import VisionPipeline

PORTRAIT = "liveness/videos/blink_portrait_24fps.mp4"
WEBCAM = "liveness/videos/blink_webcam_7blinks_30fps.mp4"
# s-portrait is enrolled from the second half of PORTRAIT (`portrait_enrol`) and every session
# runs on the first half (`portrait_verify`): no frame is used for both.


@pytest.fixture(scope="module")
def vision() -> VisionPipeline:
    return VisionPipeline.from_config(Config())


def _mean_embedding(vision: VisionPipeline, path: Path, frames: int = 8) -> np.ndarray:
    vecs = []
    with open_source(f"file:{path}", realtime=False) as src:
        for frame in src:
            faces = vision.observe(frame.image)
            if faces and faces[0].landmarks is not None:
                vecs.append(vision.embed(frame.image, faces[0].landmarks))
            if len(vecs) == frames:
                break
    v = np.mean(vecs, axis=0)
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture(scope="module")
def enrolled(vision: VisionPipeline, portrait_enrol: Path) -> dict[str, np.ndarray]:
    return {"s-portrait": _mean_embedding(vision, portrait_enrol),
            "s-webcam": _mean_embedding(vision, require_data(WEBCAM))}


class Rig:
    def __init__(
        self, tmp: Path, cfg: Config, enrolled: dict[str, np.ndarray],
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.keys = init_keys(tmp / "state", cfg.device.id)
        self.store = TemplateStore(db_path(tmp / "state"), self.keys, clock=clock)
        for subject, emb in enrolled.items():
            self.store.enrol(subject, emb, validity_s=86400)
        self.outbox = Outbox(tmp / "state" / "outbox.db")
        self.factory = EventFactory(cfg.device.id, cfg.device.site, self.keys.signing_key)
        self.lockout = LockoutStore.open(tmp / "state", cfg.session)
        self.pins = MockFactory()
        self.relay = GpioRelay(ActuatorConfig(kind="gpio", pin=17, pulse_ms=5000),
                               pin_factory=self.pins)
        self.prompts: list[str] = []
        self.pin_when_stored: list[bool] = []

    def run(self, vision: Any, video: Path, claim: Claim | None,
            presence: PresenceStore | None = None, outbox: Outbox | None = None) -> KioskStats:
        with open_source(f"file:{video}", realtime=False) as src:
            kiosk = Kiosk(self.cfg, src, vision=vision, display=self.prompts.append,
                          claims=FixedClaim(claim) if claim else None, store=self.store,
                          outbox=outbox or self.outbox, factory=self.factory,
                          actuator=self.relay, lockout=self.lockout, presence=presence)
            return kiosk.run()

    def events(self) -> list[dict[str, Any]]:
        db = sqlite3.connect(self.outbox.path)
        rows = [bytes(r[0]) for r in db.execute("SELECT payload FROM outbox ORDER BY id")]
        db.close()
        pub = self.keys.signing_key.public_key()
        return [verify_event(r, pub) for r in rows]

    def close(self) -> None:
        self.store.close()
        self.outbox.close()
        self.lockout.close()


def _cfg(profile: str, extra: str = "") -> Config:
    return parse_config(f'profile = "{profile}"\n[device]\nid = "k-1"\nsite = "s-1"\n{extra}')


def test_bakery_payment_with_blink_books_a_signed_payment_event(
    tmp_path: Path, vision: VisionPipeline, enrolled: dict[str, np.ndarray], portrait_verify: Path
) -> None:
    rig = Rig(tmp_path, _cfg("bakery"), enrolled)
    stats = rig.run(vision, portrait_verify, parse_claim_line("s-portrait 120.50 pos-77"))
    (decision,) = stats.decisions
    assert decision["decision"] == "accept", decision
    assert "blink now" in rig.prompts and "Verified - thank you" in rig.prompts
    (event,) = rig.events()
    assert event["type"] == "payment.authorize" and event["amount"] == 12050
    assert event["currency"] == "CNY" and event["step_up"] is True
    assert event["pos_ref"] == "pos-77" and event["subject"] == "s-portrait"
    assert event["liveness"]["blinks"] >= 1 and event["score"] >= rig.cfg.verify.threshold
    assert rig.relay.pulses == 1
    rig.close()


def test_claiming_someone_else_is_rejected_and_nothing_actuates(
    tmp_path: Path, vision: VisionPipeline, enrolled: dict[str, np.ndarray], portrait_verify: Path
) -> None:
    rig = Rig(tmp_path, _cfg("fare_gate", '[session]\nchallenge = "always"\n'), enrolled)
    stats = rig.run(vision, portrait_verify, Claim("s-webcam", None, "", "qr"))
    (decision,) = stats.decisions
    assert decision["decision"] == "reject" and decision["reason"] == "mismatch"
    (event,) = rig.events()
    assert event["type"] == "verify.reject" and event["reason"] == "mismatch"
    assert event["claim"] == "qr"
    assert rig.relay.pulses == 0 and rig.pins.pin(17).state is False
    rig.close()


def test_smart_lock_identifies_the_tenant_among_the_household(
    tmp_path: Path, vision: VisionPipeline, enrolled: dict[str, np.ndarray], portrait_verify: Path
) -> None:
    cfg = _cfg("smart_lock", '[smart_lock]\ndoor = "d-9"\nhousehold = ["s-webcam", "s-portrait"]\n')
    rig = Rig(tmp_path, cfg, enrolled)
    presence = PresenceStore(tmp_path / "presence.sqlite")
    stats = rig.run(vision, portrait_verify, None, presence=presence)
    assert stats.decisions[0]["decision"] == "accept"
    event = next(e for e in rig.events() if e["type"] == "door.unlock")
    assert event["subject"] == "s-portrait" and event["door"] == "d-9"
    assert rig.relay.pulses == 1
    presence.close()
    rig.close()


def test_smart_lock_denies_a_stranger_with_an_unknown_face_count(
    tmp_path: Path, vision: VisionPipeline, enrolled: dict[str, np.ndarray], portrait_verify: Path
) -> None:
    cfg = _cfg("smart_lock", '[smart_lock]\ndoor = "d-9"\nhousehold = ["s-webcam"]\n')
    rig = Rig(tmp_path, cfg, {"s-webcam": enrolled["s-webcam"]})
    rig.run(vision, portrait_verify, None)
    denied = [e for e in rig.events() if e["type"] == "door.denied"]
    # A face far from every tenant: counted as a stranger, never against the tenants' door.
    assert denied and denied[0]["reason"] == "stranger" and denied[0]["unknown_faces"] >= 1
    assert denied[0]["score"] < STRANGER_BELOW
    assert rig.lockout.failures("d-9") == 0
    assert rig.relay.pulses == 0
    rig.close()


def test_kiosk_fails_closed_when_the_event_cannot_be_stored(
    tmp_path: Path, vision: VisionPipeline, enrolled: dict[str, np.ndarray], portrait_verify: Path
) -> None:
    """The state directory's disk is full: SQLite refuses the event (the real outbox, the real
    "database or disk is full"), so nothing actuates and the customer is sent to PIN or card."""
    rig = Rig(tmp_path, _cfg("bakery"), enrolled)
    full = outbox_on_a_full_disk(tmp_path / "full-outbox.db")
    stats = rig.run(vision, portrait_verify, parse_claim_line("s-portrait 20"), outbox=full)
    (decision,) = stats.decisions
    assert decision["decision"] == "accept" and decision["stored"] is False
    assert list(stats.events) == [] and stats.store_failures == 1
    assert rig.relay.pulses == 0 and rig.pins.pin(17).state is False
    assert rig.prompts[-1] == "Service unavailable - please pay or open with PIN or card"
    assert "Verified - thank you" not in rig.prompts
    full.close()
    rig.close()


def test_claim_for_a_subject_without_template_is_refused(
    tmp_path: Path, vision: VisionPipeline, enrolled: dict[str, np.ndarray], portrait_verify: Path
) -> None:
    rig = Rig(tmp_path, _cfg("bakery"), enrolled)
    stats = rig.run(vision, portrait_verify, parse_claim_line("s-nobody 5"))
    assert stats.decisions[0]["reason"] == "no_template"
    assert rig.events()[0]["type"] == "verify.reject"
    rig.close()


def test_welfare_alert_after_days_unseen_once_a_day(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    store = PresenceStore(tmp_path / "p.sqlite", clock=lambda: now[0])
    store.register(["t-1", "t-2"])
    now[0] += 2 * DAY_S
    store.seen("t-2")
    assert store.due(["t-1", "t-2"], days=3) == []
    now[0] += 1.5 * DAY_S
    due = store.due(["t-1", "t-2"], days=3)
    assert [(s, d) for s, d, _ in due] == [("t-1", 3)]
    assert due[0][2] is None  # never seen since the lock started tracking
    assert store.due(["t-1", "t-2"], days=3) == []  # not again the same day
    now[0] += DAY_S
    assert [s for s, _, _ in store.due(["t-1", "t-2"], days=3)] == ["t-1"]
    store.seen("t-1")
    assert store.due(["t-1"], days=3) == []
    store.close()


def test_claim_lines_are_parsed_strictly_and_bad_lines_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert parse_claim_line("s-1 12.5 pos-9") == Claim("s-1", 12.5, "pos-9", "pos")
    for bad in ("", "a b c d", "../x", "s-1 lots", "s-1 -4", "s-1 nan", "s-1 1 bad/ref"):
        with pytest.raises(ValueError):
            parse_claim_line(bad)
    claims = LineClaims(iter(["13812345678 oops\n", "s-2 3\n"]))
    claims._thread.join(5)
    assert claims.poll() == Claim("s-2", 3.0, "", "pos") and claims.rejected == 1
    assert "13812345678" not in caplog.text


def test_demo_run_command_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    path = require_data(PORTRAIT)
    env = {**__import__("os").environ, "FACEGATE_STATE_DIR": str(tmp_path / "st")}
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "run", "--config", "config/demo.toml",
         "--source", f"file:{path}", "--max-frames", "200"],
        capture_output=True, text=True, timeout=300, env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 200 and summary["decisions"]
    assert summary["decisions"][0]["decision"] == "accept"
    assert "[kiosk] blink now" in proc.stdout
    assert summary["decisions"][0]["event"] is None  # a demo accept is shown, never booked


def test_run_command_enrols_verifies_and_publishes_a_signed_payment_over_mqtt(
    tmp_path: Path, portrait_enrol: Path, portrait_verify: Path
) -> None:
    import os
    import subprocess
    import sys
    import threading

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from edge.trust.keys import load_keys

    broker = start_mosquitto(tmp_path)
    site, device = "s-mq", f"k-{os.getpid()}"
    cfg_path = tmp_path / "k.toml"
    cfg_path.write_text(
        f'profile = "bakery"\n[device]\nid = "{device}"\nsite = "{site}"\n'
        f'[paths]\nstate_dir = "{tmp_path / "st"}"\n[camera]\nrealtime = false\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
    )
    env = {**os.environ, "FACEGATE_CONFIG": str(cfg_path)}
    env.pop("FACEGATE_STATE_DIR", None)
    repo = Path(__file__).resolve().parent.parent

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True,
                              text=True, timeout=300, env=env, cwd=repo)

    assert cli("keys", "init").returncode == 0
    enrol = cli("enroll", "s-portrait", "--source", f"file:{portrait_enrol}", "--frames", "5")
    assert enrol.returncode == 0, enrol.stderr

    got: list[bytes] = []
    arrived, subscribed = threading.Event(), threading.Event()
    sub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        got.append(bytes(msg.payload))
        arrived.set()

    sub.on_message = on_message
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.subscribe(f"facegate/v1/{site}/{device}/event/#", qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(10), "the broker did not acknowledge the subscription"
        run = cli("run", "--claim", "s-portrait 42.00 r-1", "--source", f"file:{portrait_verify}")
        assert run.returncode == 0, run.stderr
        assert arrived.wait(20), "no event reached the broker"
    finally:
        sub.loop_stop()
        sub.disconnect()
        broker.stop()
    keys = load_keys(tmp_path / "st", device)
    event = verify_event(got[0], keys.signing_key.public_key())
    assert event["type"] == "payment.authorize" and event["amount"] == 4200
    assert event["subject"] == "s-portrait" and event["decision"] == "accept"


def test_kiosk_destroys_past_due_templates_during_maintenance(
    tmp_path: Path, vision: VisionPipeline, enrolled: dict[str, np.ndarray], portrait_verify: Path
) -> None:
    now = [1_800_000_000.0]
    rig = Rig(tmp_path, _cfg("bakery"), {"s-webcam": enrolled["s-webcam"]}, clock=lambda: now[0])
    rig.store.enrol("s-short", enrolled["s-portrait"], validity_s=1)
    now[0] += 2.0  # the store's clock, not a sleep: s-short is now past due
    with open_source(f"file:{portrait_verify}", realtime=False) as src:
        Kiosk(rig.cfg, src, vision=vision, display=rig.prompts.append, store=rig.store).run(
            max_frames=2
        )
    states = {i.subject: i.state for i in rig.store.list_all()}
    assert states == {"s-webcam": "active", "s-short": "expired"}
    rig.close()


def test_the_idle_screen_says_offline_but_queued_while_events_wait_for_the_broker(
    tmp_path: Path, portrait_verify: Path
) -> None:
    from edge.kiosk.display.dispatcher import Dispatcher
    from edge.kiosk.display.state import KioskState

    class Recorder:
        def __init__(self) -> None:
            self.states: list[KioskState] = []

        def publish(self, state: KioskState) -> None:
            self.states.append(state)

        def stop(self) -> None:
            pass

    cfg = _cfg("fare_gate")
    keys = init_keys(tmp_path / "state", cfg.device.id)
    factory = EventFactory(cfg.device.id, cfg.device.site, keys.signing_key)
    recorder, prompts = Recorder(), []
    with Outbox(tmp_path / "state" / "outbox.db") as outbox:
        for up, pending in ((True, False), (False, False), (False, True)):
            if pending:
                outbox.emit(factory, "verify.reject", subject="s-1", decision="reject",
                            score=None, liveness={"blinks": 0, "challenge_ms": 0},
                            reason="timeout")  # fmt: skip
            prompts.clear()
            recorder.states.clear()
            with open_source(f"file:{portrait_verify}", realtime=False) as src:
                Kiosk(cfg, src, vision=None, display=prompts.append, outbox=outbox,
                      factory=factory, dispatcher=Dispatcher([recorder]),
                      link_up=lambda up=up: up).run(max_frames=1)  # fmt: skip
            offline = [s.state for s in recorder.states] == ["offline_queued"]
            assert offline == (not up and pending), (up, pending, prompts)
