"""Measure where facegate's five FaceMesh points fall inside dlib's own 150x150 face chips.

    /work/convert-venv/bin/python models/tools/derive_chip_points.py --lfw ../shared/data/lfw

For LFW images of people absent from pairs_dev.txt: dlib's HOG detector + 5-point predictor
give dlib's chip transform (its 5-point template, padding 0.25, size 150); FaceMesh on the same
image gives our five points; mapped into the chip they are averaged.  The result is
`edge.vision.align.CHIP_POINTS`.  Prints JSON (mean, std, count, check of the transform).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import dlib
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lfw_chips import (  # noqa: E402
    CHIP_PADDING,
    CHIP_SIZE,
    DlibChipper,
    images_of_people_outside,
    pair_people,
    read_rgb,
)

from edge.vision.align import five_points  # noqa: E402
from edge.vision.detect import FaceDetector  # noqa: E402
from edge.vision.landmarks import LandmarkModel  # noqa: E402


def dlib_chip_transform(shape: dlib.full_object_detection) -> np.ndarray:
    """(2, 3) image -> chip px exactly as dlib's extract_image_chip maps them: the chip's
    corner pixel centres (0, 0), (size-1, 0), (size-1, size-1) are the rotated corners of
    get_face_chip_details()'s rectangle."""
    import cv2

    det = dlib.get_face_chip_details(shape, CHIP_SIZE, CHIP_PADDING)
    r, a = det.rect, det.angle
    c = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    corners = [np.array(v, float) for v in ((r.left(), r.top()), (r.right(), r.top()),
                                             (r.right(), r.bottom()))]
    src = np.float32([c + rot @ (v - c) for v in corners])
    last = CHIP_SIZE - 1
    dst = np.float32([[0, 0], [last, 0], [last, last]])
    return cv2.getAffineTransform(src, dst).astype(np.float64)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lfw", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=643)
    ap.add_argument("--mesh-out", type=Path, help="save the mean chip position of all 468 points")
    args = ap.parse_args()
    import cv2

    exclude = pair_people(args.lfw / "pairs_dev.txt")
    paths = images_of_people_outside(args.lfw / "images", exclude)[: args.limit]
    det = FaceDetector(ROOT / "models/face_detection_short_range.tflite")
    lm = LandmarkModel(ROOT / "models/face_landmark.tflite")
    chipper = DlibChipper()
    pts, diffs, mesh = [], [], []
    for p in paths:
        rgb = read_rgb(p)
        shape = chipper.shape(rgb)
        faces = det.detect(rgb)
        if shape is None or not faces:
            continue
        cx, cy = rgb.shape[1] / 2, rgb.shape[0] / 2
        box = min(faces, key=lambda b: (b.x1 + b.x2 - 2 * cx) ** 2 + (b.y1 + b.y2 - 2 * cy) ** 2)
        m = dlib_chip_transform(shape)
        if len(diffs) < 50:  # our transform reproduces dlib's own chip
            ours = cv2.warpAffine(rgb, m, (CHIP_SIZE, CHIP_SIZE), flags=cv2.INTER_LINEAR)
            ref = np.asarray(dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING))
            diffs.append(float(np.abs(ours.astype(float) - ref.astype(float)).mean()))
        marks = lm.predict(rgb, box)
        f5 = five_points(marks).astype(np.float64)
        pts.append(f5 @ m[:, :2].T + m[:, 2])
        mesh.append(marks.points[:, :2].astype(np.float64) @ m[:, :2].T + m[:, 2])
    a = np.array(pts)
    if args.mesh_out:
        mm = np.array(mesh)
        np.savez(args.mesh_out, mean=mm.mean(axis=0), std=mm.std(axis=0), n=len(mm))
    mean, std = a.mean(axis=0), a.std(axis=0)
    print(json.dumps({
        "faces": len(a), "images": len(paths),
        "chip_points_mean": np.round(mean, 2).tolist(),
        "chip_points_std": np.round(std, 2).tolist(),
        "chip_points_median": np.round(np.median(a, axis=0), 2).tolist(),
        "transform_check_mean_abs_px_diff_vs_dlib_chip": float(np.mean(diffs)),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
