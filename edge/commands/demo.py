"""`facegate demo`: enrol, verify with a blink, reject a held-up still, sign and (with a local
broker) book the events, on the clip shipped inside the package (edge/kiosk/demo.py)."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from edge.config import Config
from edge.errors import FacegateError
from edge.kiosk.demo import run_demo


def run(args: argparse.Namespace, cfg: Config) -> int:
    # A fresh state directory each run: the demo provisions its own keys and template.
    state = Path(tempfile.mkdtemp(prefix="facegate-demo-"))
    dispatcher = None
    try:
        if not args.no_display:
            from edge.kiosk.display.dispatcher import Dispatcher
            from edge.kiosk.display.server import DisplayServer

            # The demo always shows its page: on [display] port, or any free port if taken.
            server = DisplayServer(cfg.display.port)
            try:
                server.start()
            except FacegateError:
                server = DisplayServer(0)
                server.start()
            dispatcher = Dispatcher([server])
            print(f"display page: {server.url}", flush=True)
        code = run_demo(cfg, state, dispatcher)
        if args.keep:
            print(f"state directory (keys, template, outbox, ledger): {state}")
        return code
    finally:
        if dispatcher is not None:
            dispatcher.stop()
        if not args.keep:
            shutil.rmtree(state, ignore_errors=True)
