"""Compare alignment / model / flip-TTA options on a TRAINING pair list (never the dev pairs).

    .venv/bin/python models/tools/eval_variants.py --pairs ../shared/data/lfw/pairsDevTrain.txt \
        --images ../shared/data/lfw/images --mesh-chip /tmp/mesh_chip.npz \
        [--float-model /tmp/face_embedding_float32.tflite]

FaceMesh runs once per image; each variant then re-aligns and re-embeds.  `--mesh-chip` is the
mean chip position of every FaceMesh point in dlib's chips (derive_chip_points.py --mesh-out).
Prints one JSON line per variant: best accuracy on these pairs, AUC, EER, TAR at FAR 1e-3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edge.config import load_config  # noqa: E402
from edge.measure import eval_lfw as ev  # noqa: E402
from edge.vision import align  # noqa: E402
from edge.vision.embed import Embedder  # noqa: E402
from edge.vision.models import EMBEDDER, model_path  # noqa: E402
from edge.vision.pipeline import VisionPipeline  # noqa: E402

R_EYE, L_EYE = list(align.RIGHT_EYE_CONTOUR), list(align.LEFT_EYE_CONTOUR)


def weighted_similarity(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> np.ndarray:
    w = w / w.sum()
    ms, md = w @ src, w @ dst
    sc, dc = src - ms, dst - md
    var = float(w @ (sc**2).sum(1))
    cov = (dc * w[:, None]).T @ sc
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[1, 1] = -1
    rot = u @ fix @ vt
    scale = float(np.trace(np.diag(sig) @ fix)) / var
    return np.hstack([scale * rot, (md - scale * rot @ ms)[:, None]])


def groups(mesh_mean: np.ndarray) -> dict[str, tuple[list[list[int]], np.ndarray]]:
    """name -> (point groups averaged into one point each, their chip targets)."""
    def tg(gs: list[list[int]]) -> tuple[list[list[int]], np.ndarray]:
        return gs, np.array([mesh_mean[g].mean(0) for g in gs])

    five = [R_EYE, L_EYE, [align.NOSE_TIP], [align.MOUTH_RIGHT], [align.MOUTH_LEFT]]
    dlib_like = [[33], [133], [263], [362], [2]]  # eye corners + base of the nose, as dlib's 5
    rigid = [[i] for i in (33, 133, 263, 362, 6, 168, 197, 195, 5, 4, 1, 2, 98, 327, 61, 291,
                           70, 300, 105, 334, 159, 145, 386, 374)]
    return {
        "five_eqw": tg(five),
        "dlib_like": tg(dlib_like),
        "rigid24": tg(rigid),
        "all468": tg([[i] for i in range(468)]),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--mesh-chip", type=Path, required=True)
    ap.add_argument("--float-model", type=Path)
    ap.add_argument("--variants", default="five_eqw,five_eyes2,dlib_like,rigid24,all468")
    ap.add_argument("--flip", action="store_true", help="also try flip TTA on the first variant")
    args = ap.parse_args()
    cfg = load_config(None)
    pipe = VisionPipeline.from_config(cfg, with_embedder=False)
    pairs = ev.read_pairs(args.pairs)
    keys = sorted({k for p in pairs for k in (p.a, p.b)})
    t0 = time.perf_counter()
    marks: dict[str, np.ndarray | None] = {}
    for k in keys:
        img = ev.read_rgb(ev.image_path(args.images, k))
        faces = [o for o in pipe.observe(img) if o.landmarks is not None]
        if not faces:
            marks[k] = None
            continue
        c = np.array(img.shape[1::-1]) / 2
        o = min(faces, key=lambda o: float(np.sum((np.array([o.box.x1 + o.box.x2,
                                                             o.box.y1 + o.box.y2]) / 2 - c) ** 2)))
        assert o.landmarks is not None
        marks[k] = o.landmarks.points[:, :2].astype(np.float64)
    print(f"mesh on {len(keys)} images in {time.perf_counter() - t0:.0f}s, "
          f"no face {sum(v is None for v in marks.values())}", file=sys.stderr, flush=True)
    mesh_mean = np.load(args.mesh_chip)["mean"]
    gdefs = groups(mesh_mean)
    gdefs["five_eyes2"] = gdefs["five_eqw"]
    models = {"int8": model_path(cfg.models_dir, EMBEDDER)}
    if args.float_model:
        models["float32"] = args.float_model
    same = np.array([p.same for p in pairs])
    runs = [(v, m, False) for v in args.variants.split(",") for m in models]
    if args.flip:
        runs += [(args.variants.split(",")[0], m, True) for m in models]
    for vname, mname, flip in runs:
        gs, target = gdefs[vname]
        w = np.ones(len(gs))
        if vname == "five_eyes2":
            w[:2] = 2.0
        emb_model = Embedder(models[mname], 1, flip_tta=flip)
        emb: dict[str, np.ndarray | None] = {}
        for k in keys:
            pts = marks[k]
            if pts is None:
                emb[k] = None
                continue
            src = np.array([pts[g].mean(0) for g in gs])
            m = weighted_similarity(src, target, w)
            img = ev.read_rgb(ev.image_path(args.images, k))
            size = (align.CHIP_SIZE, align.CHIP_SIZE)
            chip = cv2.warpAffine(img, m, size, flags=cv2.INTER_LINEAR)
            emb[k] = emb_model.embed(chip)
        scores = ev.pair_scores(pairs, emb)
        thr, acc = ev.best_threshold(scores, same)
        s = ev.summarize(pairs, scores, thr, 1.0)
        print(json.dumps({"variant": vname, "model": mname, "flip": flip, "best_acc": round(acc, 5),
                          "best_thr": round(thr, 4), "auc": s["auc"], "eer": s["eer"],
                          "tar_at_far": s["tar_at_far"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
