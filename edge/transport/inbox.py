"""What arrives on the device's `…/cmd` topic: settlement receipts and commands, both signed.

The MQTT link (edge/transport/mqtt.py) hands every message of that topic here, on its own thread.

- A receipt (edge/trust/receipts.py) is verified against the backend's key, this device and
  site. A good one is kept until the link's next loop turn applies it (one transaction per
  turn); a refused one is counted by reason and, once per turn, in the outbox.
- A command (edge/trust/commands.py) is verified: signature, addressee, type, freshness, and
  the replay guard. It is run by its registered handler, and audited as a signed
  `console.audit` event, accepted or refused (action `cmd.<type>` or `cmd.refused`, ok,
  detail = reason). Refusals are counted by reason and audited at most once per
  `refusal_every_s` (edge/transport/downlink.RefusalAudit), so a flood of junk cannot
  push real events out of the bounded outbox.

Without the backend's key every receipt and every command is refused; without a replay guard
commands are ignored (a tool's link, not a kiosk's).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.transport.downlink import RefusalAudit, ReplayGuard
from edge.transport.outbox import Outbox
from edge.trust import canonical
from edge.trust.commands import MAX_COMMAND_BYTES, Command, CommandError, verify_command
from edge.trust.event_schema import EventError
from edge.trust.events import EventFactory
from edge.trust.receipts import Receipt, ReceiptError, is_receipt, verify_receipt

log = logging.getLogger(__name__)
CommandHandler = Callable[[Command], None]


class InboxCounters(Protocol):
    """The link's counters this inbox keeps (edge.transport.mqtt.LinkStats)."""

    commands_accepted: int
    commands_refused: dict[str, int]
    receipts_accepted: int
    receipts_refused: dict[str, int]


class Inbox:
    """Receipts and commands for one device (module doc). Not thread-safe: the link's thread
    owns it."""

    def __init__(
        self,
        device_id: str,
        site: str,
        outbox: Outbox,
        counters: InboxCounters,
        *,
        factory: EventFactory | None,
        handlers: Mapping[str, CommandHandler],
        guard: ReplayGuard | None,
        backend_key: Ed25519PublicKey | None,
        refusal_every_s: float,
    ) -> None:
        self.device_id, self.site, self.outbox = device_id, site, outbox
        self._counters = counters
        self._factory, self._handlers, self._guard = factory, dict(handlers), guard
        self._backend_key = backend_key
        self._receipts: list[Receipt] = []  # verified, to apply at the end of this turn
        self._receipts_refused = 0  # refused this turn, not yet counted in the outbox
        self.refusals = RefusalAudit(self.audit, refusal_every_s)

    def on_message(self, payload: bytes) -> None:
        """One message of the `…/cmd` topic."""
        if _looks_like_receipt(payload):
            self._on_receipt(payload)
            return
        if self._guard is None:
            return
        try:
            cmd = verify_command(payload, self._backend_key, self.device_id, self._guard)
        except CommandError as exc:
            self._refused(exc.reason, str(exc))
            return
        self._counters.commands_accepted += 1
        handler = self._handlers.get(cmd.type)
        if handler is None:
            self.audit(f"cmd.{cmd.type}", False, "no handler registered on this device")
            return
        try:
            handler(cmd)
        except Exception as exc:  # a failing handler must not kill the link
            log.exception("command %s failed", cmd.type)
            self.audit(f"cmd.{cmd.type}", False, f"handler failed: {type(exc).__name__}")
            return
        self.audit(f"cmd.{cmd.type}", True, f"seq {cmd.seq}")

    def take_receipts(self) -> tuple[list[Receipt], int]:
        """The receipts verified and the number refused since the last call (the link applies
        them in its turn's transaction)."""
        receipts, self._receipts = self._receipts, []
        refused, self._receipts_refused = self._receipts_refused, 0
        return receipts, refused

    def _on_receipt(self, payload: bytes) -> None:
        try:
            receipt = verify_receipt(payload, self._backend_key, self.device_id, self.site)
        except ReceiptError as exc:
            refused = self._counters.receipts_refused
            refused[exc.reason] = refused.get(exc.reason, 0) + 1
            log.warning("receipt refused: %s", exc)
            self._receipts_refused += 1  # stored once per loop turn: a junk flood is no fsync flood
            return
        self._counters.receipts_accepted += 1
        self._receipts.append(receipt)

    def _refused(self, reason: str, message: str) -> None:
        refused = self._counters.commands_refused
        refused[reason] = refused.get(reason, 0) + 1
        log.warning("downlink command refused: %s", message)
        self.refusals.refused(reason)

    def audit(self, action: str, ok: bool, detail: str) -> None:
        """A signed `console.audit` event for a command (none without the device key)."""
        if self._factory is None:
            return
        try:
            self.outbox.emit(
                self._factory, "console.audit", action=action, ok=ok, detail=detail[:120]
            )
        except EventError:
            self.outbox.emit(self._factory, "console.audit", action=action, ok=ok)


def _looks_like_receipt(payload: bytes) -> bool:
    if len(payload) > MAX_COMMAND_BYTES:
        return False  # refused as a command, unread
    try:
        return is_receipt(canonical.loads(payload))
    except canonical.CanonicalError:
        return False
