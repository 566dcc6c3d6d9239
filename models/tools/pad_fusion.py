"""How the session fuses passive scores: per-frame (MiniFASNetV2, MiniFASNetV1SE) real-class
scores on every live and replay video of an `eval liveness` folder (10 % of the open-eye clips),
sessions cut as the kiosk cuts them, four fusion rules compared (models/README.md).

    .venv/bin/python models/tools/pad_fusion.py --data ../shared/data/liveness [--cache F]
"""

from __future__ import annotations

import argparse
import pickle
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge.config import Config  # noqa: E402
from edge.measure.eval_liveness import read_data, video_frames  # noqa: E402
from edge.vision.pad import crop_problem  # noqa: E402
from edge.vision.pipeline import VisionPipeline  # noqa: E402

RULES = {
    "mean/median": lambda c: np.median([(a + b) / 2 for a, b in c]),
    "min/median": lambda c: np.median([min(a, b) for a, b in c]),
    "mean/p25": lambda c: np.percentile([(a + b) / 2 for a, b in c], 25),
    "geometric/median": lambda c: np.median([np.sqrt(a * b) for a, b in c]),
}


def collect(data_dir: Path) -> dict[str, tuple[str, list[tuple[float, Any]]]]:
    cfg = Config()
    data = read_data(data_dir)
    pipe = VisionPipeline.from_config(cfg, with_embedder=False)
    assert pipe.pad is not None
    out: dict[str, tuple[str, list[tuple[float, Any]]]] = {}
    for v in data.videos:
        if v.kind not in ("live_blink", "live_open", "unannotated", "attack_replay"):
            continue
        if v.name.startswith("openeye/") and random.Random(v.name).random() >= 0.1:
            continue
        rows: list[tuple[float, Any]] = []
        for fr in video_frames(v.path, cfg):
            obs = [o for o in pipe.observe(fr.image) if o.landmarks is not None]
            face = max(obs, key=lambda o: o.box.size_px) if obs else None
            if face is None or crop_problem(face.box, fr.image.shape) is not None:
                rows.append((fr.t_monotonic, None))
                continue
            rows.append((fr.t_monotonic, pipe.pad.model_scores(fr.image, face.box)))
        out[v.name] = (v.kind, rows)
    return out


def sessions(rows: list[tuple[float, Any]], window_s: float, every_s: float = 0.1) -> list[Any]:
    """Crops (one per `every_s`) of sessions starting every 0.5 s and lasting `window_s`."""
    out, start = [], 0
    while start < len(rows):
        t0, last, crops = rows[start][0], -1e9, []
        for t, s in rows[start:]:
            if t - t0 > window_s + 0.05:
                break
            if s is not None and t - last >= every_s:
                crops.append(s)
                last = t
        if len(crops) >= 3:
            out.append(crops)
        nxt = next((i for i in range(start, len(rows)) if rows[i][0] - t0 >= 0.5), len(rows))
        start = max(nxt, start + 1)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--cache", type=Path, help="reuse (or write) the per-frame scores here")
    p.add_argument("--every", type=float, default=0.1, help="crop spacing in a session (s)")
    a = p.parse_args()
    if a.cache and a.cache.exists():
        scores = pickle.loads(a.cache.read_bytes())
    else:
        scores = collect(a.data)
        if a.cache:
            a.cache.write_bytes(pickle.dumps(scores))
    for window in (0.6, 1.0):
        print(f"== sessions of {window} s, a crop every {a.every} s")
        for name, rule in RULES.items():
            live, attack = [], []
            for kind, rows in scores.values():
                values = [float(rule(c)) for c in sessions(rows, window, a.every)]
                (attack if kind == "attack_replay" else live).extend(values)
            lv, av = np.sort(live), np.sort(attack)
            print(f"{name:17s} live n={len(lv)} min={lv[0]:.3f} p1={np.percentile(lv, 1):.3f} "
                  f"| replay n={len(av)} max={av[-1]:.3f} | at 0.3: live rejected "
                  f"{int((lv < 0.3).sum())}, replays accepted {int((av >= 0.3).sum())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
