"""Per-claim lockout with exponential back-off, persisted in SQLite so a restart does not reset it.

After `max_failures` failed sessions on one claim (a phone number, a card, a rider id) the claim
is locked for `lockout_base_s`; every further failure doubles the lock, up to `lockout_max_s`
(Android CDD style). A success clears the claim's record. Claims are stored as a keyed hash
(HMAC-SHA256 with a random per-store salt) so the database never holds a phone number.
Times are wall-clock seconds (an injected clock): monotonic time restarts with the machine.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from edge.config import SessionConfig
from edge.errors import FacegateError
from edge.trust.private_db import open_private_db

DB_NAME = "lockout.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS claims (
    claim TEXT PRIMARY KEY,        -- HMAC of the claim, hex
    failures INTEGER NOT NULL,     -- consecutive failures since the last success
    locked_until REAL NOT NULL,    -- wall-clock seconds; 0 when not locked
    updated REAL NOT NULL
);
"""


class LockoutStore:
    """Failure counts and lock deadlines per claim in `<state_dir>/lockout.sqlite`."""

    def __init__(
        self, path: Path, cfg: SessionConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.cfg = cfg
        self._clock = clock
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Private: the salt that keys the claim hashes must not be readable by other users.
            self._db = open_private_db(path, timeout_s=10.0)
            self._db.executescript(_SCHEMA)
            self._salt = self._load_salt()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise FacegateError(
                f"lockout database {path} unusable ({exc}); move it aside and restart"
            ) from None

    @classmethod
    def open(
        cls, state_dir: Path, cfg: SessionConfig, clock: Callable[[], float] = time.time
    ) -> LockoutStore:
        """The store in the state directory."""
        return cls(state_dir / DB_NAME, cfg, clock)

    def _load_salt(self) -> bytes:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'salt'").fetchone()
            if row is None:
                salt = os.urandom(32)
                self._db.execute("INSERT INTO meta VALUES ('salt', ?)", (salt,))
            else:
                salt = bytes(row[0])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return salt

    def _key(self, claim: str) -> str:
        return hmac.new(self._salt, claim.encode("utf-8"), hashlib.sha256).hexdigest()

    def remaining_s(self, claim: str) -> float:
        """Seconds the claim stays locked (0.0 when it may try now)."""
        row = self._db.execute(
            "SELECT locked_until FROM claims WHERE claim = ?", (self._key(claim),)
        ).fetchone()
        if row is None:
            return 0.0
        return max(0.0, float(row[0]) - self._clock())

    def failures(self, claim: str) -> int:
        """Consecutive failures recorded for the claim."""
        row = self._db.execute(
            "SELECT failures FROM claims WHERE claim = ?", (self._key(claim),)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def lock_duration_s(self, failures: int) -> float:
        """Lock imposed after the given number of consecutive failures (0 below the limit)."""
        extra = failures - self.cfg.max_failures
        if extra < 0:
            return 0.0
        # Cap the exponent before exponentiating: 2**huge overflows a float.
        return min(self.cfg.lockout_base_s * 2.0 ** min(extra, 64), self.cfg.lockout_max_s)

    def record_failure(self, claim: str) -> float:
        """Count one failed session; returns the lock now imposed in seconds (0 if none)."""
        key, now = self._key(claim), self._clock()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute(
                "SELECT failures FROM claims WHERE claim = ?", (key,)
            ).fetchone()
            failures = (0 if row is None else int(row[0])) + 1
            lock_s = self.lock_duration_s(failures)
            self._db.execute(
                "INSERT INTO claims VALUES (?, ?, ?, ?) ON CONFLICT(claim) DO UPDATE SET "
                "failures = excluded.failures, locked_until = excluded.locked_until, "
                "updated = excluded.updated",
                (key, failures, now + lock_s if lock_s > 0 else 0.0, now),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return lock_s

    def record_success(self, claim: str) -> None:
        """A successful session clears the claim's failures."""
        self._db.execute("DELETE FROM claims WHERE claim = ?", (self._key(claim),))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LockoutStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---- 1:few doors: strangers (DESIGN §6) -----------------------------------------------------
# A failure at a household door counts for the lockout only when the face came near a tenant:
# a stranger must never lock the tenants out, while look-alikes trying their luck (scores just
# under the threshold) are throttled as before. "Far" is a similarity below STRANGER_BELOW to
# every tenant. Calibrated on LFW pairsDevTrain.txt with the shipped pipeline (int8, flip TTA;
# the procedure of models/README.md, over all 3,492,348 cross-identity pairs of its images):
# impostor median 0.839, 90th percentile 0.882, 99th 0.911; same-person pairs: 0.1st
# percentile 0.886, 1 of 1,698 below 0.88. At 0.88, 89 % of strangers are far from one given
# tenant (0.889^n from all n tenants: 70 % for 3, 31 % for the 10 a household may hold), a
# tenant's own poor attempt is practically never "far", and a face counted as far is 0.05 below
# the door's 0.930 (its FAR 1e-3 point), where the look-alikes the lockout is for begin.
STRANGER_BELOW = 0.88


def stranger_below(threshold: float) -> float:
    """The similarity under which a failed face is a stranger's at a door whose match
    threshold is `threshold` (never above the threshold itself)."""
    return min(STRANGER_BELOW, threshold)
