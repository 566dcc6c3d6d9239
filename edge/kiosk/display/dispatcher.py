"""One dispatcher fans each kiosk state out to every listener (Frigate's comms pattern).

The kiosk calls `Dispatcher.publish` once per change; the display server, and later the MQTT
status and the console, are `Listener`s. A listener that raises is logged and skipped: a broken
screen or stream never stops the kiosk loop or the other listeners.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Protocol

from edge.kiosk.display.state import KioskState

log = logging.getLogger(__name__)


class Listener(Protocol):
    """An outward channel for kiosk states. `publish` must not block the caller."""

    def publish(self, state: KioskState) -> None: ...

    def stop(self) -> None: ...


class Dispatcher:
    """Thread-safe fan-out of `KioskState`s to listeners; remembers the last state.

    Every listener sees the states in the same order (one lock around the fan-out), and a
    listener added later is first given the last state, so it starts where the kiosk is.
    """

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self._lock = threading.RLock()
        self._listeners: list[Listener] = list(listeners)
        self._failing: dict[int, int] = {}  # id(listener) -> consecutive failures
        self._last: KioskState | None = None

    @property
    def last(self) -> KioskState | None:
        """The last state published, or None before the first."""
        with self._lock:
            return self._last

    @property
    def listeners(self) -> tuple[Listener, ...]:
        with self._lock:
            return tuple(self._listeners)

    def add(self, listener: Listener) -> None:
        """Add a listener; it is given the last state at once, if there is one."""
        with self._lock:
            self._listeners.append(listener)
            if self._last is not None:
                self._deliver(listener, self._last)

    def remove(self, listener: Listener) -> None:
        """Stop sending states to `listener` (it is not stopped)."""
        with self._lock:
            self._listeners = [x for x in self._listeners if x is not listener]
            self._failing.pop(id(listener), None)

    def publish(self, state: KioskState) -> None:
        """Send `state` to every listener; never raises because of a listener."""
        with self._lock:
            self._last = state
            for listener in self._listeners:
                self._deliver(listener, state)

    def stop(self) -> None:
        """Stop every listener (each one's failure is logged, the others still stop)."""
        with self._lock:
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            try:
                listener.stop()
            except Exception:
                log.exception("display listener %r failed to stop", listener)

    def _deliver(self, listener: Listener, state: KioskState) -> None:
        key = id(listener)
        try:
            listener.publish(state)
        except Exception:
            failures = self._failing.get(key, 0) + 1
            self._failing[key] = failures
            # The traceback once per run of failures: a listener that keeps failing must not
            # flood the journal at the kiosk's state rate.
            if failures == 1:
                log.exception("listener %r failed on state %r; skipped", listener, state.state)
            else:
                log.debug("listener %r failed again (%d in a row)", listener, failures)
            return
        failures = self._failing.pop(key, 0)
        if failures:
            log.warning("listener %r works again after %d failures", listener, failures)
