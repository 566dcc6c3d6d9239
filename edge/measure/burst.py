"""Burst and fault publisher: the kiosk-side process the end-to-end, fault and backend
benchmarks run (`python -m edge.measure.burst`).

`python -m edge.measure.burst publish-burst --state-dir D --broker mqtt://HOST:PORT --count N`
creates events until the device's seq reaches N (so after a SIGKILL and restart the total
created is still N, seq 1..N), publishes them through the outbox and exits 0 once all are
acknowledged. It only ever uses keys it created itself: a state directory holding device keys
it did not create (a real kiosk's) is refused, never overwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import sqlite3
import sys
import time
from pathlib import Path

from edge.config import MqttConfig
from edge.errors import FacegateError
from edge.transport.broker_url import BrokerUrl
from edge.transport.mqtt import MqttLink
from edge.transport.outbox import OUTBOX_FILE, Outbox
from edge.trust.events import EventFactory
from edge.trust.keys import (
    DeviceKeys,
    init_keys,
    keys_dir,
    load_keys,
    parse_backend_public_key,
    public_keys,
)

MARKER = "burst-tool-keys"  # in the state dir: this tool created the keys beside it

_DECISION = {
    "subject": "s-burst",
    "decision": "accept",
    "score": 0.91,
    "liveness": {"blinks": 1, "challenge_ms": 850},
}
BURST_FIELDS = {
    "door.unlock": {**_DECISION, "door": "main"},
    "payment.authorize": {**_DECISION, "amount": 250, "currency": "EUR"},
    "fare.charge": {**_DECISION, "amount": 290, "currency": "EUR", "gate": "g1"},
}




def _keys(state_dir: Path, device: str) -> DeviceKeys:
    """The tool's own keys in `state_dir`, created on first use; never a kiosk's."""
    kdir = keys_dir(state_dir)
    ours = (state_dir / MARKER).exists()
    if kdir.exists() and not ours:
        raise FacegateError(
            f"{kdir} holds device keys this tool did not create; give the burst tool an empty "
            "--state-dir of its own (it never touches a kiosk's keys)"
        )
    if (kdir / "device-id").exists():  # written last by init_keys: the set is complete
        return load_keys(state_dir, device, credentials_dir=None)
    if kdir.exists():
        # A SIGKILL during init_keys left a partial set of the tool's own keys. No event was
        # signed with it (the tool only starts after keys exist), so it may start over.
        shutil.rmtree(kdir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (state_dir / MARKER).touch(mode=0o600)
    return init_keys(state_dir, device)


def _last_seq(path: Path, device: str) -> int:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT last FROM seq WHERE device = ?", (device,)).fetchone()
    return int(row[0]) if row else 0


def _mqtt_config(a: argparse.Namespace) -> MqttConfig:
    """The link settings from the tool's --broker, --ca-file, [--cert-file, --key-file] and
    --max-inflight."""
    broker = BrokerUrl.parse(a.broker)
    return dataclasses.replace(
        MqttConfig(),
        host=broker.host,
        port=broker.port,
        tls=broker.tls,
        ca_file=a.ca_file or "",
        cert_file=getattr(a, "cert_file", None) or "",
        key_file=getattr(a, "key_file", None) or "",
        username=getattr(a, "username", None) or "",
        password_file=getattr(a, "password_file", None) or "",
        max_inflight=a.max_inflight,
        resend_min_s=getattr(a, "resend_min_s", 5.0),
        resend_max_s=getattr(a, "resend_max_s", 300.0),
    )


def _burst(a: argparse.Namespace) -> int:
    state = Path(a.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    keys = _keys(state, a.device)
    print(json.dumps(public_keys(keys)), flush=True)
    mcfg = _mqtt_config(a)
    fields = BURST_FIELDS[a.type]
    t0 = time.monotonic()
    # Seqs 1..N (not the clock start of a kiosk's outbox): a burst killed and restarted resumes
    # at its file's counter, and the ledger check is "exactly 1..N, once each".
    rng = random.Random(a.seed)
    with Outbox(state / OUTBOX_FILE, max_events=10_000_000, seq_start=1, rng=rng) as ob:
        factory = EventFactory(a.device, a.site, keys.signing_key)
        # With the backend's key, rows are kept until its receipts settle them (drain waits).
        backend = parse_backend_public_key(a.backend_public_key) if a.backend_public_key else None
        link = MqttLink(mcfg, a.device, a.site, ob, backend_public=backend, rng=rng)
        link.start()
        try:
            created = _last_seq(state / OUTBOX_FILE, a.device)
            while created < a.count:
                created = ob.emit(factory, a.type, **fields).seq
                if a.rate > 0:
                    time.sleep(max(0.0, t0 + created / a.rate - time.monotonic()))
            t_created = time.monotonic() - t0
            drained = link.drain(max(0.0, a.timeout - (time.monotonic() - t0)))
        finally:
            link.stop()
        elapsed = time.monotonic() - t0
        print(
            json.dumps(
                {
                    "created": created,
                    "pending": ob.status()["pending"],
                    "published_acked": link.stats.acked,
                    "settled": link.stats.settled,
                    "reconnects": max(0, link.stats.connects - 1),
                    "create_s": round(t_created, 3),
                    "elapsed_s": round(elapsed, 3),
                    "drained": drained,
                }
            ),
            flush=True,
        )
    return 0 if drained else 1


def _bench(a: argparse.Namespace) -> int:
    """Emit rate (durable, signed) with no link, then drain rate of the filled outbox."""
    import tempfile

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    mcfg = _mqtt_config(a)
    with tempfile.TemporaryDirectory(dir=a.dir) as d, Outbox(Path(d) / OUTBOX_FILE) as ob:
        factory = EventFactory("kiosk-bench", "lab", Ed25519PrivateKey.generate())
        lat: list[float] = []
        t0 = time.perf_counter()
        for _ in range(a.count):
            t = time.perf_counter()
            ob.emit(factory, "payment.authorize", **BURST_FIELDS["payment.authorize"])
            lat.append(time.perf_counter() - t)
        emit_s = time.perf_counter() - t0
        payload_bytes = len(ob.peek(1)[0].payload)
        link = MqttLink(
            mcfg,
            "kiosk-bench",
            "lab",
            ob,
            announce_status=False,
            persistent_session=False,
            client_id=f"facegate-bench-{os.getpid()}",
        )
        t1 = time.perf_counter()
        link.start()
        try:
            drained = link.drain(a.timeout)
        finally:
            link.stop()
        publish_s = time.perf_counter() - t1
        lat.sort()
        print(
            json.dumps(
                {
                    "events": a.count,
                    "emit_per_s": round(a.count / emit_s, 1),
                    "emit_p50_ms": round(1000 * lat[len(lat) // 2], 3),
                    "emit_p99_ms": round(1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3),
                    "publish_per_s": round(a.count / publish_s, 1),
                    "max_inflight": a.max_inflight,
                    "drained": drained,
                    "payload_bytes": payload_bytes,
                    "state_fs": a.dir or tempfile.gettempdir(),
                }
            )
        )
    return 0 if drained else 1


def tool_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.measure.burst")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("publish-burst", help="create N signed events and publish them (tests)")
    b.add_argument("--state-dir", required=True)
    b.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    b.add_argument("--count", type=int, required=True)
    b.add_argument("--device", default="kiosk-burst")
    b.add_argument("--site", default="lab")
    b.add_argument("--type", default="door.unlock", choices=sorted(BURST_FIELDS))
    b.add_argument("--rate", type=float, default=0.0, help="events/s, 0 = as fast as possible")
    b.add_argument("--timeout", type=float, default=120.0)
    b.add_argument("--max-inflight", type=int, default=20)
    b.add_argument("--ca-file")
    b.add_argument("--cert-file")
    b.add_argument("--key-file")
    b.add_argument("--backend-public-key", default="", metavar="HEX",
                   help="settle by the backend's signed receipts (drain waits for them)")
    b.add_argument("--resend-min-s", type=float, default=5.0,
                   help="first back-off before an unsettled event is published again")
    b.add_argument("--resend-max-s", type=float, default=300.0, help="cap of that back-off")
    b.add_argument("--seed", type=int, default=None, help="seed of the back-off jitter")
    b.add_argument("--username")
    b.add_argument("--password-file")
    m = sub.add_parser("bench", help="measure durable emit rate and publish rate (JSON)")
    m.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    m.add_argument("--count", type=int, default=2000)
    m.add_argument("--max-inflight", type=int, default=20)
    m.add_argument("--timeout", type=float, default=120.0)
    m.add_argument("--dir", help="where the temporary outbox lives (default: $TMPDIR)")
    m.add_argument("--ca-file")
    k = sub.add_parser("pubkey", help="print the device's signing public key (hex)")
    k.add_argument("--state-dir", required=True)
    k.add_argument("--device", default="kiosk-burst")
    a = p.parse_args(argv)
    try:
        if a.cmd == "bench":
            return _bench(a)
        if a.cmd == "pubkey":
            keys = _keys(Path(a.state_dir), a.device)
            print(public_keys(keys)["signing_public"])
            return 0
        return _burst(a)
    except FacegateError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(tool_main(sys.argv[1:]))
