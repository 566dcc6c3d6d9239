"""The one way to open a device's private SQLite file: 0600, WAL, synchronous=FULL.

Every state file of the kiosk (outbox, templates, lockout, presence, downlink replay guard, seq
counters, console auth) holds something another local user must not read: a movement history,
a claim-hash salt, signed events. The file is created 0600 before SQLite touches it, so its
-wal and -shm side files (which SQLite creates with the main file's mode) are 0600 too; an
existing file that is more open is tightened. `journal_mode` is checked, not assumed: on a
filesystem without shared memory SQLite silently stays in another mode.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


class PrivateDbError(sqlite3.OperationalError):
    """WAL could not be enabled on a private database (the caller names the file and the fix)."""


def open_private_db(
    path: Path | str,
    *,
    timeout_s: float = 30.0,
    check_same_thread: bool = True,
    secure_delete: bool = False,
) -> sqlite3.Connection:
    """Open (creating 0600) an autocommit SQLite connection in WAL mode with synchronous=FULL.

    Raises sqlite3.DatabaseError subclasses as SQLite does (callers map them to one-line errors)
    and OSError if the file cannot be created.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in SIDE_SUFFIXES:
        side = Path(f"{path}{suffix}")
        if side.exists() and stat.S_IMODE(side.stat().st_mode) & 0o077:
            side.chmod(0o600)
    conn = sqlite3.connect(
        str(path), isolation_level=None, timeout=timeout_s, check_same_thread=check_same_thread
    )
    try:
        conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        if secure_delete:
            conn.execute("PRAGMA secure_delete=ON")
        row = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if row is None or str(row[0]).lower() != "wal":
            raise PrivateDbError(
                f"journal_mode is {row[0] if row else None!r}, not 'wal' (the filesystem may not "
                "support shared memory); put the state directory on a local filesystem"
            )
        conn.execute("PRAGMA synchronous=FULL")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error) on an autocommit connection."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
