"""Signed events: schema per type, biometric guard, persisted seq, verification, topics."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.transport.seq import SqliteSeqStore
from edge.transport.topics import cmd_topic, event_topic, parse_event_topic, status_topic, topic_for
from edge.trust import canonical
from edge.trust.event_schema import EVENT_TYPES, EventError
from edge.trust.events import (
    EventFactory,
    check_signature,
    parse_event,
    parse_signed,
    verify_event,
)

DECISION = {
    "subject": "s-7f3a",
    "decision": "accept",
    "score": 0.83,
    "liveness": {"blinks": 1, "challenge_ms": 900},
}
EXAMPLES: dict[str, dict[str, Any]] = {
    "payment.authorize": {**DECISION, "amount": 450, "currency": "EUR", "step_up": True},
    "fare.charge": {**DECISION, "amount": 290, "currency": "USD", "gate": "g3", "claim": "qr"},
    "door.unlock": {**DECISION, "door": "main", "household": "h12"},
    "door.denied": {**DECISION, "decision": "reject", "door": "main", "unknown_faces": 2},
    "welfare.alert": {"subject": "s-1", "household": "h12", "days_unseen": 4, "last_seen_ts": None},
    "verify.reject": {**DECISION, "decision": "reject", "score": None, "reason": "no_blink"},
    "actuator.fault": {"actuator": "serial", "accept_seq": 41, "reason": "timeout"},
    "console.audit": {"action": "templates.revoke", "ok": True, "detail": "subject s-1"},
    "device.status": {"status": "online", "outbox_pending": 0, "outbox_full": False},
}


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def factory(tmp_path: Path, key: Ed25519PrivateKey) -> EventFactory:
    ticks = itertools.count(1_700_000_000)
    return EventFactory(
        "kiosk-1",
        "bakery-3",
        key,
        SqliteSeqStore(tmp_path / "seq.db"),
        clock=lambda: float(next(ticks)),
        rng=lambda n: bytes(range(n)),
    )


def test_every_event_type_has_an_example_that_signs_and_verifies(
    factory: EventFactory, key: Ed25519PrivateKey
) -> None:
    assert set(EXAMPLES) == set(EVENT_TYPES)
    for type_, fields in EXAMPLES.items():
        ev = factory.make(type_, **fields)
        assert verify_event(ev.payload, key.public_key()) == ev.event
        assert ev.event["type"] == type_ and ev.event["v"] == 1


def test_payload_is_canonical_and_sig_covers_the_event_without_sig(
    factory: EventFactory, key: Ed25519PrivateKey
) -> None:
    ev = factory.make("door.unlock", **EXAMPLES["door.unlock"])
    assert canonical.dumps(json.loads(ev.payload)) == ev.payload
    body = {k: v for k, v in ev.event.items() if k != "sig"}
    key.public_key().verify(bytes.fromhex(ev.event["sig"]), canonical.dumps(body))
    assert ev.event["nonce"] == bytes(range(16)).hex()
    assert ev.key == "kiosk-1:1"
    assert topic_for(ev.event) == "facegate/v1/bakery-3/kiosk-1/event/door.unlock"


def test_signed_bytes_cut_from_the_payload_equal_the_canonical_body_for_every_type(
    factory: EventFactory,
) -> None:
    for type_, fields in EXAMPLES.items():
        ev = factory.make(type_, **fields)
        body = {k: v for k, v in ev.event.items() if k != "sig"}
        assert parse_signed(ev.payload).signed_bytes == canonical.dumps(body), type_


def test_numbers_are_signed_in_rfc8785_form_and_pre_rfc8785_events_still_verify(
    factory: EventFactory, key: Ed25519PrivateKey
) -> None:
    fields = {**EXAMPLES["door.unlock"], "score": 1.0}
    ev = factory.make("door.unlock", **fields)
    assert b'"score":1,' in ev.payload and b'"ts":1700000000,' in ev.payload  # not 1.0
    assert verify_event(ev.payload, key.public_key())["score"] == 1
    # An event an older kiosk signed over Python's float repr ("score":1.0) and still holds in
    # its outbox: accepted as legacy, its signature checked over those legacy bytes.
    body = {k: v for k, v in ev.event.items() if k != "sig"}
    old = canonical.legacy_dumps({**body, "sig": key.sign(canonical.legacy_dumps(body)).hex()})
    assert b'"score":1.0,' in old
    parsed = parse_signed(old)
    assert parsed.legacy and check_signature(parsed, key.public_key())["seq"] == ev.seq
    # ...but the legacy form is no loophole: other bytes for the same value are still refused
    with pytest.raises(EventError) as err:
        parse_event(old.replace(b'"score":1.0', b'"score":1.00'))
    assert err.value.reason == "non_canonical"
    forged = canonical.legacy_dumps({**body, "score": 0.5, "sig": ev.event["sig"]})
    with pytest.raises(EventError) as err:
        verify_event(forged, key.public_key())
    assert err.value.reason == "signature"


def test_seq_is_persisted_and_never_reused_after_reopen(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = SqliteSeqStore(tmp_path / "seq.db")
    f = EventFactory("kiosk-1", "s", key, store)
    seqs = [f.make("device.status", status="online").seq for _ in range(3)]
    store.close()  # a reboot: a new process opens the same file
    f2 = EventFactory("kiosk-1", "s", key, SqliteSeqStore(tmp_path / "seq.db"))
    assert seqs == [1, 2, 3]
    assert f2.make("device.status", status="online").seq == 4


def test_invalid_event_does_not_burn_a_seq(factory: EventFactory) -> None:
    with pytest.raises(EventError):
        factory.make("payment.authorize", **{**EXAMPLES["payment.authorize"], "currency": "euro"})
    assert factory.make("device.status", status="online").seq == 1


@pytest.mark.parametrize(
    ("type_", "fields", "reason"),
    [
        (
            "payment.authorize",
            {k: v for k, v in EXAMPLES["payment.authorize"].items() if k != "amount"},
            "schema",
        ),
        ("payment.authorize", {**EXAMPLES["payment.authorize"], "amount": 4.5}, "schema"),
        ("payment.authorize", {**EXAMPLES["payment.authorize"], "amount": -1}, "schema"),
        ("door.unlock", {**EXAMPLES["door.unlock"], "decision": "maybe"}, "schema"),
        ("door.unlock", {**EXAMPLES["door.unlock"], "score": 3.0}, "schema"),
        ("door.unlock", {**EXAMPLES["door.unlock"], "colour": "red"}, "schema"),
        ("door.unlock", {**EXAMPLES["door.unlock"], "seq": 99}, "schema"),
        ("door.unlock", {**EXAMPLES["door.unlock"], "liveness": {"blinks": 1}}, "schema"),
        ("door.opened", EXAMPLES["door.unlock"], "schema"),
        ("device.status", {"status": "x", "uptime_s": float("nan")}, "json"),
    ],
)
def test_events_missing_or_with_wrong_fields_are_refused(
    factory: EventFactory, type_: str, fields: dict[str, Any], reason: str
) -> None:
    with pytest.raises(EventError) as err:
        factory.make(type_, **fields)
    assert err.value.reason == reason


EMBEDDING = np.random.default_rng(0).normal(size=128).astype(np.float32)
BIOMETRIC_SMUGGLING = [
    {"embedding": "x"},
    {"face_image": "x"},
    {"Landmarks": "x"},
    {"template_id": "x"},
    {"detail": EMBEDDING.tolist()},  # any array of numbers
    {"detail": EMBEDDING},  # a numpy array itself
    {"detail": EMBEDDING.tobytes()},
    {"detail": EMBEDDING.tobytes().hex()[:150]},  # hex blob
    {"detail": "/9j/4AAQSkZJRgABAQ"},  # start of a base64 JPEG
    {"detail": "data:image/png;base64,AAAA"},
    {"detail": "a" * 201},
    {"nested": {"ok": 1, "img": "x"}},
]


@pytest.mark.parametrize("extra", BIOMETRIC_SMUGGLING, ids=lambda e: next(iter(e)))
def test_no_image_landmark_or_embedding_can_enter_an_event(
    factory: EventFactory, extra: dict[str, Any]
) -> None:
    with pytest.raises(EventError) as err:
        factory.make("console.audit", action="x", ok=True, **extra)
    assert err.value.reason == "biometric"


def test_backend_refuses_a_correctly_signed_event_that_carries_biometrics(
    key: Ed25519PrivateKey,
) -> None:
    # A buggy or compromised device signs an event carrying landmarks: the verifier refuses it.
    body = {
        "v": 1,
        "type": "console.audit",
        "device": "d",
        "site": "s",
        "seq": 1,
        "ts": 1.0,
        "nonce": "0" * 32,
        "action": "x",
        "ok": True,
        "landmarks": "1,2,3",
    }
    payload = canonical.dumps({**body, "sig": key.sign(canonical.dumps(body)).hex()})
    with pytest.raises(EventError) as err:
        verify_event(payload, key.public_key())
    assert err.value.reason == "biometric"


def test_sha256_pseudonym_is_still_a_valid_subject(factory: EventFactory) -> None:
    ev = factory.make("door.unlock", **{**EXAMPLES["door.unlock"], "subject": "ab" * 32})
    assert ev.event["subject"] == "ab" * 32


def test_verify_refuses_tampering_wrong_key_and_non_canonical_bytes(
    factory: EventFactory, key: Ed25519PrivateKey
) -> None:
    ev = factory.make("payment.authorize", **EXAMPLES["payment.authorize"])
    pub = key.public_key()
    tampered = ev.payload.replace(b'"amount":450', b'"amount":451')
    reordered = json.dumps(ev.event, separators=(",", ":"), ensure_ascii=False).encode()
    spaced = json.dumps(ev.event, sort_keys=True).encode()
    cases = {
        tampered: "signature",
        spaced: "non_canonical",
        b"not json": "json",
        b"[1,2]": "json",
        b"{" + b" " * 5000 + b"}": "too_large",
        canonical.dumps({k: v for k, v in ev.event.items() if k != "sig"}): "schema",
    }
    if reordered != ev.payload:
        cases[reordered] = "non_canonical"
    for payload, reason in cases.items():
        with pytest.raises(EventError) as err:
            verify_event(payload, pub)
        assert err.value.reason == reason, payload[:60]
    with pytest.raises(EventError) as err:
        verify_event(ev.payload, Ed25519PrivateKey.generate().public_key())
    assert err.value.reason == "signature"
    assert parse_event(ev.payload)["device"] == "kiosk-1"  # backend: find the key, then verify


def test_topics_build_and_parse_strictly() -> None:
    assert event_topic("s1", "k-1", "fare.charge") == "facegate/v1/s1/k-1/event/fare.charge"
    assert status_topic("s1", "k-1") == "facegate/v1/s1/k-1/status"
    assert cmd_topic("s1", "k-1") == "facegate/v1/s1/k-1/cmd"
    assert parse_event_topic("facegate/v1/s1/k-1/event/fare.charge") == ("s1", "k-1", "fare.charge")
    for bad in [
        "facegate/v1/s1/k-1/event/fare.charge/x",
        "facegate/v2/s1/k-1/event/fare.charge",
        "facegate/v1/s1/k-1/status",
        "facegate/v1/s1/k-1/event/unknown.type",
        "facegate/v1/+/k-1/event/fare.charge",
        "facegate/v1//k-1/event/fare.charge",
        "",
    ]:
        with pytest.raises(EventError):
            parse_event_topic(bad)
    with pytest.raises(EventError):
        event_topic("s/1", "k", "fare.charge")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=6)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=600), _JSON.map(lambda v: json.dumps(v).encode())))
def test_any_bytes_are_refused_with_an_event_error_never_a_crash(payload: bytes) -> None:
    try:
        verify_event(payload, _FUZZ_KEY.public_key())
    except EventError as exc:
        assert exc.reason in {
            "too_large",
            "json",
            "non_canonical",
            "schema",
            "biometric",
            "signature",
        }
    else:
        raise AssertionError("random bytes verified as a signed event")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(EXAMPLES)), st.text(min_size=1, max_size=12), _JSON)
def test_changing_or_adding_any_field_breaks_verification(
    type_: str, name: str, value: Any
) -> None:
    ev = EventFactory("kiosk-1", "s", _FUZZ_KEY).build(type_, 7, **EXAMPLES[type_])
    changed = {**ev.event, name: value}
    if changed == ev.event:
        return
    try:
        payload = canonical.dumps(changed)
    except canonical.CanonicalError:
        return  # not even encodable (NaN etc.)
    with pytest.raises(EventError):
        verify_event(payload, _FUZZ_KEY.public_key())


_FUZZ_KEY = Ed25519PrivateKey.generate()
