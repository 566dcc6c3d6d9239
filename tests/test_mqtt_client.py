"""MQTT link against a real Mosquitto: delivery from the outbox, status/LWT, TLS, downlink."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from _broker import Broker, make_test_pki, start_mosquitto
from conftest import wait_until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.backend.commands import sign_command
from edge.config import BackendConfig, Config, DeviceConfig, MqttConfig
from edge.kiosk.uplink import link_for_kiosk
from edge.transport.mqtt import Backoff, MqttLink
from edge.transport.outbox import Outbox
from edge.transport.topics import cmd_topic, status_topic
from edge.trust.commands import Command
from edge.trust.events import EventFactory, verify_event

DEVICE, SITE = "kiosk-7", "site-a"
KEY = Ed25519PrivateKey.generate()
BACKEND = Ed25519PrivateKey.generate()
DOOR = {
    "subject": "s-1",
    "decision": "accept",
    "score": 0.9,
    "liveness": {"blinks": 1, "challenge_ms": 700},
    "door": "main",
}


def mqtt_cfg(broker: Broker, **over: Any) -> MqttConfig:
    base = dataclasses.replace(
        MqttConfig(),
        host=broker.host,
        port=broker.port,
        reconnect_min_s=0.05,
        reconnect_max_s=0.3,
    )
    return dataclasses.replace(base, **over)


class Subscriber:
    """A plain paho client collecting (topic, payload, retain) from the broker."""

    def __init__(self, broker: Broker, topic: str, persistent: bool = False) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sub-{random.getrandbits(32)}",
            protocol=paho.MQTTv5,
        )
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600 if persistent else 0  # survive a broker restart
        self.client.on_message = lambda c, u, m: self.messages.put(
            (m.topic, m.payload, bool(m.retain))
        )
        subscribed = queue.Queue[int]()
        self.client.on_subscribe = lambda c, u, mid, rc, p: subscribed.put(mid)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.connect(broker.host, broker.port, clean_start=not persistent, properties=props)
        self.client.loop_start()
        subscribed.get(timeout=5)

    def take(self, n: int, timeout_s: float = 10.0) -> list[tuple[str, bytes, bool]]:
        out, deadline = [], time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                out.append(self.messages.get(timeout=0.1))
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_mosquitto(tmp_path)
    yield b
    b.stop()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.db", seq_start=1) as ob:  # seqs 1..N for the checks
        yield ob


def factory() -> EventFactory:
    return EventFactory(DEVICE, SITE, KEY)


def test_outbox_events_arrive_signed_with_bounded_inflight_and_leave_after_puback(
    broker: Broker, outbox: Outbox
) -> None:
    sub = Subscriber(broker, "facegate/v1/+/+/event/#")
    created = [outbox.emit(factory(), "door.unlock", **DOOR) for _ in range(200)]
    link = MqttLink(mqtt_cfg(broker, max_inflight=5), DEVICE, SITE, outbox)
    link.start()
    try:
        assert link.drain(20.0)
        got = sub.take(200)
    finally:
        link.stop()
        sub.close()
    events = [verify_event(payload, KEY.public_key()) for _, payload, _ in got]
    assert sorted(e["seq"] for e in events) == [e.seq for e in created]
    assert all(topic == f"facegate/v1/{SITE}/{DEVICE}/event/door.unlock" for topic, _, _ in got)
    assert 1 <= link.stats.peak_inflight <= 5
    assert outbox.status()["acked_total"] == 200


def test_events_wait_in_the_outbox_while_the_broker_is_down_then_drain(
    broker: Broker, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge.transport.mqtt")
    broker.stop()
    link = MqttLink(mqtt_cfg(broker), DEVICE, SITE, outbox)
    link.start()
    try:
        for _ in range(10):
            outbox.emit(factory(), "door.unlock", **DOOR)

        def failed_attempts() -> int:
            return sum("mqtt connect to" in r.getMessage() for r in list(caplog.records))

        wait_until(lambda: failed_attempts() >= 3, 10, "three failed, backed-off connections")
        assert not link.connected.is_set()
        assert outbox.status()["pending"] == 10
        broker.start()
        sub = Subscriber(broker, "facegate/v1/+/+/event/#")  # the backend is back as well
        try:
            assert link.drain(10.0)
        finally:
            sub.close()
    finally:
        link.stop()


def test_an_event_nobody_received_stays_queued_until_a_backend_subscribes(
    broker: Broker, outbox: Outbox
) -> None:
    # After a broker restart mosquitto answers PUBACK 0x10 (no matching subscribers) until the
    # backend's shared subscription is back: a success code, but nobody got the event.
    link = MqttLink(mqtt_cfg(broker), DEVICE, SITE, outbox)
    link.start()
    try:
        outbox.emit(factory(), "door.unlock", **DOOR)
        assert not link.drain(1.5)
        assert outbox.status()["pending"] == 1 and link.stats.puback_failures >= 1
        sub = Subscriber(broker, "$share/backend/facegate/v1/+/+/event/#")
        try:
            assert link.drain(15.0)
            assert len(sub.take(1, timeout_s=5)) == 1
        finally:
            sub.close()
    finally:
        link.stop()


def test_broker_restart_mid_burst_loses_nothing(broker: Broker, outbox: Outbox) -> None:
    link = MqttLink(mqtt_cfg(broker, max_inflight=20), DEVICE, SITE, outbox)
    sub = Subscriber(broker, "facegate/v1/+/+/event/#", persistent=True)  # auto-reconnects
    link.start()
    try:
        for i in range(300):
            outbox.emit(factory(), "door.unlock", **DOOR)
            if i == 150:
                broker.restart(down_s=0.5)
        assert link.drain(30.0)
        assert link.stats.connects >= 2
        missing, deadline = set(range(1, 301)), time.monotonic() + 10.0
        while missing and time.monotonic() < deadline:  # duplicates are fine (at-least-once)
            missing -= {json.loads(p)["seq"] for _, p, _ in sub.take(50, timeout_s=0.5)}
    finally:
        link.stop()
        sub.close()
    assert not missing, sorted(missing)


def test_status_is_retained_online_and_graceful_stop_says_offline(
    broker: Broker, outbox: Outbox
) -> None:
    link = MqttLink(mqtt_cfg(broker), DEVICE, SITE, outbox)
    probe = Subscriber(broker, status_topic(SITE, DEVICE))  # there before the link: sees it live
    link.start()
    try:
        # Once the broker has passed "online" on, it holds the retained copy.
        assert [(t, p) for t, p, _ in probe.take(1)] == [(status_topic(SITE, DEVICE), b"online")]
    finally:
        probe.close()
    late = Subscriber(
        broker, status_topic(SITE, DEVICE)
    )  # subscribes after: gets the retained copy
    try:
        assert late.take(1) == [(status_topic(SITE, DEVICE), b"online", True)]
        link.stop()
        assert late.take(1) == [(status_topic(SITE, DEVICE), b"offline", False)]
    finally:
        late.close()


def test_sigkilled_publisher_is_reported_offline_by_its_last_will(
    broker: Broker, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge.measure.burst",
            "publish-burst",
            "--state-dir",
            str(tmp_path / "s"),
            "--broker",
            broker.url,
            "--count",
            "100000",
            "--rate",
            "50",
            "--device",
            DEVICE,
            "--site",
            SITE,
        ],
        stdout=subprocess.PIPE,
    )
    sub = Subscriber(broker, status_topic(SITE, DEVICE))
    try:
        assert sub.take(1, timeout_s=15)[0][1] == b"online"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert sub.take(1, timeout_s=10)[0][1] == b"offline"
    finally:
        proc.kill()
        sub.close()


def test_tls_connects_only_with_the_pinned_ca_and_mtls_needs_a_client_cert(tmp_path: Path) -> None:
    b = start_mosquitto(tmp_path, tls=True, mtls=True)
    foreign = make_test_pki(tmp_path / "foreign")
    try:
        cases = {
            "pinned CA + client cert": (
                dict(
                    ca_file=str(b.ca_file), cert_file=str(b.client_cert), key_file=str(b.client_key)
                ),
                True,
            ),
            "foreign CA": (
                dict(
                    ca_file=str(foreign.ca_file),
                    cert_file=str(b.client_cert),
                    key_file=str(b.client_key),
                ),
                False,
            ),
            "no client cert": (dict(ca_file=str(b.ca_file)), False),
            "cert from another CA": (
                dict(
                    ca_file=str(b.ca_file),
                    cert_file=str(foreign.client_cert),
                    key_file=str(foreign.client_key),
                ),
                False,
            ),
        }
        for name, (tls, should_connect) in cases.items():
            with Outbox(tmp_path / f"{len(name)}-{random.random()}.db") as ob:
                ob.emit(factory(), "door.unlock", **DOOR)
                link = MqttLink(mqtt_cfg(b, tls=True, **tls), DEVICE, SITE, ob)
                link.start()
                try:
                    connected = link.connected.wait(3.0 if should_connect else 1.5)
                finally:
                    link.stop()
                assert connected == should_connect, name
    finally:
        b.stop()


def test_signed_commands_are_dispatched_once_and_bad_ones_refused_and_audited(
    broker: Broker, outbox: Outbox, state_dir: Path
) -> None:
    seen: list[Command] = []
    backend_hex = BACKEND.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    cfg = dataclasses.replace(
        Config(), mqtt=mqtt_cfg(broker), device=DeviceConfig(id=DEVICE, site=SITE),
        backend=BackendConfig(public_key=backend_hex),
    )  # fmt: skip
    link = link_for_kiosk(cfg, KEY, outbox, handlers={"templates.revoke": seen.append})
    # The link has no "subscribed" signal of its own; its paho client's SUBACK callback is free.
    cmd_subscribed = threading.Event()
    link._client.on_subscribe = lambda *args: cmd_subscribed.set()
    audits = Subscriber(broker, f"facegate/v1/{SITE}/{DEVICE}/event/console.audit")
    link.start()
    pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        assert cmd_subscribed.wait(5.0), "the link never subscribed to its command topic"
        good = sign_command(BACKEND, DEVICE, "templates.revoke", {"subject": "s-9"})
        forged = sign_command(Ed25519PrivateKey.generate(), DEVICE, "wipe", {})
        for payload in (good, good, forged):  # the second copy is a replay
            pub.publish(cmd_topic(SITE, DEVICE), payload, qos=1).wait_for_publish(5)
        got = [json.loads(p) for _, p, _ in audits.take(2)]
        wait_until(
            lambda: link.stats.commands_accepted + sum(link.stats.commands_refused.values()) >= 3,
            5, "the link to settle all three commands",
        )  # fmt: skip
    finally:
        pub.loop_stop()
        link.stop()
        audits.close()
    assert [c.body for c in seen] == [{"subject": "s-9"}]
    assert [(a["action"], a["ok"]) for a in got] == [
        ("cmd.templates.revoke", True),
        ("cmd.refused", False),
    ]
    assert got[1]["detail"] == "1 refused: replay=1"
    # The forged one came within the audit rate limit: counted, and its audit written when the
    # link stopped (it waits in the outbox for the next connection).
    assert link.stats.commands_refused == {"replay": 1, "signature": 1}
    left = [json.loads(item.payload) for item in outbox.peek(100)]
    assert [e["detail"] for e in left if e.get("action") == "cmd.refused"] == [
        "1 refused: signature=1"
    ]
    assert (state_dir / "downlink.db").exists()  # the replay guard lives in the state dir


def test_reconnect_backoff_is_exponential_jittered_and_capped() -> None:
    b = Backoff(0.5, 30.0, random.Random(1))
    waits = [b.next() for _ in range(12)]
    for n, w in enumerate(waits):
        cap = min(30.0, 0.5 * 2**n)
        assert cap / 2 <= w <= cap
    assert len({round(w, 6) for w in waits[-5:]}) == 5  # jittered, not a fixed ladder
    b.reset()
    assert b.next() <= 0.5


def test_cli_outbox_status_and_drain(broker: Broker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with Outbox(state / "outbox.db") as ob:
        for _ in range(3):
            ob.emit(EventFactory("kiosk-dev-0001", "lab", KEY), "door.unlock", **DOOR)
    conf = tmp_path / "facegate.toml"
    env = {**os.environ, "FACEGATE_STATE_DIR": str(state)}

    def facegate(*args: str, port: int) -> subprocess.CompletedProcess[str]:
        conf.write_text(f"[mqtt]\nhost = '127.0.0.1'\nport = {port}\nreconnect_max_s = 0.5\n")
        return subprocess.run(
            [sys.executable, "-m", "edge", "outbox", *args, "--config", str(conf)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    status = facegate("status", port=broker.port)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pending"] == 3
    dead = facegate("drain", "--timeout", "1", port=broker.port + 1 if broker.port < 65535 else 1)
    assert dead.returncode == 1 and json.loads(dead.stdout)["pending"] == 3
    sub = Subscriber(broker, "facegate/v1/#")
    try:
        ok = facegate("drain", "--timeout", "10", port=broker.port)
    finally:
        sub.close()
    assert ok.returncode == 0, ok.stderr
    assert json.loads(facegate("status", port=broker.port).stdout)["pending"] == 0


def test_broker_that_refuses_our_events_keeps_them_queued_and_is_not_hammered(
    tmp_path: Path, outbox: Outbox
) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic read facegate/#\n")  # anonymous clients may not publish events
    b = start_mosquitto(tmp_path, extra_config=f"acl_file {acl}")
    link = MqttLink(mqtt_cfg(b, reconnect_min_s=0.2, reconnect_max_s=1.0), DEVICE, SITE, outbox)
    try:
        outbox.emit(factory(), "door.unlock", **DOOR)
        link.start()
        time.sleep(2.0)
    finally:
        link.stop()
        b.stop()
    assert link.stats.connects >= 1 and link.stats.acked == 0
    assert outbox.status()["pending"] == 1  # refused is not delivered: the event stays
    # mosquitto drops the connection on each refused publish; back-off keeps growing, because
    # none of those connections was stable (a reset on every CONNACK gave ~45 in 2 s).
    assert link.stats.connects <= 8


def test_publisher_sigkilled_at_random_points_delivers_every_seq_once_restarted(
    broker: Broker, tmp_path: Path
) -> None:
    sub = Subscriber(broker, "facegate/v1/+/+/event/#", persistent=True)
    n, rnd, kills = 400, random.Random(3), 0
    cmd = [
        sys.executable,
        "-m",
        "edge.measure.burst",
        "publish-burst",
        "--state-dir",
        str(tmp_path / "s"),
        "--broker",
        broker.url,
        "--count",
        str(n),
        "--rate",
        "300",
    ]
    try:
        while kills < 3:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            time.sleep(rnd.uniform(0.4, 1.0))
            if proc.poll() is not None:
                break
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout.splitlines()[-1])
        missing, deadline = set(range(1, n + 1)), time.monotonic() + 10.0
        seqs: list[int] = []
        while missing and time.monotonic() < deadline:
            seqs += [json.loads(p)["seq"] for _, p, _ in sub.take(100, timeout_s=0.5)]
            missing -= set(seqs)
    finally:
        sub.close()
    assert kills == 3, "the burst finished before it could be killed: raise n"
    assert summary["created"] == n and summary["pending"] == 0
    assert not missing and set(seqs) == set(range(1, n + 1))  # duplicates allowed, nothing extra


def test_the_kiosk_state_goes_retained_to_the_state_topic_through_the_link(
    broker: Broker, outbox: Outbox
) -> None:
    from edge.kiosk.display.state import KioskState
    from edge.kiosk.uplink import MqttStateListener
    from edge.transport.topics import state_topic

    link = MqttLink(mqtt_cfg(broker), DEVICE, SITE, outbox)
    link.start()
    try:
        assert link.connected.wait(10)
        live = Subscriber(broker, state_topic(SITE, DEVICE))  # there before: sees it sent
        listener = MqttStateListener(link)
        listener.publish(KioskState("blink", {"seconds_left": 1.5}))
        listener.publish(KioskState("approved", {"kind": "fare", "amount": 3.0}))
        wait_until(
            lambda: any(b"approved" in m[1] for m in live.take(1, timeout_s=0.2)), 10, "sent"
        )
        live.close()
        # Retained: a subscriber arriving later still sees the newest state, and only it.
        seen = Subscriber(broker, state_topic(SITE, DEVICE))
        topic, payload, retained = seen.take(1, timeout_s=10)[0]
        state = json.loads(payload)
        assert retained and state["state"] == "approved" and state["detail"]["kind"] == "fare"
    finally:
        link.stop()
