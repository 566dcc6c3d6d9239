"""Technician console session: login, commands, audit; never prints or sends what was typed
before login.

Line protocol over a serial port (or a pty in tests). Nothing is echoed back; the technician's
terminal echoes locally. A session starts logged out: `login` asks for the technician PIN (or a
one-time code). After `console.max_attempts` failures the console locks for `lockout_s`,
doubling with each further lockout; the counters live in the state dir so a reboot does not
reset them.

Before login the line is hostile: anyone with a cable can type, and a technician may type the
PIN at the wrong prompt. So no pre-login text ever reaches an event, a log or the screen: every
reply is fixed text, and the audit trail gets at most one `console.audit` a minute
(`prelogin_summary`, counts of failed logins, unknown, unreadable and dropped lines), plus one
when a login succeeds. Input is rate-limited by a token bucket (BUCKET_LINES burst, BUCKET_RATE
lines/s; lines beyond it are dropped with one fixed notice) and bounded to MAX_LINE bytes a line
(longer lines are discarded whole). No byte sequence raises out of `serve`. After login, each
command is audited under its own fixed name (`unknown_command` for anything else); output goes
through `redact`, which masks long digit runs (phone numbers) and long hex/base64 runs (key or
template material) as a last line of defence.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

from edge.console.auth import AuthStore
from edge.ids import ID_RULE, is_valid_id

log = logging.getLogger(__name__)

MAX_LINE = 256  # bytes a line, terminator excluded; a longer line is discarded whole
IDLE_LOGOUT_S = 300.0
BUCKET_LINES = 20  # burst a technician may paste
BUCKET_RATE = 5.0  # lines/s sustained; a flood beyond it is dropped unread
SUMMARY_EVERY_S = 60.0  # at most one pre-login audit event per this many seconds
_PHONE = re.compile(r"(?<![\w+])\+?\d(?:[ -]?\d){6,}(?!\w)")
_BLOB = re.compile(r"[A-Za-z0-9+/_-]{40,}={0,2}")
COMMANDS = ("status", "diag", "templates", "enrol", "revoke", "wipe", "logs", "logout")

HELP = """commands (after login):
  status             device, profile, outbox and template counts
  diag               model files, camera, keys, broker checks
  templates          list templates (metadata only)
  enrol SUBJECT      enrol SUBJECT from the camera
  revoke SUBJECT     revoke SUBJECT's template
  wipe CONFIRM       erase every template on this device
  logs [N]           last N log lines (default 20)
  logout             end the session"""
NOT_LOGGED_IN = "error: not logged in; type 'login' and enter the technician PIN"
UNREADABLE = ("error: unreadable input (non-text bytes) ignored; check the baud rate "
              "(115200 8N1) and type 'help'")
TOO_LONG = f"error: line longer than {MAX_LINE} bytes ignored; send one command a line"
TOO_FAST = "error: too many lines; input dropped until you slow down"


def redact(text: str) -> str:
    """Mask phone-number-like digit runs (keep the last 4) and long hex/base64 runs."""
    text = _BLOB.sub("[redacted]", text)
    def mask(m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        return "*" * (len(digits) - 4) + digits[-4:]

    return _PHONE.sub(mask, text)


class TokenBucket:
    """`capacity` lines at once, refilled at `rate` lines/s (times from one monotonic clock)."""

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity, self.rate = capacity, rate
        self.tokens, self.stamp = capacity, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class PreLoginCounts:
    """What happened on the line while nobody was logged in: counts only, never the text."""

    failed_logins: int = 0
    locked_attempts: int = 0
    unknown_lines: int = 0
    unreadable_lines: int = 0
    dropped_lines: int = 0

    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def detail(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


@dataclass(frozen=True)
class Outcome:
    """Result of a device service: `reason` is a fixed word when not ok; `message` is shown."""

    ok: bool
    reason: str
    message: str


class LineIO(Protocol):
    """Reads one raw line (bytes, without terminator; None on timeout) and writes text."""

    def read_line(self, timeout_s: float) -> bytes | None: ...

    def write(self, text: str) -> None: ...


class ConsoleServices(Protocol):
    """What the console can do on the device; every method returns printable metadata only."""

    def status(self) -> dict[str, Any]: ...

    def diagnostics(self) -> dict[str, Any]: ...

    def templates(self) -> list[dict[str, Any]]: ...

    def enrol(self, subject: str) -> Outcome: ...

    def revoke(self, subject: str) -> str: ...

    def wipe(self) -> int: ...

    def logs(self, n: int) -> list[str]: ...


class Audit(Protocol):
    """Records one `console.audit` event; `action` and `detail` are fixed words or counts."""

    def __call__(self, action: str, ok: bool, detail: str, subject: str = "") -> None: ...


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
        now = clock()
        self._last_activity = now
        self._bucket = TokenBucket(BUCKET_LINES, BUCKET_RATE, now)
        self._throttled = False
        self.prelogin = PreLoginCounts()
        self._summary_at = now  # the first summary comes SUMMARY_EVERY_S after start at earliest

    def _out(self, text: str) -> None:
        self.io.write(redact(text).replace("\n", "\r\n") + "\r\n")

    def _prompt(self) -> None:
        self.io.write("PIN: " if self._awaiting_secret else "facegate> ")

    def serve(self, should_stop: Callable[[], bool]) -> None:
        self._out("facegate technician console. Type 'login' to start, 'help' for commands.")
        self._prompt()
        try:
            while not should_stop():
                self.step(self.io.read_line(0.2))
        finally:
            self.flush_summary(force=True)

    def step(self, raw: bytes | None) -> None:
        """One turn of the loop: a received line (or None after a quiet read timeout)."""
        now = self.clock()
        self.flush_summary()
        if raw is None:
            if self.logged_in and now - self._last_activity > IDLE_LOGOUT_S:
                self.logged_in = False
                self._audit("logout", True, "idle_timeout")
                self._out("logged out (idle)")
                self._prompt()
            return
        if not self._bucket.take(now):
            self.prelogin.dropped_lines += not self.logged_in
            if not self._throttled:
                self._throttled = True
                self._out(TOO_FAST)
            return
        self._throttled = False
        self._last_activity = now
        try:
            self.handle(raw)
        except Exception as exc:  # a failing part must not kill the console
            # The type only: a message may quote the line, and pre-login text stays private.
            log.error("console: internal error (%s); line ignored", type(exc).__name__)
            self._out("error: internal error; the line was ignored")
        self._prompt()

    def flush_summary(self, *, force: bool = False) -> None:
        """Emit the pre-login counts as one event, at most once per SUMMARY_EVERY_S."""
        now = self.clock()
        if self.prelogin.total() == 0 or (not force and now - self._summary_at < SUMMARY_EVERY_S):
            return
        self._summary_at = now
        detail, self.prelogin = self.prelogin.detail(), PreLoginCounts()
        self._audit("prelogin_summary", False, detail)

    def _audit(self, action: str, ok: bool, detail: str = "", subject: str = "") -> None:
        try:
            self.audit(action, ok, detail, subject)
        except Exception as exc:  # e.g. a full disk: say so, but keep serving the technician
            log.error("console: audit event %s not stored (%s)", action, type(exc).__name__)
            self._out("warning: audit event not stored; check `facegate outbox status`")

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
            if self.logged_in:
                self._out("already logged in")
            elif wait > 0:
                self.prelogin.locked_attempts += 1
                self._out(f"error: console locked after failed logins; try again in {wait:.0f} s")
            else:
                self._awaiting_secret = True
        elif not self.logged_in:
            self.prelogin.unknown_lines += 1
            self._out(NOT_LOGGED_IN)
        else:
            self._command(verb, rest)

    def _decode(self, raw: bytes) -> str | None:
        if len(raw) > MAX_LINE:
            self.prelogin.unreadable_lines += not self.logged_in
            self._awaiting_secret = False  # an overlong "PIN" is a failed attempt at most
            self._out(TOO_LONG)
            return None
        try:
            text: str | None = raw.decode("utf-8").strip("\r\n\t ")
        except UnicodeDecodeError:
            text = None
        if text is None or not text.isprintable():
            self.prelogin.unreadable_lines += not self.logged_in
            self._awaiting_secret = False
            self._out(UNREADABLE)
            return None
        return text

    def _login(self, secret: str) -> None:
        ok, how = self.auth.attempt(secret)
        if ok:
            self.logged_in = True
            self._bucket.tokens = self._bucket.capacity  # a flood before is not the technician's
            self.flush_summary(force=True)  # the failures before this login come first
            self._audit("login", True, how)
            self._out(f"logged in ({how.replace('_', '-')})")
            return
        self.prelogin.failed_logins += 1
        if self.auth.locked_for() > 0:
            self._out(f"error: wrong PIN; console locked for {self.auth.locked_for():.0f} s")
        else:
            self._out("error: wrong PIN or code")

    def _command(self, verb: str, rest: str) -> None:
        action = "enrol" if verb == "enroll" else verb
        if action not in COMMANDS:
            self._out("error: unknown command; type 'help'")
            self._audit("unknown_command", False)
            return
        subject = ""
        try:
            ok, detail, subject = self._dispatch(action, rest)
        except Exception as exc:  # a failing service must not kill the console
            log.error("console: %s failed (%s)", action, type(exc).__name__)
            ok, detail = False, "service_error"
            self._out(f"error: {exc}")
        self._audit(action, ok, detail, subject)

    def _dispatch(self, verb: str, rest: str) -> tuple[bool, str, str]:
        """Run one known command; returns (ok, fixed detail word, subject id or "")."""
        s = self.services
        if verb == "status":
            self._out(json.dumps(s.status(), sort_keys=True, indent=1))
            return True, "", ""
        if verb == "diag":
            report = s.diagnostics()
            self._out(json.dumps(report, sort_keys=True, indent=1))
            ok = all(v.get("ok", True) for v in report.values() if isinstance(v, dict))
            return ok, "" if ok else "check_failed", ""
        if verb == "templates":
            rows = s.templates()
            self._out("\n".join(json.dumps(r, sort_keys=True) for r in rows) or "(no templates)")
            return True, f"{len(rows)} templates", ""
        if verb in ("enrol", "revoke"):
            if not is_valid_id(rest):
                self._out(f"error: {verb} needs a subject id ({ID_RULE})")
                return False, "bad_subject", ""
            if verb == "revoke":
                self._out(s.revoke(rest))
                return True, "", rest
            outcome = s.enrol(rest)
            self._out(outcome.message)
            return outcome.ok, "" if outcome.ok else outcome.reason, rest
        if verb == "wipe":
            if rest != "CONFIRM":
                self._out("error: type 'wipe CONFIRM' to erase every template on this device")
                return False, "not_confirmed", ""
            n = s.wipe()
            self._out(f"wiped {n} templates")
            return True, f"wiped {n}", ""
        if verb == "logs":
            n = int(rest) if rest.isdigit() and len(rest) < 6 else 20
            self._out("\n".join(s.logs(min(max(n, 1), 200))) or "(no log lines)")
            return True, "", ""
        # logout
        self.logged_in = False
        self._awaiting_secret = False
        self._out("logged out")
        return True, "", ""
