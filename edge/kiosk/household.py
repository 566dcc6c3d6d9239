"""The household behind a smart-lock door, and the strangers who try it.

The household is the set of active templates the store holds for this door: the housing
authority's backend syncs and revokes them over the downlink (sealed templates), so the store,
not the config, is the truth. `[smart_lock] household` may pin a list (a lock without a
backend); empty, as shipped, means "every active template in the store". It is read from the
store each time it is needed (a session start, the hourly welfare check): a sync or revoke by
the downlink's own connection is seen at the next use, with no cache to go stale.

Strangers (DESIGN §6): a failure by a face far from every tenant can never lock the tenants
out (`edge.session.lockout.stranger_below`), but it is counted, and reported in at most one
`door.denied` (reason `stranger`, `unknown_faces` = the count) per `STRANGER_EVENT_EVERY_S`,
so a stranger loitering at the door cannot flood the outbox.
"""

from __future__ import annotations

import math

from edge.templates.store import ACTIVE

STRANGER_EVENT_EVERY_S = 60.0


def household_subjects(configured: tuple[str, ...], store: object | None) -> list[str]:
    """The door's tenants: the configured list if any, else the store's active templates."""
    if configured:
        return list(configured)
    list_all = getattr(store, "list_all", None)
    if not callable(list_all):
        return []
    return sorted(info.subject for info in list_all() if info.state == ACTIVE)


class StrangerReports:
    """Counts stranger failures; says when one `door.denied` may carry the count (module doc).

    Times are the kiosk's monotonic clock (s)."""

    def __init__(self, every_s: float = STRANGER_EVENT_EVERY_S) -> None:
        self.every_s = every_s
        self.pending = 0
        self._last_report_t = -math.inf

    def add(self, t: float) -> int | None:
        """Count one stranger; the number to report now (this one included), or None."""
        self.pending += 1
        if t - self._last_report_t < self.every_s:
            return None
        return self.take(t)

    def take(self, t: float) -> int:
        """The count not yet reported, now reported at `t`."""
        n, self.pending = self.pending, 0
        self._last_report_t = t
        return n
