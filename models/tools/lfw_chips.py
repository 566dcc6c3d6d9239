"""150x150 face chips cut by dlib itself (HOG detector + 5-point predictor + get_face_chip).

Used offline only: for float parity (the same chip goes to dlib and to our rebuild), for int8
calibration and for the held-out int8-vs-float comparison.  Images are read from the LFW folder
given on the command line and never written anywhere.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import cv2
import dlib
import face_recognition_models as frm
import numpy as np

CHIP_SIZE = 150
CHIP_PADDING = 0.25  # what dlib's compute_face_descriptor uses for its own chips


def pair_people(pairs_file: Path) -> set[str]:
    """Every person named in an LFW pair list."""
    people: set[str] = set()
    for line in pairs_file.read_text().splitlines()[1:]:
        f = line.split("\t")
        if len(f) == 3:
            people.add(f[0])
        elif len(f) == 4:
            people.update((f[0], f[2]))
    return people


def images_of_people_outside(images: Path, exclude: set[str], seed: int = 0) -> list[Path]:
    """All images of people not in `exclude`, in a deterministic shuffled order."""
    paths = [
        p
        for d in sorted(images.iterdir())
        if d.name not in exclude
        for p in sorted(d.glob("*.jpg"))
    ]
    random.Random(seed).shuffle(paths)
    return paths


class DlibChipper:
    def __init__(self) -> None:
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())

    def shape(self, rgb: np.ndarray) -> dlib.full_object_detection | None:
        dets = self.detector(rgb, 1)
        if not dets:
            return None
        # LFW images are centred on the labelled person: take the detection nearest the centre.
        cy, cx = rgb.shape[0] / 2, rgb.shape[1] / 2
        best = min(dets, key=lambda r: (r.center().x - cx) ** 2 + (r.center().y - cy) ** 2)
        return self.predictor(rgb, best)

    def chip(self, rgb: np.ndarray) -> np.ndarray | None:
        shp = self.shape(rgb)
        if shp is None:
            return None
        return np.asarray(dlib.get_face_chip(rgb, shp, size=CHIP_SIZE, padding=CHIP_PADDING))


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot decode {path}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def chips(paths: list[Path], n: int, chipper: DlibChipper) -> Iterator[tuple[Path, np.ndarray]]:
    """Yield up to n (path, chip) for images where dlib finds a face."""
    got = 0
    for p in paths:
        if got >= n:
            return
        c = chipper.chip(read_rgb(p))
        if c is not None:
            got += 1
            yield p, c
