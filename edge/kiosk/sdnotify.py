"""systemd readiness and watchdog notifications (the sd_notify datagram protocol).

The protocol is one datagram on the AF_UNIX socket named by $NOTIFY_SOCKET; outside systemd the
variable is unset and every call is a no-op. Ten lines do not justify a dependency that needs
libsystemd headers to build on the board.

The watchdog interval comes from $WATCHDOG_USEC (set by systemd from `WatchdogSec=`; honoured
only when $WATCHDOG_PID is unset or names this process, as sd_watchdog_enabled does). Without
it no watchdog pings are needed and `keepalive` sends nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

# Ping at a quarter of the interval: systemd asks for "at least every half", and a frame that
# takes long (inference on a busy board) must not eat the margin.
PINGS_PER_INTERVAL = 4


def watchdog_interval_s(
    env: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """The systemd watchdog interval in seconds, or None when this process has no watchdog."""
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC", "").strip()
    if not raw:
        return None
    owner = env.get("WATCHDOG_PID", "").strip()
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None  # the watchdog belongs to another process (our parent, a wrapper)
    try:
        usec = int(raw)
    except ValueError:
        usec = 0
    if usec <= 0:
        log.warning("WATCHDOG_USEC=%r is not a positive integer; watchdog pings disabled", raw)
        return None
    return usec / 1e6


class Notifier:
    """Sends READY/WATCHDOG/STATUS to systemd when running under `Type=notify`."""

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        watchdog_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
        if path.startswith("@"):
            path = "\0" + path[1:]  # abstract namespace socket
        self._path = path
        self.watchdog_s = watchdog_s if watchdog_s is not None else watchdog_interval_s()
        self._clock = clock
        self._last_ping = -1e18
        self._failures = 0  # length of the current streak of failed sends

    @property
    def enabled(self) -> bool:
        return bool(self._path)

    @property
    def ping_every_s(self) -> float | None:
        """How often `keepalive` must be called while waiting; None without a watchdog."""
        if not self._path or self.watchdog_s is None:
            return None
        return self.watchdog_s / PINGS_PER_INTERVAL

    def notify(self, message: str) -> bool:
        if not self._path:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode("utf-8"), self._path)
        except OSError as exc:
            # The service keeps running, but systemd may now kill it for a missed watchdog:
            # say so once per streak of failures, not on every frame.
            if self._failures == 0:
                shown = self._path.replace("\0", "@")
                log.warning("sd_notify to %s failed (%s); systemd may consider the service hung",
                            shown, exc)
            self._failures += 1
            return False
        if self._failures:
            log.info("sd_notify works again after %d failed sends", self._failures)
            self._failures = 0
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def keepalive(self) -> None:
        """Ping the watchdog when a ping is due; cheap enough to call on every frame."""
        every = self.ping_every_s
        if every is None:
            return
        now = self._clock()
        if now - self._last_ping >= every:
            self._last_ping = now
            self.watchdog()

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")
