"""What the camera saw in a recording, analysed once, and verification sessions replayed over it.

`Analyser` runs every frame of a video (or of a still presented frozen or hand-held,
`still_frames`) through the vision pipeline once and keeps what it saw per frame, without the
pixels (`FrameRecord`). Sessions then replay those records through the real
`VerificationSession` (`ReplayVision` answers its vision calls from them): one per annotated
blink with the prompt placed before it (`live_blink_sessions`), or back to back like a queue at a
kiosk (`tiled_sessions`). Used by `eval liveness` (edge/measure/eval_liveness.py), the liveness
tests and the offline studies in models/tools/.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from edge.camera.base import Frame
from edge.config import Config
from edge.liveness.blink import Blink, detect_blinks
from edge.liveness.eye import eye_openness
from edge.measure.liveness_data import Annotation
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
    """Frames of a video file at full speed on the recording's own timeline, from 0 s.

    Stamped `index / fps` here, not with the source's stamps (the process's monotonic clock at
    the start plus the media time): the float rounding of that sum depends on the machine's
    uptime, and at exact frame multiples (18 frames = 0.6 s at 30 fps) it moved session ends
    by a frame from one run to the next, so the figures were not reproducible."""
    from edge.camera import open_source

    with open_source(f"file:{path}", cfg.camera, realtime=False) as src:
        fps = float(getattr(src, "fps", 0.0)) or 30.0
        for frame in src:
            yield Frame(frame.image, frame.index / fps, frame.index)


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
