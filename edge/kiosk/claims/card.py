"""Serial card reader: one card number per line, turned into a pseudonymous subject id.

The reader runs on a daemon thread and survives what a real reader and cable do: garbage
(non-digits, binary noise, lines over `MAX_LINE_BYTES`) is counted and ignored, and a device that
disappears (USB unplugged, pty closed) is reopened with back-off. The card number is hashed at
once (`edge.trust.subject_ids`) and never logged or stored.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import serial

from edge.kiosk.claims.base import Claim
from edge.kiosk.claims.queue import ClaimQueue
from edge.trust.subject_ids import require_subject_key, subject_from_number

log = logging.getLogger(__name__)
MAX_LINE_BYTES = 64
CARD_DIGITS = re.compile(rb"[0-9]{4,32}")
READ_TIMEOUT_S = 0.2  # how often the thread looks at its stop flag
BACKOFF_S = (0.2, 5.0)  # first and longest wait before reopening a lost device


class CardReader:
    """Reads card numbers from `port` (a device path or pyserial URL) at `baud` into `queue`."""

    def __init__(
        self,
        port: str,
        baud: int,
        queue: ClaimQueue,
        subject_key: bytes | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff_s: tuple[float, float] = BACKOFF_S,
    ) -> None:
        self.port, self.baud = port, baud
        self._key = require_subject_key(subject_key)  # fail at start-up, not at the first tap
        self._queue = queue
        self._clock = clock
        self._backoff_s = backoff_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="card-reader", daemon=True)
        self.cards = 0  # card numbers turned into claims
        self.ignored = 0  # garbage lines
        self.opens = 0  # successful (re)opens of the device
        self.connected = False

    def start(self) -> CardReader:
        self._thread.start()
        return self

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def __enter__(self) -> CardReader:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _open(self) -> Any:
        return serial.serial_for_url(self.port, baudrate=self.baud, timeout=READ_TIMEOUT_S)

    def _run(self) -> None:
        wait_s = self._backoff_s[0]
        reported = False
        while not self._stop.is_set():
            try:
                dev = self._open()
            except (serial.SerialException, OSError, ValueError) as exc:
                if not reported:  # once per outage, not once per retry
                    log.warning("card reader %s unavailable (%s); retrying", self.port,
                                type(exc).__name__)  # fmt: skip
                    reported = True
                self._stop.wait(wait_s)
                wait_s = min(wait_s * 2, self._backoff_s[1])
                continue
            self.opens += 1
            self.connected, reported, wait_s = True, False, self._backoff_s[0]
            log.info("card reader %s open", self.port)
            try:
                self._read(dev)
            except (serial.SerialException, OSError) as exc:
                log.warning("card reader %s lost (%s); reopening", self.port, type(exc).__name__)
            except Exception as exc:  # noqa: BLE001 - a reader thread that dies reads no cards
                log.error("card reader %s failed (%s); reopening", self.port, type(exc).__name__)
            finally:
                self.connected = False
                with contextlib.suppress(serial.SerialException, OSError):
                    dev.close()
            self._stop.wait(wait_s)

    def _read(self, dev: Any) -> None:
        buf = b""
        discarding = False  # inside an overlong line: drop bytes until its end
        while not self._stop.is_set():
            chunk: bytes = dev.read(max(1, min(dev.in_waiting, 4096)))
            if not chunk:
                continue
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for line in lines:
                if discarding:
                    discarding = False  # the rest of the overlong line, already counted
                    continue
                self._line(line)
            if len(buf) > MAX_LINE_BYTES:
                if not discarding:
                    self.ignored += 1
                    log.warning("card reader line over %d bytes ignored", MAX_LINE_BYTES)
                discarding, buf = True, b""

    def _line(self, line: bytes) -> None:
        line = line.strip(b" \t")
        if not line:
            return
        if len(line) > MAX_LINE_BYTES or not CARD_DIGITS.fullmatch(line):
            self.ignored += 1
            log.warning("card reader line ignored (not a card number)")  # never the content
            return
        subject = subject_from_number("card", line.decode("ascii"), self._key)
        self.cards += 1
        self._queue.offer(Claim(subject, None, "", "card"), self._clock())
        log.info("card claim read")
