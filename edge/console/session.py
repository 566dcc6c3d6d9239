"""Technician serial console: authenticated, rate-limited, audited, never prints secrets.

Line protocol over a serial port (or a pty in tests). Nothing is echoed back; the technician's
terminal echoes locally. A session starts logged out: `login` asks for the technician PIN (or a
one-time code). After `console.max_attempts` failures the console locks for `lockout_s`,
doubling with each further lockout; the counters live in the state dir so a reboot does not
reset them. Every command, including failed logins, is handed to `audit` (a `console.audit`
event). Output goes through `redact`, which masks long digit runs (phone numbers) and long
hex/base64 runs (key or template material) as a last line of defence.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge.config import ConsoleConfig

MAX_LINE = 256
IDLE_LOGOUT_S = 300.0
MAX_LINES_PER_S = 20
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_PHONE = re.compile(r"(?<![\w+])\+?\d(?:[ -]?\d){6,}(?!\w)")
_BLOB = re.compile(r"[A-Za-z0-9+/_-]{40,}={0,2}")
_SUBJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

HELP = """commands (after login):
  status             device, profile, outbox and template counts
  diag               model files, camera, keys, broker checks
  templates          list templates (metadata only)
  enrol SUBJECT      enrol SUBJECT from the camera
  revoke SUBJECT     revoke SUBJECT's template
  wipe CONFIRM       erase every template on this device
  logs [N]           last N log lines (default 20)
  logout             end the session"""


def hash_pin(pin: str, salt: bytes | None = None) -> str:
    """scrypt hash of a technician PIN, in the form stored as `console.pin_hash`."""
    if not (4 <= len(pin) <= 64) or not pin.isprintable():
        raise ValueError("PIN must be 4-64 printable characters")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_pin(pin: str, stored: str) -> bool:
    """Constant-time check of `pin` against a `hash_pin` string; False for any malformed hash."""
    try:
        kind, n, r, p, salt_hex, digest_hex = stored.split("$")
        if kind != "scrypt":
            return False
        digest = hashlib.scrypt(
            pin.encode(), salt=bytes.fromhex(salt_hex), n=int(n), r=int(r), p=int(p)
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest.hex(), digest_hex)


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


@dataclass
class _AuthState:
    failures: int = 0
    lockouts: int = 0
    locked_until: float = 0.0  # wall-clock seconds: must survive a reboot


class AuthStore:
    """PIN / one-time-code checks and the persisted failure counters."""

    def __init__(self, state_dir: Path, cfg: ConsoleConfig, wall: Callable[[], float]) -> None:
        self.cfg, self.wall = cfg, wall
        self.path = state_dir / "console_auth.json"
        self.codes_path = state_dir / "console_codes.json"
        self.state = self._load()

    def _load(self) -> _AuthState:
        try:
            raw = json.loads(self.path.read_text())
            return _AuthState(
                int(raw["failures"]), int(raw["lockouts"]), float(raw["locked_until"])
            )
        except FileNotFoundError:
            return _AuthState()
        except (ValueError, KeyError, TypeError, OSError):
            # A damaged counter file must not unlock the console: treat it as a fresh lockout.
            return _AuthState(0, 1, self.wall() + self.cfg.lockout_s)

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state.__dict__))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def locked_for(self) -> float:
        return max(0.0, self.state.locked_until - self.wall())

    def issue_codes(self, count: int) -> list[str]:
        """New single-use codes (10 digits); only their hashes are kept."""
        codes = [f"{secrets.randbelow(10**10):010d}" for _ in range(count)]
        hashes = self._codes() + [hashlib.sha256(c.encode()).hexdigest() for c in codes]
        self.codes_path.write_text(json.dumps(hashes))
        os.chmod(self.codes_path, 0o600)
        return codes

    def _codes(self) -> list[str]:
        try:
            data = json.loads(self.codes_path.read_text())
            return [h for h in data if isinstance(h, str)]
        except (FileNotFoundError, ValueError):
            return []

    def _use_code(self, secret: str) -> bool:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        codes = self._codes()
        match = next((h for h in codes if hmac.compare_digest(h, digest)), None)
        if match is None:
            return False
        codes.remove(match)
        self.codes_path.write_text(json.dumps(codes))
        return True

    def attempt(self, secret: str) -> tuple[bool, str]:
        """Check a PIN or one-time code; returns (ok, how) and updates the counters."""
        ok, how = False, ""
        if self.cfg.pin_hash and check_pin(secret, self.cfg.pin_hash):
            ok, how = True, "pin"
        elif self._use_code(secret):
            ok, how = True, "one-time code"
        if ok:
            self.state.failures = 0
            self.state.lockouts = 0
        else:
            self.state.failures += 1
            if self.state.failures >= self.cfg.max_attempts:
                self.state.failures = 0
                self.state.lockouts += 1
                backoff = self.cfg.lockout_s * 2 ** min(self.state.lockouts - 1, 10)
                self.state.locked_until = self.wall() + backoff
        self._save()
        return ok, how


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
            if not _SUBJECT.fullmatch(rest):
                self._out(f"error: {verb} needs a subject id ([A-Za-z0-9_.-], up to 64)")
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
