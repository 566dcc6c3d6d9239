"""The shared mosquitto fixture itself: plain, TLS, mutual TLS, and persistence across a restart."""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from _broker import Broker, start_mosquitto
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def _client(broker: Broker, client_id: str, *, with_cert: bool = True) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if broker.tls:
        kw = broker.client_tls_kwargs()
        c.tls_set(
            ca_certs=kw["ca_certs"],
            certfile=kw["certfile"] if with_cert else None,
            keyfile=kw["keyfile"] if with_cert else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return c


def _roundtrip(broker: Broker) -> bytes:
    got: list[bytes] = []
    done = threading.Event()
    sub = _client(broker, "sub")
    sub.on_message = lambda c, u, m: (got.append(m.payload), done.set())
    sub.connect(broker.host, broker.port)
    sub.subscribe("t/x", qos=1)
    sub.loop_start()
    pub = _client(broker, "pub")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        pub.publish("t/x", b"hello", qos=1).wait_for_publish(5)
        assert done.wait(5), broker.log_tail()
    finally:
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()
    return got[0]


@pytest.mark.parametrize("tls,mtls", [(False, False), (True, False), (True, True)])
def test_broker_fixture_carries_a_qos1_message(tmp_path: Path, tls: bool, mtls: bool) -> None:
    with start_mosquitto(tmp_path, tls=tls, mtls=mtls) as broker:
        assert broker.url.startswith("mqtts://" if tls else "mqtt://")
        assert _roundtrip(broker) == b"hello"


def test_tls_broker_refuses_a_client_that_does_not_trust_its_ca(tmp_path: Path) -> None:
    with start_mosquitto(tmp_path, tls=True) as broker:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="x", protocol=mqtt.MQTTv5)
        c.tls_set(tls_version=ssl.PROTOCOL_TLS_CLIENT)  # system CAs only
        with pytest.raises(ssl.SSLError):
            c.connect(broker.host, broker.port)


def test_mtls_broker_refuses_a_client_without_certificate(tmp_path: Path) -> None:
    with start_mosquitto(tmp_path, mtls=True) as broker:
        c = _client(broker, "nocert", with_cert=False)
        accepted = threading.Event()
        c.on_connect = lambda cl, u, f, rc, p: accepted.set() if not rc.is_failure else None
        try:
            c.connect(broker.host, broker.port)
            c.loop_start()
            accepted.wait(2)
        except (ssl.SSLError, OSError):
            pass  # refused during the handshake: what we want
        finally:
            c.loop_stop()
        assert not accepted.is_set()


def test_queued_qos1_survives_a_graceful_broker_restart(tmp_path: Path) -> None:
    """A persistent session's queued messages are saved to disk on SIGTERM and delivered after."""
    with start_mosquitto(tmp_path) as broker:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        sub = _client(broker, "persistent-sub")
        subscribed = threading.Event()
        sub.on_subscribe = lambda *args: subscribed.set()
        sub.connect(broker.host, broker.port, clean_start=False, properties=props)
        sub.loop_start()
        sub.subscribe("q/#", qos=1)
        assert subscribed.wait(5), "no SUBACK for the persistent subscription"
        sub.disconnect()
        sub.loop_stop()

        pub = _client(broker, "pub")
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        for i in range(50):
            pub.publish(f"q/{i}", str(i).encode(), qos=1).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()

        broker.restart()

        got: set[int] = set()
        all_in = threading.Event()

        def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
            got.add(int(m.payload))
            if len(got) == 50:
                all_in.set()

        sub2 = _client(broker, "persistent-sub")
        sub2.on_message = on_message
        sub2.connect(broker.host, broker.port, clean_start=False, properties=props)
        sub2.loop_start()
        try:
            assert all_in.wait(10), f"only {len(got)} of 50 delivered after restart"
        finally:
            sub2.disconnect()
            sub2.loop_stop()
        assert got == set(range(50))
