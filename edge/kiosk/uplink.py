"""Start the MQTT link of a running kiosk: publish the outbox, accept signed commands."""

from __future__ import annotations

import json
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.config import Config
from edge.kiosk.display.state import KioskState
from edge.templates.store import TemplateStore, db_path
from edge.transport.downlink import DOWNLINK_FILE, ReplayGuard, standard_handlers
from edge.transport.mqtt import CommandHandler, MqttLink
from edge.transport.outbox import Outbox
from edge.trust.events import EventFactory
from edge.trust.keys import DeviceKeys, parse_backend_public_key


def start_link(cfg: Config, keys: DeviceKeys, outbox: Outbox) -> MqttLink:
    """A started link; template/config/wipe commands only when the backend key is configured."""
    handlers = None
    if cfg.backend.public_key:
        backend = parse_backend_public_key(cfg.backend.public_key)
        handlers = standard_handlers(lambda: TemplateStore(db_path(cfg.state_dir), keys), backend)
    link = link_for_kiosk(cfg, keys.signing_key, outbox, handlers)
    link.start()
    return link


class MqttStateListener:
    """A display-state listener of the kiosk's dispatcher: the state (name and detail, never a
    face or a number) goes retained to `…/status/state` through the kiosk's own link."""

    def __init__(self, link: MqttLink) -> None:
        self.link = link

    def publish(self, state: KioskState) -> None:
        self.link.publish_state(json.dumps(state.to_json(), sort_keys=True).encode())

    def stop(self) -> None:
        return None


def link_for_kiosk(
    cfg: Config,
    signing_key: Ed25519PrivateKey,
    outbox: Outbox,
    handlers: Mapping[str, CommandHandler] | None = None,
) -> MqttLink:
    """The kiosk's link: status + LWT, audited downlink with the replay guard in the state dir."""
    return MqttLink(
        cfg.mqtt,
        cfg.device.id,
        cfg.device.site,
        outbox,
        factory=EventFactory(cfg.device.id, cfg.device.site, signing_key),
        handlers=handlers,
        guard=ReplayGuard(cfg.state_dir / DOWNLINK_FILE),
        backend_public=(
            parse_backend_public_key(cfg.backend.public_key) if cfg.backend.public_key else None
        ),
    )
