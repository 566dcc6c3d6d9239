"""Broker URLs, shared by the kiosk's tools and the backend: `mqtt://host[:1883]`,
`mqtts://host[:8883]`."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from edge.errors import ConfigError


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """Parse a broker URL; ConfigError naming the URL and the accepted form otherwise."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(
                [f"broker URL {url!r} is invalid; use mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"]
            )
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError([f"broker URL {url!r} has a bad port; use 1..65535"]) from None
        return cls(parts.hostname, port, tls)
