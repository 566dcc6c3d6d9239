"""`facegate eval detect --data DIR [--json OUT]`: detector recall/precision on annotated photos.

Data format (DESIGN.md §4): `boxes.csv` with `file,x1,y1,x2,y2,ignore` (file relative to DIR)
and `images/`. An image with no row has no face; a detection matching an `ignore=1` box is
neither a hit nor a false positive. Two modes are measured on the same images: `tiled` (full
frame plus overlapping tiles, the photo/enrolment mode, which the targets apply to) and
`full_frame` (one inference per frame, the kiosk path), reported under `full_frame`.
As in `VisionPipeline.observe`, a detection counts only if FaceMesh confirms it (presence
>= 0.5); `detector_only` gives both modes' figures without that confirmation.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.commands._output import check_json_target, write_json
from edge.config import Config
from edge.errors import DataError
from edge.vision.detect import FaceDetector
from edge.vision.geometry import box_iou, box_size
from edge.vision.landmarks import LandmarkModel
from edge.vision.models import DETECTOR, LANDMARKER, model_path
from edge.vision.pipeline import MIN_PRESENCE
from edge.vision.types import FaceBox

TARGET_RECALL = 0.95
TARGET_FP_PER_NOFACE = 1 / 20
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class GroundTruth:
    box: tuple[float, float, float, float]
    ignore: bool

    @property
    def x1(self) -> float:
        return self.box[0]

    @property
    def y1(self) -> float:
        return self.box[1]

    @property
    def x2(self) -> float:
        return self.box[2]

    @property
    def y2(self) -> float:
        return self.box[3]

    @property
    def size_px(self) -> float:
        return box_size(self)


def read_boxes(data: Path) -> dict[str, list[GroundTruth]]:
    """Annotations by image path relative to `data`; every image in images/ gets an entry."""
    csv_path, img_dir = data / "boxes.csv", data / "images"
    if not csv_path.is_file() or not img_dir.is_dir():
        raise DataError(f"{data} lacks boxes.csv or images/; give a folder in the detection format")
    out: dict[str, list[GroundTruth]] = {
        f"images/{p.name}": [] for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_EXT
    }
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            try:
                box = (float(row["x1"]), float(row["y1"]), float(row["x2"]), float(row["y2"]))
                gt = GroundTruth(box, row.get("ignore", "0").strip() == "1")
                name = row["file"].strip()
            except (KeyError, ValueError, AttributeError) as exc:
                raise DataError(
                    f"{csv_path}:{n}: bad row ({exc}); expected file,x1,y1,x2,y2,ignore"
                ) from exc
            if name not in out:
                raise DataError(f"{csv_path}:{n}: {name} is not in {img_dir}")
            out[name].append(gt)
    if not out:
        raise DataError(f"{img_dir} holds no images")
    return out


def match(dets: list[FaceBox], gts: list[GroundTruth]) -> tuple[int, int, list[bool]]:
    """(true positives, false positives, hit per ground truth) at IoU >= 0.5, greedy by score."""
    hit = [False] * len(gts)
    tp = fp = 0
    for d in sorted(dets, key=lambda f: -f.score):
        best, best_iou = -1, 0.5
        for i, g in enumerate(gts):
            iou = box_iou(d, g)
            if not hit[i] and iou >= best_iou:
                best, best_iou = i, iou
        if best >= 0:
            hit[best] = True
            tp += 0 if gts[best].ignore else 1
        elif not any(box_iou(d, g) >= 0.3 for g in gts if g.ignore):
            fp += 1
    return tp, fp, hit


Detect = Callable[[np.ndarray], list[FaceBox]]


def score(boxes: dict[str, list[GroundTruth]], data: Path, detect: Detect) -> dict[str, object]:
    """Metrics of one detection function over every image of the data set."""
    faces = faces40 = tp = fp = fp_noface = ndet = hits = hits40 = noface = 0
    times: list[float] = []
    misses: list[str] = []
    for name, gts in boxes.items():
        bgr = cv2.imread(str(data / name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError(f"cannot decode {data / name}; remove or replace the file")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        t0 = time.perf_counter()
        dets = detect(image)
        times.append((time.perf_counter() - t0) * 1000)
        t, f, hit = match(dets, gts)
        required = [(g, h) for g, h in zip(gts, hit, strict=True) if not g.ignore]
        tp, fp, ndet = tp + t, fp + f, ndet + t + f
        faces += len(required)
        hits += sum(h for _, h in required)
        faces40 += sum(g.size_px >= 40 for g, _ in required)
        hits40 += sum(h for g, h in required if g.size_px >= 40)
        misses += [f"{name}@{[round(v) for v in g.box]}" for g, h in required if not h]
        if not required:
            noface += 1
            fp_noface += f
    return {
        "images": len(boxes),
        "faces": faces,
        "recall_iou50": round(hits / faces, 4) if faces else None,
        "precision_iou50": round(tp / ndet, 4) if ndet else None,
        "false_positives_no_face": fp_noface,
        "no_face_images": noface,
        "false_positives_total": fp,
        "faces_ge_40px": faces40,
        "recall_ge_40px": round(hits40 / faces40, 4) if faces40 else None,
        "missed": misses,
        "per_image_ms_p50": round(float(np.median(times)), 2),
    }


def passed(m: dict[str, object]) -> bool:
    """The DESIGN.md §7 target: recall >= 95 %, <= 1 false positive per 20 no-face images."""
    recall = m["recall_iou50"]
    fps, n = m["false_positives_no_face"], m["no_face_images"]
    assert isinstance(fps, int) and isinstance(n, int)
    ok_recall = isinstance(recall, float) and recall >= TARGET_RECALL
    return ok_recall and fps <= n * TARGET_FP_PER_NOFACE


def _summary(m: dict[str, object]) -> dict[str, object]:
    keys = ("recall_iou50", "precision_iou50", "false_positives_no_face", "false_positives_total")
    return {k: m[k] for k in keys}


def evaluate(
    data: Path,
    boxes: dict[str, list[GroundTruth]],
    detector: FaceDetector,
    mesh: LandmarkModel,
    min_face_px: float,
) -> dict[str, object]:
    """Both modes on `data`; top-level fields are the tiled mode, `full_frame` the kiosk path."""

    def tiled(im: np.ndarray) -> list[FaceBox]:
        return detector.detect_tiled(im, min_face_px=min_face_px)

    def confirmed(detect: Detect) -> Detect:
        def run(im: np.ndarray) -> list[FaceBox]:
            return [f for f in detect(im) if mesh.predict(im, f).score >= MIN_PRESENCE]

        return run

    t = score(boxes, data, confirmed(tiled))
    full = score(boxes, data, confirmed(detector.detect))
    result: dict[str, object] = {"mode": "tiled", **t, "full_frame": full}
    result["detector_only"] = {
        "tiled": _summary(score(boxes, data, tiled)),
        "full_frame": _summary(score(boxes, data, detector.detect)),
    }
    result["targets"] = {
        "recall_iou50": TARGET_RECALL,
        "fp_per_no_face_image": TARGET_FP_PER_NOFACE,
    }
    result["passed"] = passed(t)
    return result


def run(args: argparse.Namespace, cfg: Config) -> int:
    check_json_target(args.json_out)
    data = Path(args.data)
    if not data.is_dir():
        raise DataError(f"--data {data} is not a folder; give a folder with boxes.csv and images/")
    boxes = read_boxes(data)  # before loading the model: bad data fails fast
    detector = FaceDetector(
        model_path(cfg.models_dir, DETECTOR),
        threads=cfg.vision.threads,
        score_threshold=cfg.vision.detect_score,
        nms_iou=cfg.vision.nms_iou,
    )
    mesh = LandmarkModel(model_path(cfg.models_dir, LANDMARKER), threads=cfg.vision.threads)
    result = evaluate(data, boxes, detector, mesh, float(cfg.vision.min_face_px))
    text = json.dumps(result, indent=2)
    if args.json_out:
        write_json(Path(args.json_out), text)
    sys.stdout.write(text + "\n")
    return 0 if result["passed"] else 1
