"""MQTT link: publish the outbox over MQTT v5 (TLS/mTLS), retained status with LWT, downlink.

One thread owns the paho client (callback API v2) and drives it with `client.loop()`, so every
callback, publish and outbox ack happens on that thread. Events are read from the outbox and
published at QoS 1 with at most `max_inflight` unacknowledged.

Settlement (when the link has the backend's public key): a PUBACK only marks a row
published-but-unsettled; the row is deleted when the backend's signed receipt naming it arrives
on `…/cmd` (edge/trust/receipts.py), and published again after the outbox's back-off
(`resend_min_s` doubling to `resend_max_s`, +-20 %) until then. A forged, unsigned or other-device
receipt is refused and counted. Without a backend key (tools, a kiosk not yet provisioned) a row
is deleted at its successful PUBACK, as before receipts existed. PUBACKs and receipts are applied
in one transaction per loop turn; a crash before that commit only causes a redelivery.
Reconnects use jittered exponential back-off (`reconnect_min_s` .. `reconnect_max_s`); messages
in flight at a disconnect are re-sent by paho on the same client after reconnecting.

Supervision: every callback body is contained (an exception is logged and counted, never
re-raised into paho's loop, and `suppress_exceptions` is set as a second net); an exception
anywhere in a loop turn restarts the connection after a back-off; and a supervisor thread
restarts the link thread if it ever dies anyway. A signed `device.status` heartbeat (status
"heartbeat": outbox depth, unsettled count and oldest age, link state, version, uptime) goes out
every `heartbeat_s` at QoS 0 straight to the broker, NOT through the outbox: it is only worth
anything while fresh, the next one replaces a lost one, and stored heartbeats would take room
from payments and flood the backend with stale ones after an outage. Its seq is reserved from
the device counter like any event's, so the ledger sees seq gaps where a heartbeat was lost.

Status: `…/status` is retained; the will is "offline", and "online" is published on connect. With
a device key (an event factory) both, and `…/status/state`, are signed documents
(edge/trust/status.py); without one they stay the bare words (tools only).
Downlink: what arrives on `…/cmd`, receipts and commands, is checked, run and audited by
edge/transport/inbox.py; command refusals are audited at most once per `REFUSAL_AUDIT_EVERY_S`,
with the counts left over written when the link stops. The broker is told the largest packet
we take (MQTT v5 Maximum Packet Size), so an oversized command is dropped by the broker instead
of being read into memory here.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge import __version__
from edge.config import MqttConfig
from edge.transport.credentials import read_password
from edge.transport.downlink import ReplayGuard
from edge.transport.inbox import CommandHandler, Inbox
from edge.transport.outbox import Outbox
from edge.transport.topics import cmd_topic, state_topic, status_topic, topic_for
from edge.trust.commands import MAX_COMMAND_BYTES
from edge.trust.events import EventFactory

log = logging.getLogger(__name__)
SESSION_EXPIRY_S = 86_400  # the broker keeps our cmd subscription (and queued commands) a day
REFUSAL_AUDIT_EVERY_S = 10.0
NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT v5 PUBACK reason code
FAILED_RETRY_S = 5.0  # a PUBACK with a failure code: try that event again after this long
STABLE_CONNECTION_S = 10.0  # a connection that lasted this long resets the back-off
POLL_S = 0.5  # look for rows enqueued by other processes at least this often
SUPERVISE_S = 1.0  # how often the supervisor checks that the link thread is alive
__all__ = ["Backoff", "CommandHandler", "LinkStats", "MqttLink", "contained"]
_F = TypeVar("_F", bound=Callable[..., None])


def contained(method: _F) -> _F:
    """Wrap a link callback: an exception is logged and counted, never raised into paho's loop
    (paho re-raises callback exceptions, which would end the loop and the link with it)."""

    @functools.wraps(method)
    def wrapper(self: MqttLink, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception:
            self.stats.callback_errors += 1
            log.exception("mqtt link: %s failed; contained", method.__name__)

    return wrapper  # type: ignore[return-value]


class Backoff:
    """Exponential back-off with jitter: attempt n waits U(d/2, d), d = min(max, min * 2**n)."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random) -> None:
        self.min_s, self.max_s, self._rng, self._n = min_s, max(max_s, min_s), rng, 0

    def next(self) -> float:
        d = min(self.max_s, self.min_s * 2.0 ** min(self._n, 60))
        self._n += 1
        return self._rng.uniform(d / 2, d)

    def reset(self) -> None:
        self._n = 0


@dataclass
class LinkStats:
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    acked: int = 0
    puback_failures: int = 0
    peak_inflight: int = 0
    commands_accepted: int = 0
    commands_refused: dict[str, int] = field(default_factory=dict)
    receipts_accepted: int = 0
    receipts_refused: dict[str, int] = field(default_factory=dict)
    settled: int = 0
    callback_errors: int = 0
    loop_errors: int = 0
    thread_restarts: int = 0
    heartbeats: int = 0


class MqttLink:
    """Publishes `outbox` for one device and receives its commands; `start()` / `stop()`."""

    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        site: str,
        outbox: Outbox,
        *,
        factory: EventFactory | None = None,
        handlers: Mapping[str, CommandHandler] | None = None,
        guard: ReplayGuard | None = None,
        client_id: str | None = None,
        announce_status: bool = True,
        persistent_session: bool = True,
        rng: random.Random | None = None,
        backend_public: Ed25519PublicKey | None = None,
    ) -> None:
        self.cfg, self.device_id, self.site, self.outbox = cfg, device_id, site, outbox
        self._factory, self._guard = factory, guard
        self.settling = backend_public is not None  # rows wait for receipts (module doc)
        self._published: list[int] = []  # rows PUBACKed this turn (settling mode)
        self._first = True
        self._supervisor: threading.Thread | None = None
        self._started_at = time.monotonic()
        self._next_heartbeat = time.monotonic() + cfg.heartbeat_s  # first after one period
        self._announce, self._persistent = announce_status, persistent_session
        self._last_poll = 0.0
        self._connected_at = -1e9
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, rng or random.Random())
        self.stats = LinkStats()
        # Receipts and commands on …/cmd; the backend key checks both (None refuses them).
        self._inbox = Inbox(
            device_id, site, outbox, self.stats, factory=factory, handlers=handlers or {},
            guard=guard, backend_key=backend_public, refusal_every_s=REFUSAL_AUDIT_EVERY_S,
        )  # fmt: skip
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._dirty = True
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self._cooling: dict[int, float] = {}  # row id -> monotonic time it may be retried
        self._acks: list[int] = []
        self._thread: threading.Thread | None = None
        self._status = status_topic(site, device_id)
        self._state_topic = state_topic(site, device_id)
        self._state_payload: bytes | None = None  # newest kiosk state, sent by the link thread
        self._state_lock = threading.Lock()
        self._cmd = cmd_topic(site, device_id)
        self._client = self._make_client(client_id or f"facegate-{device_id}")
        outbox.on_enqueue(self._wake)

    # ---- setup --------------------------------------------------------------------------

    def _make_client(self, client_id: str) -> paho.Client:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        c.max_inflight_messages_set(self.cfg.max_inflight + 1)  # +1: the status message
        c.max_queued_messages_set(0)
        if self.cfg.tls:
            # Only the configured CA is trusted (pinning); hostname checking stays on.
            c.tls_set(
                ca_certs=self.cfg.ca_file,
                certfile=self.cfg.cert_file or None,
                keyfile=self.cfg.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if self.cfg.username:  # the password is read from its 0600 file / credential, here only
            c.username_pw_set(self.cfg.username, read_password(self.cfg.password_file))
        if self._announce:
            c.will_set(self._status, self._status_doc("offline"), qos=1, retain=True)
        c.suppress_exceptions = True  # second net behind @contained: paho logs, loop goes on
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        return c

    def _wake(self) -> None:
        self._dirty = True

    # ---- thread -------------------------------------------------------------------------

    def start(self) -> None:
        self._spawn()
        self._supervisor = threading.Thread(
            target=self._supervise, name="mqtt-link-supervisor", daemon=True
        )
        self._supervisor.start()

    def _spawn(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        """Restart the link thread if it died (it should not: _run contains Exceptions)."""
        while not self._stop.wait(SUPERVISE_S):
            thread = self._thread
            if thread is not None and not thread.is_alive() and not self._stop.is_set():
                self.stats.thread_restarts += 1
                log.error("mqtt link thread died; restarting it")
                self.connected.clear()
                self._spawn()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Say "offline" (retained), disconnect cleanly and join the thread."""
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout_s)
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._inbox.refusals.flush()  # refusals not yet audited reach the outbox before we exit

    def _run(self) -> None:
        """The link thread: sessions until stopped; a failed turn restarts the connection."""
        while not self._stop.is_set():
            try:
                self._sessions()
                return
            except Exception:
                self.stats.loop_errors += 1
                log.exception("mqtt link loop failed; reconnecting")
                self.connected.clear()
                self._stop.wait(self._backoff.next())

    def _sessions(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # A persistent session keeps the cmd subscription and commands queued while offline.
        props.SessionExpiryInterval = SESSION_EXPIRY_S if self._persistent else 0
        props.MaximumPacketSize = MAX_COMMAND_BYTES + 4096  # + topic and properties
        while not self._stop.is_set():
            try:
                if self._first:
                    self._client.connect(
                        self.cfg.host,
                        self.cfg.port,
                        self.cfg.keepalive_s,
                        clean_start=not self._persistent,
                        properties=props,
                    )
                    self._first = False
                else:
                    self._client.reconnect()
            except (OSError, ssl.SSLError) as exc:
                log.warning("mqtt connect to %s:%s failed: %s", self.cfg.host, self.cfg.port, exc)
                self._stop.wait(self._backoff.next())
                continue
            while not self._stop.is_set():
                if self._client.loop(timeout=0.02) != paho.MQTT_ERR_SUCCESS:
                    break
                self._flush_acks()
                self._pump()
                self._inbox.refusals.tick()
            self._flush_acks()
            if self._stop.is_set():
                self._goodbye()
                return
            self.connected.clear()
            # Reset the back-off only after a stable connection: a broker that accepts and then
            # drops us at once (ACL, poison message) must not be hammered in a tight loop.
            if time.monotonic() - self._connected_at >= STABLE_CONNECTION_S:
                self._backoff.reset()
            self._stop.wait(self._backoff.next())

    def _goodbye(self) -> None:
        if self.connected.is_set() and self._announce:
            offline = self._status_doc("offline")
            info = self._client.publish(self._status, offline, qos=1, retain=True)
            deadline = time.monotonic() + 2.0
            while not info.is_published() and time.monotonic() < deadline:
                if self._client.loop(timeout=0.05) != paho.MQTT_ERR_SUCCESS:
                    break
            self._flush_acks()
        self._client.disconnect()
        self.connected.clear()

    # ---- publishing ---------------------------------------------------------------------

    def publish_state(self, payload: bytes) -> None:
        """Hand over the kiosk's newest state (retained, QoS 0); the link thread sends it, and
        only the newest one if several arrive between two turns. Thread-safe, never blocks."""
        with self._state_lock:
            self._state_payload = payload

    def _send_state(self) -> None:
        with self._state_lock:
            payload, self._state_payload = self._state_payload, None
        if payload is not None and self.connected.is_set():
            if self._factory is not None:
                payload = self._factory.sign_status(json.loads(payload))
            self._client.publish(self._state_topic, payload, qos=0, retain=True)

    def _status_doc(self, state: str) -> bytes:
        """The retained …/status payload: signed when the link has the device key."""
        if self._factory is None:
            return state.encode()
        return self._factory.sign_status({"state": state})

    def _heartbeat(self) -> None:
        """Publish a signed device.status heartbeat when due (QoS 0, not stored: module doc)."""
        now = time.monotonic()
        if (
            self._factory is None
            or self.cfg.heartbeat_s <= 0
            or now < self._next_heartbeat
            or not self.connected.is_set()
        ):
            return
        self._next_heartbeat = now + self.cfg.heartbeat_s
        st = self.outbox.status()
        seq = self.outbox.next_seq(self._factory.device_id)
        event = self._factory.build(
            "device.status", seq, status="heartbeat",
            outbox_pending=st["pending"], outbox_unsettled=st["unsettled"],
            oldest_unsettled_s=st["oldest_unsettled_age_s"], outbox_full=st["full"],
            link="connected", version=__version__,
            uptime_s=round(now - self._started_at, 1),
        )  # fmt: skip
        self._client.publish(topic_for(event.event), event.payload, qos=0)
        self.stats.heartbeats += 1

    def _pump(self) -> None:
        self._send_state()
        self._heartbeat()
        room = self.cfg.max_inflight - len(self._inflight)
        if not self.connected.is_set() or room <= 0:
            return
        now = time.monotonic()
        if now - self._last_poll > POLL_S:
            self._dirty = True  # rows enqueued by another process (no in-process wake-up)
        if not self._dirty and not self._cooling:
            return
        self._last_poll = now
        self._cooling = {i: t for i, t in self._cooling.items() if t > now}
        self._dirty = False
        items = self.outbox.peek(room, exclude=[*self._inflight.values(), *self._cooling])
        for item in items:
            info = self._client.publish(item.topic, item.payload, qos=1)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                self._dirty = True
                return
            self._inflight[info.mid] = item.id
            self.stats.published += 1
        self.stats.peak_inflight = max(self.stats.peak_inflight, len(self._inflight))
        if len(items) == room:
            self._dirty = True  # there may be more behind the window

    @contained
    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any
    ) -> None:
        row = self._inflight.pop(mid, None)
        if row is None:
            return  # the status message
        if self.settling:
            # Any PUBACK, success or not: the row waits for its receipt and goes out again
            # after the back-off. A failure code only gets a log line.
            if rc.is_failure or getattr(rc, "value", 0) == NO_MATCHING_SUBSCRIBERS:
                log.warning("broker did not deliver event row %d: %s", row, rc)
                self.stats.puback_failures += 1
            self._published.append(row)
            self._dirty = True
            return
        if rc.is_failure or getattr(rc, "value", 0) == NO_MATCHING_SUBSCRIBERS:
            # 0x10 is a "success" code, but it means nobody received the event: right after a
            # broker restart the backend's shared subscription may not be back yet. Keep the
            # row and try again; the idempotent ledger absorbs any double delivery.
            log.warning("broker did not deliver event row %d: %s", row, rc)
            self.stats.puback_failures += 1
            self._cooling[row] = time.monotonic() + FAILED_RETRY_S
            return
        self._acks.append(row)
        self._dirty = True

    def _flush_acks(self) -> None:
        if self._acks:
            acks, self._acks = self._acks, []
            self.outbox.ack(acks)
            self.stats.acked += len(acks)
        if self._published:
            published, self._published = self._published, []
            self.outbox.mark_published(published, self.cfg.resend_min_s, self.cfg.resend_max_s)
            self.stats.acked += len(published)
        receipts, refused = self._inbox.take_receipts()
        if refused:
            self.outbox.count_refused_receipts(refused)
        if receipts:
            ranges = [r for receipt in receipts for r in receipt.ranges]
            self.stats.settled += self.outbox.settle(self.device_id, ranges)

    def pending(self) -> int:
        """Events not yet settled (or acknowledged, without a backend key): outbox rows."""
        return int(self.outbox.status()["pending"])

    def drain(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (every row settled by a receipt, or acknowledged without
        a backend key); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pending() == 0:
                return True
            time.sleep(0.05)
        return self.pending() == 0

    # ---- connection callbacks -----------------------------------------------------------

    @contained
    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if rc.is_failure:
            log.warning("broker refused the connection: %s", rc)
            return
        self.stats.connects += 1
        self._connected_at = time.monotonic()
        self.connected.set()
        self._dirty = True
        if self._announce:
            client.publish(self._status, self._status_doc("online"), qos=1, retain=True)
        if (self._factory is not None and self._guard is not None) or self.settling:
            client.subscribe(self._cmd, qos=1)  # commands and receipts

    @contained
    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        self.stats.disconnects += 1
        self.connected.clear()
        log.info("mqtt disconnected: %s", rc)

    # ---- downlink -----------------------------------------------------------------------

    @contained
    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic == self._cmd:
            self._inbox.on_message(bytes(msg.payload))
