"""`facegate eval lfw --pairs F --images DIR [--json OUT] [--plot PNG] [--limit N]`.

Runs the kiosk's own vision pipeline on every image of the pair list and reports accuracy at
the threshold shipped in the config (DESIGN.md §4 fields plus extras).  `--calibrate` instead
prints the thresholds derived from the given (training) pairs; `--model` and `--no-flip`
evaluate alternatives (another embedder file, no mirrored-chip averaging) without changing
what ships.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge.commands._output import check_json_target, write_json
from edge.config import Config
from edge.errors import DataError
from edge.measure import eval_lfw as ev
from edge.vision.embed import Embedder
from edge.vision.models import EMBEDDER, model_path
from edge.vision.pipeline import VisionPipeline
from edge.vision.types import Embedding


def _embed_fn(pipe: VisionPipeline) -> ev.EmbedFn:
    def embed(img: NDArray[np.uint8]) -> Embedding | None:
        faces = [o for o in pipe.observe(img) if o.landmarks is not None]
        if not faces:
            return None
        # LFW centres the labelled person: of several faces, take the one nearest the centre.
        cx, cy = img.shape[1] / 2, img.shape[0] / 2
        obs = min(faces, key=lambda o: (o.box.x1 + o.box.x2 - 2 * cx) ** 2
                  + (o.box.y1 + o.box.y2 - 2 * cy) ** 2)
        assert obs.landmarks is not None
        return pipe.embed(img, obs.landmarks)

    return embed


def run(args: argparse.Namespace, cfg: Config) -> int:
    check_json_target(args.json_out)
    pairs_file, images = Path(args.pairs), Path(args.images)
    if not images.is_dir():
        raise DataError(f"--images {images} is not a folder; give the LFW images/ folder")
    pairs = ev.read_pairs(pairs_file)
    if args.limit is not None:
        if args.limit < 1:
            raise DataError(f"--limit {args.limit} must be at least 1")
        pairs = ev.balanced_subset(pairs, args.limit)
    missing = [k for p in pairs for k in (p.a, p.b) if not ev.image_path(images, k).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} images of {pairs_file.name} are missing under {images} "
            f"(first: {ev.image_path(images, missing[0])}); give the matching images/ folder"
        )
    embedder_path = Path(args.model) if args.model else model_path(cfg.models_dir, EMBEDDER)
    pipe = VisionPipeline.from_config(cfg, with_embedder=False)
    pipe.embedder = Embedder(embedder_path, cfg.vision.threads, flip_tta=not args.no_flip)

    keys = [k for p in pairs for k in (p.a, p.b)]
    emb, ms = ev.embed_images(keys, images, _embed_fn(pipe))
    if args.calibrate:
        result = ev.calibrate(pairs, emb)
    else:
        scores = ev.pair_scores(pairs, emb)
        thr, pay = float(cfg.verify.threshold), float(cfg.verify.payment_threshold)
        result = ev.summarize(pairs, scores, thr, pay)
        result["per_pair_ms"] = round(float(np.mean([ms[p.a] + ms[p.b] for p in pairs])), 2)
    result["images"] = len(emb)
    result["no_face"] = sum(1 for v in emb.values() if v is None)
    result["per_image_ms_p50"] = round(float(np.median(list(ms.values()))), 2)
    result["model"] = embedder_path.name
    result["flip_tta"] = not args.no_flip
    result["threads"] = cfg.vision.threads
    if args.plot and not args.calibrate:
        same = np.array([p.same for p in pairs])
        far, tar, _ = ev.roc(scores, same)
        gen, imp = scores[same], scores[~same]
        marks = {
            f"verify threshold {thr:.3f}": (ev.rate(imp, thr), ev.rate(gen, thr)),
            f"payment threshold {pay:.3f}": (ev.rate(imp, pay), ev.rate(gen, pay)),
        }
        ev.plot_roc(Path(args.plot), far, tar, marks)
    text = json.dumps(result, indent=2)
    if args.json_out:
        write_json(Path(args.json_out), text)
    sys.stdout.write(text + "\n")
    if args.calibrate:
        return 0
    return 0 if float(result["accuracy"]) >= ev.TARGET_ACCURACY else 1  # type: ignore[arg-type]
