"""Helpers shared by the backend, end-to-end and fault tests: device keys, events, ledgers."""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from _broker import Broker
from conftest import require_service, wait_until
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from edge.backend.ledger import Ledger
from edge.transport.topics import topic_for
from edge.trust.events import EventFactory, SignedEvent

PG_BASE = os.environ.get("FACEGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parent.parent
BACKEND = [sys.executable, "-m", "edge.backend.cli"]


def public_hex(key: Ed25519PrivateKey) -> str:
    raw = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key.public_key().public_bytes(*raw).hex()


def factory(device: str = "kiosk-1", site: str = "bakery-1") -> tuple[EventFactory, str]:
    """An event factory with a fresh signing key, and that key's public hex."""
    key = Ed25519PrivateKey.generate()
    return EventFactory(device, site, key), public_hex(key)


def payment(f: EventFactory, seq: int, amount: int = 450, currency: str = "EUR") -> SignedEvent:
    return f.build(
        "payment.authorize", seq,
        subject="s-" + "a" * 16, decision="accept", score=0.91,
        liveness={"blinks": 1, "challenge_ms": 820}, amount=amount, currency=currency,
    )  # fmt: skip


def door(f: EventFactory, seq: int) -> SignedEvent:
    return f.build(
        "door.unlock", seq, subject="s-b", decision="accept", score=0.88,
        liveness={"blinks": 0, "challenge_ms": 0}, door="front",
    )  # fmt: skip


def pg_unreachable() -> str | None:
    """Why nothing answers at PG_BASE's host and port (refused, timed out, no route, unknown
    host), or None when something listens there. Only that may skip a PostgreSQL test: once the
    port answers, every connection error (authentication, missing database) is a failure."""
    parts = urlsplit(PG_BASE)
    if not parts.hostname:  # a Unix socket URL: psycopg's own error will say what is wrong
        return None
    port = parts.port or 5432
    try:
        with socket.create_connection((parts.hostname, port), timeout=3):
            return None
    except OSError as exc:
        return f"nothing answers at {parts.hostname}:{port} ({exc}); set FACEGATE_TEST_PG"


def pg_schema_url() -> Iterator[str]:
    """A URL whose search_path is a fresh schema; the schema is dropped afterwards."""
    reason = pg_unreachable()
    if reason:
        require_service("PostgreSQL", reason)
    import psycopg

    schema = f"fg_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_BASE, autocommit=True, connect_timeout=10) as c:
        c.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_BASE else "?"
    try:
        yield f"{PG_BASE}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_BASE, autocommit=True, connect_timeout=10) as c:
            c.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each ledger test runs on a SQLite file and on a private PostgreSQL schema."""
    if request.param == "sqlite":
        yield str(tmp_path / "ledger.db")
    else:
        yield from pg_schema_url()


def backend(*args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run `facegate-backend ARGS` in a subprocess (the real console entry point)."""
    r = subprocess.run(
        [*BACKEND, *args], capture_output=True, text=True, timeout=60, cwd=REPO, **kw
    )
    if check and r.returncode != 0:
        raise AssertionError(f"facegate-backend {args} -> {r.returncode}: {r.stderr}")
    return r


def start_worker(
    broker_url: str, db: str, client_id: str, log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    """`facegate-backend run` as a real process, logging to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [*BACKEND, "run", "--broker", broker_url, "--db", db, "--client-id", client_id,
             "--stats-every", "5", *extra],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip


def wait_subscribed(log: Path, proc: subprocess.Popen[bytes], times: int = 1) -> None:
    """Block until the worker logged its SUBACK `times` times (it died → fail with its log)."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited {proc.returncode}: {log.read_text()[-2000:]}")
        return log.read_text(errors="replace").count("subscribed to $share/") >= times

    wait_for(ready, 20, f"worker subscription ({log.name})", 0.05)


def wait_for(pred: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    """conftest.wait_until, polling the ledger or a log a little less often."""
    wait_until(pred, timeout_s, what, interval_s)


# ---------------------------------------------------------------------------- rigs

PUBLISHER = [sys.executable, "-m", "edge.measure.burst"]


@dataclass
class Rig:
    """A broker, a ledger, a registered device and running backend workers."""

    broker: Broker
    db: str
    state: Path
    device: str
    workers: dict[str, subprocess.Popen[bytes]]
    tmp: Path

    def tls_args(self, *, device: bool) -> list[str]:
        if not self.broker.tls:
            return []
        device_flags = ("--ca-file", "--cert-file", "--key-file")
        names = device_flags if device else ("--ca", "--cert", "--key")
        out = [names[0], str(self.broker.ca_file)]
        if self.broker.mtls:
            out += [names[1], str(self.broker.client_cert), names[2], str(self.broker.client_key)]
        return out

    def start_worker(self, client_id: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{client_id}.log"
        seen = log.read_text().count("subscribed to $share/") if log.exists() else 0
        proc = start_worker(
            self.broker.url, self.db, client_id, log, *self.tls_args(device=False)
        )
        self.workers[client_id] = proc  # before the wait: a teardown must find it either way
        wait_subscribed(log, proc, times=seen + 1)
        return proc

    def publisher(self, count: int, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*PUBLISHER, "publish-burst", "--state-dir", str(self.state),
             "--broker", self.broker.url, "--count", str(count), "--device", self.device,
             *self.tls_args(device=True), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip

    def publish(self, count: int, *extra: str, timeout_s: float = 60) -> dict[str, object]:
        p = self.publisher(count, *extra)
        out, err = p.communicate(timeout=timeout_s)
        assert p.returncode == 0, err[-2000:]
        return dict(json.loads(out.strip().splitlines()[-1]))

    def ledger(self) -> Ledger:
        return Ledger(self.db)

    def wait_booked(self, n: int, timeout_s: float = 60) -> None:
        def done() -> bool:
            with self.ledger() as led:
                return led.count() >= n

        wait_for(done, timeout_s, f"{n} events in the ledger")

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for name, proc in self.workers.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            codes[name] = proc.wait(20)
        return codes

    def duplicates(self) -> int:
        """Redeliveries the workers settled as `duplicate` (counted in the ledger)."""
        with self.ledger() as led:
            return int(led.rejection_counts().get("duplicate", 0))

    def redeliver(self, seqs: Iterable[int], timeout_s: float = 30) -> int:
        """Publish the booked events `seqs` again, byte for byte (what the broker does for an
        event whose PUBACK was lost), and wait until the workers have settled every one of them
        as a duplicate. Returns how many were sent."""
        wanted = sorted(set(seqs))
        marks = ",".join("?" * len(wanted))
        with self.ledger() as led:
            rows = led.query(
                f"SELECT payload FROM events WHERE device = ? AND seq IN ({marks})",
                (self.device, *wanted),
            )
        assert len(rows) == len(wanted), f"only {len(rows)} of {len(wanted)} seqs are booked"
        before = self.duplicates()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if self.broker.tls:
            client.tls_set(tls_version=ssl.PROTOCOL_TLS_CLIENT, **self.broker.client_tls_kwargs())
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        try:
            for (payload,) in rows:
                raw = str(payload).encode()
                client.publish(topic_for(json.loads(raw)), raw, qos=1).wait_for_publish(10)
        finally:
            client.disconnect()
            client.loop_stop()
        want = before + len(rows)
        wait_for(lambda: self.duplicates() >= want, timeout_s, f"{len(rows)} duplicates settled")
        return len(rows)

    def settled(self) -> Counter[str]:
        """What the workers say they settled, summed over every process that stopped gracefully
        (each logs `stopped; settled: {...}`; a SIGKILLed process logs nothing)."""
        total: Counter[str] = Counter()
        for name in self.workers:
            for line in (self.tmp / f"{name}.log").read_text(errors="replace").splitlines():
                _, sep, counts = line.partition("stopped; settled: ")
                if sep:
                    total.update(ast.literal_eval(counts))
        return total


def make_rig(tmp: Path, broker: Broker, db: str, n_workers: int = 2) -> Rig:
    """Register a device and start the workers; on any failure the broker and the workers
    started so far are stopped (the rig never reaches `rig_factory`, which would)."""
    state = tmp / "kiosk-state"
    device = "kiosk-e2e"
    rig = Rig(broker, db, state, device, {}, tmp)
    try:
        pub = subprocess.run(
            [*PUBLISHER, "pubkey", "--state-dir", str(state), "--device", device],
            capture_output=True, text=True, check=True, cwd=REPO, timeout=30,
        ).stdout.strip()  # fmt: skip
        backend("devices", "add", device, pub, "--site", "lab", "--db", db)
        for i in range(n_workers):
            rig.start_worker(f"backend-{i + 1}")
    except BaseException:
        for proc in rig.workers.values():
            proc.kill()
            proc.wait()
        broker.stop()
        raise
    return rig


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[list[Rig]]:
    rigs: list[Rig] = []
    yield rigs
    for r in rigs:
        for proc in r.workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        r.broker.stop()


def assert_exactly_once(rig: Rig, created: int) -> dict[str, int]:
    """The ledger holds one row per created event, seq 1..created, and nothing was refused;
    returns created/booked/redeliveries_absorbed (duplicates the workers settled)/lost."""
    with rig.ledger() as led:
        seqs = led.keys_by_device().get(rig.device, [])
        rows = led.count()
        counts = led.rejection_counts()
    refused = {k: v for k, v in counts.items() if k != "duplicate"}
    lost = len(set(range(1, created + 1)) - set(seqs))
    assert refused == {}, refused
    assert seqs == list(range(1, created + 1)), f"lost {lost}, booked {len(seqs)} of {created}"
    assert rows == len(set(seqs)) == created, f"{rows} rows for {created} distinct events"
    return {"created": created, "booked": rows,
            "redeliveries_absorbed": int(counts.get("duplicate", 0)), "lost": lost}  # fmt: skip
