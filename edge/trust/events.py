"""Signed kiosk events: schema per type, biometric guard, Ed25519 signature, topics.

An event is `{v:1, type, device, site, seq, ts, nonce, <type fields>, sig}` (DESIGN §5). `sig` is
the lowercase hex Ed25519 signature over the canonical JSON bytes (edge/canonical.py) of the
event WITHOUT `sig`; the published payload is the canonical bytes of the event WITH `sig`.
`device:seq` is the idempotency key. Money is an int in minor units (`amount`, `currency`),
`ts` is UTC Unix seconds (float, ms resolution). Unknown fields are refused, and so is anything
that could carry biometric data, before signing on the device and again on the backend.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import FacegateError
from edge.trust import canonical

VERSION = 1
MAX_EVENT_BYTES = 4096  # a real event is ~400 bytes; anything bigger is refused unread
MAX_STR = 200
TOPIC_PREFIX = "facegate/v1"
BACKEND_SHARED_SUBSCRIPTION = "$share/backend/facegate/v1/+/+/event/#"
PAYMENT_TYPES = frozenset({"payment.authorize", "fare.charge"})

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_CURRENCY = re.compile(r"[A-Z]{3}")
# Key names that could only exist to carry a face: refused at any depth.
_BIOMETRIC_KEY = re.compile(
    r"image|img|photo|picture|pixel|frame|crop|chip|thumb|jpe?g|png|embed|landmark|keypoint"
    r"|template|vector|feature|descriptor|biometric|face_?data|mesh|encoding",
    re.IGNORECASE,
)
# A base64/hex run this long holds >= 60 bytes: too short for a 128-d embedding or any image,
# long enough to let a sha256-hex pseudonym (64 chars) through.
_BLOB = re.compile(r"[A-Za-z0-9+/_=-]{80,}")
_IMAGE_MAGIC = ("data:", "/9j/", "iVBORw0KGgo", "UklGR", "R0lGOD")  # data URI, JPEG, PNG, WEBP, GIF


class EventError(FacegateError):
    """An event that cannot be built or accepted; `reason` is a short code the backend counts.

    Reasons: too_large, json, non_canonical, schema, biometric, signature.
    """

    prefix = "event error"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# ---- schema -------------------------------------------------------------------------------

Check = Callable[[Any], bool]


def _str(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= MAX_STR


def _str0(v: Any) -> bool:  # may be empty (e.g. no claim yet)
    return isinstance(v, str) and len(v) <= MAX_STR


def _nat(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _liveness(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and set(v) == {"blinks", "challenge_ms"}
        and _nat(v["blinks"])
        and _nat(v["challenge_ms"])
    )


_DECISION: dict[str, Check] = {
    "subject": _str0,  # pseudonymous id, never a name or phone number
    "decision": lambda v: v in ("accept", "reject"),
    "score": lambda v: v is None or (_num(v) and -1.0 <= v <= 1.0),
    "liveness": _liveness,
}
_MONEY: dict[str, Check] = {
    "amount": _nat,
    "currency": lambda v: _str(v) and bool(_CURRENCY.fullmatch(v)),
}

# type -> (required fields, optional fields)
SCHEMA: dict[str, tuple[dict[str, Check], dict[str, Check]]] = {
    "payment.authorize": (
        {**_DECISION, **_MONEY},
        {"step_up": _bool, "method": _str, "pos_ref": _str},
    ),
    "fare.charge": ({**_DECISION, **_MONEY, "gate": _str}, {"claim": _str, "fare_product": _str}),
    "door.unlock": ({**_DECISION, "door": _str}, {"household": _str}),
    "door.denied": (
        {**_DECISION, "door": _str, "unknown_faces": _nat},
        {"household": _str, "reason": _str},
    ),
    "welfare.alert": (
        {"subject": _str, "household": _str, "days_unseen": _nat},
        {"last_seen_ts": lambda v: v is None or _num(v), "door": _str},
    ),
    "verify.reject": ({**_DECISION, "reason": _str}, {"claim": _str}),
    "console.audit": (
        {"action": _str, "ok": _bool},
        {"detail": _str0, "actor": _str, "subject": _str},
    ),
    "device.status": (
        {"status": _str},
        {
            "outbox_pending": _nat,
            "outbox_full": _bool,
            "detail": _str0,
            "uptime_s": _num,
            "version": _str,
        },
    ),
}
EVENT_TYPES = tuple(SCHEMA)
_ENVELOPE: dict[str, Check] = {
    "v": lambda v: v == VERSION,
    "type": lambda v: v in SCHEMA,
    "device": lambda v: isinstance(v, str) and bool(_ID.fullmatch(v)),
    "site": lambda v: isinstance(v, str) and bool(_ID.fullmatch(v)),
    "seq": lambda v: _nat(v) and v >= 1,
    "ts": lambda v: _num(v) and v >= 0,
    "nonce": lambda v: isinstance(v, str) and bool(_HEX32.fullmatch(v)),
}


def check_no_biometrics(value: Any, path: str = "event") -> None:
    """Refuse anything that could carry a face: image/embedding-like keys, number arrays, blobs."""
    if isinstance(value, (bytes, bytearray, memoryview)) or hasattr(value, "__array__"):
        raise EventError("biometric", f"{path}: binary or array data is never allowed in an event")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str) and _BIOMETRIC_KEY.search(k):
                raise EventError("biometric", f"{path}.{k}: field name suggests biometric data")
            check_no_biometrics(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        # No event field is a list; a list of numbers is exactly what an embedding looks like.
        raise EventError("biometric", f"{path}: arrays are never allowed in an event")
    elif isinstance(value, str) and (
        len(value) > MAX_STR or _BLOB.search(value) or value.startswith(_IMAGE_MAGIC)
    ):
        raise EventError("biometric", f"{path}: long or encoded string (possible image/blob)")


def validate(event: Mapping[str, Any]) -> None:
    """Check an event body (without `sig`) against the envelope and its type's schema."""
    body = {k: v for k, v in event.items() if k != "sig"}
    check_no_biometrics(body)
    for name, ok in _ENVELOPE.items():
        if name not in body:
            raise EventError("schema", f"missing field {name!r}")
        if not ok(body[name]):
            raise EventError("schema", f"field {name!r} has a bad value {body[name]!r}")
    required, optional = SCHEMA[body["type"]]
    for name, ok in required.items():
        if name not in body:
            raise EventError("schema", f"{body['type']}: missing field {name!r}")
        if not ok(body[name]):
            raise EventError(
                "schema", f"{body['type']}: field {name!r} has a bad value {body[name]!r}"
            )
    for name, value in body.items():
        if name in _ENVELOPE or name in required:
            continue
        if name not in optional:
            raise EventError("schema", f"{body['type']}: unknown field {name!r}")
        if not optional[name](value):
            raise EventError("schema", f"{body['type']}: field {name!r} has a bad value {value!r}")


# ---- signing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedEvent:
    """The published bytes (canonical JSON with `sig`) and the same event as a dict."""

    payload: bytes
    event: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.event["type"])

    @property
    def seq(self) -> int:
        return int(self.event["seq"])

    @property
    def key(self) -> str:
        """Idempotency key `device:seq`."""
        return idempotency_key(self.event)

    @property
    def topic(self) -> str:
        return event_topic(self.event["site"], self.event["device"], self.event["type"])


def idempotency_key(event: Mapping[str, Any]) -> str:
    return f"{event['device']}:{event['seq']}"


class SeqStore(Protocol):
    def next_seq(self, device: str) -> int:
        """Reserve and durably persist the next sequence number for `device` (the first is the
        store's start: 1 here, the clock in microseconds in a new `Outbox`)."""
        ...


class SqliteSeqStore:
    """Per-device counters in a SQLite file; each reservation is committed (FULL sync) first."""

    def __init__(self, path: Path) -> None:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # owner-only state
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seq (device TEXT PRIMARY KEY, last INTEGER NOT NULL)"
        )

    def next_seq(self, device: str) -> int:
        with _immediate(self._db):
            return next_seq_in(self._db, device)

    def close(self) -> None:
        self._db.close()


def next_seq_in(db: sqlite3.Connection, device: str, first: int = 1) -> int:
    """Increment the counter of `device` inside the caller's open transaction (table `seq`);
    a device without a counter in this file starts at `first`."""
    db.execute(
        "INSERT INTO seq(device, last) VALUES (?, ?) ON CONFLICT(device) DO NOTHING",
        (device, first - 1),
    )
    row = db.execute(
        "UPDATE seq SET last = last + 1 WHERE device = ? RETURNING last", (device,)
    ).fetchone()
    return int(row[0])


class _immediate:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def sign_body(body: Mapping[str, Any], signing_key: Ed25519PrivateKey) -> SignedEvent:
    """Sign a validated body; returns payload = canonical(body + sig)."""
    signature = signing_key.sign(canonical.dumps(body)).hex()
    event = canonical.normalize({**body, "sig": signature})
    payload = canonical.dumps(event)
    if len(payload) > MAX_EVENT_BYTES:
        raise EventError("too_large", f"event is {len(payload)} bytes > {MAX_EVENT_BYTES}")
    return SignedEvent(payload, event)


class EventFactory:
    """Builds signed events for one device; clock (Unix s) and rng (n -> bytes) are injected."""

    def __init__(
        self,
        device_id: str,
        site: str,
        signing_key: Ed25519PrivateKey,
        seq_store: SeqStore | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not _ID.fullmatch(device_id) or not _ID.fullmatch(site):
            raise EventError(
                "schema", f"device {device_id!r} / site {site!r}: use [A-Za-z0-9_.-], ≤ 64"
            )
        self.device_id, self.site = device_id, site
        self._key, self._seq_store, self._clock, self._rng = signing_key, seq_store, clock, rng

    def build(self, type: str, seq: int, **fields: Any) -> SignedEvent:
        """Sign an event with an explicit seq (the caller persisted it, e.g. Outbox.emit)."""
        body = self._body(type, seq, fields, round(self._clock(), 3), self._rng(16).hex())
        return sign_body(body, self._key)

    def _body(
        self, type: str, seq: int, fields: Mapping[str, Any], ts: float, nonce: str
    ) -> dict[str, Any]:
        if type not in SCHEMA:
            raise EventError("schema", f"unknown event type {type!r}; one of {', '.join(SCHEMA)}")
        reserved = set(fields) & (set(_ENVELOPE) | {"sig"})
        if reserved:
            raise EventError("schema", f"fields {sorted(reserved)} are set by the factory")
        check_no_biometrics(fields)
        body = {
            "v": VERSION,
            "type": type,
            "device": self.device_id,
            "site": self.site,
            "seq": seq,
            "ts": ts,
            "nonce": nonce,
            **fields,
        }
        try:
            normalized: dict[str, Any] = canonical.normalize(body)
        except canonical.CanonicalError as exc:
            raise EventError("json", str(exc)) from exc
        validate(normalized)
        return normalized

    def make(self, type: str, **fields: Any) -> SignedEvent:
        """Reserve a persisted seq from the seq store, then build the event."""
        if self._seq_store is None:
            raise EventError("schema", "EventFactory has no seq_store; use Outbox.emit or build()")
        self.validate_fields(type, fields)  # never burn a seq on an invalid event
        return self.build(type, self._seq_store.next_seq(self.device_id), **fields)

    def validate_fields(self, type: str, fields: Mapping[str, Any]) -> None:
        """Raise EventError if `fields` cannot make a valid event of `type` (no seq used)."""
        self._body(type, 1, fields, 0.0, "0" * 32)


# ---- verification (backend) ---------------------------------------------------------------


def parse_event(payload: bytes) -> dict[str, Any]:
    """Parse and schema-check payload bytes WITHOUT checking the signature (to find the device)."""
    if len(payload) > MAX_EVENT_BYTES:
        raise EventError("too_large", f"payload is {len(payload)} bytes > {MAX_EVENT_BYTES}")
    try:
        event = canonical.loads(payload)
    except canonical.CanonicalError as exc:
        raise EventError("json", str(exc)) from exc
    if not isinstance(event, dict):
        raise EventError("json", "payload is not a JSON object")
    try:
        if canonical.dumps(event) != payload:
            raise EventError(
                "non_canonical", "payload is not canonical JSON (order/spacing/floats)"
            )
    except canonical.CanonicalError as exc:
        raise EventError("json", str(exc)) from exc
    sig = event.get("sig")
    if not isinstance(sig, str) or not _HEX128.fullmatch(sig):
        raise EventError("schema", "missing or malformed 'sig' (128 lowercase hex chars)")
    validate(event)
    return event


def verify_event(payload: bytes, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """Parse, schema-check and signature-check an event; return it or raise EventError."""
    event = parse_event(payload)
    body = {k: v for k, v in event.items() if k != "sig"}
    try:
        public_key.verify(bytes.fromhex(event["sig"]), canonical.dumps(body))
    except InvalidSignature:
        raise EventError("signature", f"bad signature on {idempotency_key(event)}") from None
    return event


# ---- topics -------------------------------------------------------------------------------


def _check_ids(site: str, device: str) -> None:
    if not _ID.fullmatch(site) or not _ID.fullmatch(device):
        raise EventError("schema", f"site {site!r} / device {device!r}: use [A-Za-z0-9_.-], ≤ 64")


def event_topic(site: str, device: str, type: str) -> str:
    _check_ids(site, device)
    if type not in SCHEMA:
        raise EventError("schema", f"unknown event type {type!r}")
    return f"{TOPIC_PREFIX}/{site}/{device}/event/{type}"


def status_topic(site: str, device: str) -> str:
    _check_ids(site, device)
    return f"{TOPIC_PREFIX}/{site}/{device}/status"


def cmd_topic(site: str, device: str) -> str:
    _check_ids(site, device)
    return f"{TOPIC_PREFIX}/{site}/{device}/cmd"


def parse_event_topic(topic: str) -> tuple[str, str, str]:
    """`facegate/v1/<site>/<device>/event/<type>` -> (site, device, type); EventError otherwise."""
    parts = topic.split("/")
    if (
        len(parts) != 6
        or f"{parts[0]}/{parts[1]}" != TOPIC_PREFIX
        or parts[4] != "event"
        or not _ID.fullmatch(parts[2])
        or not _ID.fullmatch(parts[3])
        or parts[5] not in SCHEMA
    ):
        raise EventError("topic", f"not an event topic: {topic[:120]!r}")
    return parts[2], parts[3], parts[5]
