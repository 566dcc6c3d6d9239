"""Line I/O over a serial port (pyserial): bounded CR/LF-terminated lines."""

from __future__ import annotations

import time
from typing import Any

from edge.console.session import MAX_LINE


class SerialLineIO:
    """LineIO over pyserial: assembles CR/LF-terminated lines, bounded in length."""

    def __init__(self, port: Any) -> None:
        self.port = port
        self._buf = bytearray()
        self._overflow = False

    def read_line(self, timeout_s: float) -> bytes | None:
        deadline = time.monotonic() + timeout_s
        while True:
            for sep in (b"\n", b"\r"):
                idx = self._buf.find(sep)
                if idx >= 0:
                    line = bytes(self._buf[:idx])
                    del self._buf[: idx + 1]
                    if self._overflow:
                        self._overflow = False
                        return b"x" * (MAX_LINE + 1)  # report the overlong line once
                    if not line and sep == b"\n":
                        continue  # second half of a CRLF
                    return line
            if len(self._buf) > MAX_LINE:
                self._buf.clear()
                self._overflow = True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.port.timeout = min(remaining, 0.2)
            chunk = self.port.read(max(1, self.port.in_waiting))
            if chunk:
                self._buf.extend(chunk)

    def write(self, text: str) -> None:
        self.port.write(text.encode("utf-8", "replace"))
        self.port.flush()
