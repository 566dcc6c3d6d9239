"""Liveness evaluation on a folder in the `eval liveness` format (DESIGN.md section 4).

Every video is decoded and run through the vision pipeline once (`analyse`); the blink scoring
and all sessions then replay those per-frame observations, so the many sessions cut from one
video cost no extra inference. Sessions use the real `VerificationSession` with the challenge
always required; only the prompt time is chosen by the evaluation where the protocol says so.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from edge.camera.base import Frame
from edge.config import Config
from edge.errors import DataError
from edge.liveness.blink import Blink, detect_blinks
from edge.liveness.eye import eye_openness
from edge.measure.liveness_data import LIVE_KINDS as LIVE_KINDS
from edge.measure.liveness_data import Annotation as Annotation
from edge.measure.liveness_data import AttackEntry as AttackEntry
from edge.measure.liveness_data import BlinkScore as BlinkScore
from edge.measure.liveness_data import LivenessData as LivenessData
from edge.measure.liveness_data import VideoEntry as VideoEntry
from edge.measure.liveness_data import false_alarms
from edge.measure.liveness_data import read_data as read_data
from edge.measure.liveness_data import score_blinks as score_blinks
from edge.session.decision import Decision
from edge.session.ports import QualityLike
from edge.session.verification import Embedding, VerificationSession

PROMPT_BEFORE_BLINK_S = (0.2, 0.6)  # the prompt is placed this long before a live blink
SESSION_LEAD_S = 1.0  # a live session starts this long before its prompt (acquisition)
_PLACEHOLDER = np.zeros((1, 1, 3), dtype=np.uint8)  # replayed frames carry no pixels


# -- per-frame analysis, done once per video -------------------------------------------------


@dataclass(frozen=True)
class FrameRecord:
    """What the vision pipeline saw in one frame (no pixels)."""

    t: float
    index: int
    faces: tuple[Any, ...]  # FaceObservation
    quality: tuple[QualityLike | None, ...]
    embeddings: tuple[Embedding | None, ...]
    pad: tuple[float | None, ...] = ()  # passive real-face score per face (None: not scored)


class Analyser:
    """Wraps the vision pipeline: observe, quality and (when loaded) embed every face."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.has_embedder = bool(getattr(pipeline, "has_embedder", False))
        self.has_pad = bool(getattr(pipeline, "has_pad", False))

    def frame(self, frame: Frame, embed: bool = True) -> FrameRecord:
        faces = tuple(self.pipeline.observe(frame.image))
        quality = tuple(
            self.pipeline.quality(frame.image, o) if o.landmarks is not None else None
            for o in faces
        )
        embeddings = tuple(
            self.pipeline.embed(frame.image, o.landmarks)
            if embed and self.has_embedder and o.landmarks is not None
            else None
            for o in faces
        )
        pad = tuple(
            self.pipeline.pad_score(frame.image, o)
            if self.has_pad and o.landmarks is not None
            else None
            for o in faces
        )
        return FrameRecord(frame.t_monotonic, frame.index, faces, quality, embeddings, pad)

    def run(self, frames: Iterable[Frame], embed: bool = True) -> list[FrameRecord]:
        """Records of every frame; `embed=False` skips the embedder (no identity continuity:
        the stricter setting for attacks that keep one face in view). A tracking pipeline
        (edge.vision.track) starts each run afresh: one run is one camera stream."""
        reset = getattr(self.pipeline, "reset", None)
        if callable(reset):
            reset()
        return [self.frame(f, embed) for f in frames]


class ReplayVision:
    """`SessionVision` answering from `FrameRecord`s (the session sees placeholder frames)."""

    def __init__(self, records: Sequence[FrameRecord]) -> None:
        self._by_index = {r.index: r for r in records}

    def _slot(self, frame: Frame, item: Any, attr: str) -> int:
        rec = self._by_index[frame.index]
        for k, o in enumerate(rec.faces):
            if o is item or getattr(o, attr, None) is item:
                return k
        raise KeyError("face not in this frame's record")

    def quality(self, frame: Frame, obs: Any) -> QualityLike:
        q = self._by_index[frame.index].quality[self._slot(frame, obs, "box")]
        assert q is not None
        return q

    def embed(self, frame: Frame, landmarks: Any) -> Embedding | None:
        return self._by_index[frame.index].embeddings[self._slot(frame, landmarks, "landmarks")]

    def pad_score(self, frame: Frame, obs: Any) -> float | None:
        rec = self._by_index[frame.index]
        return rec.pad[self._slot(frame, obs, "box")] if rec.pad else None


def retime(records: Sequence[FrameRecord], fps: float, t0: float = 0.0) -> list[FrameRecord]:
    """Records re-stamped as consecutive frames at `fps` (for spliced / cut sequences)."""
    return [replace(r, t=t0 + k / fps, index=k) for k, r in enumerate(records)]


def still_frames(
    image: NDArray[np.uint8],
    seconds: float,
    fps: float,
    rng: random.Random,
    *,
    handheld: bool,
    max_side: int = 640,
) -> Iterator[Frame]:
    """A still presented to the camera: the same image every frame; `handheld` adds a slow
    random drift of position, scale and rotation plus sensor noise, as a photo held by hand.
    The image is first shrunk to a camera-sized frame (longer side `max_side` px)."""
    h, w = image.shape[:2]
    if max(h, w) > max_side:
        k = max_side / max(h, w)
        w, h = max(1, round(w * k)), max(1, round(h * k))
        image = np.asarray(cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA), np.uint8)
    dx = dy = dlog_s = dang = 0.0
    for k in range(max(1, int(seconds * fps))):
        frame = image
        if handheld:
            # Bounded random walk per frame: a few px, a few percent, a degree or two.
            dx = _clamp(dx + rng.gauss(0, 0.8), 6.0)
            dy = _clamp(dy + rng.gauss(0, 0.8), 6.0)
            dlog_s = _clamp(dlog_s + rng.gauss(0, 0.004), 0.04)
            dang = _clamp(dang + rng.gauss(0, 0.25), 2.0)
            m = cv2.getRotationMatrix2D((w / 2, h / 2), dang, math.exp(dlog_s))
            m[0, 2] += dx
            m[1, 2] += dy
            moved = cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT)
            noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 3.0, moved.shape)
            frame = np.clip(moved.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        yield Frame(frame, k / fps, k)


def _clamp(v: float, lim: float) -> float:
    return max(-lim, min(lim, v))


def video_frames(path: Path, cfg: Config) -> Iterator[Frame]:
    """Frames of a video file at full speed on the recording's timeline."""
    from edge.camera import open_source

    with open_source(f"file:{path}", cfg.camera, realtime=False) as src:
        yield from src


# -- blink scoring ---------------------------------------------------------------------------


def primary_ears(records: Sequence[FrameRecord]) -> list[float | None]:
    """EAR of the largest face with landmarks in each frame (None: no such face)."""
    out: list[float | None] = []
    for r in records:
        marked = [o for o in r.faces if o.landmarks is not None]
        if not marked:
            out.append(None)
            continue
        face = max(marked, key=lambda o: o.box.size_px)
        out.append(eye_openness(face.landmarks.points))
    return out


def video_blinks(records: Sequence[FrameRecord], cfg: Config) -> list[Blink]:
    return detect_blinks(
        [r.t for r in records], primary_ears(records), cfg.liveness, [r.index for r in records]
    )


# -- sessions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionRun:
    decision: Decision
    end: int  # index into the records just after the deciding frame
    cut_short: bool  # the records ran out before the session decided


def run_session(
    records: Sequence[FrameRecord],
    cfg: Config,
    rng: random.Random,
    *,
    start: int = 0,
    prompt_t: float | None = None,
    references: Sequence[Embedding] | None = None,
    challenge: str = "always",
) -> SessionRun:
    """One session over `records[start:]` with the blink challenge `always` or `never` (the
    fare gate's path); `prompt_t` fixes the prompt (never before acquisition), else the
    session draws it from `rng`."""
    cfg = replace(cfg, session=replace(cfg.session, challenge=challenge))
    prompt_at: Callable[[float], float] | None = None
    if prompt_t is not None:
        fixed = prompt_t

        def prompt_at(acquired_t: float) -> float:
            return max(fixed, acquired_t)

    session = VerificationSession(cfg, ReplayVision(records), rng=rng, prompt_at=prompt_at)
    t_start = records[start].t if start < len(records) else 0.0
    early = session.claim("eval", references, t_start)
    if early is not None:
        return SessionRun(early, start, False)
    for k in range(start, len(records)):
        r = records[k]
        d = session.step(Frame(_PLACEHOLDER, r.t, r.index), r.faces)
        if d is not None:
            return SessionRun(d, k + 1, False)
    last_t = records[-1].t + 1.0 / fps_of(records) if records else 0.0
    return SessionRun(session.end_of_stream(last_t), len(records), True)


def seeded(seed: int, *parts: object) -> random.Random:
    """A random source that depends only on the seed and the given labels (order-free runs)."""
    digest = hashlib.sha256(repr((seed, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def fps_of(records: Sequence[FrameRecord]) -> float:
    if len(records) < 2:
        return 30.0
    span = records[-1].t - records[0].t
    return (len(records) - 1) / span if span > 0 else 30.0


def live_blink_sessions(
    records: Sequence[FrameRecord],
    annotations: Sequence[Annotation],
    cfg: Config,
    seed: int,
    name: str,
) -> list[Decision]:
    """One session per annotated blink, the prompt a seeded 0.2-0.6 s before the blink."""
    out = []
    times = [r.t for r in records]
    for a in annotations:
        if a.label != "blink" or a.start >= len(records):
            continue
        rng = seeded(seed, name, a.start)
        prompt_t = times[a.start] - rng.uniform(*PROMPT_BEFORE_BLINK_S)
        start = max(0, int(np.searchsorted(times, prompt_t - SESSION_LEAD_S)))
        out.append(run_session(records, cfg, rng, start=start, prompt_t=prompt_t).decision)
    return out


def tiled_sessions(
    records: Sequence[FrameRecord],
    cfg: Config,
    seed: int,
    name: str,
    *,
    prompt_at_acquisition: bool = False,
    keep_cut_short: bool = False,
    skip: Sequence[Annotation] = (),
    challenge: str = "always",
) -> list[Decision]:
    """Back-to-back sessions over a whole video, like a queue of attempts at a kiosk.

    A session the video cut short is kept only with `keep_cut_short`; one whose frames overlap
    an annotation in `skip` (ambiguous closures) is not counted.
    """
    out: list[Decision] = []
    start = 0
    while start < len(records):
        rng = seeded(seed, name, start)
        prompt = records[start].t if prompt_at_acquisition else None
        run = run_session(records, cfg, rng, start=start, prompt_t=prompt, challenge=challenge)
        last = records[min(run.end, len(records)) - 1].index
        overlaps = any(a.start <= last and a.end >= records[start].index for a in skip)
        if (keep_cut_short or not run.cut_short) and not overlaps:
            out.append(run.decision)
        start = max(run.end, start + 1)
    return out


# -- the whole evaluation --------------------------------------------------------------------

TARGETS = {"blink_recall": 0.95, "blink_precision": 0.95, "bpcer": 0.03, "blink_replay": 0.05}
CHALLENGE_MODES = ("always", "never")
PASSIVE_LIVE_KINDS = (*LIVE_KINDS, "unannotated")  # every live video, for the no-blink path


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def passive_median(records: Sequence[FrameRecord]) -> float | None:
    """Median passive score of the largest face over a recording (None: never scored)."""
    values = []
    for r in records:
        scored = [(o.box.size_px, p) for o, p in zip(r.faces, r.pad, strict=False) if p is not None]
        if scored:
            values.append(max(scored)[1])
    return round(float(np.median(values)), 4) if values else None


@dataclass
class _Tally:
    live: list[tuple[str, Decision]]
    attacks: list[tuple[str, Decision]]
    open_sessions: list[Decision]
    replayed: list[Decision]
    pad_by_file: dict[str, tuple[str, float | None]]  # name -> (kind, median score)
    false_alarms: list[str] = field(default_factory=list)  # blinks where none is annotated


def evaluate(
    root: Path, cfg: Config, analyser: Analyser, seed: int = 0, challenge: str = "always"
) -> dict[str, Any]:
    """Blink scoring and every session of the protocol with the blink challenge `always` or
    `never` (the fare gate's path: live sessions cut from every live video, the passive score
    and the motion rule alone); returns the JSON of DESIGN.md section 4."""
    if challenge not in CHALLENGE_MODES:
        raise ValueError(f"challenge must be one of {CHALLENGE_MODES}")
    data = read_data(root)
    videos = 0
    score = BlinkScore(0, 0, 0, 0)
    tally = _Tally([], [], [], [], {})
    live_kinds = LIVE_KINDS if challenge == "always" else PASSIVE_LIVE_KINDS
    for v in data.videos:
        if v.kind not in PASSIVE_LIVE_KINDS and v.kind != "attack_replay":
            continue
        records = analyser.run(video_frames(v.path, cfg))
        videos += 1
        if v.kind != "attack_replay":
            tally.pad_by_file[v.name] = (v.kind, passive_median(records))
        if v.kind in LIVE_KINDS:
            blinks = video_blinks(records, cfg)
            s = score_blinks(blinks, v.annotations)
            tally.false_alarms += [
                f"{v.name}: frames {b.start_index}-{b.end_index}"
                for b in false_alarms(blinks, v.annotations)
            ]
            score = BlinkScore(*(a + b for a, b in zip(_astuple(score), _astuple(s), strict=True)))
        if v.kind not in live_kinds:
            continue
        if challenge == "never":
            tally.live += [
                (v.name, d) for d in tiled_sessions(records, cfg, seed, v.name, challenge="never")
            ]
            continue
        if v.kind == "live_blink":
            tally.live += [
                (v.name, d) for d in live_blink_sessions(records, v.annotations, cfg, seed, v.name)
            ]
            # Diagnostic: the same recording replayed with randomly timed prompts, i.e. a
            # replay attack by a person who blinks often (the prompt timing is the only
            # defence a blink challenge has against a replay the passive score cannot see).
            tally.replayed += tiled_sessions(records, cfg, seed, f"replay:{v.name}")
        if v.kind == "live_open":
            # A live_blink video's annotated blinks would make open sessions pass: only
            # live_open videos are sessions that must not pass.
            ambiguous = [a for a in v.annotations if a.label == "ambiguous"]
            tally.open_sessions += tiled_sessions(
                records, cfg, seed, v.name, prompt_at_acquisition=True,
                keep_cut_short=True, skip=ambiguous,
            )  # fmt: skip
    _attack_sessions(data, cfg, analyser, seed, challenge, tally)
    return _result(videos, score, tally, analyser, cfg, seed, challenge)


def _attack_sessions(
    data: LivenessData, cfg: Config, analyser: Analyser, seed: int, challenge: str, tally: _Tally
) -> None:
    from edge.camera import read_image

    for a in data.attacks:
        if a.presentation == "video":
            records = analyser.run(video_frames(a.path, cfg))
            tally.pad_by_file[a.name] = (a.label, passive_median(records))
            # A replay that runs out before the session decides was still not accepted.
            tiled = tiled_sessions(
                records, cfg, seed, a.name, keep_cut_short=True, challenge=challenge
            )
            tally.attacks += [(a.name, d) for d in tiled]
            continue
        image = read_image(a.path, str(a.path))
        seconds = cfg.liveness.prompt_delay_max_s + cfg.liveness.response_window_s + 1.5
        scores: list[float] = []
        for handheld in (False, True):
            frames = still_frames(
                image, seconds, cfg.camera.fps, seeded(seed, a.name, handheld), handheld=handheld
            )
            records = analyser.run(frames, embed=False)
            median = passive_median(records)
            if median is not None:
                scores.append(median)
            run = run_session(
                records, cfg, seeded(seed, a.name, "session", handheld), challenge=challenge
            )
            kind = "handheld" if handheld else "frozen"
            tally.attacks.append((f"{a.name} ({kind})", run.decision))
        tally.pad_by_file[a.name] = (a.label, round(min(scores), 4) if scores else None)


def _pad_summary(pad_by_file: dict[str, tuple[str, float | None]]) -> dict[str, Any]:
    by_kind: dict[str, list[float]] = {}
    for kind, value in pad_by_file.values():
        if value is not None:
            by_kind.setdefault(kind, []).append(value)
    return {
        k: {
            "files": len(v),
            "min": round(min(v), 4),
            "p50": round(float(np.median(v)), 4),
            "max": round(max(v), 4),
        }
        for k, v in sorted(by_kind.items())
    }


def _result(
    videos: int,
    score: BlinkScore,
    tally: _Tally,
    analyser: Analyser,
    cfg: Config,
    seed: int,
    challenge: str,
) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    decisions = [d for _, d in tally.live] + tally.open_sessions + [d for _, d in tally.attacks]
    for d in decisions:
        key = d.reason or "accept"
        reasons[key] = reasons.get(key, 0) + 1
    live_rejected = [(n, d) for n, d in tally.live if not d.accepted]
    attacks_accepted = sorted({n for n, d in tally.attacks if d.accepted})
    latencies = [d.latency_ms for _, d in tally.live if d.latency_ms is not None]
    replay_accepted = sum(1 for d in tally.replayed if d.accepted)
    return {
        "challenge": challenge,
        "videos": videos,
        "blinks_annotated": score.annotated,
        "blinks_detected": score.detected,
        "blinks_found": score.found,
        "blink_recall": _ratio(score.found, score.annotated),
        "blink_precision": _ratio(score.correct, score.detected),
        "blink_false_alarms": tally.false_alarms,
        "attacks": len(tally.attacks),
        "attacks_accepted": sum(1 for _, d in tally.attacks if d.accepted),
        "apcer": _ratio(sum(1 for _, d in tally.attacks if d.accepted), len(tally.attacks)),
        "accepted_attacks": attacks_accepted,
        "live_sessions": len(tally.live),
        "live_rejected": len(live_rejected),
        "bpcer": _ratio(len(live_rejected), len(tally.live)),
        "live_rejected_by": _count(f"{n}: {d.reason}" for n, d in live_rejected),
        "open_eye_sessions": len(tally.open_sessions),
        "open_eye_accepted": sum(1 for d in tally.open_sessions if d.accepted),
        "blink_replay_sessions": len(tally.replayed),
        "blink_replay_accepted": replay_accepted,
        "blink_replay_rate": _ratio(replay_accepted, len(tally.replayed)),
        "reasons": dict(sorted(reasons.items())),
        "pad_threshold": cfg.liveness.pad_threshold if cfg.liveness.pad else None,
        "pad_scores": _pad_summary(tally.pad_by_file),
        "pad_by_file": {n: v for n, (_, v) in sorted(tally.pad_by_file.items())},
        "identity_check": analyser.has_embedder,
        "passive_check": analyser.has_pad,
        # Session work from the blink-ending frame to the decision on cached observations
        # (vision excluded: `facegate verify --json` reports latency_ms including it).
        "session_step_ms_p50": (
            round(float(np.percentile(latencies, 50)), 3) if latencies else None
        ),
        "seed": seed,
        "_kinds": {n: k for n, (k, _) in tally.pad_by_file.items()},
    }


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items()))


def plot_passive(path: Path, result: dict[str, Any]) -> None:
    """Per-file passive scores (live green, attack red) on [0, 1] with the threshold, as PNG."""
    kinds: dict[str, str] = result["_kinds"]
    scores: dict[str, float | None] = result["pad_by_file"]
    rows = sorted(
        ((n, v) for n, v in scores.items() if v is not None),
        key=lambda nv: (kinds.get(nv[0], "") in PASSIVE_LIVE_KINDS, nv[1]),
    )
    w, m, row = 900, 40, 16
    h = 2 * m + row * max(1, len(rows))
    img = np.full((h, w, 3), 255, np.uint8)
    x0, x1 = 330, w - m

    def x(v: float) -> int:
        return int(round(x0 + v * (x1 - x0)))

    black, grey = (0, 0, 0), (200, 200, 200)
    for k in range(11):
        cv2.line(img, (x(k / 10), m), (x(k / 10), h - m), grey, 1)
        cv2.putText(img, f"{k / 10:.1f}", (x(k / 10) - 10, h - m + 15),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.35, black, 1)  # fmt: skip
    for i, (name, v) in enumerate(rows):
        live = kinds.get(name, "") in PASSIVE_LIVE_KINDS
        y = m + row * i + row // 2
        colour = (0, 150, 0) if live else (0, 0, 220)
        cv2.circle(img, (x(v), y), 4, colour, -1)
        cv2.putText(img, name[-44:], (5, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.33, colour, 1)
    thr = result.get("pad_threshold")
    if thr is not None:
        cv2.line(img, (x(thr), m - 10), (x(thr), h - m), (200, 60, 0), 2)
    title = f"passive score per file (median), challenge={result['challenge']}, threshold {thr}"
    cv2.putText(img, title, (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, black, 1)
    if not cv2.imwrite(str(path), img):
        raise DataError(f"cannot write plot {path}; check the folder exists and is writable")


def _astuple(s: BlinkScore) -> tuple[int, int, int, int]:
    return (s.annotated, s.found, s.detected, s.correct)


def meets_targets(result: dict[str, Any]) -> bool:
    """The liveness targets: blink recall/precision, no attack (nor, with the blink, an open-eye
    session) accepted, BPCER, and with the blink the replayed-blink-video rate."""
    recall, precision, bpcer = result["blink_recall"], result["blink_precision"], result["bpcer"]
    ok = (
        recall is not None
        and recall >= TARGETS["blink_recall"]
        and precision is not None
        and precision >= TARGETS["blink_precision"]
        and result["attacks_accepted"] == 0
        and result["open_eye_accepted"] == 0
        and bpcer is not None
        and bpcer <= TARGETS["bpcer"]
    )
    rate = result.get("blink_replay_rate")
    if result.get("challenge", "always") == "always" and rate is not None:
        ok = ok and rate <= TARGETS["blink_replay"]
    return ok
