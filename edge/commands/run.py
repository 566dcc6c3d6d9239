"""`facegate run`: the kiosk loop for the configured profile."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.camera import open_source
from edge.camera.demo import default_source_uri
from edge.camera.lease import CameraLease
from edge.config import Config
from edge.errors import ConfigError, FacegateError, KeyStoreError
from edge.kiosk.actuators import make_actuator
from edge.kiosk.claims import (
    Claim,
    ClaimQueue,
    ClaimSource,
    FixedClaim,
    LineClaims,
    parse_claim_line,
)
from edge.kiosk.debug_capture import DebugCapture
from edge.kiosk.loop import Kiosk, install_signal_handlers
from edge.kiosk.presence import PresenceStore
from edge.session.lockout import LockoutStore
from edge.templates.store import TemplateStore, db_path
from edge.transport.outbox import OUTBOX_FILE, Outbox
from edge.trust.events import EventFactory
from edge.trust.keys import DeviceKeys, init_keys, keys_dir, load_keys, parse_backend_public_key
from edge.vision.pipeline import VisionPipeline
from edge.vision.track import FaceTracker

if TYPE_CHECKING:
    from edge.kiosk.claims.qr import QrClaimReader


# Tests only: shift the wall clock of the lockout and presence stores by this many seconds, so
# a test can stand days after a tenant was last seen (welfare alerts) without waiting days.
# Never set on a kiosk; when set, the run says so on stderr.
TEST_WALL_OFFSET_ENV = "FACEGATE_TEST_WALL_OFFSET_S"
# An enrolment holding the camera when the kiosk starts is waited for this long: inside the
# unit's TimeoutStartSec (60 s); a longer one ends this start, and systemd starts it again.
START_WAIT_S = 45.0


def _wall_clock() -> Callable[[], float]:
    """time.time, or time.time + $FACEGATE_TEST_WALL_OFFSET_S (see TEST_WALL_OFFSET_ENV)."""
    raw = os.environ.get(TEST_WALL_OFFSET_ENV)
    if not raw:
        return time.time
    try:
        offset = float(raw)
    except ValueError:
        raise FacegateError(
            f"{TEST_WALL_OFFSET_ENV}={raw!r} is not a number of seconds; unset it (tests only)"
        ) from None
    print(f"TEST: wall clock shifted by {offset:g} s ({TEST_WALL_OFFSET_ENV})", file=sys.stderr)
    return lambda: time.time() + offset


def _display(text: str) -> None:
    print(f"[kiosk] {text}", flush=True)


def _keys(cfg: Config) -> DeviceKeys:
    try:
        return load_keys(cfg.state_dir, cfg.device.id)
    except KeyStoreError:
        if cfg.profile != "demo" or keys_dir(cfg.state_dir).exists():
            raise
        # Only the demo provisions itself; a real kiosk is provisioned with `facegate keys init`.
        print(f"demo: creating device keys in {keys_dir(cfg.state_dir)}", file=sys.stderr)
        return init_keys(cfg.state_dir, cfg.device.id)


def _claims(
    args: argparse.Namespace, cfg: Config, keys: DeviceKeys, stack: contextlib.ExitStack[Any]
) -> tuple[ClaimSource | None, QrClaimReader | None]:
    """The claim inputs the config and the command line name, all feeding one ClaimQueue
    (newest wins, expiry, never carried over), and the QR reader the loop feeds idle frames."""
    if args.claim:
        try:
            return FixedClaim(parse_claim_line(args.claim, "cli")), None
        except ValueError as exc:
            raise FacegateError(f"--claim {args.claim.split()[0]!r}...: {exc}") from None
    c = cfg.claims
    queue = ClaimQueue(c.claim_timeout_s)
    inputs = 0
    # The command line wins over the config's file, so a unit's config needs no flag.
    lines_from = args.claims_from or c.lines_from
    if lines_from:
        source: Any = sys.stdin if lines_from == "-" else Path(lines_from)
        if isinstance(source, Path) and (
            not source.exists() or source.is_dir() or not os.access(source, os.R_OK)
        ):
            problem = "no such file or FIFO" if not source.exists() else "cannot be read as one"
            named = (f"--claims-from {source}" if args.claims_from
                     else f"claims.lines_from = {source}")  # fmt: skip
            raise FacegateError(
                f"{named}: {problem}; give the FIFO or file the POS / keypad "
                "bridge writes claim lines to, or '-' for stdin"
            )
        lines = LineClaims(source, "pos", queue=queue, timeout_s=c.claim_timeout_s)
        stack.callback(lines.close)
        inputs += 1
    if c.card_port:
        from edge.kiosk.claims.card import CardReader

        card = CardReader(c.card_port, c.card_baud, queue, keys.subject_key).start()
        stack.callback(card.close)
        inputs += 1
    if c.bridge_socket:
        from edge.kiosk.claims.bridge import BridgeServer

        bridge = BridgeServer(c.bridge_socket, queue, keys.subject_key,
                              currency=cfg.bakery.currency, timeout_s=c.claim_timeout_s).start()
        stack.callback(bridge.close)
        inputs += 1
    qr = None
    if c.qr:
        if not cfg.backend.public_key:
            raise ConfigError(["claims.qr = true needs [backend] public_key to check the tokens"])
        from edge.kiosk.claims.qr import QrClaimReader
        from edge.trust.claim_tokens import UsedTokens

        used = UsedTokens(cfg.state_dir / "used-claim-tokens.sqlite")
        stack.callback(used.close)
        qr = QrClaimReader(parse_backend_public_key(cfg.backend.public_key), used,
                           every_frames=c.qr_every_frames, queue=queue)  # fmt: skip
        inputs += 1
    if inputs:
        return queue, qr
    if cfg.profile == "demo":
        return FixedClaim(Claim("demo-visitor", None, "", "liveness")), None
    return None, None


def run(args: argparse.Namespace, cfg: Config) -> int:
    uri = args.source or cfg.camera.source or default_source_uri()
    if cfg.state_dir.exists() and not cfg.state_dir.is_dir():
        raise FacegateError(
            f"state dir {cfg.state_dir} is not a directory; point [paths] state_dir "
            "(or $FACEGATE_STATE_DIR) at a directory"
        )
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = _keys(cfg)
    vision = FaceTracker(VisionPipeline.from_config(cfg), cfg.vision.detect_every)
    with contextlib.ExitStack() as stack:
        claims, qr = _claims(args, cfg, keys, stack)
        # The camera is this kiosk's while it runs; it lends it to an enrolment that asks
        # (edge/camera/lease.py). One still running at start-up is waited for, within the
        # unit's start timeout.
        lease = CameraLease(cfg.state_dir)
        stack.callback(lease.close)
        if not lease.try_hold():
            print(f"waiting for the camera: {lease.holder()} is using it", file=sys.stderr,
                  flush=True)
            lease.hold(START_WAIT_S)
        source = open_source(uri, cfg.camera)
        stack.callback(source.close)
        store = stack.enter_context(TemplateStore(db_path(cfg.state_dir), keys))
        store.check_readable()  # refuse to start rather than reject every customer
        outbox = stack.enter_context(Outbox(cfg.state_dir / OUTBOX_FILE, cfg.outbox.max_events))
        wall = _wall_clock()
        lockout = stack.enter_context(LockoutStore.open(cfg.state_dir, cfg.session, wall))
        presence = None
        if cfg.profile == "smart_lock":
            presence = PresenceStore(cfg.state_dir / "presence.sqlite", wall)
            stack.callback(presence.close)
        factory = EventFactory(cfg.device.id, cfg.device.site, keys.signing_key)
        link = None
        if cfg.mqtt.enabled:
            from edge.kiosk.uplink import start_link

            link = start_link(cfg, keys, outbox)
            stack.callback(link.stop)
        capture = None
        if cfg.debug.capture_frames:
            capture = DebugCapture(cfg.debug)
            print(f"DEBUG: decision frames are captured to {capture.dir} (tmpfs, deleted after "
                  f"{cfg.debug.capture_ttl_s:g} s)", file=sys.stderr)
        # One dispatcher of kiosk states; the display page and the MQTT state are listeners.
        from edge.kiosk.display.dispatcher import Dispatcher

        dispatcher = Dispatcher()
        stack.callback(dispatcher.stop)
        if cfg.display.enabled:
            from edge.kiosk.display.server import DisplayServer

            server = DisplayServer.from_config(cfg.display)
            server.start()
            dispatcher.add(server)
            print(f"display: {server.url}", file=sys.stderr, flush=True)
        if link is not None:
            from edge.kiosk.uplink import MqttStateListener

            dispatcher.add(MqttStateListener(link))
        kiosk = Kiosk(
            cfg, source, vision=vision, display=_display, claims=claims, store=store,
            outbox=outbox, factory=factory, actuator=make_actuator(cfg.actuator),
            lockout=lockout, presence=presence, debug_capture=capture, dispatcher=dispatcher,
            qr=qr, link_up=link.connected.is_set if link is not None else None, lease=lease,
        )
        install_signal_handlers(kiosk)
        stats = kiosk.run(max_frames=args.max_frames)
    # `decisions` and `events` are the last ones (bounded rings, edge.kiosk.stats); the
    # totals count every session and event of the run.
    summary = {
        "source": uri,
        "profile": cfg.profile,
        "frames": stats.frames,
        "frames_with_face": stats.frames_with_face,
        "decisions": list(stats.decisions),
        "events": list(stats.events),
        "elapsed_s": round(stats.elapsed_s, 3),
        **stats.totals(),
    }
    print(json.dumps(summary, sort_keys=True))
    return 0
