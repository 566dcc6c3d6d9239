"""Registry of enrolled devices and their Ed25519 public keys, kept in the ledger database."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.backend.ledger import Ledger
from edge.errors import FacegateError
from edge.ids import id_problem
from edge.trust.keys import parse_ed25519_public


class DeviceError(FacegateError):
    """A device name or public key the registry cannot accept."""

    prefix = "device error"


@dataclass(frozen=True)
class Device:
    name: str
    public_key_hex: str
    added_at: float


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A device's Ed25519 public key (`signing_public` of `facegate keys public`)."""
    return parse_ed25519_public(
        text, "device public key", "copy signing_public from `facegate keys public`"
    )


def check_name(name: str) -> str:
    problem = id_problem("device name", name)
    if problem:
        raise DeviceError(problem)
    return name


def add_device(ledger: Ledger, name: str, public_key_hex: str, now: float | None = None) -> None:
    """Register (or re-key) a device."""
    check_name(name)
    parse_public_key(public_key_hex)
    with ledger.transaction() as conn:
        ledger.execute(
            conn,
            "INSERT INTO devices(name, public_key, added_at) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET public_key = excluded.public_key,"
            " added_at = excluded.added_at",
            (name, public_key_hex.strip().lower(), time.time() if now is None else now),
        )


def remove_device(ledger: Ledger, name: str) -> bool:
    """Forget a device; returns False when it was not registered."""
    with ledger.transaction() as conn:
        cur = ledger.execute(conn, "DELETE FROM devices WHERE name = ?", (name,))
        return bool(cur.rowcount)


def list_devices(ledger: Ledger) -> list[Device]:
    rows = ledger.query("SELECT name, public_key, added_at FROM devices ORDER BY name")
    return [Device(str(n), str(k), float(t)) for n, k, t in rows]


class KeyCache:
    """Device keys looked up in the registry, cached for `ttl_s` so re-keying takes effect."""

    def __init__(self, ledger: Ledger, ttl_s: float = 5.0) -> None:
        self._ledger, self._ttl_s = ledger, ttl_s
        self._cache: dict[str, tuple[float, Ed25519PublicKey | None]] = {}
        self._lock = threading.Lock()

    def get(self, device: str) -> Ed25519PublicKey | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(device)
            if hit is not None and now - hit[0] < self._ttl_s:
                return hit[1]
        rows = self._ledger.query("SELECT public_key FROM devices WHERE name = ?", (device,))
        key = parse_public_key(str(rows[0][0])) if rows else None
        with self._lock:
            if len(self._cache) > 100_000:  # unknown-device floods must not grow memory forever
                self._cache.clear()
            self._cache[device] = (now, key)
        return key
