"""Every refused downlink command is counted in a `cmd.refused` audit event: a flood of forged
commands on a real broker is rate-limited into a few events whose counts add up, and what is
still uncounted when the link stops is written to the outbox. An oversized command is dropped by
the broker (MQTT v5 Maximum Packet Size) instead of being read into the kiosk's memory."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from _broker import Broker, start_mosquitto
from conftest import wait_until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from paho.mqtt.enums import CallbackAPIVersion
from test_mqtt_client import Subscriber, mqtt_cfg

import edge.transport.mqtt as mqtt_mod
from edge.backend.commands import sign_command
from edge.config import BackendConfig, Config, DeviceConfig
from edge.kiosk.uplink import link_for_kiosk
from edge.transport.downlink import RefusalAudit
from edge.transport.outbox import Outbox, OutboxError
from edge.transport.topics import cmd_topic
from edge.trust.commands import MAX_COMMAND_BYTES

DEVICE, SITE = "kiosk-refuse-1", "site-r"
BACKEND = Ed25519PrivateKey.generate()
FORGER = Ed25519PrivateKey.generate()
WINDOW_S = 1.5


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_mosquitto(tmp_path)
    yield b
    b.stop()


def counted(details: list[str]) -> dict[str, int]:
    """Sum the `reason=n` counts of `N refused: …` audit details (and check N adds up)."""
    total: dict[str, int] = {}
    for d in details:
        m = re.fullmatch(r"(\d+) refused: (.+)", d)
        assert m, d
        parts = dict(p.split("=") for p in m.group(2).split(", "))
        assert sum(int(n) for n in parts.values()) == int(m.group(1)), d
        for reason, n in parts.items():
            total[reason] = total.get(reason, 0) + int(n)
    return total


def test_forged_commands_are_all_counted_in_audits_including_the_remainder_at_stop(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mqtt_mod, "REFUSAL_AUDIT_EVERY_S", WINDOW_S)
    state = tmp_path / "state"
    state.mkdir()
    backend_hex = BACKEND.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    cfg = dataclasses.replace(
        Config(), mqtt=mqtt_cfg(broker), device=DeviceConfig(id=DEVICE, site=SITE),
        backend=BackendConfig(public_key=backend_hex),
        paths=dataclasses.replace(Config().paths, state_dir=str(state)),
    )  # fmt: skip
    wiped: list[object] = []
    outbox = Outbox(state / "outbox.db", seq_start=1)
    link = link_for_kiosk(cfg, Ed25519PrivateKey.generate(), outbox, {"wipe": wiped.append})
    subscribed = threading.Event()
    link._client.on_subscribe = lambda *args: subscribed.set()
    audits = Subscriber(broker, f"facegate/v1/{SITE}/{DEVICE}/event/console.audit")
    link.start()
    pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    topic = cmd_topic(SITE, DEVICE)

    def send(payload: bytes) -> None:
        pub.publish(topic, payload, qos=1).wait_for_publish(5)

    def refused_total() -> int:
        return sum(link.stats.commands_refused.values())

    try:
        assert subscribed.wait(5.0), "the link never subscribed to its command topic"
        # Too big for the packet size the link announced: the broker drops it, unread by us.
        send(b"{" + b" " * (MAX_COMMAND_BYTES + 8192) + b"}")
        # A flood of forged wipes inside one window: the first is audited at once, the rest
        # are counted and audited together when the window has passed (no new refusal needed).
        for _ in range(12):
            send(sign_command(FORGER, DEVICE, "wipe", {}))
        send(b"not json")
        wait_until(lambda: refused_total() >= 13, 5, "the link to refuse the flood")
        live = [json.loads(p)["detail"] for _, p, _ in audits.take(2, timeout_s=WINDOW_S * 5)]
        assert live[0] == "1 refused: signature=1", live
        assert counted(live) == {"signature": 12, "malformed": 1}, live
        # A second burst, then stop inside its window: the remainder goes to the outbox.
        for _ in range(3):
            send(sign_command(FORGER, DEVICE, "wipe", {}))
        wait_until(lambda: refused_total() >= 16, 5, "the link to refuse the second burst")
    finally:
        link.stop()  # first: paho's loop_stop below can take a second
        pub.loop_stop()
        audits.close()
    published = live + [json.loads(p)["detail"] for _, p, _ in audits.take(5, timeout_s=0.3)]
    queued = [json.loads(item.payload) for item in outbox.peek(100)]
    outbox.close()
    left = [e["detail"] for e in queued if e.get("action") == "cmd.refused"]
    assert wiped == [], "a forged wipe must never run"
    assert link.stats.commands_refused == {"signature": 15, "malformed": 1}  # big one: dropped
    assert counted(published + left) == link.stats.commands_refused
    assert left, f"the refusals of the last window must be written at stop: {published} {queued}"
    assert link.connected.is_set() is False


def test_refusal_counts_survive_a_window_and_an_outbox_that_cannot_store_the_audit() -> None:
    now = [100.0]
    written: list[str] = []
    fail = [True]

    def audit(action: str, ok: bool, detail: str) -> None:
        if fail[0]:  # what Outbox.emit raises when SQLite cannot store the event
            fail[0] = False
            raise OutboxError("cannot store console.audit (disk I/O error)")
        written.append(detail)

    refusals = RefusalAudit(audit, every_s=10.0, clock=lambda: now[0])
    refusals.refused("signature")  # audited at once, but the write fails: count kept
    refusals.refused("replay")
    refusals.tick()  # inside the window: nothing yet
    assert written == []
    now[0] += 10.0
    refusals.tick()
    assert written == ["2 refused: replay=1, signature=1"]
    refusals.refused("signature")
    refusals.tick()
    assert len(written) == 1
    refusals.flush()  # the link stops inside the window: the remainder is written anyway
    assert written[1:] == ["1 refused: signature=1"]
    refusals.flush()
    assert len(written) == 2  # nothing pending: no empty audit
