"""Start the MQTT link of a running kiosk: publish the outbox, accept signed commands."""

from __future__ import annotations

from edge.config import Config
from edge.templates.store import TemplateStore, db_path
from edge.transport.downlink import standard_handlers
from edge.transport.mqtt import MqttLink, link_for_kiosk
from edge.transport.outbox import Outbox
from edge.trust.keys import DeviceKeys, parse_backend_public_key


def start_link(cfg: Config, keys: DeviceKeys, outbox: Outbox) -> MqttLink:
    """A started link; template/config/wipe commands only when the backend key is configured."""
    handlers = None
    if cfg.mqtt.backend_public_key:
        backend = parse_backend_public_key(cfg.mqtt.backend_public_key)
        handlers = standard_handlers(lambda: TemplateStore(db_path(cfg.state_dir), keys), backend)
    link = link_for_kiosk(cfg, keys.signing_key, outbox, handlers)
    link.start()
    return link
