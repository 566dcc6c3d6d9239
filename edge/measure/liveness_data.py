"""The `eval liveness` data format (DESIGN.md section 4) and the blink scoring rules.

A folder holds `videos.csv` (every video and its kind), `blinks.csv` (frame ranges labelled
`blink` or `ambiguous`, matched by the video's path or file name) and `attacks.csv` (stills
presented statically, videos replayed as the camera).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.errors import DataError
from edge.liveness.blink import Blink

LIVE_KINDS = ("live_blink", "live_open")
TOLERANCE_FRAMES = 2  # annotations are by eye: a detection this close still matches


@dataclass(frozen=True)
class Annotation:
    start: int  # first frame, inclusive
    end: int  # last frame, inclusive
    label: str  # "blink" or "ambiguous"


@dataclass(frozen=True)
class VideoEntry:
    path: Path
    name: str  # as written in videos.csv
    kind: str
    annotations: tuple[Annotation, ...]


@dataclass(frozen=True)
class AttackEntry:
    path: Path
    name: str
    label: str
    presentation: str  # "static" or "video"


@dataclass(frozen=True)
class LivenessData:
    videos: tuple[VideoEntry, ...]
    attacks: tuple[AttackEntry, ...]


def _rows(path: Path, need: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"{path} is missing; give a folder in the `eval liveness` format")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; see MANIFEST.md")
        return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]


def read_data(root: Path) -> LivenessData:
    """Parse videos.csv, blinks.csv and attacks.csv under `root` (DataError naming the row)."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; give the liveness data folder")
    annotations: dict[str, list[Annotation]] = {}
    blinks_csv = root / "blinks.csv"
    for n, row in enumerate(_rows(blinks_csv, ("video", "start_frame", "end_frame", "label")), 2):
        try:
            ann = Annotation(int(row["start_frame"]), int(row["end_frame"]), row["label"])
        except ValueError:
            raise DataError(f"{blinks_csv}:{n}: frame numbers must be integers") from None
        if ann.label not in ("blink", "ambiguous") or ann.end < ann.start:
            raise DataError(f"{blinks_csv}:{n}: label must be blink/ambiguous, end >= start")
        annotations.setdefault(row["video"], []).append(ann)
    videos = []
    for row in _rows(root / "videos.csv", ("video", "kind")):
        name = row["video"]
        anns = annotations.get(name, []) + annotations.get(Path(name).name, [])
        videos.append(VideoEntry(root / name, name, row["kind"], tuple(anns)))
    attacks = []
    attacks_csv = root / "attacks.csv"
    for n, row in enumerate(_rows(attacks_csv, ("file", "label", "presentation")), 2):
        if row["presentation"] not in ("static", "video"):
            raise DataError(f"{attacks_csv}:{n}: presentation must be static or video")
        entry = AttackEntry(root / row["file"], row["file"], row["label"], row["presentation"])
        attacks.append(entry)
    for p in [v.path for v in videos] + [a.path for a in attacks]:
        if not p.is_file():
            raise DataError(f"{p} is listed but missing; restore it or fix the CSV")
    return LivenessData(tuple(videos), tuple(attacks))


@dataclass(frozen=True)
class BlinkScore:
    annotated: int
    found: int  # annotated blinks matched by a detection
    detected: int  # detections counted (not those on ambiguous rows)
    correct: int  # detections matching an annotated blink


def _near(b: Blink, a: Annotation) -> bool:
    """The detection overlaps the annotated row, give or take TOLERANCE_FRAMES."""
    return b.start_index <= a.end + TOLERANCE_FRAMES and b.end_index >= a.start - TOLERANCE_FRAMES


def false_alarms(blinks: Sequence[Blink], annotations: Sequence[Annotation]) -> list[Blink]:
    """The detections `score_blinks` counts as false alarms: near no annotated row."""
    return [b for b in blinks if not any(_near(b, a) for a in annotations)]


def score_blinks(blinks: Sequence[Blink], annotations: Sequence[Annotation]) -> BlinkScore:
    """Match detections to annotated blinks (+-TOLERANCE_FRAMES); ambiguous rows are neutral."""
    found: set[int] = set()
    detected = correct = 0
    for b in blinks:
        near = [k for k, a in enumerate(annotations) if _near(b, a)]
        real = [k for k in near if annotations[k].label == "blink"]
        if real:
            detected, correct = detected + 1, correct + 1
            found.update(real)
        elif not near:
            detected += 1
    annotated = sum(1 for a in annotations if a.label == "blink")
    return BlinkScore(annotated, len(found), detected, correct)
