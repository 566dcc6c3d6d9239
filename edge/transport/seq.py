"""Per-device event sequence numbers, persisted (FULL sync) before an event uses one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge.trust.private_db import immediate, open_private_db


class SqliteSeqStore:
    """Per-device counters in a SQLite file (a `SeqStore`); each reservation is committed first."""

    def __init__(self, path: Path) -> None:
        self._db = open_private_db(path, timeout_s=30.0)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seq (device TEXT PRIMARY KEY, last INTEGER NOT NULL)"
        )

    def next_seq(self, device: str) -> int:
        with immediate(self._db):
            return next_seq_in(self._db, device)

    def close(self) -> None:
        self._db.close()


def next_seq_in(db: sqlite3.Connection, device: str, first: int = 1) -> int:
    """Increment the counter of `device` inside the caller's open transaction (table `seq`);
    a device without a counter in this file starts at `first`."""
    db.execute(
        "INSERT INTO seq(device, last) VALUES (?, ?) ON CONFLICT(device) DO NOTHING",
        (device, first - 1),
    )
    row = db.execute(
        "UPDATE seq SET last = last + 1 WHERE device = ? RETURNING last", (device,)
    ).fetchone()
    return int(row[0])
