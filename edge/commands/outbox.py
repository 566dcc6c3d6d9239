"""`facegate outbox status | drain`: what the kiosk has queued, and a drain by hand."""

from __future__ import annotations

import argparse
import json

from edge.config import Config
from edge.errors import FacegateError
from edge.transport.mqtt import MqttLink
from edge.transport.outbox import OUTBOX_FILE, Outbox


def run(args: argparse.Namespace, cfg: Config) -> int:
    path = cfg.state_dir / OUTBOX_FILE
    if args.action == "status":
        if not path.exists():
            raise FacegateError(
                f"no outbox at {path}; check [paths] state_dir / $FACEGATE_STATE_DIR"
            )
        with Outbox(path, cfg.outbox.max_events) as ob:
            print(json.dumps(ob.status(), sort_keys=True))
        return 0
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    with Outbox(path, cfg.outbox.max_events) as ob:
        link = MqttLink(
            cfg.mqtt,
            cfg.device.id,
            cfg.device.site,
            ob,
            client_id=f"facegate-{cfg.device.id}-drain",
            announce_status=False,  # the kiosk process owns the retained status
            persistent_session=False,
        )
        link.start()
        try:
            drained = link.drain(args.timeout)
        finally:
            link.stop()
        print(json.dumps({**ob.status(), "drained": drained, "acked": link.stats.acked}))
    return 0 if drained else 1
