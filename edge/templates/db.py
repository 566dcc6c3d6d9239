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
from edge.trust.private_db import SIDE_SUFFIXES, open_private_db

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
        if not os.path.lexists(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self.guard(None):
                _create(self.path)
        self._refuse_if_emptied()
        with self.guard(None):
            self.conn = open_private_db(
                self.path, timeout_s=busy_timeout_s, check_same_thread=False, secure_delete=True
            )
            self.conn.executescript(SCHEMA)

    def _refuse_if_emptied(self) -> None:
        """An existing zero-byte store is a truncated one, never a new one: a store is created
        whole (see `_create`) and SQLite never shrinks it below its header page, so taking it
        as new would silently drop every revocation tombstone."""
        try:
            size = self.path.stat().st_size
            wal = Path(f"{self.path}-wal")
            wal_size = wal.stat().st_size if wal.exists() else 0
        except OSError as exc:
            raise TemplateError(
                f"cannot read {self.path} ({exc.strerror}); check permissions"
            ) from None
        if size == 0 and wal_size == 0:
            raise TemplateError(
                f"{self.path} is empty (0 bytes): the template store, with its revocation "
                f"records, was truncated; restore it from a backup. Only if there is none: "
                f"`facegate templates wipe --yes` starts an empty store, then re-enrol or resync "
                f"templates from the backend"
            )

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
            if self._wal_lost(exc):
                raise TemplateError(
                    f"{who}{self.path}-wal (the store's write-ahead log) was deleted while "
                    f"another process (the kiosk) has the store open; the store is intact: "
                    f"restart that process (`systemctl restart facegate`) so it writes its log "
                    f"back, then retry - do not wipe"
                ) from None
            raise self._damaged(who, exc) from None
        except sqlite3.DatabaseError as exc:
            raise self._damaged(who, exc) from None

    def _wal_lost(self, exc: sqlite3.OperationalError) -> bool:
        """The shared-memory index counts log frames the -wal file no longer has: someone
        unlinked the log while a connection (the kiosk) still holds the old one open. SQLite
        then fails every read with a short read until that connection checkpoints or closes."""
        if getattr(exc, "sqlite_errorname", "") != "SQLITE_IOERR_SHORT_READ":
            return False
        wal = Path(f"{self.path}-wal")
        try:
            return not wal.exists() or wal.stat().st_size == 0
        except OSError:
            return False

    def _damaged(self, who: str, exc: Exception) -> TemplateError:
        return TemplateError(
            f"{who}{self.path} is damaged or truncated ({exc}); restore it from a backup and "
            f"run `facegate templates check`; only if there is none, `facegate templates wipe "
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
                # SQLite has already rolled back after an I/O error: a second ROLLBACK would
                # replace the real cause with "cannot rollback - no transaction is active".
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def integrity(self) -> list[str]:
        """SQLite's own check of every page and index: [] when the file is sound."""
        with self.guard(None):
            rows = self.conn.execute("PRAGMA integrity_check").fetchall()
        problems = [str(r[0]) for r in rows]
        return [] if problems == ["ok"] else problems

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


def _create(path: Path) -> None:
    """A new store appears whole or not at all: built (WAL header, schema) under a temporary
    name and linked into place, so a crash while creating it never leaves the zero-byte file
    that `_refuse_if_emptied` reports as a truncated store."""
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}")
    for p in (tmp, *(Path(f"{tmp}{s}") for s in SIDE_SUFFIXES)):
        p.unlink(missing_ok=True)
    conn = open_private_db(tmp, secure_delete=True)
    try:
        conn.executescript(SCHEMA)
    finally:
        conn.close()  # the last connection checkpoints and removes the -wal
    try:
        os.link(tmp, path)  # fails if another process created the store meanwhile: use theirs
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links
        if not os.path.lexists(path):
            os.rename(tmp, path)
    finally:
        for p in (tmp, *(Path(f"{tmp}{s}") for s in SIDE_SUFFIXES)):
            p.unlink(missing_ok=True)


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
