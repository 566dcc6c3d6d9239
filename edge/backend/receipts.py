"""Settlement receipts, backend side: after a ledger commit, tell each device which of its events
are booked, signed with the backend key, on the device's downlink `…/cmd` (QoS 1).

Why: a broker's PUBACK only means the broker has the event. It can lose it (power cut before
its autosave) or hand it to a subscriber that never books it. The device therefore keeps every
event until a receipt signed by the backend names it (edge/transport/outbox.py, DESIGN §5).

Receipts are sent for events booked by this commit AND for duplicates (already in the ledger):
the device may have missed an earlier receipt and published again. Nothing else is receipted.
A receipt published to a device that is offline waits in its persistent broker session; one
that is lost altogether only costs a redelivery, which the ledger absorbs as a duplicate.

The call point is `ReceiptPublisher.publish_receipts(client, device_to_seqs, ledger_ids)`, made by
the worker right after a ledger transaction committed (one message or a batch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.transport.topics import cmd_topic
from edge.trust.receipts import MAX_RANGES, sign_receipt, to_ranges

log = logging.getLogger("facegate.backend")

SiteDevice = tuple[str, str]  # (site, device): the downlink topic needs both


class Publisher(Protocol):
    """The part of a paho client used here (publish is thread-safe in paho)."""

    def publish(self, topic: str, payload: bytes, qos: int) -> object: ...


class ReceiptPublisher:
    """Signs and publishes receipts with the backend key; counts what it sent."""

    def __init__(
        self, backend_key: Ed25519PrivateKey, clock: Callable[[], float] = time.time
    ) -> None:
        self._key, self._clock = backend_key, clock
        self.receipts_sent = 0
        self.seqs_receipted = 0

    def publish_receipts(
        self,
        client: Publisher,
        device_to_seqs: Mapping[SiteDevice, Iterable[int]],
        ledger_ids: Mapping[SiteDevice, str] | str,
    ) -> int:
        """Publish one receipt per device (split every MAX_RANGES ranges); returns how many.

        `device_to_seqs`: (site, device) -> seqs committed (booked or duplicate) by the commit
        that just finished; `ledger_ids`: the commit's id, one for all or one per device."""
        sent = 0
        for (site, device), seqs in device_to_seqs.items():
            ranges = to_ranges(seqs)
            if not ranges:
                continue
            ledger = (
                ledger_ids if isinstance(ledger_ids, str) else ledger_ids.get((site, device), "")
            )
            for i in range(0, len(ranges), MAX_RANGES):
                chunk = ranges[i : i + MAX_RANGES]
                payload = sign_receipt(self._key, site, device, chunk, ledger, self._clock())
                client.publish(cmd_topic(site, device), payload, qos=1)
                sent += 1
                self.seqs_receipted += sum(b - a + 1 for a, b in chunk)
        self.receipts_sent += sent
        return sent
