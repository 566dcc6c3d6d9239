"""Door relays, gate triggers and the like: pulse on a positive decision, fail-secure otherwise.

Fail-secure means the relay is de-energised (locked) at rest, after every pulse, on any error,
and on shutdown. `gpiozero` and `pyserial` are imported only when such an actuator is configured;
tests pass a gpiozero `MockFactory` as the pin factory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from edge.config import ActuatorConfig
from edge.errors import FacegateError

log = logging.getLogger(__name__)


class ActuatorError(FacegateError):
    prefix = "actuator error"


class Actuator(Protocol):
    """Something that opens for `pulse_ms` and closes again by itself."""

    def pulse(self) -> None: ...

    def close(self, finish_pulse: bool = False) -> None: ...


class NoActuator:
    """Profiles without hardware (demo, a POS that only needs the event)."""

    def __init__(self) -> None:
        self.pulses = 0

    def pulse(self) -> None:
        self.pulses += 1

    def close(self, finish_pulse: bool = False) -> None:
        pass


class _Pulser:
    """Energise, wait pulse_ms on a timer thread, de-energise; a new pulse restarts the timer."""

    def __init__(self, on: Callable[[], None], off: Callable[[], None], pulse_ms: int) -> None:
        self._on, self._off, self._pulse_s = on, off, pulse_ms / 1000.0
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.pulses = 0

    def pulse(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            try:
                self._on()
            except Exception:
                self._safe_off()
                raise
            self.pulses += 1
            self._timer = threading.Timer(self._pulse_s, self._safe_off)
            self._timer.daemon = True
            self._timer.start()

    def _safe_off(self) -> None:
        try:
            self._off()
        except Exception as exc:  # nothing more we can do than shout: the relay state is unknown
            log.error("actuator: could not de-energise the relay: %s", exc)

    def close(self, finish_pulse: bool = False) -> None:
        """De-energise and release. With `finish_pulse`, a pulse under way (an accepted person
        walking through) first runs its course, at most pulse_ms: a stop or the end of the
        stream must not cut the door short. A crash path closes at once."""
        timer = self._timer
        if finish_pulse and timer is not None:
            timer.join(self._pulse_s + 0.5)
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._safe_off()

    def __enter__(self) -> _Pulser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # a crash between pulse and release still leaves the door locked


class GpioRelay(_Pulser):
    """A relay on a GPIO pin through gpiozero (real pins on a Pi, MockFactory in tests)."""

    def __init__(self, cfg: ActuatorConfig, pin_factory: Any | None = None) -> None:
        try:
            from gpiozero import OutputDevice
        except ImportError:
            raise ActuatorError(
                "actuator.kind = 'gpio' needs gpiozero: sudo apt install python3-gpiozero "
                "(or pip install 'facegate[pi]')"
            ) from None
        try:
            # initial_value=False drives the pin straight to the *inactive* level for this
            # board's polarity (output_with_state), so the door never opens during start-up.
            self.device = OutputDevice(
                cfg.pin, active_high=cfg.active_high, initial_value=False, pin_factory=pin_factory
            )
        except Exception as exc:
            raise ActuatorError(
                f"actuator.pin = {cfg.pin}: cannot claim the GPIO pin ({exc}); check the pin "
                "number and that the service user is in group 'gpio'"
            ) from None
        super().__init__(self.device.on, self.device.off, cfg.pulse_ms)

    def close(self, finish_pulse: bool = False) -> None:
        super().close(finish_pulse)
        self.device.close()


def relay_frames(protocol: str, channel: int) -> tuple[bytes, bytes]:
    """The (on, off) commands of a serial relay board.

    `lcus`: the LCUS-1 type CH340 boards take 4-byte frames A0 <channel> <state> <sum>, sum =
    (0xA0 + channel + state) & 0xFF; an ASCII line is ignored by them (the gate never opens).
    `ascii`: boards that take the lines ON / OFF.
    """
    if protocol == "ascii":
        return b"ON\n", b"OFF\n"
    if protocol != "lcus" or not 1 <= channel <= 0xFF:
        raise ActuatorError(
            f"actuator.protocol = {protocol!r}, channel = {channel}: unknown relay protocol or "
            "channel; use protocol = 'lcus' (channel 1-8) or 'ascii'"
        )

    def frame(state: int) -> bytes:
        return bytes((0xA0, channel, state, (0xA0 + channel + state) & 0xFF))

    return frame(1), frame(0)


class SerialRelay(_Pulser):
    """A USB/serial relay board (9600 baud) speaking `actuator.protocol` (see relay_frames)."""

    WRITE_TIMEOUT_S = 1.0

    def __init__(self, cfg: ActuatorConfig) -> None:
        import serial

        self._port_name = cfg.serial_port
        on, off = relay_frames(cfg.protocol, cfg.channel)
        try:
            self.port = serial.Serial(
                cfg.serial_port, 9600, timeout=1, write_timeout=self.WRITE_TIMEOUT_S
            )
        except (serial.SerialException, OSError) as exc:
            raise ActuatorError(
                f"actuator.serial_port = {cfg.serial_port!r}: cannot open ({exc}); check the "
                "cable and that the service user is in group 'dialout'"
            ) from None
        super().__init__(lambda: self._send(on), lambda: self._send(off), cfg.pulse_ms)
        try:
            self._send(off)  # fail-secure from the start, whatever state the board was left in
        except ActuatorError:
            self.port.close()
            raise

    def _send(self, data: bytes) -> None:
        import serial

        try:
            self.port.write(data)
            self.port.flush()
        except serial.SerialTimeoutException:
            raise ActuatorError(
                f"actuator.serial_port = {self._port_name!r}: the relay board did not take the "
                f"command within {self.WRITE_TIMEOUT_S:g} s (write timeout); check the board "
                "and the cable"
            ) from None
        except (serial.SerialException, OSError) as exc:
            raise ActuatorError(
                f"actuator.serial_port = {self._port_name!r}: write failed ({exc}); check the "
                "cable (unplugged?)"
            ) from None

    def close(self, finish_pulse: bool = False) -> None:
        super().close(finish_pulse)
        self.port.close()


def make_actuator(cfg: ActuatorConfig, *, pin_factory: Any | None = None) -> Actuator:
    """The actuator named by `actuator.kind`."""
    if cfg.kind == "gpio":
        return GpioRelay(cfg, pin_factory=pin_factory)
    if cfg.kind == "serial":
        return SerialRelay(cfg)
    return NoActuator()


def wait_released(relay: _Pulser, timeout_s: float) -> bool:
    """Test helper: wait until the pulse timer has fired (True) or `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        timer = relay._timer
        if timer is None or not timer.is_alive():
            return True
        time.sleep(0.005)
    return False
