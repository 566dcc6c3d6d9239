"""`facegate-backend` as real processes against a real mosquitto: run, devices, ledger, SIGTERM."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from _backend import (
    backend,
    door,
    factory,
    payment,
    start_worker,
    wait_for,
    wait_subscribed,
)
from _broker import Broker, start_mosquitto
from paho.mqtt.enums import CallbackAPIVersion

from edge.backend.ledger import Ledger
from edge.transport.topics import event_topic, topic_for


def _publisher(broker: Broker) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-pub", protocol=mqtt.MQTTv5)
    if broker.tls:
        kw = broker.client_tls_kwargs()
        c.tls_set(tls_version=ssl.PROTOCOL_TLS_CLIENT, **kw)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def _publish(c: mqtt.Client, topic: str, payload: bytes) -> None:
    c.publish(topic, payload, qos=1).wait_for_publish(5)


def _ledger(db: str) -> dict[str, object]:
    return dict(json.loads(backend("ledger", "--db", db, "--json").stdout))


@pytest.fixture
def plain_broker(tmp_path: Path) -> Iterator[Broker]:
    with start_mosquitto(tmp_path) as b:
        yield b


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(15)


def test_worker_books_events_and_refuses_bad_ones_without_stopping(
    plain_broker: Broker, tmp_path: Path
) -> None:
    db = str(tmp_path / "ledger.db")
    f, pub = factory("kiosk-1", "bakery-1")
    stranger, _ = factory("kiosk-1", "bakery-1")
    backend("devices", "add", "kiosk-1", pub, "--site", "bakery-1", "--db", db)
    worker = start_worker(plain_broker.url, db, "w1", tmp_path / "w1.log")
    wait_subscribed(tmp_path / "w1.log", worker)
    c = _publisher(plain_broker)
    try:
        good = [payment(f, 1, amount=300), payment(f, 2, amount=200), door(f, 3)]
        _publish(c, topic_for(good[0].event), good[0].payload)
        wait_for(lambda: Ledger(db).count() == 1, 20, "the first event to be booked")
        bad = [
            (topic_for(good[0].event), b"{garbage"),  # malformed_json
            (topic_for(good[0].event), b"x" * 20_000),  # oversized
            (topic_for(good[0].event), payment(stranger, 7).payload),  # bad_signature
            (event_topic("bakery-1", "kiosk-1", "door.unlock"), good[1].payload),  # mismatch
            ("facegate/v1/bakery-1/kiosk-1/event/not.a.type", good[1].payload),  # bad_topic
            (topic_for(good[0].event), good[0].payload),  # duplicate
            # replay: alert, not booked
            (topic_for(good[0].event), payment(f, 1, amount=99_999).payload),
        ]
        for topic, payload in bad:
            _publish(c, topic, payload)
        for ev in good[1:]:
            _publish(c, topic_for(ev.event), ev.payload)
        wait_for(lambda: Ledger(db).count() == 3, 20, "all good events to be booked")
        wait_for(
            lambda: sum(Ledger(db).rejection_counts().values()) == len(bad), 20, "the rejections"
        )
        assert worker.poll() is None, "worker died on bad input"
    finally:
        c.disconnect()
        c.loop_stop()
        code = _stop(worker)
    assert code == 0, (tmp_path / "w1.log").read_text()
    t = _ledger(db)
    assert t["events"] == 3
    assert t["amount_per_currency"] == {"EUR": 500}
    assert t["rejections"] == {
        "malformed_json": 1, "oversized": 1, "bad_signature": 1,
        "topic_mismatch": 1, "bad_topic": 1, "duplicate": 1, "replay": 1,
    }  # fmt: skip
    assert t["alerts"] == 1
    text = backend("ledger", "--db", db).stdout
    assert "payment.authorize" in text and "total EUR 500" in text


@pytest.mark.parametrize("mtls", [False, True])
def test_worker_over_tls_with_pinned_ca(tmp_path: Path, mtls: bool) -> None:
    with start_mosquitto(tmp_path, tls=True, mtls=mtls) as broker:
        db = str(tmp_path / "ledger.db")
        f, pub = factory("kiosk-2", "gate-1")
        backend("devices", "add", "kiosk-2", pub, "--site", "gate-1", "--db", db)
        extra = ["--ca", str(broker.ca_file)]
        if mtls:
            extra += ["--cert", str(broker.client_cert), "--key", str(broker.client_key)]
        worker = start_worker(broker.url, db, "w-tls", tmp_path / "w.log", *extra)
        wait_subscribed(tmp_path / "w.log", worker)
        c = _publisher(broker)
        try:
            for seq in range(1, 6):
                ev = door(f, seq)
                _publish(c, topic_for(ev.event), ev.payload)
            wait_for(lambda: Ledger(db).count() == 5, 20, "5 events over TLS")
        finally:
            c.disconnect()
            c.loop_stop()
            assert _stop(worker) == 0, (tmp_path / "w.log").read_text()


def test_mqtts_without_ca_and_bad_urls_are_one_line_usage_errors(tmp_path: Path) -> None:
    db = str(tmp_path / "l.db")
    r = backend("run", "--broker", "mqtts://127.0.0.1:1", "--db", db, check=False)
    assert r.returncode == 2 and "--ca" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = backend("run", "--broker", "http://x", "--db", db, check=False)
    assert r.returncode == 2 and "mqtt://" in r.stderr
    r = backend("devices", "add", "k", "nothex", "--site", "s", "--db", db, check=False)
    assert r.returncode == 2 and "64 hex" in r.stderr
    r = backend("ledger", "--db", str(tmp_path / "missing.db"), check=False)
    assert r.returncode == 2 and "no ledger at" in r.stderr
    assert not (tmp_path / "missing.db").exists()


def test_devices_cli_adds_lists_and_removes(tmp_path: Path) -> None:
    db = str(tmp_path / "l.db")
    _, pub = factory()
    backend("devices", "add", "kiosk-7", pub, "--site", "lab", "--db", db)
    listed = json.loads(backend("devices", "list", "--json", "--db", db).stdout)
    assert [(d["name"], d["public_key_hex"]) for d in listed] == [("kiosk-7", pub)]
    backend("devices", "remove", "kiosk-7", "--db", db)
    assert backend("devices", "remove", "kiosk-7", "--db", db, check=False).returncode == 1
    assert json.loads(backend("devices", "list", "--json", "--db", db).stdout) == []


def test_a_worker_whose_ledger_fails_stops_without_acking_and_a_restart_books_the_event(
    plain_broker: Broker, tmp_path: Path
) -> None:
    """Never acknowledge an event that is not booked: the broker keeps it for the session."""
    from edge.backend.devices import KeyCache, add_device
    from edge.backend.worker import EventHandler, Worker, WorkerOptions
    from edge.transport.broker_url import BrokerUrl

    db = tmp_path / "ledger.db"
    f, pub = factory("kiosk-3", "site-3")
    broken = Ledger(db)
    add_device(broken, "kiosk-3", pub, "site-3")
    handler = EventHandler(broken, KeyCache(broken))
    handler.keys.get("kiosk-3")  # cached, so only the booking itself hits the dead connection
    broken.close()  # the database "goes away" under the worker
    worker = Worker(handler, WorkerOptions(BrokerUrl.parse(plain_broker.url), client_id="w-db"))
    worker.start()
    c = _publisher(plain_broker)
    try:
        assert worker.subscribed.wait(10)
        ev = door(f, 1)
        _publish(c, topic_for(ev.event), ev.payload)
        assert worker.fatal.wait(10), "a failing ledger must stop the worker"
        assert worker.counts == {}  # nothing settled, nothing acknowledged
    finally:
        worker.stop()
        c.disconnect()
        c.loop_stop()
    replacement = start_worker(plain_broker.url, str(db), "w-db", tmp_path / "w.log")
    try:
        wait_for(lambda: Ledger(db).count() == 1, 20, "the unacked event to be redelivered")
    finally:
        assert _stop(replacement) == 0


@pytest.mark.parametrize("mode", [[], ["--backend-only"]], ids=["outbox_to_ledger", "backend_only"])
def test_bench_command_reports_figures_for_events_booked_exactly_once(
    tmp_path: Path, mode: list[str]
) -> None:
    out, db = tmp_path / "bench.json", tmp_path / "ledger.db"
    r = backend("bench", "--events", "120", "--workers", "2", "--json", str(out),
                "--db", str(db), *mode)  # fmt: skip
    result = json.loads(out.read_text())
    assert json.loads(r.stdout) == result
    assert (result["events"], result["booked"], result["lost"]) == (120, 120, 0)
    assert result["workers"] == 2
    # The figures agree with the ledger the bench wrote: one row per event, seq 1..120, and
    # every redelivery it reports was settled as a duplicate, nothing else refused.
    with Ledger(db) as led:
        (seqs,) = led.keys_by_device().values()
        assert seqs == list(range(1, 121)) and led.count() == 120
        refused = led.rejection_counts()
    assert set(refused) <= {"duplicate"}, refused
    assert result["redeliveries_absorbed"] == refused.get("duplicate", 0)
    lat = result["latency_ms"]
    assert 0 <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert result["events_per_s"] > 0
    # CPU figures: the private broker's share is measured, and the CPU-bound rate follows
    cpu_us = result["worker_cpu_us_per_event"] + result["broker_cpu_us_per_event"]
    assert result["worker_cpu_us_per_event"] > 0 and result["broker_cpu_us_per_event"] >= 0
    assert result["cpu_bound_events_per_s"] == round(result["cpus"] * 1e6 / max(1.0, cpu_us))
