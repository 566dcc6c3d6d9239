"""Registry of enrolled devices, their Ed25519 public keys and sites, kept in the ledger database.

A device is bound to the site it was registered for: an event whose `site` differs is refused
(`site_mismatch`), so a kiosk key stolen from one site cannot book at another, and a device
registered before sites were recorded is refused (`site_unbound`) until it is registered again
with `--site`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
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
    site: str = ""  # "" for a device registered before sites were recorded


@dataclass(frozen=True)
class Registered:
    """What the verifier needs to know about one registered device."""

    public_key: Ed25519PublicKey
    site: str  # "" = not bound yet (registered by an older version): its events are refused
    # verify(signature, message) -> bool; libsodium's when PyNaCl is installed (the backend
    # extra): ~2x faster than OpenSSL's and as strict (it also refuses small-order keys)
    verify: Callable[[bytes, bytes], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "verify", _verifier(self.public_key))


def _verifier(public_key: Ed25519PublicKey) -> Callable[[bytes, bytes], bool]:
    try:
        from nacl.exceptions import BadSignatureError
        from nacl.signing import VerifyKey
    except ImportError:  # pragma: no cover - the backend extra installs PyNaCl
        return lambda sig, msg: _openssl_verify(public_key, sig, msg)
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key = VerifyKey(raw)

    def verify(sig: bytes, msg: bytes) -> bool:
        try:
            key.verify(msg, sig)
        except BadSignatureError:
            return False
        return True

    return verify


def _openssl_verify(public_key: Ed25519PublicKey, sig: bytes, msg: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(sig, msg)
    except InvalidSignature:
        return False
    return True


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


def add_device(
    ledger: Ledger, name: str, public_key_hex: str, site: str, now: float | None = None
) -> None:
    """Register (or re-key, or move) a device and bind it to `site`."""
    check_name(name)
    problem = id_problem("site", site)
    if problem:
        raise DeviceError(f"{problem} (the site in the kiosk's [device] config)")
    parse_public_key(public_key_hex)
    with ledger.transaction() as conn:
        ledger.execute(
            conn,
            "INSERT INTO devices(name, public_key, added_at, site) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET public_key = excluded.public_key,"
            " added_at = excluded.added_at, site = excluded.site",
            (name, public_key_hex.strip().lower(), time.time() if now is None else now, site),
        )


def remove_device(ledger: Ledger, name: str) -> bool:
    """Forget a device; returns False when it was not registered."""
    with ledger.transaction() as conn:
        cur = ledger.execute(conn, "DELETE FROM devices WHERE name = ?", (name,))
        return bool(cur.rowcount)


def list_devices(ledger: Ledger) -> list[Device]:
    rows = ledger.query("SELECT name, public_key, added_at, site FROM devices ORDER BY name")
    return [Device(str(n), str(k), float(t), str(s or "")) for n, k, t, s in rows]


class KeyCache:
    """Device keys and sites looked up in the registry, cached for `ttl_s` so re-keying,
    moving or removing a device takes effect within that time."""

    def __init__(self, ledger: Ledger, ttl_s: float = 5.0) -> None:
        self._ledger, self._ttl_s = ledger, ttl_s
        self._cache: dict[str, tuple[float, Registered | None]] = {}
        self._lock = threading.Lock()

    def lookup(self, device: str) -> Registered | None:
        """The registered key and site of `device`, or None when it is not registered."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(device)
            if hit is not None and now - hit[0] < self._ttl_s:
                return hit[1]
        rows = self._ledger.query("SELECT public_key, site FROM devices WHERE name = ?", (device,))
        entry = None
        if rows:
            entry = Registered(parse_public_key(str(rows[0][0])), str(rows[0][1] or ""))
        with self._lock:
            if len(self._cache) > 100_000:  # unknown-device floods must not grow memory forever
                self._cache.clear()
            self._cache[device] = (now, entry)
        return entry

    def get(self, device: str) -> Ed25519PublicKey | None:
        """The registered public key of `device`, or None."""
        entry = self.lookup(device)
        return entry.public_key if entry else None
