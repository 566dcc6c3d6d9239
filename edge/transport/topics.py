"""MQTT topics: `facegate/v1/<site>/<device>/event/<type>`, `…/status`, `…/cmd`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge.ids import ID_RULE, is_valid_id
from edge.trust.event_schema import SCHEMA, EventError

TOPIC_PREFIX = "facegate/v1"
BACKEND_SHARED_SUBSCRIPTION = "$share/backend/facegate/v1/+/+/event/#"


def _check_ids(site: str, device: str) -> None:
    if not is_valid_id(site) or not is_valid_id(device):
        raise EventError("schema", f"site {site!r} / device {device!r}: use {ID_RULE}")


def event_topic(site: str, device: str, type: str) -> str:
    _check_ids(site, device)
    if type not in SCHEMA:
        raise EventError("schema", f"unknown event type {type!r}")
    return f"{TOPIC_PREFIX}/{site}/{device}/event/{type}"


def status_topic(site: str, device: str) -> str:
    _check_ids(site, device)
    return f"{TOPIC_PREFIX}/{site}/{device}/status"


def state_topic(site: str, device: str) -> str:
    """`…/status/state`: the kiosk's current display state (retained JSON, no personal data)."""
    _check_ids(site, device)
    return f"{TOPIC_PREFIX}/{site}/{device}/status/state"


def cmd_topic(site: str, device: str) -> str:
    _check_ids(site, device)
    return f"{TOPIC_PREFIX}/{site}/{device}/cmd"


def parse_event_topic(topic: str) -> tuple[str, str, str]:
    """`facegate/v1/<site>/<device>/event/<type>` -> (site, device, type); EventError otherwise."""
    parts = topic.split("/")
    if (
        len(parts) != 6
        or f"{parts[0]}/{parts[1]}" != TOPIC_PREFIX
        or parts[4] != "event"
        or not is_valid_id(parts[2])
        or not is_valid_id(parts[3])
        or parts[5] not in SCHEMA
    ):
        raise EventError("topic", f"not an event topic: {topic[:120]!r}")
    return parts[2], parts[3], parts[5]


def topic_for(event: Mapping[str, Any]) -> str:
    """The topic an event (a dict with site, device, type) is published on."""
    return event_topic(str(event["site"]), str(event["device"]), str(event["type"]))
