"""Backend verifier: shared MQTT v5 subscription → checks → idempotent ledger, ack after commit.

Delivery guarantee: the client runs with `manual_ack=True`; the PUBACK of a QoS 1 event is sent
only after the ledger transaction that settled it has committed. A worker killed at any point
therefore leaves every un-booked event un-acknowledged in its broker session (clean_start=False,
session expiry), and the replacement worker with the same client id receives it again; the
ledger's `(device, seq)` key makes that redelivery harmless.

A rejected message (bad topic, malformed, unknown device, bad signature, …) is counted by reason
in the ledger and acknowledged: redelivering it could never make it valid.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.backend.devices import KeyCache
from edge.backend.ledger import Booking, Ledger, Outcome
from edge.backend.receipts import ReceiptPublisher
from edge.errors import ConfigError
from edge.transport.broker_url import BrokerUrl
from edge.transport.topics import parse_event_topic
from edge.trust import events
from edge.trust.event_schema import MAX_EVENT_BYTES, PAYMENT_TYPES, EventError

log = logging.getLogger("facegate.backend")

SHARE_GROUP = "backend"
EVENT_FILTER = "facegate/v1/+/+/event/#"
DEFAULT_MAX_BYTES = MAX_EVENT_BYTES

# EventError.reason (edge/trust/event_schema.py) -> rejection reason counted in the ledger.
_REASONS = {
    "too_large": "oversized",
    "json": "malformed_json",
    "non_canonical": "non_canonical",
    "schema": "bad_schema",
    "biometric": "biometric",
    "signature": "bad_signature",
    "topic": "bad_topic",
}


@dataclass(frozen=True)
class Verdict:
    """What happened to one message: outcome, rejection reason, `device:seq` when known."""

    outcome: Outcome
    reason: str = ""
    key: str = ""


class EventHandler:
    """Settles one (topic, payload) against the ledger; never raises for bad input."""

    def __init__(self, ledger: Ledger, keys: KeyCache, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.ledger, self.keys, self.max_bytes = ledger, keys, max_bytes

    def _reject(self, reason: str, key: str = "") -> Verdict:
        self.ledger.reject(reason)
        return Verdict(Outcome.REJECTED, reason, key)

    def handle(self, topic: str, payload: bytes) -> Verdict:
        """Verify and book one message; database errors propagate (the message stays unacked)."""
        if len(payload) > self.max_bytes:  # refused unread
            return self._reject("oversized")
        try:
            site, device, type_ = parse_event_topic(topic)
            unverified = events.parse_event(payload)
        except EventError as exc:
            return self._reject(_REASONS.get(exc.reason, exc.reason))
        key = events.idempotency_key(unverified)
        public_key = self.keys.get(str(unverified["device"]))
        if public_key is None:
            return self._reject("unknown_device", key)
        try:
            event = events.verify_event(payload, public_key)
        except EventError as exc:
            return self._reject(_REASONS.get(exc.reason, exc.reason), key)
        if (event["site"], event["device"], event["type"]) != (site, device, type_):
            return self._reject("topic_mismatch", key)
        amount = event.get("amount") if event["type"] in PAYMENT_TYPES else None
        booking = Booking(
            device=str(event["device"]),
            seq=int(event["seq"]),
            site=str(event["site"]),
            type=str(event["type"]),
            ts=float(event["ts"]),
            # Canonical bytes are enforced by parse_event, so equal content ⇔ equal hash.
            content_hash=hashlib.sha256(payload).hexdigest(),
            payload=payload.decode("utf-8"),
            amount=int(amount) if amount is not None else None,
            currency=str(event["currency"]) if amount is not None else None,
        )
        outcome = self.ledger.book(booking)
        if outcome is Outcome.REPLAY:
            log.warning("replay alert: %s arrived again with different content", key)
        return Verdict(outcome, "", key)


# ---------------------------------------------------------------------------- MQTT side


@dataclass(frozen=True)
class WorkerOptions:
    broker: BrokerUrl
    client_id: str = f"facegate-backend-{socket.gethostname()}"
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    group: str = SHARE_GROUP
    session_expiry_s: int = 7 * 86400  # queued events wait this long for a restarted worker
    keepalive_s: int = 30
    receive_maximum: int = 100  # unacked deliveries the broker may have in flight to us
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 15.0


class Worker:
    """One backend process's MQTT session; `handler` is called on paho's network thread."""

    def __init__(
        self,
        handler: EventHandler,
        options: WorkerOptions,
        receipts: ReceiptPublisher | None = None,
    ) -> None:
        self.handler, self.options = handler, options
        self.receipts = receipts  # None: no backend key given, devices get no receipts
        self._commits = 0
        self.counts: Counter[str] = Counter()
        self.subscribed = threading.Event()
        self.failed: BaseException | None = None
        self.fatal = threading.Event()
        self._busy = threading.Lock()  # held while a message is being settled
        self._stopping = False
        self.client = self._make_client()

    @property
    def topic_filter(self) -> str:
        return f"$share/{self.options.group}/{EVENT_FILTER}"

    def _make_client(self) -> mqtt.Client:
        o = self.options
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=o.client_id,
            protocol=mqtt.MQTTv5, manual_ack=True,
        )  # fmt: skip
        if o.broker.tls:
            if not o.ca_file:
                raise ConfigError(["mqtts:// needs --ca CA_FILE to pin the broker's CA"])
            c.tls_set(
                ca_certs=o.ca_file,
                certfile=o.cert_file or None,
                keyfile=o.key_file or None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        c.reconnect_delay_set(max(1, int(o.reconnect_min_s)), max(1, int(o.reconnect_max_s)))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        return c

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.options.session_expiry_s
        props.ReceiveMaximum = self.options.receive_maximum
        return props

    def start(self) -> None:
        """Connect (retrying in the background) and start the network thread."""
        o = self.options
        self.client.connect_async(
            o.broker.host, o.broker.port, keepalive=o.keepalive_s,
            clean_start=False, properties=self._connect_properties(),
        )  # fmt: skip
        self.client.loop_start()

    def stop(self) -> None:
        """Graceful stop: finish the message in hand, disconnect keeping the session, join."""
        with self._busy:
            self._stopping = True
            self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if rc.is_failure:
            log.error("broker refused connection: %s", rc)
            return
        log.info(
            "connected to %s:%d as %s (session present: %s)",
            self.options.broker.host, self.options.broker.port,
            self.options.client_id, flags.session_present,
        )  # fmt: skip
        client.subscribe(self.topic_filter, options=SubscribeOptions(qos=1))

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any
    ) -> None:
        if any(rc.is_failure for rc in rcs):
            log.error("broker refused subscription %s: %s", self.topic_filter, rcs)
            return
        log.info("subscribed to %s", self.topic_filter)  # tests wait for this line
        self.subscribed.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        self.subscribed.clear()
        if not self._stopping:
            log.warning("disconnected from broker (%s); reconnecting", rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._busy:
            if self._stopping or self.fatal.is_set():
                return  # not acked: the broker keeps it for this session
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = ""  # counted as bad_topic
            try:
                verdict = self.handler.handle(topic, bytes(msg.payload))
            except Exception as exc:  # the database is gone: stop, never ack an unbooked event
                log.error("cannot settle %s: %s; stopping unacked", topic[:120], exc)
                self.failed = exc
                self.fatal.set()
                return
            client.ack(msg.mid, msg.qos)  # only now, after the ledger committed
            self.counts[verdict.reason or verdict.outcome.value] += 1
            self._after_commit(client, topic, verdict)

    def _after_commit(self, client: mqtt.Client, topic: str, verdict: Verdict) -> None:
        """Receipt a booked or duplicate event (edge/backend/receipts.py); never raises."""
        if self.receipts is None or verdict.outcome not in (Outcome.BOOKED, Outcome.DUPLICATE):
            return
        try:
            site, device, _ = parse_event_topic(topic)  # checked against the event by handle()
            self._commits += 1
            seq = int(verdict.key.rpartition(":")[2])
            ledger_id = f"{self.options.client_id}#{self._commits}"
            self.receipts.publish_receipts(client, {(site, device): [seq]}, ledger_id)
        except Exception:  # the event is booked; a lost receipt only causes a redelivery
            log.exception("cannot publish the receipt for %s", verdict.key)


def run_worker(
    handler: EventHandler,
    options: WorkerOptions,
    stop: threading.Event,
    stats_every_s: float = 30.0,
    receipts: ReceiptPublisher | None = None,
) -> int:
    """Run until `stop` is set (SIGTERM) or the ledger fails; returns the exit code."""
    worker = Worker(handler, options, receipts)
    if receipts is None:
        log.warning("no backend key (--key-dir): no settlement receipts are sent; kiosks keep "
                    "their events and publish them again")  # fmt: skip
    worker.start()
    last = time.monotonic()
    try:
        while not stop.wait(0.2):
            if worker.fatal.is_set():
                break
            if time.monotonic() - last >= stats_every_s:
                last = time.monotonic()
                log.info("settled so far: %s", dict(worker.counts))
    finally:
        worker.stop()
    log.info("stopped; settled: %s", dict(worker.counts))
    return 1 if worker.failed is not None else 0
