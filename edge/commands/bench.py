"""`facegate bench [--source URI] [--frames N] [--threads N] [--embed-every N] [--json OUT]`:
per-stage timing; `facegate bench --soak MINUTES [--source URI] [--json OUT]`: the kiosk loop's
memory over a long replay (edge.kiosk.soak)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge.camera import open_source
from edge.camera.lease import borrowed_if_kiosks
from edge.commands._output import check_json_target, write_json
from edge.config import Config
from edge.errors import DataError
from edge.measure.bench import EMBED_EVERY, default_source, run_bench


def looped_frames(uri: str, cfg: Config) -> Iterator[tuple[NDArray[np.uint8], float, int]]:
    """(image, t_s, index) from the source as fast as it decodes, replaying a file from the
    start when it ends, with time running on (the blink detector needs monotonic time).

    A video is decoded on one thread inside each read: the decoder's default frame threads keep
    decoding ahead while the stages run, and on a 2-core board that steals the timed core."""
    offset, index = 0.0, 0
    while True:
        last_t = None
        with open_source(uri, cfg.camera, realtime=False, decode_threads=1) as source:
            for frame in source:
                if last_t is None:
                    first_t = frame.t_monotonic
                last_t = frame.t_monotonic - first_t
                yield frame.image, offset + last_t, index
                index += 1
        if last_t is None:
            return
        offset += last_t + 1.0 / 30


def run(args: argparse.Namespace, cfg: Config) -> int:
    check_json_target(args.json_out)
    if getattr(args, "soak", None) is not None:
        return _soak(args, cfg)
    every = EMBED_EVERY if args.embed_every is None else args.embed_every
    if args.frames < 1 or not 1 <= args.threads <= 64:
        raise DataError("--frames must be >= 1 and --threads within 1..64")
    if every < 1:
        raise DataError(f"--embed-every {every}: give N >= 1 (1 embeds every frame)")
    uri = args.source or default_source()
    with borrowed_if_kiosks(uri, cfg.camera.source, cfg.state_dir):  # edge/camera/lease.py
        frames = looped_frames(uri, cfg)
        result = {"source": uri, **run_bench(frames, cfg, args.frames, args.threads, every)}
    text = json.dumps(result, indent=2)
    if args.json_out:
        write_json(Path(args.json_out), text)
    sys.stdout.write(text + "\n")
    return 0


def _soak(args: argparse.Namespace, cfg: Config) -> int:
    """The soak JSON; exit 0 (the figures are judged by whoever runs it: DESIGN §7)."""
    from edge.camera.demo import default_source_uri
    from edge.kiosk.soak import run_soak

    uri = args.source or default_source_uri()
    result = run_soak(cfg, uri, args.soak)
    text = json.dumps(result, indent=2)
    if args.json_out:
        write_json(Path(args.json_out), text)
    sys.stdout.write(text + "\n")
    return 0
