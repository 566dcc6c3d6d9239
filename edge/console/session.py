"""Technician console session: login, commands, audit; never prints secrets.

Line protocol over a serial port (or a pty in tests). Nothing is echoed back; the technician's
terminal echoes locally. A session starts logged out: `login` asks for the technician PIN (or a
one-time code). After `console.max_attempts` failures the console locks for `lockout_s`,
doubling with each further lockout; the counters live in the state dir so a reboot does not
reset them. Every command, including failed logins, is handed to `audit` (a `console.audit`
event). Output goes through `redact`, which masks long digit runs (phone numbers) and long
hex/base64 runs (key or template material) as a last line of defence.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

from edge.console.auth import AuthStore
from edge.ids import ID_RULE, is_valid_id

MAX_LINE = 256
IDLE_LOGOUT_S = 300.0
MAX_LINES_PER_S = 20
_PHONE = re.compile(r"(?<![\w+])\+?\d(?:[ -]?\d){6,}(?!\w)")
_BLOB = re.compile(r"[A-Za-z0-9+/_-]{40,}={0,2}")

HELP = """commands (after login):
  status             device, profile, outbox and template counts
  diag               model files, camera, keys, broker checks
  templates          list templates (metadata only)
  enrol SUBJECT      enrol SUBJECT from the camera
  revoke SUBJECT     revoke SUBJECT's template
  wipe CONFIRM       erase every template on this device
  logs [N]           last N log lines (default 20)
  logout             end the session"""


def redact(text: str) -> str:
    """Mask phone-number-like digit runs (keep the last 4) and long hex/base64 runs."""
    text = _BLOB.sub("[redacted]", text)
    def mask(m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        return "*" * (len(digits) - 4) + digits[-4:]

    return _PHONE.sub(mask, text)


class LineIO(Protocol):
    """Reads one raw line (bytes, without terminator; None on timeout) and writes text."""

    def read_line(self, timeout_s: float) -> bytes | None: ...

    def write(self, text: str) -> None: ...


class ConsoleServices(Protocol):
    """What the console can do on the device; every method returns printable metadata only."""

    def status(self) -> dict[str, Any]: ...

    def diagnostics(self) -> dict[str, Any]: ...

    def templates(self) -> list[dict[str, Any]]: ...

    def enrol(self, subject: str) -> str: ...

    def revoke(self, subject: str) -> str: ...

    def wipe(self) -> int: ...

    def logs(self, n: int) -> list[str]: ...


Audit = Callable[[str, bool, str], None]


class Console:
    """One technician console on one line; `serve` runs until `should_stop()` is true."""

    def __init__(
        self,
        io: LineIO,
        services: ConsoleServices,
        auth: AuthStore,
        audit: Audit,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.io, self.services, self.auth, self.audit, self.clock = io, services, auth, audit, clock
        self.logged_in = False
        self._awaiting_secret = False
        self._last_activity = clock()
        self._window_start, self._window_lines = clock(), 0
        self.garbage_lines = 0

    def _out(self, text: str) -> None:
        self.io.write(redact(text).replace("\n", "\r\n") + "\r\n")

    def _prompt(self) -> None:
        self.io.write("PIN: " if self._awaiting_secret else "facegate> ")

    def serve(self, should_stop: Callable[[], bool]) -> None:
        self._out("facegate technician console. Type 'login' to start, 'help' for commands.")
        self._prompt()
        while not should_stop():
            raw = self.io.read_line(0.2)
            now = self.clock()
            if raw is None:
                if self.logged_in and now - self._last_activity > IDLE_LOGOUT_S:
                    self.logged_in = False
                    self.audit("logout", True, "idle timeout")
                    self._out("logged out (idle)")
                    self._prompt()
                continue
            self._last_activity = now
            if now - self._window_start >= 1.0:
                self._window_start, self._window_lines = now, 0
            self._window_lines += 1
            if self._window_lines > MAX_LINES_PER_S:
                continue  # flood: drop silently until the next second
            self.handle(raw)
            self._prompt()

    def handle(self, raw: bytes) -> None:
        """Process one received line (public for tests of the protocol itself)."""
        line = self._decode(raw)
        if line is None:
            return
        if self._awaiting_secret:
            self._awaiting_secret = False
            self._login(line)
            return
        if not line:
            return
        verb, _, rest = line.partition(" ")
        verb, rest = verb.lower(), rest.strip()
        if verb == "help":
            self._out(HELP)
        elif verb == "login":
            wait = self.auth.locked_for()
            if wait > 0:
                self.audit("login", False, "locked out")
                self._out(f"error: console locked after failed logins; try again in {wait:.0f} s")
            elif self.logged_in:
                self._out("already logged in")
            else:
                self._awaiting_secret = True
        elif not self.logged_in:
            self.audit(verb[:32], False, "not logged in")
            self._out("error: not logged in; type 'login' and enter the technician PIN")
        else:
            self._command(verb, rest)

    def _decode(self, raw: bytes) -> str | None:
        if len(raw) > MAX_LINE:
            self.garbage_lines += 1
            self._out(f"error: line longer than {MAX_LINE} bytes ignored; send one command a line")
            return None
        try:
            text = raw.decode("utf-8").strip("\r\n\t ")
        except UnicodeDecodeError:
            text = None
        if text is None or not text.isprintable():
            self.garbage_lines += 1
            self._out("error: unreadable input (non-text bytes) ignored; check the baud rate "
                      "(115200 8N1) and type 'help'")
            return None
        return text

    def _login(self, secret: str) -> None:
        ok, how = self.auth.attempt(secret)
        self.audit("login", ok, how if ok else "wrong PIN or code")
        if ok:
            self.logged_in = True
            self._out(f"logged in ({how})")
        elif self.auth.locked_for() > 0:
            self._out(f"error: wrong PIN; console locked for {self.auth.locked_for():.0f} s")
        else:
            self._out("error: wrong PIN or code")

    def _command(self, verb: str, rest: str) -> None:
        try:
            ok, detail = self._dispatch(verb, rest)
        except Exception as exc:  # a failing service must not kill the console
            ok, detail = False, f"{type(exc).__name__}: {exc}"
            self._out(f"error: {exc}")
        self.audit(verb[:32], ok, detail[:200])

    def _dispatch(self, verb: str, rest: str) -> tuple[bool, str]:
        s = self.services
        if verb == "status":
            self._out(json.dumps(s.status(), sort_keys=True, indent=1))
            return True, ""
        if verb == "diag":
            report = s.diagnostics()
            self._out(json.dumps(report, sort_keys=True, indent=1))
            return all(v.get("ok", True) for v in report.values() if isinstance(v, dict)), ""
        if verb == "templates":
            rows = s.templates()
            self._out("\n".join(json.dumps(r, sort_keys=True) for r in rows) or "(no templates)")
            return True, f"{len(rows)} templates"
        if verb in ("enrol", "enroll", "revoke"):
            if not is_valid_id(rest):
                self._out(f"error: {verb} needs a subject id ({ID_RULE})")
                return False, "bad subject"
            msg = s.enrol(rest) if verb != "revoke" else s.revoke(rest)
            self._out(msg)
            return True, f"{verb} {rest}"
        if verb == "wipe":
            if rest != "CONFIRM":
                self._out("error: type 'wipe CONFIRM' to erase every template on this device")
                return False, "not confirmed"
            n = s.wipe()
            self._out(f"wiped {n} templates")
            return True, f"wiped {n}"
        if verb == "logs":
            n = int(rest) if rest.isdigit() else 20
            self._out("\n".join(s.logs(min(max(n, 1), 200))) or "(no log lines)")
            return True, ""
        if verb == "logout":
            self.logged_in = False
            self._out("logged out")
            return True, ""
        self._out(f"error: unknown command {verb[:32]!r}; type 'help'")
        return False, "unknown command"
