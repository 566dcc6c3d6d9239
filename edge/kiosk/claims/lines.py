"""Claim lines `SUBJECT [AMOUNT] [REF]` from a stream, a file or a FIFO; a fixed claim for demos.

A bad line is counted and logged without its content (it may hold a phone number) and ignored.
A FIFO is opened again after each writer closes it (EOF), so a POS that reconnects keeps being
heard; a regular file or stdin ends at EOF.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from edge.kiosk.claims.base import Claim, parse_claim_line
from edge.kiosk.claims.queue import ClaimQueue

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 20.0
MAX_LINE_CHARS = 1024


class FixedClaim:
    """The same claim for every session (`facegate run --claim`, demos, a single-tenant lock)."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim

    def poll(self) -> Claim | None:
        return self.claim


def _fifo_path(source: object) -> Path | None:
    name = source if isinstance(source, (str, Path)) else getattr(source, "name", None)
    if not isinstance(name, (str, Path)):
        return None
    try:
        return Path(name) if stat.S_ISFIFO(os.stat(name).st_mode) else None
    except OSError:
        return None


class LineClaims:
    """Claims read line by line on a daemon thread into a ClaimQueue; the newest claim wins.

    `source` is an iterable of lines (an open stream, a list), or the path of a file or FIFO.
    Claims expire after `timeout_s` seconds unused; `queue` lets several inputs share one queue.
    """

    def __init__(
        self,
        source: Iterable[str] | str | Path,
        method: str = "pos",
        *,
        queue: ClaimQueue | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue if queue is not None else ClaimQueue(timeout_s, clock)
        self.rejected = 0
        self.reopened = 0
        self._clock = clock
        self._method = method
        self._stop = threading.Event()
        self._fifo = _fifo_path(source)
        self._thread = threading.Thread(
            target=self._run, args=(source,), name="claims", daemon=True
        )
        self._thread.start()

    def _streams(self, source: Iterable[str] | str | Path) -> Iterator[Iterable[str]]:
        if isinstance(source, (str, Path)):
            first: Iterable[str] = open(source, encoding="utf-8", errors="replace")  # noqa: SIM115
        else:
            first = source
        yield first
        while self._fifo is not None and not self._stop.is_set():
            # Blocks until the next writer opens the FIFO; a daemon thread, so exit is not held.
            try:
                stream = open(self._fifo, encoding="utf-8", errors="replace")  # noqa: SIM115
            except OSError as exc:
                log.error("claims FIFO %s cannot be reopened (%s)", self._fifo, exc.strerror)
                self._stop.wait(1.0)
                continue
            self.reopened += 1
            yield stream

    def _run(self, source: Iterable[str] | str | Path) -> None:
        try:
            for stream in self._streams(source):
                try:
                    for line in self._bounded(stream):
                        if self._stop.is_set():
                            return
                        self._line(line)
                finally:
                    # Ours, or the caller's FIFO stream (spent at EOF: reopened by path); never
                    # the caller's stdin or file.
                    close: Callable[[], None] | None = getattr(stream, "close", None)
                    if close is not None and (stream is not source or self._fifo is not None):
                        close()
        except (OSError, ValueError) as exc:  # a stream that fails for good: say so once, end
            log.error("claim lines stopped: %s", type(exc).__name__)

    def _bounded(self, stream: Iterable[str]) -> Iterator[str]:
        # readline(limit) where the stream has it, so a line without end never fills memory.
        readline: Callable[[int], str] | None = getattr(stream, "readline", None)
        if readline is None:
            yield from stream
            return
        while line := readline(MAX_LINE_CHARS + 1):
            if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
                while line and not line.endswith("\n"):  # drop the rest of the overlong line
                    line = readline(MAX_LINE_CHARS + 1)
                line = "\0" * (MAX_LINE_CHARS + 1)  # refused below as overlong
            yield line

    def _line(self, line: str) -> None:
        if not line.strip():
            return
        try:
            if len(line) > MAX_LINE_CHARS:
                raise ValueError(f"line longer than {MAX_LINE_CHARS} characters")
            claim = parse_claim_line(line, self._method)
        except ValueError as exc:
            self.rejected += 1
            log.warning("claim line ignored: %s", exc)  # never log the line: it may be PII
            return
        self.queue.offer(claim, self._clock())

    def poll(self) -> Claim | None:
        """The newest unexpired claim, once (None if none is waiting)."""
        return self.queue.take(self._clock())

    def close(self) -> None:
        """Stop after the current line (a thread blocked on an idle FIFO stays parked)."""
        self._stop.set()
