"""Batched settlement: one transaction per batch, right outcomes and counts per message; the
event nonce and the device's registered site are enforced.

Run on a SQLite file and on a private PostgreSQL schema (the `ledger_target` fixture), with real
signed events through `EventHandler.check` + `settle`, the functions the worker runs.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import _backend
import pytest
from _backend import door, public_hex

from edge.backend.devices import KeyCache, add_device
from edge.backend.ledger import Ledger
from edge.backend.worker import EventHandler
from edge.transport.topics import topic_for
from edge.trust.events import EventFactory, SignedEvent

ledger_target = _backend.ledger_target  # fixture: SQLite file and PostgreSQL schema


@pytest.fixture
def handler(ledger_target: str) -> Iterator[EventHandler]:
    with Ledger(ledger_target) as led:
        yield EventHandler(led, KeyCache(led, ttl_s=0.0))


def _device(handler: EventHandler, name: str, site: str, nonces: Iterator[bytes]) -> EventFactory:
    """A registered device whose nonces come from `nonces` (to make one repeat on purpose)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    add_device(handler.ledger, name, public_hex(key), site)
    return EventFactory(name, site, key, rng=lambda n: next(nonces)[:n])


def _settle(handler: EventHandler, evs: list[SignedEvent]) -> list[tuple[str, str]]:
    verdicts = handler.settle([handler.check(topic_for(e.event), e.payload) for e in evs])
    return [(v.outcome.value, v.reason) for v in verdicts]


def _fresh() -> Iterator[bytes]:
    return (i.to_bytes(16, "big") for i in itertools.count(1))


def test_one_batch_books_new_events_and_tells_duplicates_replays_and_reused_nonces(
    handler: EventHandler,
) -> None:
    repeat = iter([b"\x01" * 16, b"\x02" * 16, b"\x03" * 16, b"\x01" * 16, b"\x04" * 16])
    f = _device(handler, "kiosk-a", "site-a", repeat)
    e1, e2, e3 = door(f, 1), door(f, 2), door(f, 3)
    reused = door(f, 4)  # a new seq carrying e1's nonce: a device whose counter went back
    forged_seq2 = f.build(
        "door.unlock", 2, subject="s-x", decision="accept", score=0.5,
        liveness={"blinks": 0, "challenge_ms": 0}, door="back",
    )  # fmt: skip
    junk = handler.check("facegate/v1/site-a/kiosk-a/event/door.unlock", b"{not json")
    batch = [e1, e2, e1, e3, reused, forged_seq2]
    checked = [handler.check(topic_for(e.event), e.payload) for e in batch]
    verdicts = handler.settle([*checked[:3], junk, *checked[3:]])
    assert [(v.outcome.value, v.reason) for v in verdicts] == [
        ("booked", ""), ("booked", ""), ("duplicate", ""), ("rejected", "malformed_json"),
        ("booked", ""), ("rejected", "nonce_reused"), ("replay", ""),
    ]  # fmt: skip
    led = handler.ledger
    assert led.keys_by_device() == {"kiosk-a": [1, 2, 3]}
    assert led.rejection_counts() == {
        "duplicate": 1, "malformed_json": 1, "nonce_reused": 1, "replay": 1,
    }  # fmt: skip
    assert [a["seq"] for a in led.alerts()] == [2]
    # The whole batch redelivered (the PUBACKs were lost): nothing new is booked, every
    # booked event is a duplicate, and the refusals are refused again.
    assert _settle(handler, batch) == [
        ("duplicate", ""), ("duplicate", ""), ("duplicate", ""), ("duplicate", ""),
        ("rejected", "nonce_reused"), ("replay", ""),
    ]  # fmt: skip
    assert led.count() == 3 and led.rejection_counts()["duplicate"] == 5


def test_events_are_refused_unless_they_carry_the_site_their_device_is_registered_at(
    handler: EventHandler,
) -> None:
    f = _device(handler, "kiosk-b", "site-b", _fresh())
    assert _settle(handler, [door(f, 1)]) == [("booked", "")]
    # The same device key, signing honestly for another site (a kiosk moved, or its key
    # copied): the signature and topic are right, the site is not the registered one.
    moved = EventFactory("kiosk-b", "site-z", f._key, rng=lambda n: b"\x09" * n)
    assert _settle(handler, [door(moved, 2)]) == [("rejected", "site_mismatch")]
    # Registered by an older version (no site recorded): refused until registered again.
    with handler.ledger.transaction() as conn:
        handler.ledger.execute(conn, "UPDATE devices SET site = NULL WHERE name = 'kiosk-b'")
    assert _settle(handler, [door(f, 3)]) == [("rejected", "site_unbound")]
    add_device(handler.ledger, "kiosk-b", public_hex(f._key), "site-z")  # moved on purpose
    assert _settle(handler, [door(moved, 2), door(f, 4)]) == [
        ("booked", ""), ("rejected", "site_mismatch"),
    ]  # fmt: skip
    assert handler.ledger.rejection_counts() == {"site_mismatch": 2, "site_unbound": 1}
    assert handler.ledger.keys_by_device() == {"kiosk-b": [1, 2]}


def test_a_ledger_from_before_nonces_and_sites_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the tables as the first release created them
        db.execute(
            "CREATE TABLE events (device TEXT NOT NULL, seq BIGINT NOT NULL, site TEXT NOT NULL,"
            " type TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, booked_at DOUBLE PRECISION NOT"
            " NULL, amount BIGINT, currency TEXT, content_hash TEXT NOT NULL, payload TEXT NOT"
            " NULL, PRIMARY KEY (device, seq))"
        )
        db.execute(
            "CREATE TABLE devices (name TEXT PRIMARY KEY, public_key TEXT NOT NULL,"
            " added_at DOUBLE PRECISION NOT NULL)"
        )
        db.execute("INSERT INTO events VALUES ('k', 1, 's', 'door.unlock', 1, 2, NULL, NULL,"
                   " 'h', '{}')")  # fmt: skip
    with Ledger(path) as led:
        h = EventHandler(led, KeyCache(led))
        f = _device(h, "kiosk-c", "site-c", _fresh())
        ev = door(f, 1)
        assert _settle(h, [ev, ev]) == [("booked", ""), ("duplicate", "")]
        assert led.keys_by_device() == {"k": [1], "kiosk-c": [1]}


def test_settled_seqs_name_what_the_ledger_holds_after_the_commit(handler: EventHandler) -> None:
    """What the receipts are made from: booked and duplicate events, never refused ones."""
    from edge.backend.worker import _Pending, settled_seqs

    f = _device(handler, "kiosk-d", "site-d", _fresh())
    e1, e2 = door(f, 1), door(f, 2)
    bad = handler.check(topic_for(e1.event), e1.payload[:-2] + b"}}")
    batch = [_Pending(i, 1, handler.check(topic_for(e.event), e.payload), 0.0)
             for i, e in enumerate([e1, e2, e1])]  # fmt: skip
    batch.append(_Pending(9, 1, bad, 0.0))
    verdicts = handler.settle([p.checked for p in batch])
    assert [v.outcome.value for v in verdicts] == ["booked", "booked", "duplicate", "rejected"]
    assert settled_seqs(batch, verdicts) == {("site-d", "kiosk-d"): [1, 2, 1]}
