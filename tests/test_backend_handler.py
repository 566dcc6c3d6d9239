"""The backend's message handler: what is booked, what is refused and why, never a crash.

These call `EventHandler.handle(topic, payload)` directly, the exact function the MQTT worker
runs for every delivery, against a real SQLite ledger with real signed events.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from _backend import door, factory, payment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.backend.devices import KeyCache, add_device
from edge.backend.ledger import Ledger, Outcome
from edge.backend.worker import EventHandler
from edge.transport.topics import event_topic, topic_for
from edge.trust import canonical

F, PUB = factory("kiosk-1", "bakery-1")


@pytest.fixture
def handler(tmp_path: Path) -> Iterator[EventHandler]:
    with Ledger(tmp_path / "ledger.db") as led:
        add_device(led, "kiosk-1", PUB, "bakery-1")
        yield EventHandler(led, KeyCache(led))


def test_a_valid_signed_event_is_booked_with_its_amount(handler: EventHandler) -> None:
    ev = payment(F, 1, amount=1234, currency="EUR")
    v = handler.handle(topic_for(ev.event), ev.payload)
    assert (v.outcome, v.key) == (Outcome.BOOKED, "kiosk-1:1")
    assert handler.ledger.totals()["amount_per_currency"] == {"EUR": 1234}


def test_redelivery_is_acknowledged_as_duplicate_and_not_booked_twice(
    handler: EventHandler,
) -> None:
    ev = door(F, 5)
    assert handler.handle(topic_for(ev.event), ev.payload).outcome is Outcome.BOOKED
    assert handler.handle(topic_for(ev.event), ev.payload).outcome is Outcome.DUPLICATE
    assert handler.ledger.count() == 1


def test_same_seq_signed_again_with_other_content_raises_a_replay_alert(
    handler: EventHandler,
) -> None:
    first, second = payment(F, 9, amount=100), payment(F, 9, amount=100_000)
    handler.handle(topic_for(first.event), first.payload)
    assert handler.handle(topic_for(second.event), second.payload).outcome is Outcome.REPLAY
    assert handler.ledger.totals()["amount_per_currency"] == {"EUR": 100}
    assert len(handler.ledger.alerts()) == 1


def _tampered(payload: bytes, **changes: object) -> bytes:
    event = json.loads(payload)
    event.update(changes)
    return canonical.dumps(event)  # still canonical, signature now covers other bytes


def _cases() -> list[tuple[str, str, bytes]]:
    ev = payment(F, 3)
    stranger, _ = factory("kiosk-1", "bakery-1")  # same name, another key
    forged = payment(stranger, 3)
    unknown, _ = factory("kiosk-x", "bakery-1")
    u = payment(unknown, 1)
    return [
        ("oversized", topic_for(ev.event), ev.payload + b" " * 5000),
        ("malformed_json", topic_for(ev.event), b"{not json"),
        ("malformed_json", topic_for(ev.event), b"\xff\xfe"),
        (
            "non_canonical",
            topic_for(ev.event),
            json.dumps(json.loads(ev.payload), indent=1).encode(),
        ),
        ("bad_schema", topic_for(ev.event), canonical.dumps({"v": 1, "sig": "0" * 128})),
        ("malformed_json", topic_for(ev.event), b"[1,2,3]"),
        ("bad_signature", topic_for(ev.event), forged.payload),
        ("bad_signature", topic_for(ev.event), _tampered(ev.payload, amount=1)),
        ("unknown_device", topic_for(u.event), u.payload),
        ("bad_topic", "facegate/v1/bakery-1/kiosk-1/status", ev.payload),
        ("bad_topic", "facegate/v2/bakery-1/kiosk-1/event/payment.authorize", ev.payload),
        ("bad_topic", "", ev.payload),
        ("topic_mismatch", event_topic("bakery-1", "kiosk-1", "door.unlock"), ev.payload),
        ("topic_mismatch", event_topic("other-site", "kiosk-1", ev.type), ev.payload),
    ]


@pytest.mark.parametrize("reason,topic,payload", _cases())
def test_bad_messages_are_refused_counted_by_reason_and_never_booked(
    handler: EventHandler, reason: str, topic: str, payload: bytes
) -> None:
    v = handler.handle(topic, payload)
    assert (v.outcome, v.reason) == (Outcome.REJECTED, reason)
    assert handler.ledger.count() == 0
    assert handler.ledger.rejection_counts() == {reason: 1}


def test_a_forged_event_cannot_take_the_seq_of_a_real_one(handler: EventHandler) -> None:
    real = payment(F, 4, amount=500)
    handler.handle(topic_for(real.event), real.payload)
    forged = _tampered(real.payload, amount=1)
    assert handler.handle(topic_for(real.event), forged).reason == "bad_signature"
    assert handler.ledger.alerts() == []  # a bad signature is not even a replay candidate


# ---------------------------------------------------------------------------- fuzz

_VALID = [payment(F, s) for s in range(1, 4)] + [door(F, 10)]
_topics = st.one_of(
    st.sampled_from([topic_for(e.event) for e in _VALID]),
    st.text(max_size=80),
    st.lists(st.sampled_from(["facegate", "v1", "bakery-1", "kiosk-1", "event", "+", "#", ""]),
             max_size=8).map("/".join),
)  # fmt: skip


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A valid payload with bytes flipped, inserted or cut (never the original bytes)."""
    base = bytearray(draw(st.sampled_from(_VALID)).payload)
    op = draw(st.sampled_from(["flip", "cut", "insert"]))
    i = draw(st.integers(0, len(base) - 1))
    if op == "flip":
        base[i] ^= draw(st.integers(1, 255))
    elif op == "cut":
        del base[i : i + draw(st.integers(1, 40))]
    else:
        base[i:i] = draw(st.binary(min_size=1, max_size=20))
    return bytes(base)


_payloads = st.one_of(
    st.binary(max_size=300),
    _mutated(),
    st.binary(min_size=4097, max_size=20_000),
    st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=6).map(
        lambda d: json.dumps(d).encode()
    ),
)


_FUZZ: list[EventHandler] = []


def _fuzz_handler(factory_: pytest.TempPathFactory) -> EventHandler:
    """One ledger for all examples (opening one per example would dominate the run time)."""
    if not _FUZZ:
        led = Ledger(factory_.mktemp("fuzz") / "ledger.db")
        add_device(led, "kiosk-1", PUB, "bakery-1")
        _FUZZ.append(EventHandler(led, KeyCache(led)))
    return _FUZZ[0]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=_topics, payload=_payloads)
def test_fuzzed_messages_are_counted_and_rejected_without_stopping(
    tmp_path_factory: pytest.TempPathFactory, topic: str, payload: bytes
) -> None:
    h = _fuzz_handler(tmp_path_factory)
    before = sum(h.ledger.rejection_counts().values())
    v = h.handle(topic, payload)  # must not raise
    assert v.outcome is Outcome.REJECTED, (topic, payload[:80])
    assert v.reason
    assert sum(h.ledger.rejection_counts().values()) == before + 1
    assert h.ledger.count() == 0


_STRANGER, _ = factory("kiosk-1", "bakery-1")  # same device name, key not registered


@settings(max_examples=60, deadline=None)
@given(
    seq=st.integers(1, 2**53 - 1),
    amount=st.integers(0, 10**9),
    currency=st.sampled_from(["EUR", "USD", "GBP"]),
)
def test_any_event_signed_with_an_unregistered_key_is_a_bad_signature(
    tmp_path_factory: pytest.TempPathFactory, seq: int, amount: int, currency: str
) -> None:
    h = _fuzz_handler(tmp_path_factory)
    forged = payment(_STRANGER, seq, amount=amount, currency=currency)
    v = h.handle(topic_for(forged.event), forged.payload)
    assert (v.outcome, v.reason) == (Outcome.REJECTED, "bad_signature")
    genuine = payment(F, seq, amount=amount, currency=currency)
    assert h.handle(topic_for(genuine.event), genuine.payload).outcome is Outcome.BOOKED
    with h.ledger.transaction() as conn:
        h.ledger.execute(conn, "DELETE FROM events")


def test_after_the_fuzz_the_same_handler_still_books_a_good_event(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    h = _fuzz_handler(tmp_path_factory)
    good = door(F, 99)
    assert h.handle(topic_for(good.event), good.payload).outcome is Outcome.BOOKED
    h.ledger.close()
    _FUZZ.clear()


def test_libsodium_and_openssl_verifiers_agree_on_every_bit_flip() -> None:
    """The worker verifies with libsodium (devices.Registered.verify); OpenSSL is the
    fallback: both accept the real signature and refuse any flipped bit of it or the message."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.backend.devices import Registered, _openssl_verify

    key = Ed25519PrivateKey.generate()
    msg = b'{"device":"d1","seq":1}'
    sig = key.sign(msg)
    reg = Registered(key.public_key(), "lab")
    assert reg.verify(sig, msg) and _openssl_verify(key.public_key(), sig, msg)
    for i in range(0, len(sig) * 8, 37):
        bad_sig = bytearray(sig)
        bad_sig[i // 8] ^= 1 << (i % 8)
        assert not reg.verify(bytes(bad_sig), msg)
        assert not _openssl_verify(key.public_key(), bytes(bad_sig), msg)
    for i in range(len(msg) * 8):
        bad = bytearray(msg)
        bad[i // 8] ^= 1 << (i % 8)
        assert not reg.verify(sig, bytes(bad))
        assert not _openssl_verify(key.public_key(), sig, bytes(bad))
    other = Ed25519PrivateKey.generate().public_key()
    assert not Registered(other, "lab").verify(sig, msg)
