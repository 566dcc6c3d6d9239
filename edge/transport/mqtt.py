"""MQTT link: publish the outbox over MQTT v5 (TLS/mTLS), retained status with LWT, downlink.

One thread owns the paho client (callback API v2) and drives it with `client.loop()`, so every
callback, publish and outbox ack happens on that thread. Events are read from the outbox and
published at QoS 1 with at most `max_inflight` unacknowledged; a row is deleted only after its
PUBACK carries a success reason code (acks are batched into one transaction per loop turn; a
crash before that commit only causes a redelivery, which the backend ledger absorbs).
Reconnects use jittered exponential back-off (`reconnect_min_s` .. `reconnect_max_s`); messages
in flight at a disconnect are re-sent by paho on the same client after reconnecting.

Status: `…/status` is retained; the will is "offline", and "online" is published on connect.
Downlink: `…/cmd` commands are verified (edge/trust/commands.py). Every command, accepted or
refused, is audited as a signed `console.audit` event (action `cmd.<type>` or `cmd.refused`, ok,
detail = reason); refusals are audited at most once per `REFUSAL_AUDIT_EVERY_S` so a flood of
junk cannot push real events out of the bounded outbox.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import MqttConfig
from edge.transport.credentials import read_password
from edge.transport.downlink import ReplayGuard
from edge.transport.outbox import Outbox
from edge.transport.topics import cmd_topic, state_topic, status_topic
from edge.trust.commands import Command, CommandError, verify_command
from edge.trust.event_schema import EventError
from edge.trust.events import EventFactory

log = logging.getLogger(__name__)
SESSION_EXPIRY_S = 86_400  # the broker keeps our cmd subscription (and queued commands) a day
REFUSAL_AUDIT_EVERY_S = 10.0
NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT v5 PUBACK reason code
FAILED_RETRY_S = 5.0  # a PUBACK with a failure code: try that event again after this long
STABLE_CONNECTION_S = 10.0  # a connection that lasted this long resets the back-off
POLL_S = 0.5  # look for rows enqueued by other processes at least this often
CommandHandler = Callable[[Command], None]


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
        self._factory, self._handlers, self._guard = factory, dict(handlers or {}), guard
        self._backend_key = backend_public  # checks downlink commands; None refuses them all
        self._announce, self._persistent = announce_status, persistent_session
        self._last_poll = 0.0
        self._connected_at = -1e9
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, rng or random.Random())
        self.stats = LinkStats()
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._dirty = True
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self._cooling: dict[int, float] = {}  # row id -> monotonic time it may be retried
        self._acks: list[int] = []
        self._last_refusal_audit = -1e9
        self._suppressed_refusals = 0
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
            c.will_set(self._status, b"offline", qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        return c

    def _wake(self) -> None:
        self._dirty = True

    # ---- thread -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Say "offline" (retained), disconnect cleanly and join the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # A persistent session keeps the cmd subscription and commands queued while offline.
        props.SessionExpiryInterval = SESSION_EXPIRY_S if self._persistent else 0
        first = True
        while not self._stop.is_set():
            try:
                if first:
                    self._client.connect(
                        self.cfg.host,
                        self.cfg.port,
                        self.cfg.keepalive_s,
                        clean_start=not self._persistent,
                        properties=props,
                    )
                    first = False
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
            info = self._client.publish(self._status, b"offline", qos=1, retain=True)
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
            self._client.publish(self._state_topic, payload, qos=0, retain=True)

    def _pump(self) -> None:
        self._send_state()
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

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any
    ) -> None:
        row = self._inflight.pop(mid, None)
        if row is None:
            return  # the status message
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

    def pending(self) -> int:
        """Events not yet acknowledged (outbox rows, including those in flight)."""
        return int(self.outbox.status()["pending"])

    def drain(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pending() == 0:
                return True
            time.sleep(0.05)
        return self.pending() == 0

    # ---- connection callbacks -----------------------------------------------------------

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
            client.publish(self._status, b"online", qos=1, retain=True)
        if self._factory is not None and self._guard is not None:
            client.subscribe(self._cmd, qos=1)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        self.stats.disconnects += 1
        self.connected.clear()
        log.info("mqtt disconnected: %s", rc)

    # ---- downlink -----------------------------------------------------------------------

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic != self._cmd or self._guard is None:
            return
        try:
            cmd = verify_command(bytes(msg.payload), self._backend_key, self.device_id, self._guard)
        except CommandError as exc:
            self._refused(exc.reason, str(exc))
            return
        self.stats.commands_accepted += 1
        handler = self._handlers.get(cmd.type)
        if handler is None:
            self._audit(f"cmd.{cmd.type}", False, "no handler registered on this device")
            return
        try:
            handler(cmd)
        except Exception as exc:  # a failing handler must not kill the link
            log.exception("command %s failed", cmd.type)
            self._audit(f"cmd.{cmd.type}", False, f"handler failed: {type(exc).__name__}")
            return
        self._audit(f"cmd.{cmd.type}", True, f"seq {cmd.seq}")

    def _refused(self, reason: str, message: str) -> None:
        self.stats.commands_refused[reason] = self.stats.commands_refused.get(reason, 0) + 1
        log.warning("downlink command refused: %s", message)
        now = time.monotonic()
        if now - self._last_refusal_audit < REFUSAL_AUDIT_EVERY_S:
            self._suppressed_refusals += 1
            return
        extra = f" (+{self._suppressed_refusals} more refused)" if self._suppressed_refusals else ""
        self._last_refusal_audit, self._suppressed_refusals = now, 0
        self._audit("cmd.refused", False, f"{reason}{extra}")

    def _audit(self, action: str, ok: bool, detail: str) -> None:
        if self._factory is None:
            return
        try:
            self.outbox.emit(
                self._factory, "console.audit", action=action, ok=ok, detail=detail[:120]
            )
        except EventError:
            self.outbox.emit(self._factory, "console.audit", action=action, ok=ok)
