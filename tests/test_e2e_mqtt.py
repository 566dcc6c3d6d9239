"""End to end with real processes: kiosk outbox publisher → mosquitto → backend workers → ledger.

The publisher is the device's own tool (`python -m edge.measure.burst publish-burst`: signed
events through the SQLite outbox and the MQTT link); the backend is `facegate-backend run`, two
processes on the v5 shared subscription, exactly as deployed.
"""

from __future__ import annotations

import json
from pathlib import Path

import _backend
import pytest
from _backend import Rig, assert_exactly_once, backend, make_rig, pg_schema_url
from _broker import start_mosquitto

rig_factory = _backend.rig_factory  # fixture: tears the rigs down


@pytest.mark.parametrize(
    "tls,mtls", [(False, False), (True, True)], ids=["plain", "mutual-tls"]
)  # fmt: skip
def test_outbox_events_reach_the_ledger_exactly_once_through_two_workers(
    tmp_path: Path, rig_factory: list[Rig], tls: bool, mtls: bool
) -> None:
    broker = start_mosquitto(tmp_path, tls=tls, mtls=mtls)
    rig = make_rig(tmp_path, broker, str(tmp_path / "ledger.db"))
    rig_factory.append(rig)
    result = rig.publish(300, "--type", "payment.authorize")
    assert result["created"] == 300 and result["pending"] == 0
    rig.wait_booked(300)
    redelivered = rig.redeliver(range(1, 301, 30))  # seen and settled as duplicates
    assert rig.stop_all() == {"backend-1": 0, "backend-2": 0}
    result = assert_exactly_once(rig, 300)
    with rig.ledger() as led:
        totals = led.totals()
    assert totals["amount_per_currency"] == {"EUR": 300 * 250}
    assert redelivered == 10 and result["redeliveries_absorbed"] >= redelivered
    # The workers' own counts agree with the ledger's: every booking and every duplicate once.
    assert rig.settled() == {"booked": 300, "duplicate": result["redeliveries_absorbed"]}
    # both workers of the shared subscription took part
    for name in ("backend-1", "backend-2"):
        assert "'booked'" in (tmp_path / f"{name}.log").read_text(), f"{name} booked nothing"


def test_two_workers_share_one_postgresql_ledger(tmp_path: Path, rig_factory: list[Rig]) -> None:
    gen = pg_schema_url()
    db = next(gen)
    try:
        rig = make_rig(tmp_path, start_mosquitto(tmp_path), db)
        rig_factory.append(rig)
        rig.publish(300, "--type", "fare.charge")
        rig.wait_booked(300)
        redelivered = rig.redeliver(range(1, 301, 30))
        assert rig.stop_all() == {"backend-1": 0, "backend-2": 0}
        result = assert_exactly_once(rig, 300)
        out = json.loads(backend("ledger", "--db", db, "--json").stdout)
        expected = [{"type": "fare.charge", "device": rig.device, "count": 300}]
        assert out["by_type_device"] == expected
        assert result["redeliveries_absorbed"] >= redelivered == 10
        assert rig.settled() == {"booked": 300, "duplicate": result["redeliveries_absorbed"]}
    finally:
        gen.close()
