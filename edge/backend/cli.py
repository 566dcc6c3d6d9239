"""`facegate-backend`: run a verifier worker, manage keys and devices, issue claim tokens, print
the ledger."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from edge.backend.claim_tokens import DEFAULT_TTL_S, MIN_TTL_S
from edge.errors import ConfigError, FacegateError
from edge.trust.claim_tokens import MAX_TTL_S

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_DB = "facegate-ledger.db"


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=os.environ.get("FACEGATE_BACKEND_DB", DEFAULT_DB),
        metavar="PATH|URL",
        help="SQLite file or postgresql://… URL (default $FACEGATE_BACKEND_DB or ./%(default)s)",
    )


def _key_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key-dir", default="", metavar="DIR",
        help="directory of backend-signing.key (default $FACEGATE_BACKEND_KEYS)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facegate-backend", description="facegate reference backend: verify and book events"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="subscribe to events and book them into the ledger")
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt://host:port | mqtts://…")
    _db_arg(p)
    p.add_argument("--ca", default="", metavar="FILE", help="CA that signed the broker cert")
    p.add_argument("--cert", default="", metavar="FILE", help="client certificate (mTLS)")
    p.add_argument("--key", default="", metavar="FILE", help="client private key (mTLS)")
    p.add_argument("--username", default="", help="MQTT username (with --password-file)")
    p.add_argument(
        "--password-file", default="", metavar="FILE",
        help="file (mode 0600) or $CREDENTIALS_DIRECTORY credential holding the MQTT password",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=500, metavar="N",
                   help="messages per ledger transaction at most (default %(default)s)")
    p.add_argument("--batch-wait-ms", type=float, default=20.0, metavar="MS",
                   help="commit a partial batch once its oldest message waited this long")
    p.add_argument("--latency-file", default="", help=argparse.SUPPRESS)  # bench only
    p.add_argument(
        "--client-id", default="", help="stable per worker: a restart resumes its broker session"
    )
    p.add_argument("--group", default="backend", help="shared-subscription group name")
    p.add_argument("--max-bytes", type=int, default=0, metavar="N", help="oversize limit")
    p.add_argument("--session-expiry", type=int, default=7 * 86400, metavar="S")
    p.add_argument("--stats-every", type=float, default=30.0, metavar="S")
    _key_dir_arg(p)  # signs settlement receipts; without one devices never settle (warned)

    p = sub.add_parser("ledger", help="totals per type and device, amounts per currency")
    _db_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("devices", help="registry of device public keys")
    dsub = p.add_subparsers(dest="action", required=True)
    a = dsub.add_parser("add", help="register or re-key a device")
    a.add_argument("name")
    a.add_argument("pubkey", help="64 hex chars: signing_public from `facegate keys public`")
    a.add_argument("--site", required=True,
                   help="the device's site ([device] site); its events must carry it")
    _db_arg(a)
    a = dsub.add_parser("list", help="registered devices and keys")
    a.add_argument("--json", action="store_true")
    _db_arg(a)
    a = dsub.add_parser("remove", help="forget a device (its events are then refused)")
    a.add_argument("name")
    _db_arg(a)

    p = sub.add_parser("keys", help="the backend's Ed25519 signing key")
    ksub = p.add_subparsers(dest="action", required=True)
    for action, text in (("init", "create the key (never overwrites); print its public hex"),
                         ("public", "print the public key (hex) for [backend] public_key")):
        a = ksub.add_parser(action, help=text)
        _key_dir_arg(a)

    p = sub.add_parser("claims", help="QR claim tokens for riders")
    csub = p.add_subparsers(dest="action", required=True)
    a = csub.add_parser("issue", help="print a signed claim token (and write its QR code)")
    a.add_argument("subject", help="the rider's pseudonymous subject id")
    a.add_argument("--ttl", type=float, default=DEFAULT_TTL_S, metavar="S",
                   help=f"seconds the token is valid ({MIN_TTL_S}..{MAX_TTL_S}, "
                        "default %(default)g)")  # fmt: skip
    a.add_argument("--png", default="", metavar="FILE", help="also write its QR code (PNG)")
    _key_dir_arg(a)

    p = sub.add_parser("bench", help="events/s and latency: outbox → broker → 2 workers → ledger")
    p.add_argument("--broker", default="", metavar="URL", help="default: a private mosquitto")
    p.add_argument("--db", default="", metavar="PATH|URL", help="default: SQLite in a tmp dir")
    p.add_argument("--events", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rate", type=float, default=0.0, help="events/s created; 0 = flat out")
    p.add_argument("--max-inflight", type=int, default=20, help="publisher's QoS 1 window")
    p.add_argument("--devices", type=int, default=1, help="kiosk publishers, one device each")
    p.add_argument(
        "--backend-only", action="store_true",
        help="queue all events first, then time the workers draining them",
    )  # fmt: skip
    p.add_argument("--json", default="", metavar="OUT", help="also write the JSON here")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from edge.backend.devices import KeyCache
    from edge.backend.ledger import Ledger
    from edge.backend.worker import (
        DEFAULT_MAX_BYTES,
        EventHandler,
        WorkerOptions,
        run_worker,
    )
    from edge.transport.broker_url import BrokerUrl
    from edge.transport.credentials import read_password

    broker = BrokerUrl.parse(args.broker)
    for flag, path in (("--ca", args.ca), ("--cert", args.cert), ("--key", args.key)):
        if path and not os.path.isfile(path):
            raise ConfigError([f"{flag} {path}: no such file; give the PEM file path"])
    if not 0 <= args.max_bytes <= 16 * 1024 * 1024:
        raise ConfigError([f"--max-bytes {args.max_bytes}: use 1..16777216 (0 = 4096)"])
    if not 0 <= args.session_expiry <= 0xFFFFFFFF:
        raise ConfigError([f"--session-expiry {args.session_expiry}: use 0..4294967295 s"])
    if bool(args.cert) != bool(args.key):
        raise ConfigError(["--cert and --key go together (mutual TLS); give both or neither"])
    if bool(args.username) != bool(args.password_file):
        raise ConfigError(["--username and --password-file go together; give both or neither"])
    if not 1 <= args.batch_size <= 10_000:
        raise ConfigError([f"--batch-size {args.batch_size}: use 1..10000"])
    if not 0 <= args.batch_wait_ms <= 10_000:
        raise ConfigError([f"--batch-wait-ms {args.batch_wait_ms:g}: use 0..10000"])
    password = read_password(args.password_file, "--password-file") if args.username else ""
    options = WorkerOptions(broker=broker, ca_file=args.ca, cert_file=args.cert,
                            key_file=args.key, username=args.username, password=password,
                            group=args.group, session_expiry_s=args.session_expiry,
                            batch_size=args.batch_size, batch_wait_s=args.batch_wait_ms / 1000,
                            latency_file=args.latency_file)  # fmt: skip
    if args.client_id:
        options = dataclasses.replace(options, client_id=args.client_id)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("facegate.backend").info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    receipts = _receipt_publisher(args.key_dir)
    with Ledger(args.db, app_name=f"facegate-backend {options.client_id}") as ledger:
        handler = EventHandler(ledger, KeyCache(ledger), args.max_bytes or DEFAULT_MAX_BYTES)
        return run_worker(
            handler, options, stop, stats_every_s=args.stats_every, receipts=receipts
        )


def _receipt_publisher(key_dir: str) -> Any:
    """Receipts signed with the backend key in --key-dir / $FACEGATE_BACKEND_KEYS; None when
    neither is given (the worker warns: kiosks with a [backend] public_key never settle)."""
    from edge.backend.keys import ENV_BACKEND_KEYS, backend_key_dir, load_backend_key_dir
    from edge.backend.receipts import ReceiptPublisher

    if not key_dir and not os.environ.get(ENV_BACKEND_KEYS):
        return None
    return ReceiptPublisher(load_backend_key_dir(backend_key_dir(key_dir)))


def _print_totals(t: dict[str, Any]) -> None:
    print(f"events booked: {t['events']}")
    for r in t["by_type_device"]:
        print(f"  {r['type']:<18} {r['device']:<24} {r['count']:>9}")
    if t["amounts"]:
        print("amounts (minor units):")
        for r in t["amounts"]:
            print(f"  {r['type']:<18} {r['device']:<24} {r['currency']} {r['amount']:>12}")
        for cur, amount in t["amount_per_currency"].items():
            print(f"  total {cur} {amount}")
    if t["rejections"]:
        print("refused (not booked):")
        for reason, n in t["rejections"].items():
            print(f"  {reason:<18} {n:>9}")
    if t["voided"]:
        print("voided (the relay failed after the accept; amount left out of the totals):")
        for v in t["voided"]:
            money = f"{v['currency']} {v['amount']}" if v["amount"] is not None else "-"
            print(f"  {v['device']}:{v['seq']:<10} {v['type'] or '(not booked yet)':<18} "
                  f"{money:<16} {v['reason']} (fault {v['fault_seq']})")
    print(f"replay alerts: {t['alerts']}")


def _cmd_ledger(args: argparse.Namespace) -> int:
    from edge.backend.ledger import Ledger, LedgerError, is_postgres_url

    if not is_postgres_url(args.db) and not os.path.exists(args.db):
        raise LedgerError(f"no ledger at {args.db}; pass --db PATH|URL of the workers' ledger")
    with Ledger(args.db) as ledger:
        totals = ledger.totals()
    if args.json:
        print(json.dumps(totals, sort_keys=True))
    else:
        _print_totals(totals)
    return EXIT_OK


def _cmd_devices(args: argparse.Namespace) -> int:
    from edge.backend.devices import add_device, list_devices, remove_device
    from edge.backend.ledger import Ledger

    with Ledger(args.db) as ledger:
        if args.action == "add":
            add_device(ledger, args.name, args.pubkey, args.site)
            print(f"device {args.name} registered at site {args.site}")
        elif args.action == "remove":
            if not remove_device(ledger, args.name):
                print(f"device {args.name} is not registered", file=sys.stderr)
                return EXIT_FAIL
            print(f"device {args.name} removed")
        else:
            devices = list_devices(ledger)
            if args.json:
                print(json.dumps([d.__dict__ for d in devices], sort_keys=True))
            for d in [] if args.json else devices:
                print(f"{d.name}\t{d.site or '(no site: register again with --site)'}"
                      f"\t{d.public_key_hex}")  # fmt: skip
    return EXIT_OK


def _cmd_keys(args: argparse.Namespace) -> int:
    from edge.backend.keys import (
        backend_key_dir,
        backend_public_hex,
        generate_backend_keys,
        load_backend_key_dir,
    )

    directory = backend_key_dir(args.key_dir)
    if args.action == "init":
        key = generate_backend_keys(directory)
    else:
        key = load_backend_key_dir(directory)
    print(backend_public_hex(key))
    return EXIT_OK


def _png_target(raw: str) -> Path:
    path = Path(raw)
    if path.suffix.lower() != ".png":
        raise ConfigError([f"--png {raw}: the QR code is written as PNG only; name it *.png"])
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK) or path.is_dir():
        raise ConfigError([f"--png {raw}: cannot write there; give a file in a writable directory"])
    return path


def _cmd_claims(args: argparse.Namespace) -> int:
    import time

    from edge.backend.claim_tokens import issue_claim_token, qr_image
    from edge.backend.keys import backend_key_dir, load_backend_key_dir
    from edge.ids import id_problem

    problem = id_problem("subject", args.subject)
    if problem:
        raise ConfigError([f"{problem} (the rider's pseudonymous subject id)"])
    if not MIN_TTL_S <= args.ttl <= MAX_TTL_S:
        raise ConfigError([f"--ttl {args.ttl:g}: use {MIN_TTL_S}..{MAX_TTL_S} seconds"])
    png = _png_target(args.png) if args.png else None
    key = load_backend_key_dir(backend_key_dir(args.key_dir))
    token = issue_claim_token(key, args.subject, args.ttl, time.time())
    if png is not None:
        import cv2

        try:
            written = bool(cv2.imwrite(str(png), qr_image(token)))
        except cv2.error:
            written = False
        if not written:
            raise ConfigError([f"--png {args.png}: could not write the PNG; check the path"])
    print(token)
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from edge.backend.bench import run_bench

    result = run_bench(
        args.broker, args.db, args.events, args.workers, args.rate, args.max_inflight,
        backend_only=args.backend_only, n_devices=args.devices,
    )
    text = json.dumps(result, sort_keys=True, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    ok = result["lost"] == 0 and result["duplicates_booked"] == 0
    return EXIT_OK if ok else EXIT_FAIL


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `facegate-backend` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    commands = {"run": _cmd_run, "ledger": _cmd_ledger, "devices": _cmd_devices,
                "keys": _cmd_keys, "claims": _cmd_claims, "bench": _cmd_bench}  # fmt: skip
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return exc.exit_code
    except FacegateError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
