"""`facegate eval lfw --pairs F --images DIR [--json OUT] [--plot PNG] [--limit N]`.

Runs the kiosk's own vision pipeline on every image of the pair list and reports accuracy at
the threshold shipped in the config (DESIGN.md §4 fields plus extras).  `--calibrate` instead
prints the thresholds derived from the given (training) pairs; `--model` and `--tta`
evaluate alternatives (another embedder file; mirrored-chip averaging `always`, `off` (=
`--no-flip`) or `adaptive`: the probe's mirror only when its first score lies within
`vision.flip_tta_margin` of the threshold in use, as the kiosk does) without changing what
ships. `--tta adaptive` also reports the always-TTA figures of the same run and the share of
probes that needed the mirror; with `--calibrate`, how far the mirror moves a score (the
distribution the margin is read from).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.commands._output import check_json_target, write_json
from edge.config import Config
from edge.errors import DataError
from edge.measure import eval_lfw as ev
from edge.vision.align import align_chip, five_points
from edge.vision.embed import Embedder, mirror, unit
from edge.vision.models import EMBEDDER, model_path
from edge.vision.pipeline import VisionPipeline
from edge.vision.types import Embedding


def _centre_landmarks(pipe: VisionPipeline, img: NDArray[np.uint8]) -> Any | None:
    """LFW centres the labelled person: of several faces, the landmarks of the one nearest the
    centre (None when no face has landmarks)."""
    faces = [o for o in pipe.observe(img) if o.landmarks is not None]
    if not faces:
        return None
    cx, cy = img.shape[1] / 2, img.shape[0] / 2
    obs = min(faces, key=lambda o: (o.box.x1 + o.box.x2 - 2 * cx) ** 2
              + (o.box.y1 + o.box.y2 - 2 * cy) ** 2)  # fmt: skip
    return obs.landmarks


def _embed_fn(pipe: VisionPipeline) -> ev.EmbedFn:
    def embed(img: NDArray[np.uint8]) -> Embedding | None:
        landmarks = _centre_landmarks(pipe, img)
        return None if landmarks is None else pipe.embed(img, landmarks)

    return embed


def _embed_both_fn(
    pipe: VisionPipeline, embedder: Embedder, single: dict[int, Embedding]
) -> ev.EmbedFn:
    """Full-TTA embedding of each image; its one-chip embedding lands in `single` keyed by the
    id of the full one (both from the same chip: the mirror is the only difference)."""

    def embed(img: NDArray[np.uint8]) -> Embedding | None:
        landmarks = _centre_landmarks(pipe, img)
        if landmarks is None:
            return None
        chip = align_chip(img, five_points(landmarks))
        first = embedder.raw(chip)
        full = unit(first + embedder.raw(mirror(chip)))
        single[id(full)] = unit(first)
        return full

    return embed


def _tta_mode(args: argparse.Namespace) -> str:
    mode = str(getattr(args, "tta", None) or ("off" if args.no_flip else "always"))
    if args.no_flip and mode != "off":
        raise DataError(f"--no-flip and --tta {mode} disagree; give one of them")
    return mode


def _adaptive(
    result: dict[str, object],
    pairs: list[ev.Pair],
    emb: dict[str, Embedding | None],
    single: dict[str, Embedding | None],
    cfg: Config,
) -> NDArray[np.float64]:
    """Replace the figures of `result` (always TTA) by adaptive TTA's; keep the former under
    `always_tta`. Returns the scores at the verification threshold (for the plot)."""
    thr, pay = float(cfg.verify.threshold), float(cfg.verify.payment_threshold)
    margin = float(cfg.vision.flip_tta_margin)
    s_thr, m_thr = ev.adaptive_scores(pairs, emb, single, thr, margin)
    s_pay, m_pay = ev.adaptive_scores(pairs, emb, single, pay, margin)
    always = {k: result[k] for k in ("accuracy", "payment_tar", "payment_far", "auc")}
    adaptive = ev.summarize(pairs, s_thr, thr, pay)
    same = np.array([p.same for p in pairs])
    gen, imp = s_pay[same], s_pay[~same]
    adaptive["payment_tar"] = round(ev.rate(gen, pay), 5)
    adaptive["payment_far"] = round(ev.rate(imp, pay), 6)
    result.update(adaptive)
    result["always_tta"] = always
    result["tta_margin"] = margin
    scored = max(1, int((~np.isnan(s_thr)).sum()))
    result["mirror_fraction"] = {
        "verify": round(float(m_thr.sum()) / scored, 4),
        "payment": round(float(m_pay.sum()) / scored, 4),
    }
    return s_thr


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
    mode = _tta_mode(args)
    pipe = VisionPipeline.from_config(cfg, with_embedder=False)
    embedder = Embedder(embedder_path, cfg.vision.threads, flip_tta=mode != "off")
    pipe.embedder = embedder

    keys = [k for p in pairs for k in (p.a, p.b)]
    by_id: dict[int, Embedding] = {}
    fn = _embed_both_fn(pipe, embedder, by_id) if mode == "adaptive" else _embed_fn(pipe)
    emb, ms = ev.embed_images(keys, images, fn)
    single = {k: None if v is None else by_id.get(id(v)) for k, v in emb.items()}
    thr, pay = float(cfg.verify.threshold), float(cfg.verify.payment_threshold)
    if args.calibrate:
        result = ev.calibrate(pairs, emb)
        if mode == "adaptive":
            result["mirror_shift"] = ev.mirror_shift(pairs, emb, single)
    else:
        scores = ev.pair_scores(pairs, emb)
        result = ev.summarize(pairs, scores, thr, pay)
        if mode == "adaptive":
            scores = _adaptive(result, pairs, emb, single, cfg)
        result["per_pair_ms"] = round(float(np.mean([ms[p.a] + ms[p.b] for p in pairs])), 2)
    result["images"] = len(emb)
    result["no_face"] = sum(1 for v in emb.values() if v is None)
    result["per_image_ms_p50"] = round(float(np.median(list(ms.values()))), 2)
    result["model"] = embedder_path.name
    result["flip_tta"] = mode != "off"
    result["tta"] = mode
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
