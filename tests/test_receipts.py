"""Settlement receipts, domain separation and the supervised MQTT link (real Mosquitto, real
SQLite outbox; the backend's side is played by `ReceiptPublisher`, the code the worker calls).

A PUBACK only marks an event published-but-unsettled; only a receipt signed by the backend key
for this device deletes it, and an unsettled event goes out again after its back-off."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from _broker import Broker, start_mosquitto
from conftest import wait_until
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from test_mqtt_client import DOOR, Subscriber, mqtt_cfg

from edge.backend.commands import sign_command
from edge.backend.receipts import ReceiptPublisher
from edge.transport.downlink import ReplayGuard
from edge.transport.mqtt import MqttLink
from edge.transport.outbox import Outbox
from edge.transport.topics import cmd_topic
from edge.trust import canonical, contexts
from edge.trust.commands import CommandError, verify_command
from edge.trust.events import EventFactory
from edge.trust.receipts import ReceiptError, sign_receipt, to_ranges, verify_receipt
from edge.trust.status import StatusError, verify_status

DEVICE, SITE = "kiosk-r1", "site-r"
KEY = Ed25519PrivateKey.generate()
BACKEND = Ed25519PrivateKey.generate()
SEED = 20261130
PAY = {**{k: v for k, v in DOOR.items() if k != "door"}, "amount": 420, "currency": "EUR"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_mosquitto(tmp_path)
    yield b
    b.stop()


def factory() -> EventFactory:
    return EventFactory(DEVICE, SITE, KEY)


def settling_link(broker: Broker, outbox: Outbox, **over: Any) -> MqttLink:
    cfg = mqtt_cfg(broker, resend_min_s=0.3, resend_max_s=0.6, **over)
    return MqttLink(
        cfg, DEVICE, SITE, outbox, factory=factory(), rng=random.Random(SEED),
        guard=ReplayGuard(outbox.path.with_name("downlink.db")),
        backend_public=BACKEND.public_key(),
    )  # fmt: skip


class Backend:
    """A plain client publishing receipts the way the worker does after a commit."""

    def __init__(self, broker: Broker, key: Ed25519PrivateKey = BACKEND) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.receipts = ReceiptPublisher(key)

    def settle(self, seqs: list[int], device: str = DEVICE) -> None:
        self.receipts.publish_receipts(self.client, {(SITE, device): seqs}, "ledger-test#1")

    def raw(self, payload: bytes) -> None:
        self.client.publish(cmd_topic(SITE, DEVICE), payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# ---------------------------------------------------------------------------- formats


def test_a_signature_made_for_one_context_never_verifies_in_another() -> None:
    message = b'{"v":1}'
    for signed_as, checked_as in itertools.permutations(contexts.ALL, 2):
        sig = BACKEND.sign(contexts.signed_bytes(signed_as, message))
        with pytest.raises(InvalidSignature):
            BACKEND.public_key().verify(sig, contexts.signed_bytes(checked_as, message))
    # The real formats: a command whose signature was made as a receipt (or with no context,
    # as before) is refused, and a receipt signed as a command is refused.
    good = json.loads(sign_command(BACKEND, DEVICE, "config.reload", {}, seq=5))
    body = {k: v for k, v in good.items() if k != "sig"}

    class Guard:
        def accept(self, device: str, seq: int) -> bool:
            return True

    for ctx in (contexts.RECEIPT, b""):
        sig = BACKEND.sign(ctx + canonical.dumps(body)).hex()
        with pytest.raises(CommandError) as err:
            verify_command(canonical.dumps({**body, "sig": sig}), BACKEND.public_key(), DEVICE,
                           Guard())  # fmt: skip
        assert err.value.reason == "signature"
    verify_command(canonical.dumps(good), BACKEND.public_key(), DEVICE, Guard())  # the control
    receipt = json.loads(sign_receipt(BACKEND, SITE, DEVICE, [(1, 3)], "l", 1.0))
    rbody = {k: v for k, v in receipt.items() if k != "sig"}
    as_command = BACKEND.sign(contexts.COMMAND + canonical.dumps(rbody)).hex()
    with pytest.raises(ReceiptError) as rerr:
        verify_receipt(canonical.dumps({**rbody, "sig": as_command}), BACKEND.public_key(),
                       DEVICE, SITE)  # fmt: skip
    assert rerr.value.reason == "signature"


def test_receipts_are_checked_for_signer_device_and_form() -> None:
    pub = BACKEND.public_key()
    good = sign_receipt(BACKEND, SITE, DEVICE, to_ranges([3, 1, 2, 7]), "w#1", time.time())
    assert verify_receipt(good, pub, DEVICE, SITE).ranges == ((1, 3), (7, 7))
    cases = {
        "signature": sign_receipt(Ed25519PrivateKey.generate(), SITE, DEVICE, [(1, 1)], "x", 1),
        "wrong_device": sign_receipt(BACKEND, SITE, "kiosk-other", [(1, 1)], "x", 1),
        "malformed": sign_receipt(BACKEND, SITE, DEVICE, [(3, 3), (1, 2)], "x", 1),
        "unsigned": canonical.dumps({k: v for k, v in json.loads(good).items() if k != "sig"}),
        "too_large": b"{" + b" " * 70_000 + b"}",
    }
    for reason, payload in cases.items():
        with pytest.raises(ReceiptError) as err:
            verify_receipt(payload, pub, DEVICE, SITE)
        assert err.value.reason == reason


# ---------------------------------------------------------------------------- outbox


OLD_SCHEMA = """
CREATE TABLE seq (device TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, payment INTEGER NOT NULL,
    created_ts REAL NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def test_an_outbox_from_before_receipts_is_migrated_and_its_rows_settle(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ev = factory().build("door.unlock", 41, **DOOR)
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO outbox(key, type, topic, payload, payment, created_ts) VALUES "
                   "(?, 'door.unlock', 't', ?, 0, 1.0)", (ev.key, ev.payload))  # fmt: skip
    with Outbox(path) as ob:
        assert [i.key for i in ob.peek(10)] == [ev.key]  # queued: never published
        assert ob.status()["queued"] == 1
        assert ob.settle(DEVICE, [(41, 41)]) == 1
        assert ob.status()["settled_total"] == 1 and ob.status()["pending"] == 0


def test_outbox_states_queued_unsettled_settled_and_bounded_jittered_resend(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    with Outbox(tmp_path / "o.db", clock=lambda: now[0], seq_start=1,
                rng=random.Random(SEED)) as ob:  # fmt: skip
        for _ in range(3):
            ob.emit(factory(), "door.unlock", **DOOR)
        ids = [i.id for i in ob.peek(10)]
        assert ob.mark_published(ids[:2], 5.0, 300.0) == 2
        st = ob.status()
        assert (st["queued"], st["unsettled"], st["settled_total"]) == (1, 2, 0)
        assert [i.id for i in ob.peek(10)] == ids[2:]  # the unsettled wait out their back-off
        now[0] += 6.1  # 5 s + 20 %: due again
        assert [i.id for i in ob.peek(10)] == ids
        assert ob.settle(DEVICE, [(1, 2)]) == 2
        assert ob.settle(DEVICE, [(1, 2)]) == 0  # a duplicate receipt is harmless
        assert ob.status()["settled_total"] == 2
        delays = [ob.resend_delay_s(n, 5.0, 300.0) for n in range(1, 12)]
    for n, d in enumerate(delays, 1):
        base = min(300.0, 5.0 * 2 ** (n - 1))
        assert 0.8 * base <= d <= 1.2 * base
    assert max(delays) <= 360.0 and len({round(d, 6) for d in delays[-4:]}) == 4


# ---------------------------------------------------------------------------- the link


def test_puback_keeps_events_until_a_valid_receipt_and_bad_receipts_are_refused_and_counted(
    broker: Broker, tmp_path: Path
) -> None:
    rogue = Subscriber(broker, "facegate/v1/+/+/event/#")  # takes events, books nothing
    backend = Backend(broker)
    with Outbox(tmp_path / "outbox.db", seq_start=1) as ob:
        link = settling_link(broker, ob, heartbeat_s=0.0)
        link.start()
        try:
            for _ in range(3):
                ob.emit(factory(), "door.unlock", **DOOR)
            # PUBACKed (the rogue got them) but not settled; then published again.
            wait_until(lambda: link.stats.published >= 6, 10, "events published twice")
            assert ob.status()["pending"] == 3
            seen = [json.loads(p)["seq"] for _, p, _ in rogue.take(6)]
            assert sorted(seen) == [1, 1, 2, 2, 3, 3]
            # Forged, other-device and unsigned receipts: refused, counted, nothing deleted.
            backend.raw(sign_receipt(Ed25519PrivateKey.generate(), SITE, DEVICE, [(1, 3)], "x", 1))
            backend.raw(sign_receipt(BACKEND, SITE, "kiosk-other", [(1, 3)], "x", 1))
            wait_until(lambda: sum(link.stats.receipts_refused.values()) == 2, 10, "refusals")
            assert link.stats.receipts_refused == {"signature": 1, "wrong_device": 1}
            # The outbox counts refusals once per loop turn (a junk flood is no fsync flood),
            # so its total can trail the link's counter by a turn.
            wait_until(lambda: ob.status()["receipts_refused_total"] == 2, 10, "refusals stored")
            assert ob.status()["pending"] == 3
            backend.settle([1, 2])
            backend.settle([1, 2])  # duplicate
            wait_until(lambda: ob.status()["pending"] == 1, 10, "seqs 1-2 settled")
            backend.settle([3])
            assert link.drain(10)
            assert ob.status()["settled_total"] == 3 and link.stats.settled == 3
        finally:
            link.stop()
            rogue.close()
            backend.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failing_loop_turn_and_a_dead_link_thread_are_recovered(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = Subscriber(broker, "facegate/v1/+/+/event/#")  # someone receives: PUBACK success
    with Outbox(tmp_path / "outbox.db", seq_start=1) as ob:
        link = MqttLink(dataclasses.replace(mqtt_cfg(broker), heartbeat_s=0.0), DEVICE, SITE, ob)
        real_peek = ob.peek
        failures = iter([sqlite3.OperationalError("disk I/O error"), SystemExit(3)])

        def flaky_peek(limit: int, exclude: Any = ()) -> Any:
            err = next(failures, None)
            if err is not None:
                raise err  # first: an Exception (turn fails); then: one that ends the thread
            return real_peek(limit, exclude)

        monkeypatch.setattr(ob, "peek", flaky_peek)
        ob.emit(factory(), "door.unlock", **DOOR)
        link.start()
        try:
            assert link.drain(15), link.stats
            assert link.stats.loop_errors == 1 and link.stats.thread_restarts == 1
            ob.emit(factory(), "door.unlock", **DOOR)
            assert link.drain(10)
        finally:
            link.stop()
            sub.close()


def test_status_documents_are_signed_by_the_device_and_a_forgery_does_not_verify() -> None:
    doc = factory().sign_status({"state": "online"})
    assert verify_status(doc, KEY.public_key())["state"] == "online"
    with pytest.raises(StatusError):
        verify_status(doc, Ed25519PrivateKey.generate().public_key())
    forged = doc.replace(b'"online"', b'"offline"')
    with pytest.raises(StatusError):
        verify_status(forged, KEY.public_key())
