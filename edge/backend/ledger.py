"""Idempotent event ledger: SQLite by default, PostgreSQL (psycopg 3) for a `postgresql://` URL.

The primary key `(device, seq)` is the idempotency key. A worker settles a whole batch of
messages in ONE transaction (`settle`): insert-or-ignore of every event (PostgreSQL: one
`INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING RETURNING`; SQLite: one statement per
row, same transaction); for a key that already exists the stored content hash decides between a
harmless redelivery (`duplicate`) and a replay with different content (`replay`, recorded as an
alert, never booked). Rejections are counted per reason in the same transaction, so several
worker processes (and hosts, with PostgreSQL) share one ledger without coordination.

The event `nonce` is checked here too: a unique index on `(device, nonce)` refuses a second
event from a device that reuses a nonce under another seq (`nonce_reused`: a device whose seq
counter went back, e.g. restored from an image, or a broken RNG). A redelivery carries the same
seq and nonce and stays a duplicate. The store is the ledger itself: exact (not a time window),
shared by every worker (an in-memory window per worker would miss a replay that the shared
subscription hands to another worker) and bounded by the ledger's own retention.

SQL is written once with `?` placeholders and the ANSI `ON CONFLICT` clauses both engines share.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from edge.errors import FacegateError
from edge.trust.private_db import open_private_db

log = logging.getLogger("facegate.backend")
FAULT_TYPE = "actuator.fault"  # names an accept whose relay failed: the accept is voided
T = TypeVar("T")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class LedgerError(FacegateError):
    """The ledger database cannot be opened or used."""

    prefix = "ledger error"


class Outcome(StrEnum):
    """What the ledger did with one message."""

    BOOKED = "booked"
    DUPLICATE = "duplicate"  # identical redelivery: acknowledged, not booked again
    REPLAY = "replay"  # same device:seq, different content: alert, not booked
    REJECTED = "rejected"


NONCE_REUSED = "nonce_reused"  # rejection reason: a new seq carrying a nonce already booked
Settled = tuple[Outcome, str]  # outcome and, for REJECTED, the reason counted


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
    nonce: str | None = None  # the event's 32-hex nonce; None only for rows booked before it


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
    # An accept whose relay then failed (the device's signed `actuator.fault` names it): the
    # rider was charged but not let through, so its amount leaves the totals (`totals`).
    """CREATE TABLE IF NOT EXISTS voids (
        device TEXT NOT NULL,
        seq BIGINT NOT NULL,
        fault_seq BIGINT NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (device, seq))""",
    """CREATE TABLE IF NOT EXISTS devices (
        name TEXT PRIMARY KEY,
        public_key TEXT NOT NULL,
        added_at DOUBLE PRECISION NOT NULL)""",
]
# Columns added after the first release; added in place to an older ledger.
_ADDED_COLUMNS = [("events", "nonce", "TEXT"), ("devices", "site", "TEXT")]
_INDEXES = ["CREATE UNIQUE INDEX IF NOT EXISTS events_device_nonce ON events (device, nonce)"]
_INSERT_COLUMNS = (
    "device, seq, site, type, ts, booked_at, amount, currency, content_hash, payload, nonce"
)

_COUNT = (
    "INSERT INTO rejections(reason, count) VALUES (?, ?) "
    "ON CONFLICT (reason) DO UPDATE SET count = rejections.count + excluded.count"
)
# PostgreSQL: the batch is COPYed into a per-connection staging table (COPY costs a few µs per
# row in psycopg; array parameters cost ~20), then moved with one INSERT. Rows conflicting on
# (device, seq) or on (device, nonce) are skipped; RETURNING names the keys that were inserted.
_PG_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS batch_in (device TEXT, seq BIGINT, site TEXT, type TEXT,"
    " ts DOUBLE PRECISION, amount BIGINT, currency TEXT, content_hash TEXT, payload TEXT,"
    " nonce TEXT) ON COMMIT DELETE ROWS"
)
_PG_COPY = (
    "COPY batch_in (device, seq, site, type, ts, amount, currency, content_hash, payload, nonce)"
    " FROM STDIN"
)
_PG_INSERT = (
    f"INSERT INTO events({_INSERT_COLUMNS})"
    " SELECT device, seq, site, type, ts, %s, amount, currency, content_hash, payload, nonce"
    " FROM batch_in ORDER BY device, seq ON CONFLICT DO NOTHING RETURNING device, seq"
)
_PG_STORED = (
    "SELECT e.device, e.seq, e.content_hash FROM events e"
    " JOIN unnest(%s::text[], %s::bigint[]) AS k(d, s) ON e.device = k.d AND e.seq = k.s"
)
RETRY_S = 60.0  # how long a batch is retried while the PostgreSQL connection is being restored


def is_postgres_url(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


class Ledger:
    """One connection to the ledger database; safe to share between threads (calls serialize)."""

    def __init__(
        self, target: str | Path, app_name: str = "facegate-backend", retry_s: float = RETRY_S
    ) -> None:
        self.target = str(target)
        self.app_name, self.retry_s = app_name[:63], retry_s
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
        extra: dict[str, Any] = {}
        if "application_name" not in self.target:  # a URL's own name wins (tests use one)
            extra["application_name"] = self.app_name
        try:
            conn = psycopg.connect(self.target, autocommit=True, connect_timeout=10, **extra)
            conn.execute(_PG_STAGE)  # per connection: re-made after a reconnect
            return conn
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

        def run() -> list[tuple[Any, ...]]:
            with self.transaction(write=False) as conn:
                return [tuple(r) for r in self.execute(conn, sql, params).fetchall()]

        return self._retrying(run)

    def _create_schema(self) -> None:
        with self.transaction() as conn:
            if self.postgres:
                # Concurrent CREATE TABLE IF NOT EXISTS can still collide in pg_type.
                conn.execute("SELECT pg_advisory_xact_lock(7007001)")
            for stmt in _SCHEMA:
                conn.execute(stmt)
            for table, column, kind in _ADDED_COLUMNS:
                if column not in self._columns(conn, table):
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            for stmt in _INDEXES:
                conn.execute(stmt)

    def _columns(self, conn: Any, table: str) -> set[str]:
        if self.postgres:
            rows = conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = %s AND table_schema = current_schema()",
                (table,),
            ).fetchall()
            return {str(r[0]) for r in rows}
        return {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------

    def book(self, b: Booking, now: float | None = None) -> Outcome:
        """Book one event (its own transaction); see `settle`."""
        return self.settle([b], now=now)[0][0]

    def reject(self, reason: str) -> None:
        """Count one rejected message under `reason` (its own transaction)."""
        self.settle([], {reason: 1})

    def settle(
        self,
        bookings: Sequence[Booking],
        rejections: Mapping[str, int] | None = None,
        now: float | None = None,
    ) -> list[Settled]:
        """Book a batch and count its rejections in ONE transaction; one result per booking.

        BOOKED the first time a device:seq is seen; DUPLICATE for an identical redelivery
        (also within the batch); REPLAY (alert) for other content under a booked device:seq;
        (REJECTED, "nonce_reused") for a new seq whose nonce the device already used. A lost
        PostgreSQL connection is re-opened and the batch retried for `retry_s` (nothing was
        acknowledged meanwhile; a commit whose answer was lost is retried, and its events are
        then counted as duplicates: the ledger still holds each once).
        """
        counts: Counter[str] = Counter(rejections or {})
        return self._retrying(lambda: self._settle_once(bookings, counts, now))

    def _retrying(self, fn: Callable[[], T]) -> T:
        """Run `fn`; on PostgreSQL, re-open a lost connection and run it again for `retry_s`."""
        if not self.postgres:
            return fn()
        import psycopg

        deadline, delay = time.monotonic() + self.retry_s, 0.2
        while True:
            try:
                return fn()
            except psycopg.OperationalError as exc:  # connection lost, deadlock, server restart
                if time.monotonic() + delay > deadline:
                    raise LedgerError(
                        f"PostgreSQL unavailable for {self.retry_s:g}s: {_first_line(exc)}"
                    ) from exc
                log.warning("ledger: %s; retrying in %.1fs", _first_line(exc), delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._reopen()

    def _reopen(self) -> None:
        with self._lock:
            if not self._conn.closed and not self._conn.broken:
                return  # e.g. a deadlock: the connection itself is fine
            try:
                self._conn.close()
                self._conn = self._connect_pg()
            except (LedgerError, OSError) as exc:
                log.warning("ledger: reconnect failed: %s", exc)

    def _settle_once(
        self, bookings: Sequence[Booking], counts: Counter[str], now: float | None
    ) -> list[Settled]:
        counts = Counter(counts)
        # The first occurrence of each key is inserted; later ones in the batch are compared
        # with it like any redelivery. Sorted keys give concurrent workers one lock order.
        first: dict[tuple[str, int], Booking] = {}
        for b in bookings:
            first.setdefault((b.device, b.seq), b)
        ordered = [first[k] for k in sorted(first)]
        with self.transaction() as conn:
            # Taken inside the transaction (SQLite: write lock held), so lock waits count as
            # latency; the commit's fsync right after does not.
            booked_at = time.time() if now is None else now
            if self.postgres:
                inserted, stored = self._insert_pg(conn, ordered, booked_at)
            else:
                inserted, stored = self._insert_sqlite(conn, ordered, booked_at)
            out: list[Settled] = []
            alerts: list[tuple[Any, ...]] = []
            for b in bookings:
                key = (b.device, b.seq)
                if key in inserted and first[key] is b:
                    out.append((Outcome.BOOKED, ""))
                    continue
                have = inserted[key].content_hash if key in inserted else stored.get(key)
                if have is None:  # (device, seq) is new: the insert hit the nonce index
                    counts[NONCE_REUSED] += 1
                    out.append((Outcome.REJECTED, NONCE_REUSED))
                elif have == b.content_hash:
                    counts["duplicate"] += 1
                    out.append((Outcome.DUPLICATE, ""))
                else:
                    counts["replay"] += 1
                    alerts.append((b.device, b.seq, booked_at, have, b.content_hash, b.payload))
                    out.append((Outcome.REPLAY, ""))
            for b in ordered:
                if b.type == FAULT_TYPE and (b.device, b.seq) in inserted:
                    self._void(conn, b)
            for row in alerts:
                self.execute(
                    conn,
                    "INSERT INTO alerts(device, seq, kind, received_at, booked_hash,"
                    " content_hash, payload) VALUES (?, ?, 'replay', ?, ?, ?, ?)",
                    row,
                )
            for reason in sorted(counts):
                if counts[reason]:
                    self.execute(conn, _COUNT, (reason, counts[reason]))
        return out

    def _void(self, conn: Any, fault: Booking) -> None:
        """Record the accept an `actuator.fault` names as voided (once; the first fault wins).
        Only an earlier event of the same device can be named: the fault is signed by the
        device, and a device cannot void another device's bookings."""
        try:
            body = json.loads(fault.payload)
            accept_seq, reason = int(body["accept_seq"]), str(body["reason"])
        except (ValueError, KeyError, TypeError):
            log.warning("ledger: actuator.fault %s:%d names no accept", fault.device, fault.seq)
            return
        if not 0 < accept_seq < fault.seq:
            log.warning(
                "ledger: actuator.fault %s:%d names seq %d, not an earlier event",
                fault.device, fault.seq, accept_seq,
            )  # fmt: skip
            return
        self.execute(
            conn,
            "INSERT INTO voids(device, seq, fault_seq, reason) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (fault.device, accept_seq, fault.seq, reason),
        )

    def _insert_pg(
        self, conn: Any, rows: Sequence[Booking], booked_at: float
    ) -> tuple[dict[tuple[str, int], Booking], dict[tuple[str, int], str]]:
        if not rows:
            return {}, {}
        with conn.cursor().copy(_PG_COPY) as copy:
            for b in rows:
                copy.write_row((
                    b.device, b.seq, b.site, b.type, b.ts, b.amount, b.currency,
                    b.content_hash, b.payload, b.nonce,
                ))  # fmt: skip
        done = {(str(d), int(q)) for d, q in conn.execute(_PG_INSERT, (booked_at,))}
        by_key = {(b.device, b.seq): b for b in rows}
        inserted = {k: by_key[k] for k in done}
        missing = [b for b in rows if (b.device, b.seq) not in done]
        stored: dict[tuple[str, int], str] = {}
        if missing:
            found = conn.execute(
                _PG_STORED, ([b.device for b in missing], [b.seq for b in missing])
            ).fetchall()
            stored = {(str(d), int(q)): str(h) for d, q, h in found}
        return inserted, stored

    def _insert_sqlite(
        self, conn: Any, rows: Sequence[Booking], booked_at: float
    ) -> tuple[dict[tuple[str, int], Booking], dict[tuple[str, int], str]]:
        inserted: dict[tuple[str, int], Booking] = {}
        stored: dict[tuple[str, int], str] = {}
        sql = f"INSERT INTO events({_INSERT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)" + (
            " ON CONFLICT DO NOTHING"
        )
        for b in rows:
            cur = conn.execute(sql, (
                b.device, b.seq, b.site, b.type, b.ts, booked_at, b.amount, b.currency,
                b.content_hash, b.payload, b.nonce,
            ))  # fmt: skip
            if cur.rowcount == 1:
                inserted[(b.device, b.seq)] = b
                continue
            row = conn.execute(
                "SELECT content_hash FROM events WHERE device = ? AND seq = ?", (b.device, b.seq)
            ).fetchone()
            if row is not None:
                stored[(b.device, b.seq)] = str(row[0])
        return inserted, stored

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

    def voided(self) -> list[dict[str, Any]]:
        """Accepts voided by an `actuator.fault` of their device, with what they carried (an
        accept not booked yet shows with type None until it arrives)."""
        rows = self.query(
            "SELECT v.device, v.seq, v.fault_seq, v.reason, e.type, e.amount, e.currency"
            " FROM voids v LEFT JOIN events e ON e.device = v.device AND e.seq = v.seq"
            " ORDER BY v.device, v.seq"
        )
        keys = ("device", "seq", "fault_seq", "reason", "type", "amount", "currency")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def totals(self) -> dict[str, Any]:
        """Counts per type and device, amounts per type/device/currency (voided accepts left
        out, listed under `voided`), rejections, alerts."""
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
                "SELECT type, device, currency, COUNT(*), SUM(amount) FROM events e"
                " WHERE amount IS NOT NULL AND NOT EXISTS (SELECT 1 FROM voids v"
                " WHERE v.device = e.device AND v.seq = e.seq)"
                " GROUP BY type, device, currency"
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
            "voided": self.voided(),
        }
