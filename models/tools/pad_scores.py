"""Passive PAD scores on the liveness developer data, for calibrating the threshold.

    .venv/bin/python models/tools/pad_scores.py --data ../shared/data/liveness \
        --json out/pad_scores.json [--step 3] [--openeye 40] [--threshold 0.3] [--box-scan]

Runs the kiosk's own vision path (VisionPipeline: BlazeFace, confirmed by FaceMesh) and
edge.vision.pad.PassiveScorer over every video in `videos/` (every `--step`-th frame), a sample
of the `openeye/` clips and every still of `stills/` and `stills_live/`, scoring the largest
confirmed face of each frame. Stills are scored as `eval liveness` presents them (shrunk to a
640 px camera frame; tiled detection when the kiosk path finds no face) and at their own size.

The JSON holds every scored frame and, per video / still, the median
(edge.liveness.fusion.fuse_passive:
a session's fused score) over all frames and over frames with a reliable crop. The printed
summary groups them by kind (videos.csv kinds, attacks.csv labels, pad_stills.csv), shows the
live / recapture separation and the errors at `--threshold`. Masks and still photos fed as
frames are listed apart: they carry no recapture cue, so the passive score cannot see them.
`--box-scan` also scores adjusted BlazeFace boxes (the source project used another detector).
Uses no torch: the project's own runtime. Thread CPU time of each score is recorded.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edge.camera import open_source  # noqa: E402
from edge.config import parse_config  # noqa: E402
from edge.liveness.fusion import fuse_passive as fuse_scores  # noqa: E402
from edge.vision.pad import (  # noqa: E402
    SCALE_V2,
    PassiveScorer,
    crop_problem,
    fit_scale,
)
from edge.vision.pipeline import MIN_PRESENCE, VisionPipeline  # noqa: E402
from edge.vision.types import FaceBox  # noqa: E402

KIOSK_SIDE = 640  # eval liveness shrinks a still to this longer side before presenting it
LIVE_KINDS = ("live_blink", "live_open", "unannotated")
RECAPTURE_LABELS = ("recaptured_photo", "printed_photo", "screen_photo", "screen_replay")
BLIND_LABELS = ("still_photo", "mask")  # nothing recaptured through a camera to see
# name -> (width factor, height factor, upward shift of the centre in box heights)
BOX_VARIANTS = {
    "as_is": (1.0, 1.0, 0.0),
    "x0.9": (0.9, 0.9, 0.0),
    "x1.1": (1.1, 1.1, 0.0),
    "x1.2": (1.2, 1.2, 0.0),
    "tall1.2_up0.1": (1.0, 1.2, 0.1),
}


def adjust(box: FaceBox, fw: float, fh: float, up: float) -> FaceBox:
    cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2 - up * box.height
    w, h = box.width * fw, box.height * fh
    return replace(box, x1=cx - w / 2, y1=cy - h / 2, x2=cx + w / 2, y2=cy + h / 2)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: (v or "").strip() for k, v in r.items()} for r in csv.DictReader(fh)]


def rgb_still(path: Path) -> NDArray[np.uint8]:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read {path}")
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def kiosk_sized(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    h, w = image.shape[:2]
    if max(h, w) <= KIOSK_SIDE:
        return image
    k = KIOSK_SIDE / max(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


class Scorer:
    """Largest confirmed face of a frame -> both model scores, crop geometry, reliability."""

    def __init__(self, pipe: VisionPipeline, pad: PassiveScorer, scan: bool) -> None:
        self.pipe, self.pad, self.scan = pipe, pad, scan
        self.cpu_ms: list[float] = []

    def frame(self, image: NDArray[np.uint8], tiled: bool = False) -> dict[str, Any] | None:
        boxes = [o.box for o in self.pipe.observe(image) if o.landmarks is not None]
        used_tiles = not boxes and tiled
        if used_tiles:
            # A photo with a small face: enrolment-style tiled detection, FaceMesh-confirmed.
            boxes = [
                b
                for b in self.pipe.detector.detect_tiled(image)
                if self.pipe.landmarks.predict(image, b).score >= MIN_PRESENCE
            ]
        if not boxes:
            return None
        box = max(boxes, key=lambda b: b.size_px)
        t0 = time.thread_time()
        v2, v1se = self.pad.model_scores(image, box)
        self.cpu_ms.append((time.thread_time() - t0) * 1e3)
        row: dict[str, Any] = {
            "score": round((v2 + v1se) / 2, 5),
            "v2": round(v2, 5),
            "v1se": round(v1se, 5),
            "box_px": round(box.size_px, 1),
            "fit_scale_v2": round(fit_scale(box, image.shape, SCALE_V2), 3),
            "problem": crop_problem(box, image.shape),
        }
        if used_tiles:
            row["tiled"] = True
        if self.scan:
            row["scan"] = {
                name: round(sum(self.pad.model_scores(image, adjust(box, *v))) / 2, 5)
                for name, v in BOX_VARIANTS.items()
            }
        return row


def video_rows(path: Path, step: int, scorer: Scorer) -> Iterator[dict[str, Any]]:
    with open_source(f"file:{path}", realtime=False) as src:
        for frame in src:
            if frame.index % step == 0:
                row = scorer.frame(frame.image) or {"score": None}
                yield {"frame": frame.index, **row}


def summarise(rows: list[dict[str, Any]], key: str = "score") -> dict[str, Any]:
    """Median / range of one video's or still's frames, all and reliable-crop only."""
    scored = [r for r in rows if r.get(key) is not None]
    reliable = [r[key] for r in scored if r.get("problem") is None]
    out: dict[str, Any] = {"frames": len(rows), "faces": len(scored)}
    if scored:
        vals = [r[key] for r in scored]
        out.update(median=round(fuse_scores(vals), 4), min=min(vals), max=max(vals))
        out["box_px_median"] = round(statistics.median(r["box_px"] for r in scored), 1)
        out["fit_scale_v2_median"] = round(statistics.median(r["fit_scale_v2"] for r in scored), 2)
    out["reliable_frames"] = len(reliable)
    if reliable:
        out["median_reliable"] = round(fuse_scores(reliable), 4)
    return out


def items(result: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(name, group, role, summary) for every video and still; role live/recapture/blind/other."""
    out = []
    for name, v in result["videos"].items():
        group = ("openeye " if name.startswith("openeye/") else "") + v["kind"]
        label = v.get("label") or ""
        role = (
            "live"
            if v["kind"] in LIVE_KINDS
            else "recapture"
            if label in RECAPTURE_LABELS or v["kind"] == "attack_replay"
            else "other"
        )
        out.append((name, group, role, v))
    for name, s in result["stills"].items():
        label = s["label"] or s["pad_kind"]
        if s["pad_label"] == "live":
            group, role = "stills_live (camera photos)", "live"
        else:
            group = f"still {label}"
            role = "recapture" if label in RECAPTURE_LABELS else "blind"
        out.append((name, group, role, summarise([s["kiosk"]] if s["kiosk"] else [])))
    return out


def report(result: dict[str, Any], threshold: float) -> dict[str, Any]:
    """Per-kind ranges of the per-item medians, the live / recapture gap, errors at threshold."""
    rows = items(result)
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, group, _, s in rows:
        groups.setdefault(group, []).append((name, s))
    print(f"\n{'kind':32} {'n':>3} {'median min':>10} {'median max':>10} {'reliable: min':>13} "
          f"{'max':>7}")
    by_kind = {}
    for group, members in sorted(groups.items()):
        med = [s["median"] for _, s in members if "median" in s]
        rel = [s["median_reliable"] for _, s in members if "median_reliable" in s]
        by_kind[group] = {
            "n": len(members),
            "median_min": min(med, default=None),
            "median_max": max(med, default=None),
            "median_reliable_min": min(rel, default=None),
            "median_reliable_max": max(rel, default=None),
        }
        fmt = lambda v: f"{v:.4f}" if v is not None else "-"  # noqa: E731
        k = by_kind[group]
        print(f"{group:32} {len(members):3} {fmt(k['median_min']):>10} {fmt(k['median_max']):>10} "
              f"{fmt(k['median_reliable_min']):>13} {fmt(k['median_reliable_max']):>7}")
    live = {
        n: s["median_reliable"] for n, _, r, s in rows if r == "live" and "median_reliable" in s
    }
    attack = {n: s["median"] for n, _, r, s in rows if r == "recapture" and "median" in s}
    blind = {n: s.get("median") for n, _, r, s in rows if r == "blind"}
    lo = min(live, key=lambda n: live[n])
    hi = max(attack, key=lambda n: attack[n])
    frames_live = [
        x["score"]
        for n, v in result["videos"].items()
        if v["kind"] in LIVE_KINDS
        for x in v["rows"]
        if x.get("score") is not None and x.get("problem") is None
    ]
    frames_attack = [
        x["score"]
        for v in result["videos"].values()
        if v["kind"] == "attack_replay"
        for x in v["rows"]
        if x.get("score") is not None
    ]
    sep = {
        "threshold": threshold,
        "live_items": len(live),
        "recapture_items": len(attack),
        "lowest_live_median": [lo, live[lo]],
        "highest_recapture_median": [hi, attack[hi]],
        "gap": round(live[lo] - attack[hi], 4),
        "margin_to_live": round(live[lo] - threshold, 4),
        "margin_to_attack": round(threshold - attack[hi], 4),
        "live_items_rejected": sorted(n for n, v in live.items() if v < threshold),
        "recapture_items_accepted": sorted(n for n, v in attack.items() if v >= threshold),
        "blind_items_accepted": sorted(
            n for n, v in blind.items() if v is not None and v >= threshold
        ),
        "frames_live_reliable": len(frames_live),
        "frames_live_below": int(sum(v < threshold for v in frames_live)),
        "frames_replay": len(frames_attack),
        "frames_replay_at_or_above": int(sum(v >= threshold for v in frames_attack)),
    }
    print(f"\nlive (reliable crops) lowest median {live[lo]:.4f} ({lo}); recapture highest "
          f"median {attack[hi]:.4f} ({hi}); gap {sep['gap']:.4f}")
    print(f"threshold {threshold}: margin {sep['margin_to_live']:.4f} below the lowest live, "
          f"{sep['margin_to_attack']:.4f} above the highest recapture; live items rejected "
          f"{sep['live_items_rejected']}, recaptures accepted {sep['recapture_items_accepted']}")
    print(f"frames: live reliable {sep['frames_live_below']}/{len(frames_live)} below, replay "
          f"{sep['frames_replay_at_or_above']}/{len(frames_attack)} at or above")
    print(f"PAD-blind (no recapture cue) accepted at {threshold}: {sep['blind_items_accepted']}")
    return {"by_kind": by_kind, "separation": sep}


def box_scan(result: dict[str, Any]) -> dict[str, Any]:
    """Live / recapture separation of each box variant (reliable live frames, all attacks)."""
    out = {}
    print(f"\n{'box variant':14} {'live p1':>8} {'live p5':>8} {'attack p95':>10} {'p99':>6} "
          f"{'live min med':>12} {'attack max med':>14}")
    for key in BOX_VARIANTS:
        live_f, att_f, live_m, att_m = [], [], [], []
        for name, _group, role, _ in items(result):
            src = result["videos"].get(name)
            rows = src["rows"] if src else [result["stills"][name]["kiosk"]]
            rows = [r for r in rows if r and r.get("scan")]
            if role == "live":
                vals = [r["scan"][key] for r in rows if r.get("problem") is None]
                live_f += vals
                live_m += [statistics.median(vals)] if vals else []
            elif role == "recapture":
                vals = [r["scan"][key] for r in rows]
                att_f += vals
                att_m += [statistics.median(vals)] if vals else []
        out[key] = {
            "live_p1": float(np.percentile(live_f, 1)),
            "live_p5": float(np.percentile(live_f, 5)),
            "attack_p95": float(np.percentile(att_f, 95)),
            "attack_p99": float(np.percentile(att_f, 99)),
            "live_min_median": min(live_m),
            "attack_max_median": max(att_m),
        }
        o = out[key]
        print(f"{key:14} {o['live_p1']:8.3f} {o['live_p5']:8.3f} {o['attack_p95']:10.3f} "
              f"{o['attack_p99']:6.3f} {o['live_min_median']:12.3f} {o['attack_max_median']:14.3f}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="liveness data folder")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--step", type=int, default=3, help="score every Nth video frame")
    ap.add_argument("--openeye", type=int, default=40, help="openeye clips to sample (0: none)")
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--box-scan", action="store_true")
    args = ap.parse_args(argv)

    cfg = parse_config("")
    pipe = VisionPipeline.from_config(cfg, with_embedder=False)
    scorer = Scorer(pipe, PassiveScorer.from_models_dir(cfg.models_dir, threads=1), args.box_scan)
    attacks = {r["file"]: r for r in read_csv(args.data / "attacks.csv")}
    pad_stills = {r["file"]: r for r in read_csv(args.data / "pad_stills.csv")}
    result: dict[str, Any] = {"step": args.step, "videos": {}, "stills": {}}

    videos = read_csv(args.data / "videos.csv")
    clips = [v for v in videos if v["video"].startswith("openeye/")]
    clips = clips[:: max(1, len(clips) // args.openeye)][: args.openeye] if args.openeye else []
    for v in [v for v in videos if v["video"].startswith("videos/")] + clips:
        name = v["video"]
        rows = list(video_rows(args.data / name, args.step, scorer))
        entry = {"kind": v["kind"], "label": attacks.get(name, {}).get("label", "")}
        entry.update(summarise(rows))
        result["videos"][name] = {**entry, "rows": rows}
        print(f"{name:44} {v['kind']:14} faces {entry['faces']:4}/{entry['frames']:<4} "
              f"median {entry.get('median', float('nan')):.4f} "
              f"reliable {entry.get('median_reliable', float('nan')):.4f} "
              f"({entry['reliable_frames']} frames)", flush=True)

    for name in sorted(
        f"{d}/{p.name}" for d in ("stills", "stills_live") for p in (args.data / d).iterdir()
    ):
        image = rgb_still(args.data / name)
        entry = {
            "label": attacks.get(name, {}).get("label", ""),
            "pad_label": pad_stills.get(name, {}).get("label", ""),
            "pad_kind": pad_stills.get(name, {}).get("kind", ""),
            "kiosk": scorer.frame(kiosk_sized(image), tiled=True),
            "native": scorer.frame(image, tiled=True),
        }
        result["stills"][name] = entry
        k = entry["kiosk"] or {}
        print(f"{name:44} {entry['label'] or entry['pad_kind']:16} score {k.get('score')} "
              f"problem {k.get('problem')}", flush=True)

    result.update(report(result, args.threshold))
    if args.box_scan:
        result["box_scan"] = box_scan(result)
    cpu = np.asarray(scorer.cpu_ms)
    result["score_thread_cpu_ms"] = {
        "n": int(cpu.size),
        "p50": round(float(np.median(cpu)), 3),
        "p10": round(float(np.percentile(cpu, 10)), 3),
        "min": round(float(cpu.min()), 3),
    }
    print(f"both models per face, thread CPU ms: {result['score_thread_cpu_ms']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    scorer.pad.close()
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
