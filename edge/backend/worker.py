"""Backend verifier: shared MQTT v5 subscription → checks → idempotent ledger, ack after commit.

Batches: paho's network thread checks each message as it arrives (parse, schema, signature,
topic, site binding — CPU only, `EventHandler.check`) and queues it; a committer thread settles
the queue in ONE ledger transaction when it holds `batch_size` messages or its oldest has waited
`batch_wait_s`, whichever comes first (`EventHandler.settle`), then acknowledges the batch
(`Worker._after_commit`). The broker may have `receive_maximum` = 2 × batch_size unacknowledged
deliveries in flight to us, so the next batch is received and checked while one commits.

Delivery guarantee: the client runs with `manual_ack=True`; the PUBACK of a QoS 1 event is sent
only after the ledger transaction that settled it has committed. A worker killed at any point
therefore leaves every un-booked event un-acknowledged in its broker session (clean_start=False,
session expiry), and the replacement worker with the same client id receives it again; the
ledger's `(device, seq)` key makes that redelivery harmless.

A rejected message (bad topic, malformed, unknown device, bad signature, site mismatch, reused
nonce, …) is counted by reason in the ledger, in the batch's transaction, and acknowledged:
redelivering it could never make it valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import ssl
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.backend.devices import KeyCache
from edge.backend.ledger import NONCE_REUSED, Booking, Ledger, Outcome
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


@dataclass(frozen=True)
class Checked:
    """One message after the CPU-only checks: a booking to settle, or the reason it is refused."""

    booking: Booking | None
    reason: str = ""
    key: str = ""


class EventHandler:
    """Checks messages and settles them against the ledger; never raises for bad input."""

    def __init__(self, ledger: Ledger, keys: KeyCache, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.ledger, self.keys, self.max_bytes = ledger, keys, max_bytes

    def check(self, topic: str, payload: bytes) -> Checked:
        """Verify one message without writing anything (a registry lookup may read the DB)."""
        if len(payload) > self.max_bytes:  # refused unread
            return Checked(None, "oversized")
        try:
            site, device, type_ = parse_event_topic(topic)
            parsed = events.parse_signed(payload)
        except EventError as exc:
            return Checked(None, _REASONS.get(exc.reason, exc.reason))
        event = parsed.event
        key = events.idempotency_key(event)
        registered = self.keys.lookup(str(event["device"]))
        if registered is None:
            return Checked(None, "unknown_device", key)
        # parse_signed checked `sig` is 128 hex digits; the signed bytes were cut from payload
        if not registered.verify(bytes.fromhex(event["sig"]), parsed.signed_bytes):
            return Checked(None, "bad_signature", key)
        if (event["site"], event["device"], event["type"]) != (site, device, type_):
            return Checked(None, "topic_mismatch", key)
        if not registered.site:
            return Checked(None, "site_unbound", key)
        if event["site"] != registered.site:
            return Checked(None, "site_mismatch", key)
        if parsed.legacy:
            log.info("%s signed in the pre-RFC 8785 form (an old outbox); accepted", key)
        amount = event.get("amount") if event["type"] in PAYMENT_TYPES else None
        return Checked(
            Booking(
                device=str(event["device"]),
                seq=int(event["seq"]),
                site=str(event["site"]),
                type=str(event["type"]),
                ts=float(event["ts"]),
                # Canonical bytes are enforced by parse_signed: equal content ⇔ equal hash.
                content_hash=hashlib.sha256(payload).hexdigest(),
                payload=payload.decode("utf-8"),
                amount=int(amount) if amount is not None else None,
                currency=str(event["currency"]) if amount is not None else None,
                nonce=str(event["nonce"]),
            ),
            "",
            key,
        )

    def settle(self, batch: Sequence[Checked]) -> list[Verdict]:
        """Book the batch and count its refusals in one ledger transaction; database errors
        propagate (then nothing of the batch is acknowledged)."""
        bookings = [c.booking for c in batch if c.booking is not None]
        refused = Counter(c.reason for c in batch if c.booking is None)
        results = iter(self.ledger.settle(bookings, refused))
        verdicts = []
        for c in batch:
            if c.booking is None:
                verdicts.append(Verdict(Outcome.REJECTED, c.reason, c.key))
                continue
            outcome, reason = next(results)
            if outcome is Outcome.REPLAY:
                log.warning("replay alert: %s arrived again with different content", c.key)
            elif reason == NONCE_REUSED:
                log.warning("refused %s: its nonce was already used by another event", c.key)
            verdicts.append(Verdict(outcome, reason, c.key))
        return verdicts

    def handle(self, topic: str, payload: bytes) -> Verdict:
        """Verify and book one message in its own transaction."""
        return self.settle([self.check(topic, payload)])[0]


# ---------------------------------------------------------------------------- MQTT side

_RX_CHUNK = 65536  # bytes asked of the socket per recv (paho asks 1, 1-4, then the body)
_PUBACK = 0x40


class DrainClient(mqtt.Client):
    """paho's client with the two costs of draining a deep queue cut (issue 15).

    paho reads a packet with three or four `recv` calls (command byte, each length byte, body)
    and one `select` per packet; a worker draining its session receives thousands of ~500-byte
    PUBLISHes back to back. Here one `recv` takes up to `_RX_CHUNK` bytes and, after one select,
    every packet already buffered is handled. `ack_batch` queues a batch's PUBACKs as ONE
    write (paho's `ack` makes a wake-up syscall and a `send` for each 4-byte PUBACK).
    Both lean on paho 2.x internals (`_sock_recv`, `_sock_close`, `_packet_queue`, `_sock`);
    tests/test_backend_*.py drain real brokers through them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rx, self._rx_pos = b"", 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rx_pos >= len(self._rx):
            data = super()._sock_recv(_RX_CHUNK)  # BlockingIOError etc. propagate as in paho
            if len(data) <= bufsize:
                return data  # b"" = closed by the broker
            self._rx, self._rx_pos = data, 0
        start = self._rx_pos
        self._rx_pos = min(start + bufsize, len(self._rx))
        return self._rx[start : self._rx_pos]

    def _sock_close(self) -> None:
        self._rx, self._rx_pos = b"", 0  # a reconnect starts on a fresh byte stream
        super()._sock_close()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        # select() cannot see bytes already in our buffer: handle them before selecting again
        ok = MQTTErrorCode.MQTT_ERR_SUCCESS
        while rc == ok and self._sock is not None and self._rx_pos < len(self._rx):
            rc = super().loop_read(max_packets)
        return rc

    def ack_batch(self, acks: Sequence[tuple[int, int]]) -> None:
        """Acknowledge (mid, qos) deliveries in this order: QoS 1 PUBACKs in one write."""
        packet = bytearray()
        for mid, qos in acks:
            if qos == 1:
                packet += struct.pack("!BBH", _PUBACK, 2, mid)
            elif qos == 2:  # never granted by our QoS 1 subscription; paho's own path
                if packet:
                    self._packet_queue(_PUBACK, bytes(packet), 0, 0)
                    packet = bytearray()
                self.ack(mid, qos)
        if packet:
            self._packet_queue(_PUBACK, bytes(packet), 0, 0)


@dataclass(frozen=True)
class WorkerOptions:
    broker: BrokerUrl
    client_id: str = f"facegate-backend-{socket.gethostname()}"
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = field(default="", repr=False)  # read from a 0600 file, never a flag
    group: str = SHARE_GROUP
    session_expiry_s: int = 7 * 86400  # queued events wait this long for a restarted worker
    keepalive_s: int = 30
    batch_size: int = 500  # messages settled per ledger transaction at most
    batch_wait_s: float = 0.02  # ... or after the oldest queued message waited this long
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 15.0
    latency_file: str = ""  # bench: receive→ack latencies written here at exit (JSON)

    @property
    def receive_maximum(self) -> int:
        """Unacked deliveries the broker may have in flight to us: one batch committing, one
        being received and checked."""
        return min(65535, 2 * self.batch_size)


@dataclass
class _Pending:
    mid: int
    qos: int
    checked: Checked
    received: float  # time.monotonic() when paho handed it to us


class Worker:
    """One backend process's MQTT session: checks on paho's network thread, a committer thread
    settles batches and acknowledges them."""

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
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._stopping = False
        self._committer = threading.Thread(target=self._commit_loop, name="ledger-commit")
        # receive→ack latencies, kept only for the bench (`latency_file`): a worker runs for months
        self.latencies_ms: deque[float] = deque(maxlen=1_000_000 if options.latency_file else 0)
        self.first_rx_wall = self.last_ack_wall = 0.0  # wall clock (bench)
        self._first_rx_cpu = self._last_ack_cpu = 0.0  # process CPU time (bench)
        self.client = self._make_client()

    @property
    def topic_filter(self) -> str:
        return f"$share/{self.options.group}/{EVENT_FILTER}"

    def _make_client(self) -> DrainClient:
        o = self.options
        c = DrainClient(
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
        if o.username:
            c.username_pw_set(o.username, o.password or None)
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
        """Connect (retrying in the background) and start the network and committer threads."""
        o = self.options
        self._committer.start()
        self.client.connect_async(
            o.broker.host, o.broker.port, keepalive=o.keepalive_s,
            clean_start=False, properties=self._connect_properties(),
        )  # fmt: skip
        self.client.loop_start()

    def stop(self) -> None:
        """Graceful stop: settle and ack what was received, disconnect keeping the session."""
        with self._cond:
            self._stopping = True  # later deliveries stay unacked: the broker keeps them
            self._cond.notify_all()
        if self._committer.is_alive():
            self._committer.join()
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
        received = time.monotonic()
        if self._stopping or self.fatal.is_set():
            return  # not acked: the broker keeps it for this session
        if not self.first_rx_wall:
            self.first_rx_wall, self._first_rx_cpu = time.time(), time.process_time()
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = ""  # counted as bad_topic
        try:
            checked = self.handler.check(topic, bytes(msg.payload))
        except Exception as exc:  # the registry (ledger DB) is gone: stop, never ack
            self._fail(f"cannot check {topic[:120]}", exc)
            return
        with self._cond:
            self._pending.append(_Pending(msg.mid, msg.qos, checked, received))
            if len(self._pending) >= self.options.batch_size:
                self._cond.notify()

    # -- committer thread ----------------------------------------------------------------

    def _next_batch(self) -> list[_Pending]:
        """Wait for a full batch, the oldest message's deadline, or stop; [] means exit."""
        o = self.options
        with self._cond:
            while True:
                if self.fatal.is_set():
                    return []
                if self._pending:
                    wait = self._pending[0].received + o.batch_wait_s - time.monotonic()
                    if len(self._pending) >= o.batch_size or wait <= 0 or self._stopping:
                        batch = self._pending[: o.batch_size]
                        del self._pending[: o.batch_size]
                        return batch
                    self._cond.wait(wait)
                elif self._stopping:
                    return []
                else:
                    self._cond.wait(0.5)

    def _commit_loop(self) -> None:
        while batch := self._next_batch():
            try:
                verdicts = self.handler.settle([p.checked for p in batch])
            except Exception as exc:  # the database is gone: stop, never ack an unbooked event
                self._fail(f"cannot settle a batch of {len(batch)}", exc)
                return
            self._after_commit(batch, verdicts)

    def _after_commit(self, batch: Sequence[_Pending], verdicts: Sequence[Verdict]) -> None:
        """The batch is durable in the ledger: only now acknowledge it to the broker.

        This is the one place for work that must follow the commit: settlement receipts to the
        devices go here, from `settled_seqs(batch, verdicts)` ((site, device) -> seqs now in the
        ledger). PUBACKs go out in the order the PUBLISHes came (MQTT 4.6).
        """
        self.client.ack_batch([(p.mid, p.qos) for p in batch])
        for verdict in verdicts:
            self.counts[verdict.reason or verdict.outcome.value] += 1
        now = time.monotonic()
        self.latencies_ms.extend((now - p.received) * 1000.0 for p in batch)
        self.last_ack_wall, self._last_ack_cpu = time.time(), time.process_time()
        self._receipt(batch, verdicts)

    def _receipt(self, batch: Sequence[_Pending], verdicts: Sequence[Verdict]) -> None:
        """Settlement receipts for the committed batch (edge/backend/receipts.py): one per
        device, signed with the backend key; never raises (the batch is booked and acked, a
        lost receipt only causes a redelivery, which the ledger absorbs)."""
        if self.receipts is None:
            return
        self._commits += 1
        try:
            ledger_id = f"{self.options.client_id}#{self._commits}"
            self.receipts.publish_receipts(self.client, settled_seqs(batch, verdicts), ledger_id)
        except Exception:
            log.exception("cannot publish the receipts of a batch of %d", len(batch))

    def _fail(self, what: str, exc: BaseException) -> None:
        log.error("%s: %s; stopping unacked", what, exc)
        self.failed = exc
        self.fatal.set()
        with self._cond:
            self._cond.notify_all()

    def write_latencies(self, path: str) -> None:
        """Receive→ack latencies (ms) and first-receive / last-ack wall times, as JSON."""
        data = {
            "first_rx": self.first_rx_wall,
            "last_ack": self.last_ack_wall,
            "cpu_s": self._last_ack_cpu - self._first_rx_cpu,  # all threads, first rx → last ack
            "latency_ms": [round(x, 3) for x in self.latencies_ms],
        }
        Path(path).write_text(json.dumps(data))


def settled_seqs(
    batch: Sequence[_Pending], verdicts: Sequence[Verdict]
) -> dict[tuple[str, str], list[int]]:
    """(site, device) -> seqs of the batch that the ledger now holds (booked now or before: a
    duplicate is a redelivery whose receipt may have been lost, so it is settled again)."""
    out: dict[tuple[str, str], list[int]] = {}
    for p, v in zip(batch, verdicts, strict=True):
        b = p.checked.booking
        if b is not None and v.outcome in (Outcome.BOOKED, Outcome.DUPLICATE):
            out.setdefault((b.site, b.device), []).append(b.seq)
    return out


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
        if options.latency_file:
            worker.write_latencies(options.latency_file)
    log.info("stopped; settled: %s", dict(worker.counts))
    return 1 if worker.failed is not None else 0
