"""systemd readiness and watchdog notifications (the sd_notify datagram protocol).

The protocol is one datagram on the AF_UNIX socket named by $NOTIFY_SOCKET; outside systemd the
variable is unset and every call is a no-op. Ten lines do not justify a dependency that needs
libsystemd headers to build on the board.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends READY/WATCHDOG/STATUS to systemd when running under `Type=notify`."""

    def __init__(self, socket_path: str | None = None) -> None:
        path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
        if path.startswith("@"):
            path = "\0" + path[1:]  # abstract namespace socket
        self._path = path

    @property
    def enabled(self) -> bool:
        return bool(self._path)

    def notify(self, message: str) -> bool:
        if not self._path:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode("utf-8"), self._path)
        except OSError:
            return False  # systemd gone or socket not ours: the service keeps running
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")
