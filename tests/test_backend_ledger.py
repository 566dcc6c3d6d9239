"""The ledger books each device:seq once, tells duplicates from replays, and counts rejections."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import _backend
import pytest
from _backend import factory

from edge.backend.devices import DeviceError, KeyCache, add_device, list_devices, remove_device
from edge.backend.ledger import Booking, Ledger, LedgerError, Outcome
from edge.errors import KeyStoreError

ledger_target = _backend.ledger_target  # fixture: SQLite file and PostgreSQL schema


def _booking(device: str, seq: int, content: str, amount: int | None = None) -> Booking:
    return Booking(
        device=device, seq=seq, site="s1", type="payment.authorize" if amount else "door.unlock",
        ts=1_700_000_000.0 + seq, content_hash=hashlib.sha256(content.encode()).hexdigest(),
        payload=content, amount=amount, currency="EUR" if amount else None,
    )  # fmt: skip


def test_an_event_is_booked_once_and_an_identical_redelivery_is_a_duplicate(
    ledger_target: str,
) -> None:
    with Ledger(ledger_target) as led:
        assert led.book(_booking("k1", 1, "a", 100)) is Outcome.BOOKED
        assert led.book(_booking("k1", 1, "a", 100)) is Outcome.DUPLICATE
        assert led.book(_booking("k1", 1, "a", 100)) is Outcome.DUPLICATE
        assert led.count() == 1
        assert led.rejection_counts() == {"duplicate": 2}
        assert led.alerts() == []


def test_same_device_seq_with_other_content_is_a_replay_alert_not_a_booking(
    ledger_target: str,
) -> None:
    with Ledger(ledger_target) as led:
        led.book(_booking("k1", 7, "original", 100))
        assert led.book(_booking("k1", 7, "forged", 99_999)) is Outcome.REPLAY
        assert led.count() == 1
        (alert,) = led.alerts()
        assert (alert["device"], alert["seq"], alert["kind"]) == ("k1", 7, "replay")
        assert alert["booked_hash"] != alert["content_hash"]
        assert led.totals()["amount_per_currency"] == {"EUR": 100}


def test_totals_group_by_type_and_device_and_sum_amounts_per_currency(ledger_target: str) -> None:
    with Ledger(ledger_target) as led:
        for seq, amount in enumerate([100, 250, 75], start=1):
            led.book(_booking("k1", seq, f"p{seq}", amount))
        led.book(_booking("k2", 1, "d1"))
        led.reject("bad_signature")
        led.reject("bad_signature")
        t = led.totals()
    assert t["events"] == 4
    assert {(r["type"], r["device"], r["count"]) for r in t["by_type_device"]} == {
        ("payment.authorize", "k1", 3),
        ("door.unlock", "k2", 1),
    }
    assert t["amount_per_currency"] == {"EUR": 425}
    assert t["rejections"] == {"bad_signature": 2}


def test_ledger_state_survives_reopening(ledger_target: str) -> None:
    with Ledger(ledger_target) as led:
        led.book(_booking("k1", 1, "a"))
    with Ledger(ledger_target) as led:
        assert led.book(_booking("k1", 1, "a")) is Outcome.DUPLICATE
        assert led.keys_by_device() == {"k1": [1]}


def test_concurrent_writers_on_one_ledger_book_each_key_exactly_once(ledger_target: str) -> None:
    """Four connections race to book the same 200 keys; every key lands once, no errors."""
    outcomes: list[Outcome] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer() -> None:
        try:
            with Ledger(ledger_target) as led:
                for seq in range(1, 201):
                    o = led.book(_booking("k1", seq, f"c{seq}"))
                    with lock:
                        outcomes.append(o)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    Ledger(ledger_target).close()  # create the schema once up front
    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert outcomes.count(Outcome.BOOKED) == 200
    assert outcomes.count(Outcome.DUPLICATE) == 600
    with Ledger(ledger_target) as led:
        assert led.keys_by_device() == {"k1": list(range(1, 201))}


def test_device_registry_adds_rekeys_lists_and_removes(ledger_target: str) -> None:
    f, pub = factory("kiosk-9")
    _, pub2 = factory("kiosk-9")
    with Ledger(ledger_target) as led:
        add_device(led, "kiosk-9", pub, "s1")
        assert [(d.name, d.public_key_hex) for d in list_devices(led)] == [("kiosk-9", pub)]
        add_device(led, "kiosk-9", pub2.upper(), "s1")
        assert list_devices(led)[0].public_key_hex == pub2
        assert KeyCache(led).get("kiosk-9") is not None
        assert remove_device(led, "kiosk-9")
        assert not remove_device(led, "kiosk-9")
        assert KeyCache(led).get("kiosk-9") is None


@pytest.mark.parametrize(
    "name,key,error",
    [
        ("bad name!", "ab" * 32, DeviceError),
        ("k", "ab" * 31, KeyStoreError),
        ("k", "zz" * 32, KeyStoreError),
    ],
)
def test_registry_refuses_bad_names_and_keys_with_a_clear_error(
    tmp_path: Path, name: str, key: str, error: type[Exception]
) -> None:
    with Ledger(tmp_path / "l.db") as led, pytest.raises(error, match="use|hex"):
        add_device(led, name, key, "s1")
    with Ledger(tmp_path / "l.db") as led:
        assert list_devices(led) == []


def test_unreachable_postgres_and_missing_directory_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="check the URL"):
        Ledger("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(LedgerError, match="does not exist"):
        Ledger(tmp_path / "missing" / "l.db")


def _fault(device: str, seq: int, accept_seq: object, reason: str = "timeout") -> Booking:
    payload = json.dumps({"type": "actuator.fault", "accept_seq": accept_seq, "reason": reason,
                          "actuator": "serial", "device": device, "seq": seq})
    return Booking(
        device=device, seq=seq, site="s1", type="actuator.fault", ts=1_700_000_000.0 + seq,
        content_hash=hashlib.sha256(payload.encode()).hexdigest(), payload=payload,
    )  # fmt: skip


def test_an_actuator_fault_voids_its_accept_and_takes_its_amount_out_of_the_totals(
    ledger_target: str,
) -> None:
    """A fare charged whose gate then failed to open is voided once, by its own device only."""
    with Ledger(ledger_target) as led:
        led.book(_booking("k1", 1, "p1", 250))
        led.book(_booking("k1", 2, "p2", 300))
        led.book(_booking("k2", 1, "q1", 400))
        assert led.book(_fault("k1", 3, 2)) is Outcome.BOOKED
        assert led.book(_fault("k1", 3, 2)) is Outcome.DUPLICATE  # redelivered: voided once
        led.book(_fault("k1", 4, 2, "error"))  # a second fault for it: the first one stands
        led.book(_fault("k1", 5, 9))  # names a later seq: not an earlier event, ignored
        led.book(_fault("k2", 2, "x"))  # malformed: booked for audit, voids nothing
        t = led.totals()
    assert t["amount_per_currency"] == {"EUR": 250 + 400}
    assert t["voided"] == [{
        "device": "k1", "seq": 2, "fault_seq": 3, "reason": "timeout",
        "type": "payment.authorize", "amount": 300, "currency": "EUR",
    }]  # fmt: skip
    assert t["events"] == 3 + 4  # every event stays booked: the ledger is the audit trail


def test_a_fault_booked_before_its_accept_still_voids_it(ledger_target: str) -> None:
    with Ledger(ledger_target) as led:
        led.settle([_fault("k1", 8, 7), _booking("k1", 7, "late", 120)])
        t = led.totals()
    assert t["amount_per_currency"] == {}
    assert [(v["seq"], v["amount"]) for v in t["voided"]] == [(7, 120)]
