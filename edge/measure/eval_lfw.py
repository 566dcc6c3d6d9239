"""LFW pair-matching evaluation of the whole vision pipeline (detect -> mesh -> align -> embed).

Accuracy is taken at the threshold SHIPPED in the config: it is never tuned on the pairs being
evaluated.  `calibrate` is the procedure that produced the shipped thresholds, run on
pairsDevTrain.txt only (see models/README.md).  A pair with an image in which no face is
found counts as an error, whatever its label.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from edge.errors import DataError
from edge.vision.types import Embedding

FARS = ("1e-3", "1e-4")
TARGET_ACCURACY = 0.99
CONFIG_BOUNDS = (0.80, 0.88, 0.90, 0.93, 0.97)  # edge/config.py [verify] bounds and below


@dataclass(frozen=True)
class Pair:
    a: str  # image key "Name_0001"
    b: str
    same: bool
    fold: int


def _key(name: str, num: str) -> str:
    return f"{name}_{int(num):04d}"


def read_pairs(path: Path) -> list[Pair]:
    """Pairs of an LFW pair list; 3 fields = same person, 4 = different; a fold starts at each
    same-person line that follows a different-person line (LFW README format)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read pair list {path} ({exc}); give an LFW pairs file") from exc
    return read_pairs_text(text, str(path))


def read_pairs_text(text: str, path: str) -> list[Pair]:
    """`read_pairs` on the text of a pair list; `path` names it in errors."""
    lines = text.splitlines()
    if not lines:
        raise DataError(f"pair list {path} is empty; give an LFW pairs file")
    pairs: list[Pair] = []
    fold, prev_same = 0, True
    for n, line in enumerate(lines[1:], start=2):
        f = line.split()
        try:
            if len(f) == 3:
                if not prev_same:
                    fold += 1
                pairs.append(Pair(_key(f[0], f[1]), _key(f[0], f[2]), True, fold))
                prev_same = True
            elif len(f) == 4:
                pairs.append(Pair(_key(f[0], f[1]), _key(f[2], f[3]), False, fold))
                prev_same = False
            elif f:
                raise ValueError(f"{len(f)} fields")
        except ValueError as exc:
            raise DataError(f"{path}:{n}: not an LFW pair line ({exc}); check the file") from exc
    if not pairs:
        raise DataError(f"pair list {path} has no pairs; give an LFW pairs file")
    return pairs


def balanced_subset(pairs: list[Pair], n: int) -> list[Pair]:
    """The first ceil(n/2) same-person and floor(n/2) different-person pairs, in file order."""
    same = [p for p in pairs if p.same][: (n + 1) // 2]
    diff = [p for p in pairs if not p.same][: n // 2]
    keep = {id(p) for p in same + diff}
    return [p for p in pairs if id(p) in keep]


def rate(x: NDArray[np.float64], thr: float) -> float:
    """Fraction of scores >= thr (no face = never), 0.0 for no scores."""
    return float(np.mean(np.nan_to_num(x, nan=-np.inf) >= thr)) if x.size else 0.0


def image_path(images: Path, key: str) -> Path:
    """`Name_0001` -> images/Name/Name_0001.jpg."""
    return images / key[: key.rfind("_")] / f"{key}.jpg"


def read_rgb(path: Path) -> NDArray[np.uint8]:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"cannot read image {path}; check the --images folder")
    return np.ascontiguousarray(bgr[:, :, ::-1])


EmbedFn = Callable[[NDArray[np.uint8]], Embedding | None]


def embed_images(
    keys: Iterable[str], images: Path, embed: EmbedFn
) -> tuple[dict[str, Embedding | None], dict[str, float]]:
    """Embedding (None = no face) and pipeline ms of each image, decoded once each."""
    out: dict[str, Embedding | None] = {}
    ms: dict[str, float] = {}
    for k in keys:
        if k in out:
            continue
        img = read_rgb(image_path(images, k))
        t0 = time.perf_counter()
        out[k] = embed(img)
        ms[k] = (time.perf_counter() - t0) * 1000.0
    return out, ms


def pair_scores(pairs: list[Pair], emb: dict[str, Embedding | None]) -> NDArray[np.float64]:
    """Cosine similarity per pair; NaN where an image had no face."""
    return template_probe_scores(pairs, emb, emb)


def template_probe_scores(
    pairs: list[Pair], template: dict[str, Embedding | None], probe: dict[str, Embedding | None]
) -> NDArray[np.float64]:
    """Cosine similarity of template(a) and probe(b) per pair; NaN where an image had no face."""
    s = np.full(len(pairs), np.nan)
    for i, p in enumerate(pairs):
        ea, eb = template.get(p.a), probe.get(p.b)
        if ea is not None and eb is not None:
            s[i] = float(np.dot(ea, eb))
    return s


def adaptive_scores(
    pairs: list[Pair],
    full: dict[str, Embedding | None],
    single: dict[str, Embedding | None],
    threshold: float,
    margin: float,
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Scores as adaptive flip TTA makes them at the kiosk, and which pairs needed the mirror.

    The first image of a pair plays the enrolled template (always chip + mirror, as enrolment
    embeds), the second the probe: its chip alone first, its mirror added only when that first
    score lies within `margin` of `threshold`."""
    first = template_probe_scores(pairs, full, single)
    both = pair_scores(pairs, full)
    mirrored = ~np.isnan(first) & (np.abs(first - threshold) < margin)
    return np.where(mirrored, both, first), mirrored


def mirror_shift(
    pairs: list[Pair], full: dict[str, Embedding | None], single: dict[str, Embedding | None]
) -> dict[str, float]:
    """How far adding the probe's mirror moves a score: |template . full - template . single|
    over every pair, each image in turn the probe. Adaptive TTA can change no decision of a
    pair whose first score lies further than this from the threshold: the margin is read from
    this distribution on TRAINING pairs (models/README.md)."""
    swapped = [Pair(p.b, p.a, p.same, p.fold) for p in pairs]
    shifts = []
    for ps in (pairs, swapped):
        d = pair_scores(ps, full) - template_probe_scores(ps, full, single)
        shifts.append(np.abs(d[~np.isnan(d)]))
    d_all = np.concatenate(shifts)
    q = {f"q{k}": round(float(np.quantile(d_all, k / 1000)), 5) for k in (500, 990, 999)}
    return {"n": int(d_all.size), **q, "max": round(float(d_all.max()), 5)}


def roc(scores: NDArray[np.float64], same: NDArray[np.bool_]) -> tuple[NDArray[np.float64], ...]:
    """(far, tar, thresholds) for every distinct score, thresholds descending; a pair without
    a face scores below everything (rejected at any threshold)."""
    s = np.where(np.isnan(scores), -2.0, scores)  # below any cosine similarity
    order = np.argsort(-s, kind="stable")
    s_sorted, y = s[order], same[order]
    tp, fp = np.cumsum(y), np.cumsum(~y)
    last = np.r_[np.diff(s_sorted) != 0, True]  # one point per distinct threshold
    n_pos, n_neg = max(1, int(same.sum())), max(1, int((~same).sum()))
    far = np.r_[0.0, fp[last] / n_neg]
    tar = np.r_[0.0, tp[last] / n_pos]
    thr = np.r_[np.inf, s_sorted[last]]
    return far, tar, thr


def accuracy_at(scores: NDArray[np.float64], same: NDArray[np.bool_], thr: float) -> float:
    """Fraction of pairs decided right at `thr` (score >= thr: same); no face = wrong."""
    ok = np.where(np.isnan(scores), False, (scores >= thr) == same)
    return float(ok.mean())


def best_threshold(scores: NDArray[np.float64], same: NDArray[np.bool_]) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy: the middle of the widest best plateau."""
    s = scores[~np.isnan(scores)]
    cand = np.unique(s)
    mids = np.r_[cand[0] - 1e-6, (cand[1:] + cand[:-1]) / 2, cand[-1] + 1e-6]
    acc = np.array([accuracy_at(scores, same, float(t)) for t in mids])
    best = np.flatnonzero(acc == acc.max())
    # consecutive best candidates form plateaus; take the centre of the longest one
    runs = np.split(best, np.flatnonzero(np.diff(best) != 1) + 1)
    run = max(runs, key=len)
    lo, hi = mids[run[0]], mids[run[-1]]
    return float((lo + hi) / 2), float(acc.max())


def summarize(
    pairs: list[Pair], scores: NDArray[np.float64], threshold: float, payment_threshold: float
) -> dict[str, object]:
    """The DESIGN.md §4 figures (and extras) for scored pairs at the shipped thresholds."""
    same = np.array([p.same for p in pairs])
    far, tar, thr = roc(scores, same)
    auc = float(np.trapezoid(tar, far))
    frr = 1.0 - tar
    i = int(np.argmin(np.abs(far - frr)))
    eer = float((far[i] + frr[i]) / 2)
    n_neg = int((~same).sum())
    tar_at: dict[str, float] = {}
    for f in FARS:
        ok = far <= float(f) + 1e-12
        tar_at[f] = float(tar[ok].max())
    folds = sorted({p.fold for p in pairs})
    fold_acc = []
    if len(folds) > 1:
        fa = np.array([p.fold for p in pairs])
        for k in folds:
            train, test = fa != k, fa == k
            t, _ = best_threshold(scores[train], same[train])
            fold_acc.append(accuracy_at(scores[test], same[test], t))
    gen, imp = scores[same], scores[~same]
    return {
        "pairs": len(pairs),
        "accuracy": round(accuracy_at(scores, same, threshold), 5),
        "threshold": threshold,
        "auc": round(auc, 6),
        "eer": round(eer, 5),
        "tar_at_far": {k: round(v, 5) for k, v in tar_at.items()},
        "same_pairs": int(same.sum()),
        "different_pairs": n_neg,
        "far_resolution": round(1.0 / max(1, n_neg), 6),
        "pairs_without_face": int(np.isnan(scores).sum()),
        "far_at_threshold": round(rate(imp, threshold), 5),
        "frr_at_threshold": round(1.0 - rate(gen, threshold), 5),
        "payment_threshold": payment_threshold,
        "payment_far": round(rate(imp, payment_threshold), 6),
        "payment_tar": round(rate(gen, payment_threshold), 5),
        "cv_accuracy": round(float(np.mean(fold_acc)), 5) if fold_acc else None,
        "cv_folds": len(fold_acc),
    }


def calibrate(
    pairs: list[Pair], emb: dict[str, Embedding | None], payment_far: float = 1e-4
) -> dict[str, object]:
    """Thresholds from a TRAINING pair list: verification = best accuracy on its pairs;
    payment = the (1 - payment_far) quantile of impostor scores over every cross-identity pair
    of its images (hundreds of thousands of impostor pairs instead of a few hundred)."""
    scores = pair_scores(pairs, emb)
    same = np.array([p.same for p in pairs])
    thr, acc = best_threshold(scores, same)
    found = {k: v for k, v in emb.items() if v is not None}
    keys = sorted(found)
    vecs = np.stack([found[k] for k in keys]).astype(np.float64)
    ident = np.array([k[: k.rfind("_")] for k in keys])
    sims = vecs @ vecs.T
    iu = np.triu_indices(len(keys), 1)
    cross = ident[iu[0]] != ident[iu[1]]
    imp = sims[iu][cross]
    gen_all = sims[iu][~cross]
    pay = float(np.quantile(imp, 1.0 - payment_far))
    gen = scores[same & ~np.isnan(scores)]
    return {
        "verify_threshold": round(thr, 4),
        "verify_accuracy": round(acc, 5),
        "payment_threshold": round(pay, 4),
        "payment_far_target": payment_far,
        "impostor_pairs": int(imp.size),
        "impostor_max": round(float(imp.max()), 4),
        "genuine_pairs_all_images": int(gen_all.size),
        "payment_tar_on_pairs": round(float(np.mean(gen >= pay)), 5),
        "payment_tar_all_genuine": round(float(np.mean(gen_all >= pay)), 5),
        "images": len(emb),
        "images_without_face": sum(1 for v in emb.values() if v is None),
        # Where the config bounds of verify.threshold / payment_threshold come from.
        "far_tar_all_pairs": {
            f"{t:.2f}": {"far": round(float(np.mean(imp >= t)), 6),
                         "tar": round(float(np.mean(gen_all >= t)), 5)}
            for t in CONFIG_BOUNDS
        },  # fmt: skip
    }


def plot_roc(
    path: Path,
    far: NDArray[np.float64],
    tar: NDArray[np.float64],
    marks: dict[str, tuple[float, float]],
) -> None:
    """ROC (TAR vs log FAR) as a PNG drawn with OpenCV, `marks` = {label: (far, tar)}."""
    w, h, m = 720, 540, 70
    img = np.full((h, w, 3), 255, np.uint8)
    lo = -4.0

    # y: TAR from 0.90 (or lower, so that every marked operating point shows) to 1
    ylo = min([0.9] + [np.floor(t * 10) / 10 for _, t in marks.values()])
    step = 0.02 if ylo >= 0.9 else 0.05

    def xy(f: float, t: float) -> tuple[int, int]:
        # x: log10 FAR from 1e-4 to 1 (lower FAR sits on the axis), y: TAR from ylo to 1
        x = m + (np.log10(max(f, 10**lo)) - lo) / -lo * (w - 2 * m)
        y = h - m - (min(max(t, ylo), 1.0) - ylo) / (1.0 - ylo) * (h - 2 * m)
        return int(round(x)), int(round(y))

    black, grey = (0, 0, 0), (200, 200, 200)
    for e in range(int(lo), 1):
        x, _ = xy(10.0**e, 0.9)
        cv2.line(img, (x, m), (x, h - m), grey, 1)
        cv2.putText(img, f"1e{e}", (x - 18, h - m + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, black, 1)
    for t in np.arange(ylo, 1.0001, step):
        _, y = xy(1.0, float(t))
        cv2.line(img, (m, y), (w - m, y), grey, 1)
        cv2.putText(img, f"{t:.2f}", (m - 45, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, black, 1)
    cv2.rectangle(img, (m, m), (w - m, h - m), black, 1)
    pts = np.array([xy(float(f), float(t)) for f, t in zip(far, tar, strict=True)], np.int32)
    cv2.polylines(img, [pts], False, (200, 60, 0), 2)
    colours = [(0, 0, 220), (0, 150, 0), (150, 0, 150)]
    for i, (label, (f, t)) in enumerate(marks.items()):
        c = colours[i % len(colours)]
        cv2.circle(img, xy(f, t), 6, c, 2)
        text = f"{label}: FAR {f:.2g}, TAR {t:.4f}"
        org = (w // 2 - 60, h - m - 15 - 20 * (len(marks) - 1 - i))  # legend bottom right: empty
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45, c, 1)
    title = "LFW ROC: TAR vs FAR (log)"
    cv2.putText(img, title, (m, m - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, black, 1)
    if not cv2.imwrite(str(path), img):
        raise DataError(f"cannot write plot {path}; check the folder exists and is writable")
