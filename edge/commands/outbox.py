"""`facegate outbox status | drain`: what the kiosk has queued, unsettled and settled, and a
drain by hand (until the backend's receipts have settled everything, when the backend key is
configured)."""

from __future__ import annotations

import argparse
import json

from edge.config import Config
from edge.errors import FacegateError
from edge.transport.mqtt import MqttLink
from edge.transport.outbox import OUTBOX_FILE, Outbox
from edge.trust.keys import parse_backend_public_key

NO_EVENTS = {
    "note": "no events yet",
    "queued": 0,
    "unsettled": 0,
    "settled_total": 0,
    "oldest_unsettled_age_s": None,
    "pending": 0,
}


def run(args: argparse.Namespace, cfg: Config) -> int:
    path = cfg.state_dir / OUTBOX_FILE
    if args.action == "status":
        if cfg.state_dir.exists() and not cfg.state_dir.is_dir():
            raise FacegateError(
                f"state directory {cfg.state_dir} is not a directory; check [paths] state_dir "
                "/ $FACEGATE_STATE_DIR"
            )
        if not path.exists():  # a fresh kiosk: nothing created yet is not an error
            print(json.dumps(NO_EVENTS, sort_keys=True))
            return 0
        with Outbox(path, cfg.outbox.max_events) as ob:
            print(json.dumps(ob.status(), sort_keys=True))
        return 0
    return _drain(args, cfg)


def _drain(args: argparse.Namespace, cfg: Config) -> int:
    """Publish and wait: for receipts with a backend key, for PUBACKs without one."""
    path = cfg.state_dir / OUTBOX_FILE
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    backend = parse_backend_public_key(cfg.backend.public_key) if cfg.backend.public_key else None
    with Outbox(path, cfg.outbox.max_events) as ob:
        link = MqttLink(
            cfg.mqtt,
            cfg.device.id,
            cfg.device.site,
            ob,
            client_id=f"facegate-{cfg.device.id}-drain",
            announce_status=False,  # the kiosk process owns the retained status
            persistent_session=False,
            backend_public=backend,
        )
        link.start()
        try:
            drained = link.drain(args.timeout)
        finally:
            link.stop()
        result = {
            **ob.status(),
            "drained": drained,
            "acked": link.stats.acked,
            "settled": link.stats.settled,
            "waits_for": "receipts" if link.settling else "puback",
        }
        print(json.dumps(result, sort_keys=True))
    return 0 if drained else 1

