"""Can pixel motion tell a hand-held photo from a live face? (models/README.md, "Motion").

A photo moved by hand moves as one plane: registered onto an earlier frame with a homography,
its face region differs only by interpolation and noise. A live face also blinks, moves its
gaze and lips, and (being 3-D) shows parallax. This measures that residual on the developer
data, through the kiosk's tracker:

- every live video of an `eval liveness` folder (live_blink, live_open, unannotated);
- every still attack and every bona fide photo of `stills_live/`, hand-held (3 seeds each, the
  presentation `eval liveness` uses), and a seeded sample of LFW images as more photos.

Per frame: the face (1.3x the landmarks' extent) as a 128x128 grey crop. Per pair of frames
(a window's first frame and each frame 0.1 s apart after it, up to `--horizon` s): ECC
homography from the landmarks' similarity, over the face region; the residual after a Gaussian
blur (sigma 2 px) divided by the face's grey-level spread; its 99th percentile over the face.
Printed: the distribution of each window's largest residual per group, and for each threshold
how many windows exceed it (live: the share that shows motion in time; photos: must be none).

    .venv/bin/python models/tools/motion_study.py --data ../shared/data [--cache F]
"""

from __future__ import annotations

import argparse
import pickle
import random
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge.camera import read_image  # noqa: E402
from edge.config import Config  # noqa: E402
from edge.measure.eval_liveness import (  # noqa: E402
    Analyser,
    read_data,
    seeded,
    still_frames,
    video_frames,
)
from edge.vision.pipeline import VisionPipeline  # noqa: E402
from edge.vision.track import FaceTracker  # noqa: E402

SIZE = 128
LIVE_KINDS = ("live_blink", "live_open", "unannotated")
ECC = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)


def crops(analyser: Analyser, frames: Iterable[Any]) -> tuple[list[float], list[Any]]:
    """Frame times and, per frame, (grey face crop, landmarks in crop px) or None."""
    analyser.pipeline.reset()
    times, items = [], []
    for f in frames:
        rec = analyser.frame(f, embed=False)
        times.append(rec.t)
        faces = [o for o in rec.faces if o.landmarks is not None]
        if not faces:
            items.append(None)
            continue
        o = max(faces, key=lambda o: o.box.size_px)
        p = np.asarray(o.landmarks.points[:, :2], np.float64)
        centre, side = (p.min(0) + p.max(0)) / 2, 1.3 * float((p.max(0) - p.min(0)).max())
        k = SIZE / side
        m = np.array([[k, 0, SIZE / 2 - k * centre[0]], [0, k, SIZE / 2 - k * centre[1]]])
        grey = cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY)
        crop = cv2.warpAffine(grey, m, (SIZE, SIZE), flags=cv2.INTER_AREA if k < 1 else 1)
        items.append((crop, (p @ m[:, :2].T + m[:, 2]).astype(np.float32)))
    return times, items


def collect(data: Path, lfw_sample: int) -> dict[tuple[str, str], tuple[list[float], list[Any]]]:
    cfg = Config()
    analyser = Analyser(FaceTracker(VisionPipeline.from_config(cfg, with_pad=False), 2))
    root = data / "liveness"
    ld = read_data(root)
    out: dict[tuple[str, str], tuple[list[float], list[Any]]] = {}
    for v in ld.videos:
        if v.kind in LIVE_KINDS:
            out[("live", v.name)] = crops(analyser, video_frames(v.path, cfg))
    photos = [a.path for a in ld.attacks if a.presentation == "static"]
    photos += sorted((root / "stills_live").iterdir())
    for path in photos:
        image = read_image(path, str(path))
        for seed in range(3):
            frames = still_frames(image, 2.0, 30.0, seeded(seed, path.name, True), handheld=True)
            out[("photo", f"{path.name}#{seed}")] = crops(analyser, frames)
    images = sorted((data / "lfw" / "images").rglob("*.jpg"))
    for path in random.Random(7).sample(images, min(lfw_sample, len(images))):
        frames = still_frames(read_image(path, str(path)), 2.0, 30.0, seeded(1, path.name, True),
                              handheld=True)  # fmt: skip
        out[("lfw_photo", path.name)] = crops(analyser, frames)
    return out


def residual(a: Any, b: Any) -> float | None:
    """99th percentile of the blurred registration residual over the face (face spread units)."""
    (ca, pa), (cb, pb) = a, b
    sim, _ = cv2.estimateAffinePartial2D(pa, pb)
    if sim is None:
        return None
    warp = np.vstack([sim, [0, 0, 1]]).astype(np.float32)
    face = np.zeros(ca.shape, np.uint8)
    cv2.fillConvexPoly(face, cv2.convexHull(pa.astype(np.int32)), 255)
    face = cv2.erode(face, np.ones((7, 7), np.uint8))
    try:
        _, warp = cv2.findTransformECC(ca, cb, warp, cv2.MOTION_HOMOGRAPHY, ECC, face, 5)
    except cv2.error:
        return None
    flags = cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP
    aligned = cv2.warpPerspective(cb, warp, ca.shape[::-1], flags=flags).astype(np.float32)
    inside = cv2.warpPerspective(np.full(cb.shape, 255, np.uint8), warp, ca.shape[::-1], flags=flags)
    mask = (face > 0) & (inside > 0)
    if mask.sum() < 500:
        return None
    ref = ca.astype(np.float32)
    diff = aligned - ref
    diff -= diff[mask].mean()
    blurred = cv2.GaussianBlur(diff, (0, 0), 2.0) / (ref[mask].std() + 1e-3)
    return float(np.percentile(np.abs(blurred[mask]), 99))


def windows(times: list[float], items: list[Any], horizon: float) -> Iterable[list[float]]:
    """Residuals against each window's first frame, one frame per 0.1 s, over `horizon` s."""
    t = np.asarray(times)
    for s in range(0, len(t), 9):
        if items[s] is None or t[-1] - t[s] < horizon - 0.05:
            continue
        values, next_t = [], t[s] + 0.1
        while True:
            k = int(np.searchsorted(t, next_t - 1e-6))
            if k >= len(t) or t[k] - t[s] > horizon + 1e-6:
                break
            next_t = t[k] + 0.1
            r = residual(items[s], items[k]) if items[k] is not None else None
            if r is not None:
                values.append(r)
        if values:
            yield values


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, type=Path, help="../shared/data (liveness/, lfw/)")
    p.add_argument("--cache", type=Path, help="reuse (or write) the per-frame crops here")
    p.add_argument("--lfw-sample", type=int, default=150)
    p.add_argument("--thresholds", default="0.6,0.8,1.0,1.2")
    a = p.parse_args()
    if a.cache and a.cache.exists():
        series = pickle.loads(a.cache.read_bytes())
    else:
        series = collect(a.data, a.lfw_sample)
        if a.cache:
            a.cache.write_bytes(pickle.dumps(series))
    taus = [float(x) for x in a.thresholds.split(",")]
    for horizon in (0.6, 1.0, 1.9):
        peaks: dict[str, list[float]] = defaultdict(list)
        for (group, _), (times, items) in series.items():
            peaks[group] += [max(w) for w in windows(times, items, horizon)]
        print(f"== windows of {horizon} s (largest residual in the window)")
        for group, values in sorted(peaks.items()):
            v = np.asarray(values)
            if not len(v):
                continue
            q = np.percentile(v, [1, 5, 50, 95, 99])
            over = ", ".join(f">{t:g}: {int((v > t).sum())}" for t in taus)
            print(f"  {group:9s} n={len(v):4d} min {v.min():.3f} p1/5/50/95/99 "
                  f"{' / '.join(f'{x:.3f}' for x in q)} max {v.max():.3f} | {over}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
