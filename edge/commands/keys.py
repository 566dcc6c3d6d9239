"""`facegate keys init | public`: create the device identity, print its public half."""

from __future__ import annotations

import argparse
import json

from edge.config import Config
from edge.trust.keys import init_keys, keys_dir, load_keys, public_keys


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.action == "init":
        keys = init_keys(cfg.state_dir, cfg.device.id)
        print(f"created device keys in {keys_dir(cfg.state_dir)}")
    else:
        keys = load_keys(cfg.state_dir, cfg.device.id)
    # Only public keys are printed: they register the device with the backend.
    print(json.dumps(public_keys(keys), sort_keys=True))
    return 0
