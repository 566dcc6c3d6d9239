"""Console authentication: the technician PIN hash, one-time codes and the persisted failure
counters that lock the console after repeated failures.

Both secrets are stored only as salted scrypt hashes (`scrypt$N$r$p$salt$digest`, 16-byte random
salt each). The PIN uses N=2**14, r=8, p=1 (16 MiB). A one-time code is 10 random digits (33
bits, more than a PIN) and uses N=2**13, r=8, p=1 (8 MiB), so that checking a wrong attempt
against every outstanding code (at most MAX_CODES) stays near a second on a Pi; the stolen code
file still costs ~10**10 scrypt evaluations per code. Counters and codes are rewritten
atomically (temp file, fsync, rename, fsync of the directory): a failure the technician has been
told about survives a power cut or a SIGKILL, and a used code is gone before the login is
granted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.config import ConsoleConfig
from edge.errors import FacegateError

PIN_PARAMS = (2**14, 8, 1)  # scrypt N, r, p for the technician PIN
CODE_PARAMS = (2**13, 8, 1)  # scrypt N, r, p for each one-time code
CODE_DIGITS = 10
MAX_CODES = 5  # outstanding one-time codes; bounds the cost of one wrong attempt
_MAX_N = 2**16  # a hash naming a bigger N is refused unread (a crafted file must not stall us)


class ConsoleAuthError(FacegateError):
    prefix = "console error"


def _scrypt_hash(secret: str, params: tuple[int, int, int], salt: bytes | None = None) -> str:
    n, r, p = params
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def hash_pin(pin: str, salt: bytes | None = None) -> str:
    """scrypt hash of a technician PIN, in the form stored as `console.pin_hash`."""
    if not (4 <= len(pin) <= 64) or not pin.isprintable():
        raise ValueError("PIN must be 4-64 printable characters")
    return _scrypt_hash(pin, PIN_PARAMS, salt)


def hash_code(code: str, salt: bytes | None = None) -> str:
    """Salted scrypt hash of a one-time code (a fresh random salt unless one is given)."""
    return _scrypt_hash(code, CODE_PARAMS, salt)


def check_pin(pin: str, stored: str) -> bool:
    """Constant-time check of `pin` against a `hash_pin`/`hash_code` string; False if malformed."""
    try:
        kind, n, r, p, salt_hex, digest_hex = stored.split("$")
        if kind != "scrypt" or not 2 <= int(n) <= _MAX_N or not 1 <= int(r) * int(p) <= 16:
            return False
        digest = hashlib.scrypt(
            pin.encode(errors="replace"), salt=bytes.fromhex(salt_hex), n=int(n), r=int(r),
            p=int(p),
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest.hex(), digest_hex)


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` (0600) so that a crash leaves the old or the new file, never a
    torn one, and the new one is on disk when this returns."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


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
        atomic_write(self.path, json.dumps(self.state.__dict__))

    def locked_for(self) -> float:
        return max(0.0, self.state.locked_until - self.wall())

    def issue_codes(self, count: int) -> list[str]:
        """New single-use codes (10 digits); only their salted hashes are kept."""
        held = self._codes()
        if count < 1 or len(held) + count > MAX_CODES:
            raise ConsoleAuthError(
                f"{len(held)} codes are outstanding and at most {MAX_CODES} may be; issue "
                f"at most {MAX_CODES - len(held)}, or delete {self.codes_path} to void them all"
            )
        codes = [f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}" for _ in range(count)]
        atomic_write(self.codes_path, json.dumps(held + [hash_code(c) for c in codes]))
        return codes

    def _codes(self) -> list[str]:
        """Stored code hashes; unsalted ones from older releases are void (re-issue codes)."""
        try:
            data = json.loads(self.codes_path.read_text())
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return []
        if not isinstance(data, list):
            return []
        return [h for h in data if isinstance(h, str) and h.startswith("scrypt$")]

    def _use_code(self, secret: str) -> bool:
        if len(secret) != CODE_DIGITS or not secret.isdigit():
            return False  # not a code: spare the scrypt work
        codes = self._codes()
        match = next((h for h in codes if check_pin(secret, h)), None)
        if match is None:
            return False
        codes.remove(match)
        atomic_write(self.codes_path, json.dumps(codes))  # gone before the login is granted
        return True

    def attempt(self, secret: str) -> tuple[bool, str]:
        """Check a PIN or one-time code; returns (ok, how) and durably updates the counters.

        `how` is a fixed word: `pin` or `one_time_code` on success, `login_failed` otherwise."""
        ok, how = False, "login_failed"
        if self.cfg.pin_hash and check_pin(secret, self.cfg.pin_hash):
            ok, how = True, "pin"
        elif self._use_code(secret):
            ok, how = True, "one_time_code"
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
