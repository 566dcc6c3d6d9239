"""Actuators are fail-secure: energised only for the pulse, off at rest, on error and on close."""

from __future__ import annotations

import contextlib
import os
import pty

import pytest
from conftest import wait_until
from gpiozero.pins.mock import MockFactory

from edge.config import ActuatorConfig
from edge.kiosk.actuators import (
    ActuatorError,
    GpioRelay,
    NoActuator,
    SerialRelay,
    make_actuator,
    wait_released,
)


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


def test_pin_already_in_use_is_a_clear_error() -> None:
    factory = MockFactory()
    first = GpioRelay(ActuatorConfig(kind="gpio", pin=5), pin_factory=factory)
    with pytest.raises(ActuatorError, match="actuator.pin = 5: cannot claim"):
        GpioRelay(ActuatorConfig(kind="gpio", pin=5), pin_factory=factory)
    first.close()


def test_serial_relay_speaks_on_off_over_a_real_pty() -> None:
    master, slave = pty.openpty()
    name = os.ttyname(slave)
    relay = SerialRelay(ActuatorConfig(kind="serial", serial_port=name, pulse_ms=40))
    relay.pulse()
    got = bytearray()
    os.set_blocking(master, False)

    def three_lines() -> bool:
        with contextlib.suppress(BlockingIOError):
            got.extend(os.read(master, 1024))
        return got.count(b"\n") >= 3

    try:
        wait_until(three_lines, 5.0, "OFF (at open), ON and OFF (pulse end) on the serial line")
    finally:
        relay.close()
        os.close(master)
        os.close(slave)
    assert bytes(got).replace(b"\r", b"").split(b"\n")[:3] == [b"OFF", b"ON", b"OFF"]


def test_missing_serial_port_is_a_clear_error() -> None:
    with pytest.raises(ActuatorError, match="cannot open"):
        SerialRelay(ActuatorConfig(kind="serial", serial_port="/dev/ttyFACEGATE-none"))


def test_none_actuator_counts_pulses() -> None:
    act = make_actuator(ActuatorConfig(kind="none"))
    assert isinstance(act, NoActuator)
    act.pulse()
    assert act.pulses == 1
