"""Containment in the kiosk loop, with the real parts (vision on real video, SQLite outbox and
lockout, a serial relay on a pseudo-terminal): nothing one frame, one part or one stranger does
ends the run, locks the tenants out, or leaves a booked accept without a trace.

Through `facegate run` (subprocesses, SIGTERM, an immutable outbox, the smart lock as shipped):
tests/test_kiosk_wired.py.
"""

# ruff: noqa: F811  (fixtures imported from other test modules are redefined as parameters)
from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_kiosk import Rig, _cfg, _mean_embedding, enrolled, vision  # noqa: F401 (fixtures)

from edge.camera import open_source
from edge.camera.base import Frame
from edge.config import ActuatorConfig
from edge.kiosk.actuators import make_actuator
from edge.kiosk.claims import FixedClaim, parse_claim_line
from edge.kiosk.display.dispatcher import Dispatcher
from edge.kiosk.display.state import KioskState
from edge.kiosk.loop import RELAY_FAULT, Kiosk, KioskStats
from edge.kiosk.stats import RECENT_DECISIONS, RECENT_EVENTS, TIMING_RING
from edge.session.lockout import STRANGER_BELOW
from edge.vision.pipeline import VisionPipeline

BAD_EVERY = 7  # one frame in 7 is one vision cannot use


class OddFrames:
    """The replayed video with every BAD_EVERY-th frame replaced by one the pipeline refuses
    (float32 pixels: what a misconfigured camera driver hands over), a DataError inside the
    vision step."""

    def __init__(self, path: Path) -> None:
        self.uri = f"file:{path}"
        self.path = path
        self.bad = 0

    def __enter__(self) -> OddFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None

    def __iter__(self) -> Iterator[Frame]:
        with open_source(self.uri, realtime=False) as src:
            for frame in src:
                if frame.index % BAD_EVERY == 3:
                    self.bad += 1
                    yield Frame(frame.image.astype(np.float32), frame.t_monotonic, frame.index)
                else:
                    yield frame


def fill_tty(fd: int) -> None:
    """Write until the terminal takes nothing more: the kernel moves queued bytes on to the
    line discipline's buffer in the background, so fill again after a pause until a round
    after the pause fits nothing."""
    while True:
        written = 0
        for chunk in (b"x" * 1024, b"x"):  # big chunks, then the last bytes that still fit
            try:
                while True:
                    written += os.write(fd, chunk)
            except BlockingIOError:
                pass
        if not written:
            return
        time.sleep(0.2)


class FullTmpfs:
    """Debug capture whose tmpfs is full: `save` fails as the real write does (ENOSPC)."""

    def __init__(self) -> None:
        self.calls = 0

    def save(self, image: Any, label: str) -> Path:
        self.calls += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/dev/shm/facegate-debug/x.jpg")


class Recorder:
    def __init__(self) -> None:
        self.states: list[KioskState] = []

    def publish(self, state: KioskState) -> None:
        self.states.append(state)

    def stop(self) -> None:
        return None


def test_bad_frames_are_counted_and_skipped_and_a_full_debug_tmpfs_cannot_stop_the_door(
    tmp_path: Path, vision: VisionPipeline, enrolled: dict[str, np.ndarray], portrait_verify: Path
) -> None:
    rig = Rig(tmp_path, _cfg("bakery"), enrolled)
    source, capture = OddFrames(portrait_verify), FullTmpfs()
    kiosk = Kiosk(rig.cfg, source, vision=vision, display=rig.prompts.append,
                  claims=FixedClaim(parse_claim_line("s-portrait 20")), store=rig.store,
                  outbox=rig.outbox, factory=rig.factory, actuator=rig.relay,
                  lockout=rig.lockout, debug_capture=capture)  # type: ignore[arg-type]  # fmt: skip
    stats = kiosk.run()
    assert source.bad > 10 and stats.bad_frames == source.bad  # every odd frame, each skipped
    assert stats.totals()["bad_frames"] == source.bad
    first = stats.decisions[0]
    assert (first["decision"], first["stored"]) == ("accept", True), first
    # The capture ran (and failed) after the relay: the booked accept opened the relay.
    assert capture.calls >= 1 and rig.relay.pulses >= 1
    assert rig.events()[0]["type"] == "payment.authorize"
    assert "Verified - thank you" in rig.prompts
    rig.close()


def test_a_relay_that_times_out_after_the_commit_leaves_a_signed_actuator_fault(
    tmp_path: Path, vision: VisionPipeline, enrolled: dict[str, np.ndarray], portrait_verify: Path
) -> None:
    """A USB relay board that stops reading: its tty buffer is full, the write times out."""
    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.close(slave)
    relay = make_actuator(ActuatorConfig(kind="serial", serial_port=path, pulse_ms=200))
    # The board stops reading: fill the terminal's queue until a write would block.
    writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
    fill_tty(writer)
    rig = Rig(tmp_path, _cfg("bakery", f'[actuator]\nkind = "serial"\nserial_port = "{path}"\n'),
              enrolled)  # fmt: skip
    recorder = Recorder()
    try:
        with open_source(f"file:{portrait_verify}", realtime=False) as src:
            stats = Kiosk(rig.cfg, src, vision=vision, display=rig.prompts.append,
                          claims=FixedClaim(parse_claim_line("s-portrait 20 pos-5")),
                          store=rig.store, outbox=rig.outbox, factory=rig.factory,
                          actuator=relay, lockout=rig.lockout,
                          dispatcher=Dispatcher([recorder])).run()  # fmt: skip
        events = rig.events()
    finally:
        os.close(writer)
        os.close(master)
    pay = next(e for e in events if e["type"] == "payment.authorize")
    faults = [e for e in events if e["type"] == "actuator.fault"]
    assert faults, (events, rig.prompts, stats.totals(), list(stats.decisions))
    assert faults[0]["accept_seq"] == pay["seq"] and faults[0]["seq"] > pay["seq"]
    assert faults[0]["actuator"] == "serial" and faults[0]["reason"] == "timeout", faults[0]
    assert stats.actuator_faults == len(faults) and stats.totals()["actuator_faults"] >= 1
    # The person is sent to the alternative, the operator alerted through the state channel.
    assert RELAY_FAULT in rig.prompts and "Verified - thank you" not in rig.prompts
    names = [(s.state, s.detail) for s in recorder.states]
    assert ("service_unavailable", {"problem": "actuator_fault"}) in names, names
    assert ("alternative", {"reason": "actuator_fault"}) in names, names
    rig.close()


def test_a_stream_ending_mid_challenge_is_not_held_against_the_person(
    tmp_path: Path, vision: VisionPipeline, enrolled: dict[str, np.ndarray],
    video_part: Any,
) -> None:  # fmt: skip
    # 20 frames (0.8 s) between two of the man's blinks (frames 40 and 82): acquired, the blink
    # prompt pending, then the camera stream ends. No blink in the part, so however the claim
    # and the frames interleave on a loaded machine, the session cannot have passed.
    clip = video_part("liveness/videos/blink_portrait_24fps.mp4", 50, 70)
    rig = Rig(tmp_path, _cfg("bakery"), enrolled)
    stats = rig.run(vision, clip, parse_claim_line("s-portrait 250 pos-9"))
    (d,) = stats.decisions
    assert d["reason"] == "abandoned" and d["event"] is None and d["liveness"]["required"]
    assert stats.abandoned == 1 and rig.events() == []
    assert rig.lockout.failures("s-portrait") == 0
    rig.close()


def test_a_look_alike_counts_for_the_door_lockout_a_stranger_does_not(
    tmp_path: Path, vision: VisionPipeline, enrolled: dict[str, np.ndarray], portrait_verify: Path
) -> None:
    """A tenant template a little off the person at the door (cosine ~0.90: above "far",
    below the door's 0.930) is a near-match, counted as today; the stranger case (~0.86) is
    tests/test_kiosk.py::test_smart_lock_denies_a_stranger_with_an_unknown_face_count."""
    e = enrolled["s-portrait"].astype(np.float64)
    u = np.random.default_rng(7).standard_normal(e.shape)
    u -= (u @ e) * e
    u /= np.linalg.norm(u)
    look_alike = (0.915 * e + np.sqrt(1 - 0.915**2) * u).astype(np.float32)
    cfg = _cfg("smart_lock", "[smart_lock]\ndoor = \"d-9\"\n[verify]\nthreshold = 0.930\n")
    rig = Rig(tmp_path, cfg, {"s-lookalike": look_alike})
    stats = rig.run(vision, portrait_verify, None)
    first = stats.decisions[0]
    assert (first["decision"], first["reason"]) == ("reject", "mismatch"), first
    assert STRANGER_BELOW <= first["score"] < cfg.verify.threshold, first
    assert rig.lockout.failures("d-9") == 1
    denied = [e for e in rig.events() if e["type"] == "door.denied"]
    assert denied[0]["reason"] == "mismatch" and denied[0]["unknown_faces"] == 1
    rig.close()


def test_kiosk_stats_stay_bounded_over_a_long_run() -> None:
    stats = KioskStats()
    for i in range(20_000):
        stats.add_decision({"decision": "reject" if i % 3 else "accept", "reason": "no_blink",
                            "timing_ms": {"total": float(i % 500)}})  # fmt: skip
        stats.add_event("door.denied", i + 1)
        stats.frame_ms.append(float(i % 40))
        stats.prompts.append(f"prompt {i}")
    assert len(stats.decisions) == RECENT_DECISIONS and len(stats.events) == RECENT_EVENTS
    assert len(stats.session_ms) == len(stats.frame_ms) == TIMING_RING
    assert len(stats.prompts) <= 32
    totals = stats.totals()
    assert totals["sessions"] == 20_000 and totals["events_total"] == 20_000
    assert totals["outcomes"] == {"accept": 6667, "reject:no_blink": 13333}
    assert stats.events[-1] == "door.denied:20000"
    assert totals["session_ms"]["n"] == TIMING_RING and 0 <= totals["session_ms"]["p50_ms"] < 500


def test_an_outbox_failing_with_a_raw_sqlite_error_fails_closed(
    tmp_path: Path, vision: VisionPipeline, enrolled: dict[str, np.ndarray], portrait_verify: Path
) -> None:
    """Whatever layer of the outbox lets SQLite's own exception through (a read-only
    database here: the real connection, the real error), the kiosk fails closed."""
    rig = Rig(tmp_path, _cfg("bakery"), enrolled)
    rig.outbox._db.execute("PRAGMA query_only = ON")  # SQLite now refuses every write
    rig.outbox.emit = lambda factory, type_, **f: rig.outbox._db.execute(  # type: ignore
        "INSERT INTO outbox(key) VALUES ('x')"
    )
    with pytest.raises(sqlite3.OperationalError):
        rig.outbox.emit(rig.factory, "x")
    recorder = Recorder()
    with open_source(f"file:{portrait_verify}", realtime=False) as src:
        stats = Kiosk(rig.cfg, src, vision=vision, display=rig.prompts.append,
                      claims=FixedClaim(parse_claim_line("s-portrait 20")), store=rig.store,
                      outbox=rig.outbox, factory=rig.factory, actuator=rig.relay,
                      lockout=rig.lockout, dispatcher=Dispatcher([recorder])).run()  # fmt: skip
    assert stats.decisions[0]["stored"] is False and stats.store_failures >= 1
    assert rig.relay.pulses == 0 and rig.pins.pin(17).state is False
    assert "Service unavailable - please pay or open with PIN or card" in rig.prompts
    assert ("service_unavailable", {"problem": "event_not_stored"}) in [
        (s.state, s.detail) for s in recorder.states
    ]
    rig.close()


def test_a_lockout_store_that_cannot_be_written_fails_the_session_closed(
    tmp_path: Path, vision: VisionPipeline, enrolled: dict[str, np.ndarray], portrait_verify: Path
) -> None:
    """Someone claims another person's account (a counted failure) while the lockout
    database refuses writes: the real SQLite error; the kiosk fails closed and runs on."""
    rig = Rig(tmp_path, _cfg("bakery"), enrolled)
    rig.lockout._db.execute("PRAGMA query_only = ON")
    stats = rig.run(vision, portrait_verify, parse_claim_line("s-webcam 20"))
    assert stats.store_failures >= 1 and stats.frames > 100  # the run went on to the end
    assert "Service unavailable - please pay or open with PIN or card" in rig.prompts
    assert rig.relay.pulses == 0 and rig.events() == []
    rig.close()
