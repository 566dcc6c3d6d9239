"""Signed kiosk events: build and sign on the device, parse and verify on the backend.

`sig` is the lowercase hex Ed25519 signature over the canonical JSON bytes
(edge/trust/canonical.py) of the event WITHOUT `sig`; the published payload is the canonical
bytes of the event WITH `sig`. `device:seq` is the idempotency key. The schema and the biometric
guard are in edge/trust/event_schema.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.ids import ID_RULE, is_valid_id
from edge.trust import canonical
from edge.trust.event_schema import (
    ENVELOPE,
    MAX_EVENT_BYTES,
    SCHEMA,
    SIG_HEX,
    VERSION,
    EventError,
    check_no_biometrics,
    validate,
)

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


def idempotency_key(event: Mapping[str, Any]) -> str:
    return f"{event['device']}:{event['seq']}"


class SeqStore(Protocol):
    def next_seq(self, device: str) -> int:
        """Reserve and durably persist the next sequence number for `device` (the first is the
        store's start: 1 here, the clock in microseconds in a new `Outbox`)."""
        ...


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
        if not is_valid_id(device_id) or not is_valid_id(site):
            raise EventError("schema", f"device {device_id!r} / site {site!r}: use {ID_RULE}")
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
        reserved = set(fields) & (set(ENVELOPE) | {"sig"})
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

    def sign_status(self, fields: Mapping[str, Any]) -> bytes:
        """A signed status document of this device (edge/trust/status.py), for retained topics."""
        from edge.trust.status import sign_status

        return sign_status(self._key, self.device_id, self.site, self._clock(), fields)

    def validate_fields(self, type: str, fields: Mapping[str, Any]) -> None:
        """Raise EventError if `fields` cannot make a valid event of `type` (no seq used)."""
        self._body(type, 1, fields, 0.0, "0" * 32)


# ---- verification (backend) ---------------------------------------------------------------


@dataclass(frozen=True)
class ParsedEvent:
    """A schema-checked event, unverified, and the exact bytes its `sig` must cover."""

    event: dict[str, Any]
    signed_bytes: bytes
    legacy: bool  # canonical only in the pre-RFC 8785 form (an old outbox's event)


def _without_sig(payload: bytes, sig: str) -> bytes | None:
    """The canonical bytes of the event minus its top-level `sig` member, cut from `payload`.

    Valid only for a payload already proven canonical: removing one member of a sorted,
    whitespace-free object removes exactly `"sig":"…"` and one comma. `"sig":` can only occur
    as a key (inside a string its quotes would be escaped), so one occurrence is the top-level
    one; anything else (a nested `sig` key) returns None and the caller re-encodes.
    """
    if payload.count(b'"sig":') != 1:
        return None
    member = b'"sig":"' + sig.encode("ascii") + b'"'
    for cut in (b"," + member, member + b","):
        if cut in payload:
            return payload.replace(cut, b"", 1)
    return None


def parse_signed(payload: bytes) -> ParsedEvent:
    """Parse and schema-check payload bytes WITHOUT checking the signature (to find the device).

    The payload must be RFC 8785 canonical; the pre-RFC 8785 form (Python float repr) is still
    accepted, flagged `legacy`, so events signed before the upgrade and still queued in a
    kiosk's outbox are booked rather than refused.
    """
    if len(payload) > MAX_EVENT_BYTES:
        raise EventError("too_large", f"payload is {len(payload)} bytes > {MAX_EVENT_BYTES}")
    try:
        event = canonical.loads(payload)
    except canonical.CanonicalError as exc:
        raise EventError("json", str(exc)) from exc
    if not isinstance(event, dict):
        raise EventError("json", "payload is not a JSON object")
    legacy = False
    try:
        if canonical.dumps(event) != payload:
            legacy = canonical.legacy_dumps(event) == payload
            if not legacy:
                raise EventError(
                    "non_canonical", "payload is not RFC 8785 canonical JSON (order/spacing/"
                    "numbers)",
                )
    except canonical.CanonicalError as exc:
        raise EventError("json", str(exc)) from exc
    sig = event.get("sig")
    if not isinstance(sig, str) or not SIG_HEX.fullmatch(sig):
        raise EventError("schema", "missing or malformed 'sig' (128 lowercase hex chars)")
    validate(event)
    signed = None if legacy else _without_sig(payload, sig)
    if signed is None:
        body = {k: v for k, v in event.items() if k != "sig"}
        signed = canonical.legacy_dumps(body) if legacy else canonical.dumps(body)
    return ParsedEvent(event, signed, legacy)


def parse_event(payload: bytes) -> dict[str, Any]:
    """Parse and schema-check payload bytes WITHOUT checking the signature (to find the device)."""
    return parse_signed(payload).event


def check_signature(parsed: ParsedEvent, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """Signature-check a parsed event; return the event or raise EventError("signature")."""
    try:
        public_key.verify(bytes.fromhex(parsed.event["sig"]), parsed.signed_bytes)
    except InvalidSignature:
        key = idempotency_key(parsed.event)
        raise EventError("signature", f"bad signature on {key}") from None
    return parsed.event


def verify_event(payload: bytes, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """Parse, schema-check and signature-check an event; return it or raise EventError."""
    return check_signature(parse_signed(payload), public_key)
