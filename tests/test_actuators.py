"""Actuators are fail-secure: energised only for the pulse, off at rest, on error and on close."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from _cli import REPO, cli_env, facegate
from conftest import wait_until
from gpiozero.pins.mock import MockFactory

from edge.camera.base import Frame
from edge.config import ActuatorConfig, parse_config
from edge.errors import ConfigError, SourceError
from edge.kiosk.actuators import (
    ActuatorError,
    GpioRelay,
    NoActuator,
    SerialRelay,
    make_actuator,
    relay_frames,
    wait_released,
)
from edge.kiosk.loop import Kiosk

WEBCAM = "liveness/videos/blink_webcam_7blinks_30fps.mp4"


def test_gpio_relay_is_off_at_rest_on_for_the_pulse_and_off_again() -> None:
    factory = MockFactory()
    relay = GpioRelay(ActuatorConfig(kind="gpio", pin=17, pulse_ms=50), pin_factory=factory)
    pin = factory.pin(17)
    assert pin.state is False
    relay.pulse()
    assert pin.state is True
    assert wait_released(relay, 2.0)
    assert pin.state is False
    relay.close()


def test_active_low_relay_board_is_driven_inverted() -> None:
    factory = MockFactory()
    relay = GpioRelay(
        ActuatorConfig(kind="gpio", pin=27, active_high=False, pulse_ms=30), pin_factory=factory
    )
    pin = factory.pin(27)
    assert pin.state is True  # active-low: high level = relay off
    relay.pulse()
    assert pin.state is False
    assert wait_released(relay, 2.0)
    assert pin.state is True
    relay.close()


def test_closing_during_a_pulse_locks_immediately() -> None:
    factory = MockFactory()
    relay = GpioRelay(ActuatorConfig(kind="gpio", pin=22, pulse_ms=10_000), pin_factory=factory)
    relay.pulse()
    assert factory.pin(22).state is True
    relay.close()
    assert factory.pin(22).state is False


@pytest.mark.parametrize("active_high", [True, False], ids=["active-high", "active-low"])
def test_gpio_relay_is_never_driven_on_during_start_up(active_high: bool) -> None:
    factory = MockFactory()
    pin = factory.pin(23)  # as the board boots: an undriven input (floating reads low)
    off_level = not active_high
    relay = GpioRelay(ActuatorConfig(kind="gpio", pin=23, active_high=active_high, pulse_ms=50),
                      pin_factory=factory)  # fmt: skip
    assert pin.function == "output" and pin.state is off_level
    # The only level ever driven is "off": for an active-low board, a driven low would have
    # opened the door for the duration of the start-up.
    assert [s.state for s in pin.states][1:] in ([], [off_level])
    relay.close()


def test_a_crash_between_pulse_and_release_leaves_the_door_locked() -> None:
    factory = MockFactory()
    pin = factory.pin(24)
    relay = GpioRelay(ActuatorConfig(kind="gpio", pin=24, pulse_ms=10_000), pin_factory=factory)
    with pytest.raises(RuntimeError, match="boom"), relay:
        relay.pulse()
        assert pin.state is True  # during the pulse
        raise RuntimeError("boom")
    assert pin.state is False  # locked at once, not after the 10 s pulse
    assert [s.state for s in pin.states] == [False, True, False]


class _CameraDiesDuringThePulse:
    """A Source whose first frame is followed by an accepted decision (the door pulses) and
    then by the camera giving up, as LiveSource does after its reopen budget."""

    uri = "cam:0"

    def __init__(self, relay: GpioRelay) -> None:
        self.relay = relay

    def __enter__(self) -> _CameraDiesDuringThePulse:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __iter__(self) -> Iterator[Frame]:
        yield Frame(np.zeros((8, 8, 3), np.uint8), 0.0, 0)
        self.relay.pulse()
        raise SourceError("cam:0: camera stopped delivering frames")

    def close(self) -> None:
        pass


def test_the_kiosk_locks_the_door_when_it_dies_mid_pulse() -> None:
    factory = MockFactory()
    relay = GpioRelay(ActuatorConfig(kind="gpio", pin=25, pulse_ms=10_000), pin_factory=factory)
    kiosk = Kiosk(parse_config('profile = "smart_lock"\n'), _CameraDiesDuringThePulse(relay),
                  vision=None, display=lambda _text: None, actuator=relay)  # fmt: skip
    with pytest.raises(SourceError, match="stopped delivering"):
        kiosk.run()
    pin = factory.pin(25)
    assert [s.state for s in pin.states] == [False, True, False]
    assert pin.function == "input"  # released: the device was closed on the way out


def test_pin_already_in_use_is_a_clear_error() -> None:
    factory = MockFactory()
    first = GpioRelay(ActuatorConfig(kind="gpio", pin=5), pin_factory=factory)
    with pytest.raises(ActuatorError, match="actuator.pin = 5: cannot claim"):
        GpioRelay(ActuatorConfig(kind="gpio", pin=5), pin_factory=factory)
    first.close()


class _Board:
    """The far end of a real pseudo-terminal: what a USB relay board receives, with arrival
    times (the relay opens the slave path with pyserial, as it opens /dev/ttyUSB0)."""

    def __init__(self) -> None:
        self.master, self._slave = pty.openpty()
        self.path = os.ttyname(self._slave)
        os.set_blocking(self.master, False)
        self.got = bytearray()
        self.arrivals: list[tuple[float, int]] = []  # (monotonic time, bytes received so far)

    def poll(self) -> None:
        with contextlib.suppress(BlockingIOError):
            chunk = os.read(self.master, 4096)
            self.got.extend(chunk)
            self.arrivals.append((time.monotonic(), len(self.got)))

    def wait_bytes(self, n: int, what: str) -> None:
        def enough() -> bool:
            self.poll()
            return len(self.got) >= n

        wait_until(enough, 5.0, what, interval_s=0.002)

    def arrival_of(self, n: int) -> float:
        """When the board had received its first `n` bytes."""
        return next(t for t, total in self.arrivals if total >= n)

    def listen(self) -> threading.Thread:
        """Record what arrives until close(), on a thread (the writer is another process)."""
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.is_set():
                self.poll()
                time.sleep(0.002)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self._thread

    def close(self) -> None:
        """Stop listening, then read what is still buffered in the pty (the writer may have
        written its last frame just before exiting, between two polls of a loaded machine)."""
        if hasattr(self, "_stop"):
            self._stop.set()
            self._thread.join(5.0)
        before = -1
        while len(self.got) != before:
            before = len(self.got)
            self.poll()
        os.close(self.master)
        os.close(self._slave)


@pytest.mark.parametrize(
    ("protocol", "channel", "on", "off"),
    [
        ("lcus", 1, bytes.fromhex("A0 01 01 A2"), bytes.fromhex("A0 01 00 A1")),
        ("lcus", 2, bytes.fromhex("A0 02 01 A3"), bytes.fromhex("A0 02 00 A2")),
        ("ascii", 1, b"ON\n", b"OFF\n"),
    ],
    ids=["lcus-ch1", "lcus-ch2", "ascii"],
)
def test_serial_relay_sends_the_boards_exact_frames_off_on_off_over_a_real_pty(
    protocol: str, channel: int, on: bytes, off: bytes
) -> None:
    board = _Board()
    cfg = ActuatorConfig(kind="serial", serial_port=board.path, pulse_ms=200,
                         protocol=protocol, channel=channel)  # fmt: skip
    try:
        relay = make_actuator(cfg)
        board.wait_bytes(len(off), "the OFF sent when the relay is opened (fail-secure start)")
        assert bytes(board.got) == off
        relay.pulse()
        board.wait_bytes(len(off + on + off), "ON, then OFF when the pulse ends")
        assert bytes(board.got) == off + on + off
        held_s = board.arrival_of(len(off + on + off)) - board.arrival_of(len(off + on))
        # The stamps are taken by this process's 2 ms polling: on a loaded 2-core machine the
        # ON frame can be read (and stamped) some 10-20 ms late, which shortens the measured
        # hold (seen: 0.188 s in a full parallel run), so the lower bound allows 30 ms.
        assert 0.17 <= held_s <= 0.2 + 0.3, f"relay held {held_s:.3f} s for a 200 ms pulse"
        relay.close()
        board.wait_bytes(len(off + on + off + off), "OFF again on close")
        assert bytes(board.got) == off + on + off + off
    finally:
        board.close()


def _fill(fd: int) -> None:
    """Write until the pty takes nothing more, also after the kernel moved its flip buffers
    into the line discipline (that happens on a work queue, a moment after the first EAGAIN)."""
    for _ in range(100):
        wrote = 0
        with contextlib.suppress(BlockingIOError):
            for _ in range(1000):
                wrote += os.write(fd, b"\0" * 1024)
        if wrote == 0:
            return
        time.sleep(0.05)
    raise AssertionError("the pty buffer never filled")


def test_serial_relay_write_times_out_with_a_clear_error_when_the_board_reads_nothing() -> None:
    board = _Board()  # nobody reads the master: the pty buffer fills as a stuck board's would
    relay = SerialRelay(ActuatorConfig(kind="serial", serial_port=board.path, pulse_ms=50))
    filler = os.open(board.path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        _fill(filler)
        t0 = time.monotonic()
        with pytest.raises(ActuatorError, match=r"did not take the command within 1 s \(write "
                           r"timeout\)"):  # fmt: skip
            relay.pulse()
        waited = time.monotonic() - t0
        assert 1.0 <= waited <= 4.0, waited  # ON timed out, then the fail-secure OFF did too
        assert relay.pulses == 0
    finally:
        os.close(filler)
        relay.close()  # logs that OFF could not be sent either; must not raise
        board.close()


def test_unknown_relay_protocol_or_channel_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config('[actuator]\nkind = "serial"\nprotocol = "modbus"\nchannel = 9\n')
    assert err.value.lines() == [
        "config error: actuator.protocol = 'modbus': must be one of 'lcus', 'ascii'",
        "config error: actuator.channel = 9: must be between 1 and 8",
    ]
    with pytest.raises(ActuatorError, match="unknown relay protocol"):
        relay_frames("modbus", 1)


def test_missing_serial_port_is_a_clear_error() -> None:
    with pytest.raises(ActuatorError, match="cannot open"):
        SerialRelay(ActuatorConfig(kind="serial", serial_port="/dev/ttyFACEGATE-none"))


def test_none_actuator_counts_pulses() -> None:
    act = make_actuator(ActuatorConfig(kind="none"))
    assert isinstance(act, NoActuator)
    act.pulse()
    assert act.pulses == 1


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)  # strings, numbers and lists of them read back the same in TOML


def _shipped_profile_with(board: Path, state: Path) -> str:
    """config/fare_gate.toml as shipped, with only what this machine lacks swapped out: the
    relay's port (a pty), the state dir, the card reader, QR, the display and the broker."""
    cfg = tomllib.loads((REPO / "config" / "fare_gate.toml").read_text())
    assert cfg["actuator"]["kind"] == "serial" and "protocol" in cfg["actuator"], cfg["actuator"]
    cfg["actuator"]["serial_port"] = str(board)
    cfg["paths"]["state_dir"] = str(state)
    cfg["camera"]["realtime"] = False
    cfg["claims"].update(card_port="", qr=False)
    cfg["display"]["enabled"] = False
    cfg["mqtt"] = {"enabled": False}
    top = [f"{k} = {_toml_value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    tables = [
        f"[{name}]\n" + "\n".join(f"{k} = {_toml_value(v)}" for k, v in body.items())
        for name, body in cfg.items() if isinstance(body, dict)
    ]  # fmt: skip
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"


def test_fare_gate_run_opens_the_lcus_gate_once_for_the_enrolled_rider(
    tmp_path: Path, video_part: Callable[..., Path]
) -> None:
    """As wired: `facegate run` with the shipped fare_gate profile, an accepted rider, and the
    LCUS relay board on a pty: OFF at start, ON for pulse_ms (800), OFF, and OFF on exit."""
    board = _Board()
    cfg = tmp_path / "fare_gate.toml"
    cfg.write_text(_shipped_profile_with(Path(board.path), tmp_path / "state"))
    env = cli_env(cfg)
    board.listen()
    try:
        assert facegate(env, "keys", "init").returncode == 0
        r = facegate(env, "enroll", "s-rider-1", "--source",
                     f"file:{video_part(WEBCAM, 150, 210)}")  # fmt: skip
        assert r.returncode == 0, r.stderr
        r = facegate(env, "run", "--source", f"file:{video_part(WEBCAM, 0, 60)}",
                     "--claim", "s-rider-1")  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        time.sleep(0.05)
    finally:
        board.close()
    decisions = json.loads(r.stdout.strip().splitlines()[-1])["decisions"]
    assert [d["decision"] for d in decisions] == ["accept"], decisions
    on, off = bytes.fromhex("A0 01 01 A2"), bytes.fromhex("A0 01 00 A1")
    assert bytes(board.got) == off + on + off + off, bytes(board.got).hex(" ")
    held_s = board.arrival_of(12) - board.arrival_of(8)
    assert 0.79 <= held_s <= 0.8 + 0.4, held_s
