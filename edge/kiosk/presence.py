"""When each household member was last verified at the door, for welfare alerts.

Beijing-style public housing: if a registered tenant has not been seen for `welfare_days`,
the lock raises `welfare.alert` (once a day per tenant while it lasts). Timestamps are wall
clock (Unix s) because the interval spans reboots.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from edge.trust.private_db import open_private_db

DAY_S = 86_400.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS presence (
    subject TEXT PRIMARY KEY,
    last_seen_s REAL NOT NULL,
    seen_ever INTEGER NOT NULL DEFAULT 0,
    last_alert_s REAL NOT NULL DEFAULT 0
)
"""


class PresenceStore:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # A tenant's movement history: private like every state file.
        self._db = open_private_db(path, timeout_s=10.0)
        self._db.execute(_SCHEMA)

    def register(self, subjects: Iterable[str]) -> None:
        """Start the clock for tenants the lock has not tracked yet (from now, not from 1970)."""
        now = self._clock()
        for s in subjects:
            self._db.execute(
                "INSERT OR IGNORE INTO presence(subject, last_seen_s) VALUES (?, ?)", (s, now)
            )

    def seen(self, subject: str) -> None:
        now = self._clock()
        self._db.execute(
            "INSERT INTO presence(subject, last_seen_s, seen_ever) VALUES (?, ?, 1) "
            "ON CONFLICT(subject) DO UPDATE SET last_seen_s = excluded.last_seen_s, "
            "seen_ever = 1, last_alert_s = 0",
            (subject, now),
        )

    def due(self, subjects: Iterable[str], days: int) -> list[tuple[str, int, float | None]]:
        """(subject, whole days unseen, last seen or None) for tenants due an alert; marks them."""
        now = self._clock()
        out: list[tuple[str, int, float | None]] = []
        for s in subjects:
            row = self._db.execute(
                "SELECT last_seen_s, seen_ever, last_alert_s FROM presence WHERE subject = ?",
                (s,),
            ).fetchone()
            if row is None:
                continue
            last, ever, alerted = float(row[0]), bool(row[1]), float(row[2])
            if now - last >= days * DAY_S and now - alerted >= DAY_S:
                out.append((s, int((now - last) // DAY_S), last if ever else None))
                self._db.execute(
                    "UPDATE presence SET last_alert_s = ? WHERE subject = ?", (now, s)
                )
        return out

    def close(self) -> None:
        self._db.close()
