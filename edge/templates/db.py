"""SQLite plumbing of the template store: file creation, pragmas, transactions, error mapping.

WAL so a kiosk keeps verifying while a sync or the technician writes; `synchronous=FULL` so a
committed revocation survives power loss; `secure_delete` so SQLite zeroes freed content.
Every SQLite failure becomes a one-line TemplateError with the fix: a damaged or truncated file
is named as such, never a traceback and never a silent match.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge.errors import TemplateError
from edge.trust.private_db import open_private_db

DB_NAME = "templates.db"
SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS templates (
    subject   TEXT PRIMARY KEY,
    version   INTEGER NOT NULL CHECK (version >= 0),
    state     TEXT NOT NULL CHECK (state IN ('active', 'revoked', 'expired')),
    origin    TEXT NOT NULL CHECK (origin IN ('enrol', 'import')),
    created_s INTEGER NOT NULL,
    expires_s INTEGER NOT NULL,
    record    BLOB,
    CHECK ((state = 'active') = (record IS NOT NULL))
);
"""


def db_path(state_dir: Path) -> Path:
    """Where the store lives: `<state_dir>/templates.db`."""
    return Path(state_dir) / DB_NAME


class TemplateDB:
    """One SQLite connection to the store file (one per thread or process)."""

    def __init__(self, path: Path, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self.guard(None):
            self.conn = open_private_db(
                self.path, timeout_s=busy_timeout_s, check_same_thread=False, secure_delete=True
            )
            self.conn.executescript(SCHEMA)

    @contextmanager
    def guard(self, subject: str | None) -> Iterator[None]:
        """Turn SQLite failures into one-line TemplateErrors with the fix."""
        who = f"subject {subject!r}: " if subject else ""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise TemplateError(
                    f"{who}{self.path} is busy (another writer holds it); retry in a moment"
                ) from None
            raise self._damaged(who, exc) from None
        except sqlite3.DatabaseError as exc:
            raise self._damaged(who, exc) from None

    def _damaged(self, who: str, exc: Exception) -> TemplateError:
        return TemplateError(
            f"{who}{self.path} is damaged or truncated ({exc}); run `facegate templates wipe "
            f"--yes`, then re-enrol or resync templates from the backend"
        )

    @contextmanager
    def write(self, subject: str | None) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: committed on success, rolled back on any exception."""
        with self.guard(subject):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def meta(self) -> dict[str, object]:
        with self.guard(None):
            return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    def checkpoint(self) -> None:
        """Copy the WAL into the file and truncate it to zero bytes (best effort)."""
        # Old page images (with ciphertext) live on in the WAL until it is checkpointed and
        # truncated; a concurrent reader can keep frames alive until it finishes.
        with self.guard(None):
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    def vacuum(self) -> None:
        """Rebuild the file so freed pages (and their old contents) are gone, then truncate WAL."""
        self.checkpoint()
        with self.guard(None):
            self.conn.execute("VACUUM")
        self.checkpoint()

    def close(self) -> None:
        self.conn.close()


def wipe_files(path: Path) -> None:
    """Destroy a store SQLite can no longer open: overwrite db, WAL and SHM with random bytes."""
    for p in (Path(path), Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            continue
        with open(p, "r+b") as f:
            left = size
            while left > 0:  # chunked: a large file never needs its size in memory at once
                n = min(left, 1 << 20)
                f.write(os.urandom(n))
                left -= n
            f.flush()
            os.fsync(f.fileno())
        p.unlink()
