"""Idempotent event ledger: SQLite by default, PostgreSQL (psycopg 3) for a `postgresql://` URL.

The primary key `(device, seq)` is the idempotency key. Every incoming message is settled in ONE
transaction: insert-or-ignore; when the key already exists the stored content hash decides
between a harmless redelivery (`duplicate`) and a replay with different content (`replay`,
recorded as an alert, never booked). Rejections are counted per reason in the same database, so
several worker processes (and hosts, with PostgreSQL) can share one ledger without coordination.

SQL is written once with `?` placeholders and the ANSI `ON CONFLICT` clauses both engines share.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from edge.errors import FacegateError
from edge.trust.private_db import open_private_db


class LedgerError(FacegateError):
    """The ledger database cannot be opened or used."""

    prefix = "ledger error"


class Outcome(StrEnum):
    """What the ledger did with one message."""

    BOOKED = "booked"
    DUPLICATE = "duplicate"  # identical redelivery: acknowledged, not booked again
    REPLAY = "replay"  # same device:seq, different content: alert, not booked
    REJECTED = "rejected"


@dataclass(frozen=True)
class Booking:
    """An accepted, signature-checked event ready to book; `content_hash` is sha256 hex."""

    device: str
    seq: int
    site: str
    type: str
    ts: float  # event creation, Unix s (device clock)
    content_hash: str
    payload: str  # the canonical signed JSON, kept for audit
    amount: int | None = None  # minor units
    currency: str | None = None


_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS events (
        device TEXT NOT NULL,
        seq BIGINT NOT NULL,
        site TEXT NOT NULL,
        type TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        booked_at DOUBLE PRECISION NOT NULL,
        amount BIGINT,
        currency TEXT,
        content_hash TEXT NOT NULL,
        payload TEXT NOT NULL,
        PRIMARY KEY (device, seq))""",
    """CREATE TABLE IF NOT EXISTS alerts (
        device TEXT NOT NULL,
        seq BIGINT NOT NULL,
        kind TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        booked_hash TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        payload TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS rejections (
        reason TEXT PRIMARY KEY,
        count BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS devices (
        name TEXT PRIMARY KEY,
        public_key TEXT NOT NULL,
        added_at DOUBLE PRECISION NOT NULL)""",
]

_COUNT = (
    "INSERT INTO rejections(reason, count) VALUES (?, 1) "
    "ON CONFLICT (reason) DO UPDATE SET count = rejections.count + 1"
)


def is_postgres_url(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


class Ledger:
    """One connection to the ledger database; safe to share between threads (calls serialize)."""

    def __init__(self, target: str | Path) -> None:
        self.target = str(target)
        self.postgres = is_postgres_url(self.target)
        self._lock = threading.RLock()
        self._conn: Any = self._connect_pg() if self.postgres else self._connect_sqlite()
        self._create_schema()

    # -- connection ---------------------------------------------------------------------

    def _connect_sqlite(self) -> sqlite3.Connection:
        path = Path(self.target)
        if not path.parent.is_dir():
            raise LedgerError(f"directory {path.parent} does not exist; create it or pass --db")
        try:
            # WAL lets readers (`ledger`) run while workers write; FULL makes each commit
            # survive power loss, not only a killed process.
            conn = open_private_db(path, timeout_s=30.0, check_same_thread=False)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise LedgerError(f"cannot open SQLite ledger {path}: {exc}; check the path") from exc
        return conn

    def _connect_pg(self) -> Any:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise LedgerError(
                "PostgreSQL ledger needs psycopg; pip install 'facegate[backend]'"
            ) from exc
        try:
            return psycopg.connect(self.target, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LedgerError(f"cannot connect to PostgreSQL: {first}; check the URL") from exc

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Any]:
        """One database transaction (SQLite: BEGIN IMMEDIATE for writers so they never
        deadlock upgrading a read lock; a plain deferred BEGIN for readers)."""
        with self._lock:
            if self.postgres:
                with self._conn.transaction():
                    yield self._conn
            else:
                self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")

    def execute(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement on a connection from `transaction()`; returns the cursor."""
        return conn.execute(self._sql(sql), tuple(params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read-only query in its own (non-locking on SQLite) transaction."""
        with self.transaction(write=False) as conn:
            return [tuple(r) for r in self.execute(conn, sql, params).fetchall()]

    def _create_schema(self) -> None:
        with self.transaction() as conn:
            if self.postgres:
                # Concurrent CREATE TABLE IF NOT EXISTS can still collide in pg_type.
                conn.execute("SELECT pg_advisory_xact_lock(7007001)")
            for stmt in _SCHEMA:
                conn.execute(stmt)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------

    def book(self, b: Booking, now: float | None = None) -> Outcome:
        """Book an event once; identical redelivery → DUPLICATE, different content → REPLAY."""
        with self.transaction() as conn:
            # Taken inside the transaction (SQLite: write lock held), so lock waits count as
            # latency; the commit's fsync right after does not.
            booked_at = time.time() if now is None else now
            cur = self.execute(
                conn,
                "INSERT INTO events(device, seq, site, type, ts, booked_at, amount, currency,"
                " content_hash, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (device, seq) DO NOTHING",
                (
                    b.device, b.seq, b.site, b.type, b.ts, booked_at,
                    b.amount, b.currency, b.content_hash, b.payload,
                ),
            )
            if cur.rowcount == 1:
                return Outcome.BOOKED
            row = self.execute(
                conn, "SELECT content_hash FROM events WHERE device = ? AND seq = ?",
                (b.device, b.seq),
            ).fetchone()
            if row is not None and row[0] == b.content_hash:
                self.execute(conn, _COUNT, ("duplicate",))
                return Outcome.DUPLICATE
            self.execute(
                conn,
                "INSERT INTO alerts(device, seq, kind, received_at, booked_hash, content_hash,"
                " payload) VALUES (?, ?, 'replay', ?, ?, ?, ?)",
                (b.device, b.seq, booked_at, row[0] if row else "", b.content_hash, b.payload),
            )
            self.execute(conn, _COUNT, ("replay",))
            return Outcome.REPLAY

    def reject(self, reason: str) -> None:
        """Count one rejected message under `reason` (its own transaction)."""
        with self.transaction() as conn:
            self.execute(conn, _COUNT, (reason,))

    # -- reads ----------------------------------------------------------------------------

    def count(self) -> int:
        return int(self.query("SELECT COUNT(*) FROM events")[0][0])

    def rejection_counts(self) -> dict[str, int]:
        return {str(r): int(n) for r, n in self.query("SELECT reason, count FROM rejections")}

    def alerts(self) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT device, seq, kind, received_at, booked_hash, content_hash FROM alerts"
            " ORDER BY received_at"
        )
        keys = ("device", "seq", "kind", "received_at", "booked_hash", "content_hash")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def keys_by_device(self) -> dict[str, list[int]]:
        """Booked seqs per device, ascending (for loss/duplicate checks)."""
        out: dict[str, list[int]] = {}
        for device, seq in self.query("SELECT device, seq FROM events ORDER BY device, seq"):
            out.setdefault(str(device), []).append(int(seq))
        return out

    def latencies_s(self) -> list[float]:
        """booked_at - ts of every booked event (seconds; device and backend clocks)."""
        return [float(r[0]) for r in self.query("SELECT booked_at - ts FROM events")]

    def totals(self) -> dict[str, Any]:
        """Counts per type and device, amounts per type/device/currency, rejections, alerts."""
        by_type_device = [
            {"type": t, "device": d, "count": int(n)}
            for t, d, n in self.query(
                "SELECT type, device, COUNT(*) FROM events GROUP BY type, device"
                " ORDER BY type, device"
            )
        ]
        amounts = [
            {"type": t, "device": d, "currency": c, "count": int(n), "amount": int(a)}
            for t, d, c, n, a in self.query(
                "SELECT type, device, currency, COUNT(*), SUM(amount) FROM events"
                " WHERE amount IS NOT NULL GROUP BY type, device, currency"
                " ORDER BY type, device, currency"
            )
        ]
        per_currency: dict[str, int] = {}
        for row in amounts:
            per_currency[row["currency"]] = per_currency.get(row["currency"], 0) + row["amount"]
        return {
            "events": sum(r["count"] for r in by_type_device),
            "by_type_device": by_type_device,
            "amounts": amounts,
            "amount_per_currency": dict(sorted(per_currency.items())),
            "rejections": dict(sorted(self.rejection_counts().items())),
            "alerts": len(self.alerts()),
        }
