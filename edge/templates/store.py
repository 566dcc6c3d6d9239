"""Encrypted template store: SQLite (WAL) at `<state_dir>/templates.db`.

One row per subject holds the current version. An active row carries `nonce || AES-256-GCM
ciphertext` of the L2-normalised float32 embedding under the device's template key, with
AAD = lp16(device id) || lp16(subject) || u32 version || i64 expires_s — the expiry is bound
too, so editing it in the file breaks the record instead of extending its life. Revoked or
expired rows are tombstones: metadata and version only, the ciphertext overwritten and
dropped, so a replayed OLD sealed template of a revoked subject is refused on import.

Decrypted embeddings exist only in memory, returned to the caller for one verification.
Every fault with a record (tamper, wrong key, other device, expired, revoked, damaged file)
is a TemplateError naming the subject and the reason; one bad record never affects another.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from numpy.typing import NDArray

from edge.errors import TemplateError
from edge.templates.db import DB_NAME, SCHEMA_VERSION, TemplateDB, db_path, wipe_files
from edge.templates.record_cipher import (
    ACTIVE,
    EXPIRED,
    REVOKED,
    RecordCipher,
    TemplateInfo,
    cosine,
    iso_utc,
    normalised,
)
from edge.trust.keys import DeviceKeys, load_keys
from edge.trust.sealed import SealedTemplate, check_subject, open_sealed

__all__ = [
    "ACTIVE",
    "DB_NAME",
    "EXPIRED",
    "REVOKED",
    "TemplateInfo",
    "TemplateStore",
    "cosine",
    "db_path",
    "open_store",
    "wipe_files",
]


class TemplateStore:
    """The template database of one device; one instance (connection) per thread or process."""

    def __init__(
        self,
        path: Path,
        keys: DeviceKeys,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 5.0,
    ) -> None:
        self._sql = TemplateDB(path, busy_timeout_s)
        self.path = self._sql.path
        self._db = self._sql.conn
        self._keys = keys
        self._cipher = RecordCipher(keys.device_id, keys.template_key)
        self._clock = clock
        self._guard = self._sql.guard
        self._write = self._sql.write
        self._problem = self._check_identity()

    def _check_identity(self) -> str | None:
        """Bind the store to (device id, template key); return why records cannot be read."""
        rows = self._sql.meta()
        device = self._keys.device_id
        if "device_id" not in rows:
            with self._write(None) as db:
                db.executemany(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("schema", SCHEMA_VERSION),
                        ("device_id", device),
                        ("key_check", self._cipher.key_check()),
                    ],
                )
            rows = self._sql.meta()
        if rows.get("schema") != SCHEMA_VERSION:
            return f"store schema {rows.get('schema')!r} is not supported; update the firmware"
        if rows["device_id"] != device:
            return (
                f"store belongs to device {rows['device_id']!r}, this is {device!r}; "
                f"templates never move between devices - wipe and resync"
            )
        check = rows.get("key_check", b"")
        if not isinstance(check, bytes) or not self._cipher.key_matches(check):
            return (
                "template key does not match this store (wrong key or credential); "
                "restore the original template key, or wipe and resync"
            )
        return None

    def close(self) -> None:
        self._sql.close()

    def __enter__(self) -> TemplateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self) -> int:
        return int(self._clock())

    def _row(self, subject: str) -> tuple[int, str, str, int, int, bytes | None] | None:
        with self._guard(subject):
            row = self._db.execute(
                "SELECT version, state, origin, created_s, expires_s, record "
                "FROM templates WHERE subject = ?",
                (subject,),
            ).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3], row[4], row[5])

    def check_readable(self) -> None:
        """TemplateError now if no record can be read (wrong template key, other device)."""
        if self._problem is not None:
            raise TemplateError(f"template store {self.path}: {self._problem}")

    def _refuse_writes_if_unreadable(self, subject: str) -> None:
        if self._problem is not None:
            raise TemplateError(f"subject {subject!r}: {self._problem}")

    def _put(self, db: sqlite3.Connection, info: TemplateInfo, record: bytes) -> None:
        db.execute(
            "INSERT INTO templates (subject, version, state, origin, created_s, expires_s, record) "
            "VALUES (?, ?, 'active', ?, ?, ?, ?) ON CONFLICT(subject) DO UPDATE SET "
            "version = excluded.version, state = 'active', origin = excluded.origin, "
            "created_s = excluded.created_s, expires_s = excluded.expires_s, "
            "record = excluded.record",
            (info.subject, info.version, info.origin, info.created_s, info.expires_s, record),
        )

    # -- operations ---------------------------------------------------------------------------

    def enrol(
        self, subject: str, embedding: NDArray[np.floating], *, validity_s: int
    ) -> TemplateInfo:
        """Store a locally enrolled template; refuses a subject that already has an active one."""
        check_subject(subject)
        self._refuse_writes_if_unreadable(subject)
        vec = normalised(embedding, subject)
        now = self._now()
        with self._write(subject) as db:
            row = db.execute(
                "SELECT version, state FROM templates WHERE subject = ?", (subject,)
            ).fetchone()
            if row is not None and row[1] == ACTIVE:
                raise TemplateError(
                    f"subject {subject!r} is already enrolled (version {row[0]}); "
                    f"revoke it first with `facegate templates revoke {subject}`"
                )
            version = 1 if row is None else int(row[0]) + 1
            info = TemplateInfo(subject, version, ACTIVE, "enrol", now, now + validity_s)
            self._put(db, info, self._cipher.seal(subject, version, info.expires_s, vec))
        return info

    def import_sealed(
        self, blob: bytes, backend_public: Ed25519PublicKey
    ) -> tuple[TemplateInfo, bool]:
        """Open a sealed template (see edge.trust.sealed) and store it; returns (info, changed)."""
        return self.put_sealed(open_sealed(blob, self._keys, backend_public))

    def put_sealed(self, sealed: SealedTemplate) -> tuple[TemplateInfo, bool]:
        """Store an opened sealed template; refuses expired and replayed old versions."""
        subject = check_subject(sealed.subject)
        self._refuse_writes_if_unreadable(subject)
        if sealed.device_id != self._keys.device_id:
            raise TemplateError(
                f"subject {subject!r}: template is for device {sealed.device_id!r}; refused"
            )
        if sealed.expires_s <= self._now():
            raise TemplateError(
                f"subject {subject!r}: template version {sealed.version} expired on "
                f"{iso_utc(sealed.expires_s)}; request a current template from the backend"
            )
        vec = normalised(sealed.embedding, subject)
        info = TemplateInfo(
            subject, sealed.version, ACTIVE, "import", sealed.created_s, sealed.expires_s
        )
        with self._write(subject) as db:
            row = db.execute(
                "SELECT version, state FROM templates WHERE subject = ?", (subject,)
            ).fetchone()
            if row is not None:
                old_version, state = int(row[0]), str(row[1])
                if state != ACTIVE and sealed.version <= old_version:
                    raise TemplateError(
                        f"subject {subject!r}: version {sealed.version} is a replay - the "
                        f"template was {state} at version {old_version}; only a newer "
                        f"version can be imported"
                    )
                if state == ACTIVE and sealed.version < old_version:
                    raise TemplateError(
                        f"subject {subject!r}: version {sealed.version} is older than the "
                        f"stored version {old_version}; refused (replayed old template)"
                    )
                if state == ACTIVE and sealed.version == old_version:
                    return info, False  # redelivered sync message: already stored
            self._put(db, info, self._cipher.seal(subject, sealed.version, sealed.expires_s, vec))
        return info, True

    def info(self, subject: str) -> TemplateInfo | None:
        """Metadata of one subject (active or tombstone), or None when unknown."""
        row = self._row(check_subject(subject))
        return None if row is None else TemplateInfo(subject, *row[:5])

    def list_all(self) -> list[TemplateInfo]:
        """Metadata of every row (active templates and tombstones), sorted by subject."""
        with self._guard(None):
            rows = self._db.execute(
                "SELECT subject, version, state, origin, created_s, expires_s "
                "FROM templates ORDER BY subject"
            ).fetchall()
        return [TemplateInfo(*r) for r in rows]

    def _tombstone(self, db: sqlite3.Connection, subject: str, state: str) -> None:
        # Overwrite the ciphertext in place first, then drop it (secure_delete zeroes the cell).
        db.execute(
            "UPDATE templates SET record = randomblob(length(record)) WHERE subject = ?",
            (subject,),
        )
        db.execute(
            "UPDATE templates SET state = ?, record = NULL WHERE subject = ?", (state, subject)
        )

    def revoke(self, subject: str) -> TemplateInfo:
        """Revoke a subject: keep a tombstone with its version, destroy the ciphertext."""
        check_subject(subject)
        with self._write(subject) as db:
            row = db.execute(
                "SELECT version, state FROM templates WHERE subject = ?", (subject,)
            ).fetchone()
            if row is None:
                raise TemplateError(f"subject {subject!r}: no template on this device to revoke")
            if row[1] == ACTIVE:
                self._tombstone(db, subject, REVOKED)
            elif row[1] == EXPIRED:
                db.execute("UPDATE templates SET state = ? WHERE subject = ?", (REVOKED, subject))
        self._checkpoint()
        found = self.info(subject)
        assert found is not None
        return found

    def expire(self) -> list[str]:
        """Turn every active template past its expiry into a tombstone; returns the subjects."""
        now = self._now()
        with self._write(None) as db:
            subjects = [
                r[0]
                for r in db.execute(
                    "SELECT subject FROM templates WHERE state = 'active' AND expires_s <= ?",
                    (now,),
                )
            ]
            for subject in subjects:
                self._tombstone(db, subject, EXPIRED)
        if subjects:
            self._checkpoint()
        return subjects

    def wipe(self) -> int:
        """Destroy every active template (overwrite, delete, VACUUM, truncate the WAL).

        Tombstones of revoked/expired templates hold no face data and are kept, so a wipe does
        not reopen the door to replaying a revoked template. Returns the number destroyed.
        """
        with self._write(None) as db:
            n = db.execute("SELECT count(*) FROM templates WHERE state = 'active'").fetchone()[0]
            db.execute(
                "UPDATE templates SET record = randomblob(length(record)) WHERE state = 'active'"
            )
            db.execute("DELETE FROM templates WHERE state = 'active'")
        self._sql.vacuum()
        return int(n)

    def check(self) -> tuple[list[str], dict[str, int], dict[str, TemplateError]]:
        """(SQLite integrity problems, row count per state, active records that do not open):
        a read-only look at the whole store; decrypted embeddings are dropped at once."""
        problems = self._sql.integrity()
        counts = {ACTIVE: 0, REVOKED: 0, EXPIRED: 0}
        for info in self.list_all():
            counts[info.state] = counts.get(info.state, 0) + 1
        _refs, refused = self.references(None)
        return problems, counts, refused

    def _checkpoint(self) -> None:
        self._sql.checkpoint()

    # -- verification -------------------------------------------------------------------------

    def reference(self, subject: str) -> NDArray[np.float32]:
        """Decrypted (dim,) float32 embedding of `subject`, for one verification, in memory only."""
        check_subject(subject)
        row = self._row(subject)
        if row is None:
            raise TemplateError(
                f"subject {subject!r}: no template on this device; enrol with "
                f"`facegate enroll {subject} --source URI` or sync it from the backend"
            )
        version, state, _origin, _created, expires_s, record = row
        return self._open_record(subject, version, state, expires_s, record)

    def _open_record(
        self, subject: str, version: int, state: str, expires_s: int, record: bytes | None
    ) -> NDArray[np.float32]:
        if state != ACTIVE or record is None:
            raise TemplateError(
                f"subject {subject!r}: template version {version} is {state}; re-enrol"
            )
        if expires_s <= self._now():
            raise TemplateError(
                f"subject {subject!r}: template expired on {iso_utc(expires_s)}; re-enrol"
            )
        if self._problem is not None:
            raise TemplateError(f"subject {subject!r}: {self._problem}")
        return self._cipher.open(subject, version, expires_s, record)

    def references(
        self, subjects: list[str] | None = None
    ) -> tuple[dict[str, NDArray[np.float32]], dict[str, TemplateError]]:
        """Decrypt several (or all active) templates: (embeddings, refusals) by subject."""
        with self._guard(None):
            if subjects is None:
                rows = self._db.execute(
                    "SELECT subject, version, state, expires_s, record FROM templates "
                    "WHERE state = 'active'"
                ).fetchall()
            else:
                rows = []
                for s in subjects:
                    found = self._row(check_subject(s))
                    if found is None:
                        rows.append((s, 0, "missing", 0, None))
                    else:
                        rows.append((s, found[0], found[1], found[4], found[5]))
        refs: dict[str, NDArray[np.float32]] = {}
        refused: dict[str, TemplateError] = {}
        for subject, version, state, expires_s, record in rows:
            try:
                if state == "missing":
                    raise TemplateError(f"subject {subject!r}: no template on this device")
                refs[subject] = self._open_record(subject, version, state, expires_s, record)
            except TemplateError as exc:
                refused[subject] = exc
        return refs, refused

    def best_match(
        self, probe: NDArray[np.floating], *, exclude: str | None = None
    ) -> tuple[str, float] | None:
        """Most similar active subject to `probe` by cosine similarity (1:N, e.g. duplicates)."""
        vec = normalised(probe, exclude or "probe")
        refs, _refused = self.references(None)
        best: tuple[str, float] | None = None
        for subject, ref in refs.items():
            if subject == exclude or ref.shape != vec.shape:
                continue
            score = float(np.dot(ref, vec))
            if best is None or score > best[1]:
                best = (subject, score)
        return best


def open_store(state_dir: Path, device_id: str, **kwargs: Any) -> TemplateStore:
    """The device's store at `<state_dir>/templates.db`, opened with the device keys."""
    return TemplateStore(db_path(state_dir), load_keys(state_dir, device_id), **kwargs)
