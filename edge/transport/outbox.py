"""Durable store-and-forward queue of signed events (SQLite, WAL, synchronous=FULL).

Guarantees (each is a test in tests/test_outbox.py):
- `emit` reserves the device's next `seq` and stores the signed event in ONE transaction, and
  returns only after the commit is on disk: the kiosk shows a decision or actuates after `emit`
  returns, so a power cut can neither lose a created event nor reuse its seq.
- Settlement: a row goes queued -> published-but-unsettled (`mark_published`, at the broker's
  PUBACK) -> deleted by `settle`, when the backend's signed receipt for its `device:seq` arrives
  (edge/trust/receipts.py). A PUBACK only means the broker has it: a broker power cut or a rogue
  subscriber can still lose it, so an unsettled row is published again once its back-off has
  passed (`[mqtt] resend_min_s` doubling to `resend_max_s`, +-20 % jitter, kept in `next_try`, so a
  restarted kiosk does not flood the broker). The ledger is idempotent on `device:seq`.
  `ack` (delete at PUBACK) remains only for links without a backend key to check receipts with.
- A device's counter starts, in a new outbox file, at the wall clock in microseconds (not at 1):
  an outbox moved aside (damaged) or lost with the state directory, while the device keys
  survive (systemd credentials), must not reuse a `device:seq` the backend has already booked
  (it would refuse every new event as a replay). The old file's counter can only have advanced
  by one per emitted event, and an emit (a signature and a committed SQLite transaction) takes
  far more than a microsecond, so the old counter stays below the clock as long as the clock
  does not go back (a board without RTC must sync time before it emits). Milliseconds were not
  enough: a burst of 50 events in 40 ms outran them. Seqs stay below 2**53 until the 2250s.
- Bounded: at `max_events` the oldest NON-payment event is dropped to make room. Payment events
  (`payment.authorize`, `fare.charge`) are never dropped; when only payments remain, `emit`
  raises OutboxFullError and the kiosk must refuse the payment (a non-face alternative exists).
  The first drop after the outbox was last below 90 % also queues a `device.status` event with
  status `outbox_full`, and `status()["full"]` is true while the outbox is at its bound.
- `emit` commits or raises: a SQLite failure (disk full, I/O error, read-only filesystem) is an
  OutboxError naming the file, raised after a clean rollback (no row stored, no seq used), and
  the kiosk fails closed on it.
Several processes may open the same file (the kiosk and `facegate outbox drain`); SQLite's
locking serialises them.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import FacegateError
from edge.transport.seq import next_seq_in
from edge.transport.topics import topic_for
from edge.trust.event_schema import PAYMENT_TYPES
from edge.trust.events import EventFactory, SignedEvent
from edge.trust.private_db import open_private_db

OUTBOX_FILE = "outbox.db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS seq (device TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    payment INTEGER NOT NULL,
    created_ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_payment ON outbox(payment, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# Settlement columns, added to files made before receipts existed (migration in __init__).
_COLUMNS = {
    "device": "TEXT",
    "seq": "INTEGER",
    "published_ts": "REAL",  # first PUBACK (wall clock); NULL while only queued
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "next_try": "REAL NOT NULL DEFAULT 0",  # an unsettled row may be published again from here
}
_COUNTERS = (
    "pending", "enqueued", "acked", "dropped", "full_reported", "settled", "receipts_refused",
)  # fmt: skip
RESEND_JITTER = 0.2


class OutboxFullError(FacegateError):
    """The outbox holds only unsent payment events and is at its bound."""

    prefix = "outbox full"


class OutboxError(FacegateError):
    """SQLite could not store an event (disk full, I/O error, read-only filesystem)."""

    prefix = "outbox error"


@dataclass(frozen=True)
class OutboxItem:
    id: int
    key: str
    topic: str
    payload: bytes


class Outbox:
    """The queue in `<state_dir>/outbox.db`; thread-safe within a process (one lock)."""

    def __init__(
        self,
        path: Path,
        max_events: int = 100_000,
        clock: Callable[[], float] = time.time,
        seq_start: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.path, self.max_events, self._clock = Path(path), max_events, clock
        self._rng = rng or random.Random()  # resend jitter
        # Where a device's counter starts when this file has none yet (module doc).
        self._seq_start = seq_start if seq_start is not None else max(1, int(clock() * 1_000_000))
        self._lock = threading.RLock()
        # Events name pseudonymous subjects and amounts: owner-only, like the rest of the state.
        # Autocommit mode: every transaction is an explicit BEGIN IMMEDIATE ... COMMIT below.
        try:
            self._db = open_private_db(path, timeout_s=30.0, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise FacegateError(
                f"outbox {path} is damaged or unreadable ({exc}); move it aside (keep it: it "
                f"may hold unsent events) and restart"
            ) from None
        try:
            with self._tx() as db:
                # (executescript would COMMIT on its own, outside this transaction)
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(stmt)
                self._migrate(db)
                for name in _COUNTERS:
                    db.execute("INSERT OR IGNORE INTO counters(name, value) VALUES (?, 0)", (name,))
                # `pending` is kept in step by every transaction; recount once at open to be sure.
                db.execute(
                    "UPDATE counters SET value = (SELECT COUNT(*) FROM outbox) "
                    "WHERE name = 'pending'"
                )
        except sqlite3.DatabaseError as exc:
            # A damaged file (truncated, not SQLite) is an operator problem, not a traceback;
            # it may still hold unsent signed events, so it is named and never rewritten here.
            self._db.close()
            raise FacegateError(
                f"outbox {path} is damaged or unreadable ({exc}); move it aside (keep it: it "
                f"may hold unsent events) and restart"
            ) from None
        self._listeners: list[Callable[[], None]] = []

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Add the settlement columns to an older file; its rows count as never published."""
        have = {str(r[1]) for r in db.execute("PRAGMA table_info(outbox)")}
        for name, decl in _COLUMNS.items():
            if name not in have:
                db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {decl}")
        if "seq" not in have:  # `key` is `device:seq`; ids never contain ':' (edge/ids.py)
            db.execute(
                "UPDATE outbox SET device = substr(key, 1, instr(key, ':') - 1), "
                "seq = CAST(substr(key, instr(key, ':') + 1) AS INTEGER) WHERE seq IS NULL"
            )
        db.execute("CREATE INDEX IF NOT EXISTS outbox_by_seq ON outbox(device, seq)")

    # ---- transactions -------------------------------------------------------------------

    class _Tx:
        def __init__(self, outbox: Outbox) -> None:
            self._o = outbox

        def __enter__(self) -> sqlite3.Connection:
            self._o._lock.acquire()
            try:
                self._o._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self._o._lock.release()
                raise
            return self._o._db

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            db = self._o._db
            try:
                if exc_type is None:
                    try:
                        db.execute("COMMIT")
                    except sqlite3.Error:
                        self._rollback(db)  # a failed COMMIT may leave the transaction open
                        raise
                else:
                    self._rollback(db)
            finally:
                self._o._lock.release()

        @staticmethod
        def _rollback(db: sqlite3.Connection) -> None:
            # SQLite rolls back by itself on some errors (SQLITE_FULL, SQLITE_IOERR); a second
            # ROLLBACK would then fail and hide the error that says what went wrong.
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")

    def _tx(self) -> Outbox._Tx:
        return Outbox._Tx(self)

    def _bump(self, db: sqlite3.Connection, name: str, by: int = 1) -> None:
        db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))

    def _counter(self, db: sqlite3.Connection, name: str) -> int:
        return int(db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])

    # ---- producing ----------------------------------------------------------------------

    def on_enqueue(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after each committed enqueue in this process (wakes the publisher)."""
        self._listeners.append(listener)

    def next_seq(self, device: str) -> int:
        """SeqStore protocol: reserve and commit the next seq (for EventFactory.make)."""
        with self._tx() as db:
            return next_seq_in(db, device, self._seq_start)

    def emit(self, factory: EventFactory, type: str, **fields: Any) -> SignedEvent:
        """Build, sign and durably enqueue an event; seq and row commit together (module doc).

        Raises OutboxError when SQLite cannot store it (nothing stored, no seq used): the
        caller must act as if no event exists, i.e. fail closed."""
        factory.validate_fields(type, fields)  # a bad event fails here, before any seq is used
        try:
            with self._tx() as db:
                seq = next_seq_in(db, factory.device_id, self._seq_start)
                event = factory.build(type, seq, **fields)
                dropped = self._insert(db, event)
                if dropped and not self._counter(db, "full_reported"):
                    self._report_full(db, factory)
        except sqlite3.Error as exc:
            raise self._store_error(type, exc) from exc
        self._notify()
        return event

    def enqueue(self, event: SignedEvent) -> bool:
        """Store an event built elsewhere (seq already persisted); False if its key is queued.

        Raises OutboxError when SQLite cannot store it."""
        try:
            with self._tx() as db:
                exists = db.execute("SELECT 1 FROM outbox WHERE key = ?", (event.key,)).fetchone()
                if not exists:
                    self._insert(db, event)
        except sqlite3.Error as exc:
            raise self._store_error(event.type, exc) from exc
        self._notify()
        return not exists

    def _store_error(self, type_: str, exc: sqlite3.Error) -> OutboxError:
        return OutboxError(
            f"cannot store a {type_} event in {self.path} ({exc}); free space on that "
            "filesystem or check it for I/O errors (df -h, dmesg), then restart the kiosk"
        )

    def _insert(self, db: sqlite3.Connection, event: SignedEvent) -> bool:
        """Insert with the bound policy; True if an older event was dropped to make room."""
        dropped = False
        if self._pending(db) >= self.max_events:
            victim = db.execute(
                "SELECT id FROM outbox WHERE payment = 0 ORDER BY id LIMIT 1"
            ).fetchone()
            if victim is None:
                raise OutboxFullError(
                    f"{self.max_events} unsent payment events in {self.path}; refuse new "
                    "payments until the link to the backend is back (`facegate outbox status`)"
                )
            db.execute("DELETE FROM outbox WHERE id = ?", (victim[0],))
            self._bump(db, "dropped")
            self._bump(db, "pending", -1)
            dropped = True
        db.execute(
            "INSERT INTO outbox(key, type, topic, payload, payment, created_ts, device, seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event.key,
                event.type,
                topic_for(event.event),
                event.payload,
                int(event.type in PAYMENT_TYPES),
                self._clock(),
                str(event.event["device"]),
                event.seq,
            ),
        )
        self._bump(db, "enqueued")
        self._bump(db, "pending")
        return dropped

    def _report_full(self, db: sqlite3.Connection, factory: EventFactory) -> None:
        status = factory.build(
            "device.status",
            next_seq_in(db, factory.device_id, self._seq_start),
            status="outbox_full",
            outbox_pending=self._pending(db),
            outbox_full=True,
            detail=f"bound {self.max_events} reached; oldest non-payment events dropped",
        )
        try:
            self._insert(db, status)
        except OutboxFullError:
            return  # only payments left: nothing may be dropped for the report itself
        db.execute("UPDATE counters SET value = 1 WHERE name = 'full_reported'")

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    # ---- consuming ----------------------------------------------------------------------

    def peek(self, limit: int, exclude: Iterable[int] = ()) -> list[OutboxItem]:
        """Oldest `limit` events due for publishing (queued, or unsettled past their back-off),
        skipping ids in `exclude` (already in flight)."""
        skip = sorted(set(exclude))
        marks = ",".join("?" * len(skip))
        where = f"AND id NOT IN ({marks})" if skip else ""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, key, topic, payload FROM outbox "
                f"WHERE (published_ts IS NULL OR next_try <= ?) {where} ORDER BY id LIMIT ?",
                (self._clock(), *skip, limit),
            ).fetchall()
        return [OutboxItem(int(r[0]), str(r[1]), str(r[2]), bytes(r[3])) for r in rows]

    def ack(self, ids: Sequence[int]) -> int:
        """Delete published events (after PUBACK), in one transaction; returns rows removed."""
        if not ids:
            return 0
        with self._tx() as db:
            removed = 0
            for i in ids:
                removed += db.execute("DELETE FROM outbox WHERE id = ?", (i,)).rowcount
            self._bump(db, "acked", removed)
            self._bump(db, "pending", -removed)
            if self._pending(db) < 0.9 * self.max_events:
                db.execute("UPDATE counters SET value = 0 WHERE name = 'full_reported'")
        return removed

    def resend_delay_s(self, attempts: int, min_s: float, max_s: float) -> float:
        """Back-off before publishing an unsettled event again after `attempts` publishes:
        min_s doubling per attempt up to max_s, times U(0.8, 1.2)."""
        base = min(max(max_s, min_s), min_s * 2.0 ** min(max(attempts - 1, 0), 60))
        return base * self._rng.uniform(1 - RESEND_JITTER, 1 + RESEND_JITTER)

    def mark_published(
        self, ids: Sequence[int], resend_min_s: float = 5.0, resend_max_s: float = 300.0
    ) -> int:
        """Record a PUBACK: the rows become published-but-unsettled and wait for a receipt; each
        may be published again after its back-off. Returns the rows still present."""
        if not ids:
            return 0
        now, lo, hi = self._clock(), resend_min_s, resend_max_s
        with self._tx() as db:
            marked = 0
            for i in ids:
                row = db.execute("SELECT attempts FROM outbox WHERE id = ?", (i,)).fetchone()
                if row is None:
                    continue  # already settled (the receipt overtook the PUBACK)
                attempts = int(row[0]) + 1
                db.execute(
                    "UPDATE outbox SET published_ts = COALESCE(published_ts, ?), attempts = ?, "
                    "next_try = ? WHERE id = ?",
                    (now, attempts, now + self.resend_delay_s(attempts, lo, hi), i),
                )
                marked += 1
        return marked

    def settle(self, device: str, ranges: Iterable[tuple[int, int]]) -> int:
        """Delete the events a verified receipt names (idempotent); returns rows removed."""
        with self._tx() as db:
            removed = 0
            for first, last in ranges:
                removed += db.execute(
                    "DELETE FROM outbox WHERE device = ? AND seq BETWEEN ? AND ?",
                    (device, first, last),
                ).rowcount
            if removed:
                self._bump(db, "settled", removed)
                self._bump(db, "pending", -removed)
                if self._pending(db) < 0.9 * self.max_events:
                    db.execute("UPDATE counters SET value = 0 WHERE name = 'full_reported'")
        if removed:
            self._notify()  # room again: wake the publisher
        return removed

    def count_refused_receipts(self, n: int = 1) -> None:
        """Count forged, unsigned or other-device receipts (shown by `outbox status`)."""
        with self._tx() as db:
            self._bump(db, "receipts_refused", n)

    def _pending(self, db: sqlite3.Connection) -> int:
        return self._counter(db, "pending")

    def status(self) -> dict[str, Any]:
        """Counts for `facegate outbox status` and the device's status report."""
        with self._lock:
            db = self._db
            pending = self._pending(db)
            payments = int(
                db.execute("SELECT COUNT(*) FROM outbox WHERE payment = 1").fetchone()[0]
            )
            oldest = db.execute("SELECT MIN(created_ts) FROM outbox").fetchone()[0]
            unsettled, oldest_unsettled = db.execute(
                "SELECT COUNT(*), MIN(created_ts) FROM outbox WHERE published_ts IS NOT NULL"
            ).fetchone()
            by_type = dict(db.execute("SELECT type, COUNT(*) FROM outbox GROUP BY type").fetchall())
            counters = {n: self._counter(db, n) for n in _COUNTERS}
        now = self._clock()
        return {
            "queued": pending - int(unsettled),
            "unsettled": int(unsettled),
            "settled_total": counters["settled"],
            "oldest_unsettled_age_s": (
                None if oldest_unsettled is None else round(now - oldest_unsettled, 3)
            ),
            "receipts_refused_total": counters["receipts_refused"],
            "pending": pending,
            "pending_payments": payments,
            "pending_by_type": by_type,
            "oldest_age_s": None if oldest is None else round(now - oldest, 3),
            "max_events": self.max_events,
            "full": pending >= self.max_events,
            "enqueued_total": counters["enqueued"],
            "acked_total": counters["acked"],
            "dropped_total": counters["dropped"],
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
