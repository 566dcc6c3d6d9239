"""Diagnostic: the shipped int8 embedder on dlib's OWN chips (HOG + 5-point predictor) vs ours.

    /work/convert-venv/bin/python models/tools/dlib_alignment_check.py \
        --pairs ../shared/data/lfw/pairsDevTrain.txt --images ../shared/data/lfw/images

Answers "is FaceMesh alignment what limits accuracy?" on a training pair list.  Prints one
JSON line per setting (flip TTA off/on): best accuracy, AUC, EER, TAR at the lowest FARs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lfw_chips import DlibChipper  # noqa: E402

from edge.measure import eval_lfw as ev  # noqa: E402
from edge.vision.embed import Embedder  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=ROOT / "models/face_embedding_int8.tflite")
    args = ap.parse_args()
    pairs = ev.read_pairs(args.pairs)
    keys = sorted({k for p in pairs for k in (p.a, p.b)})
    chipper = DlibChipper()
    chips = {k: chipper.chip(ev.read_rgb(ev.image_path(args.images, k))) for k in keys}
    same = np.array([p.same for p in pairs])
    # ours: the shipped pipeline (BlazeFace + FaceMesh + align_chip), for the same pairs
    from edge.config import load_config
    from edge.vision.align import align_chip, five_points
    from edge.vision.pipeline import VisionPipeline

    pipe = VisionPipeline.from_config(load_config(None), with_embedder=False)
    ours: dict[str, np.ndarray | None] = {}
    for k in keys:
        img = ev.read_rgb(ev.image_path(args.images, k))
        faces = [o for o in pipe.observe(img) if o.landmarks is not None]
        c = np.array(img.shape[1::-1]) / 2
        best = min(faces, default=None, key=lambda o: float(np.sum(
            (np.array([o.box.x1 + o.box.x2, o.box.y1 + o.box.y2]) / 2 - c) ** 2)))
        ours[k] = None if best is None or best.landmarks is None else align_chip(
            img, five_points(best.landmarks))
    for flip in (False, True):
        emb_model = Embedder(args.model, 1, flip_tta=flip)
        both = ev.pair_scores(pairs, {k: (None if c is None else emb_model.embed(c))
                                      for k, c in chips.items()})
        found = ~np.isnan(both)
        mine = ev.pair_scores(pairs, {k: (None if c is None else emb_model.embed(c))
                                      for k, c in ours.items()})
        _, acc_mine = ev.best_threshold(mine[found], same[found])
        _, acc_all = ev.best_threshold(mine, same)
        print(json.dumps({"alignment": "ours (FaceMesh 5 points)", "flip": flip,
                          "best_acc": round(acc_all, 5), "pairs_dlib_found": int(found.sum()),
                          "best_acc_on_those": round(acc_mine, 5)}), flush=True)
    for flip in (False, True):
        emb_model = Embedder(args.model, 1, flip_tta=flip)
        emb = {k: (None if c is None else emb_model.embed(c)) for k, c in chips.items()}
        scores = ev.pair_scores(pairs, emb)
        thr, acc = ev.best_threshold(scores, same)
        s = ev.summarize(pairs, scores, thr, 1.0)
        found = ~np.isnan(scores)  # pairs where dlib's HOG found both faces
        _, acc_found = ev.best_threshold(scores[found], same[found])
        print(json.dumps({"alignment": "dlib HOG + 5-point + get_face_chip", "flip": flip,
                          "no_face": sum(c is None for c in chips.values()),
                          "best_acc": round(acc, 5), "best_thr": round(thr, 4), "auc": s["auc"],
                          "eer": s["eer"], "tar_at_far": s["tar_at_far"],
                          "pairs_with_faces": int(found.sum()),
                          "best_acc_on_those": round(acc_found, 5)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
