"""Placeholder until the kiosk-side publisher (edge/mqtt.py) lands; see `run_bench`."""

from __future__ import annotations

from typing import Any

from edge.errors import FacegateError


def run_bench(broker_url: str, db: str, n_events: int, n_workers: int) -> dict[str, Any]:
    raise FacegateError("facegate-backend bench needs edge/mqtt.py, which has not landed yet")
