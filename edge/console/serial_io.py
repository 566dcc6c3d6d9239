"""Line I/O over a serial port (pyserial): bounded CR/LF-terminated lines."""

from __future__ import annotations

import time
from typing import Any

from edge.console.session import MAX_LINE

READ_CHUNK = 4096  # bytes a read; with MAX_LINE this bounds the buffer to ~4.4 kB


class SerialLineIO:
    """LineIO over pyserial: assembles CR/LF-terminated lines, bounded in length.

    A line longer than MAX_LINE is discarded as it arrives (the buffer never grows past
    MAX_LINE + READ_CHUNK) and reported once, as MAX_LINE + 1 bytes, when its terminator comes.
    """

    def __init__(self, port: Any) -> None:
        self.port = port
        self._buf = bytearray()
        self._overflow = False

    def _next_line(self) -> bytes | None:
        ends = [i for i in (self._buf.find(b"\n"), self._buf.find(b"\r")) if i >= 0]
        while ends:
            idx = min(ends)
            sep = self._buf[idx : idx + 1]
            line = bytes(self._buf[:idx])
            del self._buf[: idx + 1]
            if self._overflow:
                self._overflow = False
                return b"x" * (MAX_LINE + 1)  # report the overlong line once
            if line or sep != b"\n":  # an empty LF line is the second half of a CRLF
                return line
            ends = [i for i in (self._buf.find(b"\n"), self._buf.find(b"\r")) if i >= 0]
        if len(self._buf) > MAX_LINE:
            self._buf.clear()
            self._overflow = True
        return None

    def read_line(self, timeout_s: float) -> bytes | None:
        deadline = time.monotonic() + timeout_s
        while True:
            line = self._next_line()
            if line is not None:
                return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.port.timeout = min(remaining, 0.2)
            chunk = self.port.read(min(max(1, self.port.in_waiting), READ_CHUNK))
            if chunk:
                self._buf.extend(chunk)

    def write(self, text: str) -> None:
        self.port.write(text.encode("utf-8", "replace"))
        self.port.flush()
