"""Console authentication: the technician PIN hash, one-time codes and the persisted failure
counters that lock the console after repeated failures."""

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

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


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
