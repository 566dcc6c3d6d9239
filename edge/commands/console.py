"""`facegate console`: the technician serial console (or PIN/code provisioning helpers)."""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
import threading

from edge.config import ENV_CONFIG, Config
from edge.console.auth import AuthStore, hash_pin
from edge.console.serial_io import SerialLineIO
from edge.console.session import Console
from edge.errors import FacegateError


class ConsoleError(FacegateError):
    prefix = "console error"


def run(args: argparse.Namespace, cfg: Config) -> int:
    import time

    if getattr(args, "hash_pin", False):
        pin = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else getpass.getpass()
        try:
            print(hash_pin(pin))
        except ValueError as exc:
            raise ConsoleError(f"{exc}; choose another PIN") from None
        print("put this line in the config as [console] pin_hash", file=sys.stderr)
        return 0
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    auth = AuthStore(cfg.state_dir, cfg.console, time.time)
    if getattr(args, "new_codes", None) is not None:
        for code in auth.issue_codes(args.new_codes):
            print(code)
        return 0
    if not cfg.console.pin_hash and not auth.codes_path.exists():
        raise ConsoleError(
            "no technician PIN configured; run `facegate console --hash-pin` and set "
            "[console] pin_hash, or issue codes with `facegate console --new-codes 5`"
        )
    port_name = args.port or cfg.console.port
    if not port_name:
        raise ConsoleError("no serial port; pass --port /dev/ttyS0 or set [console] port")

    import serial

    from edge.console.services import DeviceServices
    from edge.transport.outbox import Outbox
    from edge.trust.events import EventFactory
    from edge.trust.keys import load_keys

    keys = load_keys(cfg.state_dir, cfg.device.id)
    try:
        port = serial.Serial(port_name, args.baud or cfg.console.baud, timeout=0.2)
    except (serial.SerialException, OSError) as exc:
        raise ConsoleError(f"cannot open serial port {port_name} ({exc}); check the device "
                           "name and that the service user is in group 'dialout'") from None
    outbox = Outbox(cfg.state_dir / "outbox.db", cfg.outbox.max_events)
    factory = EventFactory(cfg.device.id, cfg.device.site, keys.signing_key)

    def audit(action: str, ok: bool, detail: str, subject: str = "") -> None:
        fields: dict[str, object] = {"action": action, "ok": ok, "actor": "technician"}
        if detail:
            fields["detail"] = detail
        if subject:
            fields["subject"] = subject
        outbox.emit(factory, "console.audit", **fields)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # The enrolment child must read the same config (device id, keys, camera) as this console.
    config_path = getattr(args, "config", None) or os.environ.get(ENV_CONFIG) or None
    services = DeviceServices(cfg, keys, outbox, config_path)
    console = Console(SerialLineIO(port), services, auth, audit)
    try:
        console.serve(stop.is_set)
    except KeyboardInterrupt:
        pass
    except (serial.SerialException, OSError) as exc:  # unplugged adapter, hung-up line
        raise ConsoleError(f"lost serial port {port_name} ({exc}); check the cable or adapter "
                           "(systemd restarts the console)") from None
    finally:
        port.close()
        outbox.close()
    return 0
