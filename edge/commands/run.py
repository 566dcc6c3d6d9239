"""`facegate run`: the kiosk loop."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

from edge.camera import open_source
from edge.config import Config
from edge.demo_source import default_source_uri
from edge.kiosk import Kiosk, install_signal_handlers


def _display(text: str) -> None:
    print(f"[kiosk] {text}", flush=True)


def run(args: argparse.Namespace, cfg: Config) -> int:
    uri = args.source or cfg.camera.source or default_source_uri()
    pipeline = None
    if importlib.util.find_spec("edge.vision.pipeline") is not None:
        from edge.vision.pipeline import VisionPipeline

        pipeline = VisionPipeline.from_config(cfg, with_embedder=False)
    with open_source(uri, cfg.camera) as source:
        kiosk = Kiosk(cfg, source, pipeline=pipeline, display=_display)
        install_signal_handlers(kiosk)
        stats = kiosk.run(max_frames=args.max_frames)
    summary = {
        "source": uri,
        "frames": stats.frames,
        "frames_with_face": stats.frames_with_face,
        "elapsed_s": round(stats.elapsed_s, 3),
    }
    print(json.dumps(summary), file=sys.stderr)
    return 0
