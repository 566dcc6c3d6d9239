"""Helpers shared by the backend, end-to-end and fault tests: device keys, events, ledgers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.events import EventFactory, SignedEvent

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


def pg_available() -> str | None:
    """None if PostgreSQL answers at PG_BASE, else the reason."""
    try:
        import psycopg

        with psycopg.connect(PG_BASE, connect_timeout=3):
            return None
    except Exception as exc:  # any failure means: skip, and say why
        return f"PostgreSQL not reachable at {PG_BASE}: {str(exc).strip().splitlines()[0]}"


def pg_schema_url() -> Iterator[str]:
    """A URL whose search_path is a fresh schema; the schema is dropped afterwards."""
    reason = pg_available()
    if reason:
        pytest.skip(reason)
    import psycopg

    schema = f"fg_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_BASE, autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_BASE else "?"
    try:
        yield f"{PG_BASE}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_BASE, autocommit=True) as c:
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
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
