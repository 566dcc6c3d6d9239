"""`facegate eval liveness --data DIR [--challenge always|never] [--json OUT] [--plot PNG]`.

Prints the JSON of DESIGN.md section 4 plus diagnostics: `blinks_found`, `blink_false_alarms`
(video and frames of each blink found where none is annotated), `open_eye_sessions` /
`open_eye_accepted` (live people who do not blink: must not pass), `blink_replay_sessions` /
`blink_replay_accepted` (the blink videos replayed with randomly timed prompts), rejection
`reasons`, `identity_check` (embedder loaded). Exit 1 when a target of the liveness issue is
missed, 2 on unusable data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge.commands._output import check_json_target, write_json
from edge.config import Config
from edge.measure.eval_liveness import Analyser, evaluate, meets_targets, plot_passive
from edge.vision.pipeline import VisionPipeline
from edge.vision.track import FaceTracker


def _load_pipeline(cfg: Config) -> VisionPipeline:
    """The pipeline with the embedder when its module and model are present (continuity
    similarity), otherwise without: liveness is evaluated either way."""
    from edge.errors import ModelError

    try:
        return VisionPipeline.from_config(cfg, with_embedder=True)
    except ModelError:
        return VisionPipeline.from_config(cfg, with_embedder=False)


def run(args: argparse.Namespace, cfg: Config) -> int:
    check_json_target(args.json_out)
    if args.plot:
        check_json_target(args.plot)
    # Faces tracked as the kiosk tracks them; embeddings of both chips, as before (the replayed
    # sessions compare them without the kiosk's adaptive refinement).
    vision = FaceTracker(_load_pipeline(cfg), cfg.vision.detect_every, one_chip=False)
    result = evaluate(Path(args.data), cfg, Analyser(vision), challenge=args.challenge)
    if args.plot:
        plot_passive(Path(args.plot), result)
    result.pop("_kinds", None)
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.json_out:
        write_json(Path(args.json_out), text)
    print(text)
    if not result["identity_check"]:
        print("note: embedder not available; sessions ran without the identity check",
              file=sys.stderr)
    return 0 if meets_targets(result) else 1
