"""Downlink on the device: the replay guard (last accepted command seq, persisted before a
command runs) and the handlers of the standard commands. Checking a command's signature,
addressee, type and freshness is edge.trust.commands."""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.trust.commands import Command, CommandError
from edge.trust.private_db import open_private_db

DOWNLINK_FILE = "downlink.db"
log = logging.getLogger(__name__)


class ReplayGuard:
    """Last accepted command seq per device, in SQLite (WAL, synchronous=FULL)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_private_db(path, timeout_s=30.0, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS cmd_seq (device TEXT PRIMARY KEY, last INTEGER NOT NULL)"
        )

    def accept(self, device: str, seq: int) -> bool:
        """Record `seq` if it is newer than the last accepted one; False for a replay."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT last FROM cmd_seq WHERE device = ?", (device,)
                ).fetchone()
                if row is not None and seq <= row[0]:
                    self._db.execute("ROLLBACK")
                    return False
                self._db.execute(
                    "INSERT INTO cmd_seq(device, last) VALUES (?, ?) "
                    "ON CONFLICT(device) DO UPDATE SET last = excluded.last",
                    (device, seq),
                )
                self._db.execute("COMMIT")
                return True
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()


class RefusalAudit:
    """Every refused downlink command counted in a `cmd.refused` audit, without letting a flood
    of junk push real events out of the bounded outbox: the first refusal is audited at once,
    later ones at most one audit per `every_s` carrying the counts by reason since the last
    (`refused` or the link's `tick` writes it when the window has passed), and `flush` writes
    what is left when the link stops. Only a SIGKILL inside a window loses a count."""

    def __init__(
        self,
        audit: Callable[[str, bool, str], None],
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._audit, self._every_s, self._clock = audit, every_s, clock
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}  # reason -> refusals not yet in an audit event
        self._last = -float("inf")

    def refused(self, reason: str) -> None:
        """Count one refusal; audit now unless an audit went out less than `every_s` ago."""
        with self._lock:
            self._pending[reason] = self._pending.get(reason, 0) + 1
        self.tick()

    def tick(self) -> None:
        """Write the pending counts if the rate limit allows an audit now (cheap when idle)."""
        if self._pending and self._clock() - self._last >= self._every_s:
            self._emit()

    def flush(self) -> None:
        """Write the pending counts whatever the rate limit (the link is stopping)."""
        self._emit()

    def _emit(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            if not pending:
                return
            self._last = self._clock()
        total = sum(pending.values())
        counts = ", ".join(f"{r}={n}" for r, n in sorted(pending.items()))
        try:
            self._audit("cmd.refused", False, f"{total} refused: {counts}")
        except Exception:  # the outbox cannot store it now: keep the counts for the next try
            log.exception("cannot write the audit of %d refused commands", total)
            with self._lock:
                for reason, n in pending.items():
                    self._pending[reason] = self._pending.get(reason, 0) + n


# ---- standard handlers ----------------------------------------------------------------------


class TemplateStoreLike(Protocol):
    """The part of edge.templates.store.TemplateStore the command handlers use."""

    def import_sealed(self, blob: bytes, backend_public: Ed25519PublicKey) -> Any: ...
    def revoke(self, subject: str) -> Any: ...
    def wipe(self) -> int: ...
    def close(self) -> None: ...


MAX_SYNC_TEMPLATES = 100


def standard_handlers(
    open_store: Callable[[], TemplateStoreLike],
    backend_public: Ed25519PublicKey,
    on_config_reload: Callable[[], None] | None = None,
    on_wipe: Callable[[], None] | None = None,
) -> dict[str, Callable[[Command], None]]:
    """Handlers for the four command types; bodies:

    - `templates.sync`:   {"templates": [<base64 of a sealed template (edge.trust.sealed)>, ...]}
    - `templates.revoke`: {"subjects": ["s-1", ...]}
    - `config.reload`:    {}  -> on_config_reload()
    - `wipe`:             {}  -> store.wipe(), then on_wipe()
    The store is opened per command by `open_store()` because handlers run on the MQTT thread
    and a TemplateStore connection belongs to the thread that opened it.
    """

    def strings(cmd: Command, key: str) -> list[str]:
        items = cmd.body.get(key)
        if (
            not isinstance(items, list)
            or not 0 < len(items) <= MAX_SYNC_TEMPLATES
            or not all(isinstance(i, str) for i in items)
        ):
            raise CommandError("malformed", f"{cmd.type}: body needs {key!r}: a list of strings")
        return items

    def sync(cmd: Command) -> None:
        blobs = [base64.b64decode(b, validate=True) for b in strings(cmd, "templates")]
        store = open_store()
        try:
            for blob in blobs:
                store.import_sealed(blob, backend_public)
        finally:
            store.close()

    def revoke(cmd: Command) -> None:
        subjects = strings(cmd, "subjects")
        store = open_store()
        try:
            for subject in subjects:
                store.revoke(subject)
        finally:
            store.close()

    def reload(cmd: Command) -> None:
        if on_config_reload is None:
            raise CommandError("unknown_type", "config.reload is not supported by this process")
        on_config_reload()

    def wipe(cmd: Command) -> None:
        store = open_store()
        try:
            store.wipe()
        finally:
            store.close()
        if on_wipe is not None:
            on_wipe()

    return {
        "templates.sync": sync,
        "templates.revoke": revoke,
        "config.reload": reload,
        "wipe": wipe,
    }
