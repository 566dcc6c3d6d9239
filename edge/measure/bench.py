"""Per-stage timing of the vision path on real frames (`facegate bench`).

Stages per frame, through the kiosk's FaceTracker (edge/vision/track.py): `detect` (BlazeFace,
full frame) and `landmarks` (FaceMesh on each detected face) on the frames where the detector
runs (every `vision.detect_every`-th, or when the face is lost), `track` (FaceMesh on the ROI
carried from the last frame's landmarks) on the others; `liveness` (eye openness + blink
detector update), then on one frame with a face in
`embed_every` (the first, then every Nth) `align` (5-point chip) and `embed` (int8 embedder);
`frame` is their sum for that frame. `pad` (the two MiniFASNet crops and models) runs at the
session's cadence (`liveness.pad_every_s` on the frame timeline), and `vision_per_frame` is
detect + landmarks + track + liveness + pad per frame averaged over each second of frames (a
session), its p50/p95 over those windows (and the CPU-time p50): the DESIGN §7 per-frame
budget. The kiosk embeds one acquire frame and one verify frame per session, and a session
with a blink challenge lasts 1-3 s (30-90 frames at 30 fps), so EMBED_EVERY = 15 embeds at least as
often as the kiosk does and `fps` is the kiosk loop's. `--embed-every 1` embeds every frame; the
embedder's 5.7 MB of weights then also evict the detector's and FaceMesh's from the cache between
frames (measured: +0.1 to +0.4 ms on detect + landmarks + liveness p50 on the development VM). Frame
decoding is not timed (a camera delivers decoded frames). A stage whose module or model is not
available is reported as null with a note.
"""

from __future__ import annotations

import importlib
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.config import Config
from edge.errors import DataError
from edge.liveness.fusion import pad_due
from edge.vision.detect import FaceDetector
from edge.vision.landmarks import LandmarkModel
from edge.vision.models import DETECTOR, EMBEDDER, LANDMARKER, model_path
from edge.vision.pipeline import VisionPipeline
from edge.vision.runtime import runtime_name
from edge.vision.track import FaceTracker

STAGES = ("detect", "landmarks", "track", "liveness", "pad", "align", "embed", "frame")
VISION_STAGES = ("detect", "landmarks", "track", "liveness", "pad")  # vision_per_frame
SESSION_S = 1.0  # vision_per_frame averages the per-frame cost over windows this long
WARMUP_FRAMES = 5
EMBED_EVERY = 15  # align + embed one frame with a face in 15 (module doc)
DEFAULT_VIDEO = "liveness/videos/blink_webcam_7blinks_30fps.mp4"


def data_root() -> Path | None:
    """$FACEGATE_DATA, else ../shared/data next to the checkout, else None."""
    raw = os.environ.get("FACEGATE_DATA")
    if raw:
        return Path(raw)
    guess = Path(__file__).resolve().parents[3] / "shared" / "data"
    return guess if guess.is_dir() else None


def default_source() -> str:
    """`file:` URI of the default bench video; DataError naming --source when there is none."""
    root = data_root()
    if root is not None and (root / DEFAULT_VIDEO).is_file():
        return f"file:{root / DEFAULT_VIDEO}"
    raise DataError(
        f"no default bench video ({DEFAULT_VIDEO} under $FACEGATE_DATA or ../shared/data); "
        "give one with --source file:<video> or --source cam:0"
    )


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB."""
    current = 0.0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    except OSError:  # not Linux: only the peak is known
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return current or peak, peak


def _pct(values: list[float], cpu: list[float] | None = None) -> dict[str, float] | None:
    """Wall-clock p50/p95 in ms, the minimum and (given) the CPU-time p50: on a shared machine
    the last two show the uncontended cost."""
    if not values:
        return None
    arr = np.asarray(values)
    out = {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p95_ms": round(float(np.percentile(arr, 95)), 3),
        "min_ms": round(float(arr.min()), 3),
    }
    if cpu:
        out["cpu_p50_ms"] = round(float(np.percentile(np.asarray(cpu), 50)), 3)
    return out


@dataclass
class Stages:
    """Optional stages found at run time, each a callable or None with the reason."""

    liveness: Callable[[NDArray[np.float32], float, int], object] | None = None
    align: Callable[[NDArray[np.uint8], Any], NDArray[np.uint8]] | None = None
    embed: Callable[[NDArray[np.uint8]], object] | None = None
    pad: Callable[[NDArray[np.uint8], Any], object] | None = None
    embed_chips: int = 2  # 1 with adaptive flip TTA (the mirror only near the threshold)
    notes: dict[str, str] = field(default_factory=dict)


def optional_stages(cfg: Config, threads: int) -> Stages:
    """Liveness, alignment and embedder if their modules (and model) have landed."""
    st = Stages()
    from edge.liveness.blink import BlinkDetector
    from edge.liveness.eye import eye_openness

    blinks = BlinkDetector(cfg.liveness)

    def live(points: NDArray[np.float32], t: float, index: int) -> object:
        return blinks.update(t, eye_openness(points), index)

    st.liveness = live
    try:
        align = importlib.import_module("edge.vision.align")

        def chip(image: NDArray[np.uint8], marks: Any) -> NDArray[np.uint8]:
            out: NDArray[np.uint8] = align.align_chip(image, align.five_points(marks))
            return out

        st.align = chip
    except (ImportError, AttributeError) as exc:
        st.notes["align"] = f"edge.vision.align not available ({exc})"
    # A missing or tampered embedder file is a ModelError (exit 2), as for the other models:
    # figures from a model that fails its hash check would be reported as the shipped one's.
    try:
        embed_mod = importlib.import_module("edge.vision.embed")
        embedder = embed_mod.Embedder(model_path(cfg.models_dir, EMBEDDER), threads)
        st.embed = embedder.embed
        if cfg.vision.flip_tta and cfg.vision.flip_tta_margin < 2.0:
            st.embed = embedder.raw  # adaptive flip TTA: a verified frame embeds one chip
            st.embed_chips = 1
    except (ImportError, AttributeError) as exc:
        st.notes["embed"] = f"embedder not available ({exc})"
    if cfg.liveness.pad:
        from edge.vision.pad import PassiveScorer

        st.pad = PassiveScorer.from_models_dir(cfg.models_dir, threads).score
    else:
        st.notes["pad"] = "liveness.pad = false in the config"
    if st.align is None and st.embed is not None:
        st.embed = None
        st.notes["embed"] = "needs edge.vision.align for its input chip"
    return st


def session_means(per_frame: list[tuple[float, float]], window_s: float) -> list[float]:
    """Mean per-frame cost over consecutive windows of `window_s` on the frame timeline (a
    looped short video restarts its timeline: a step back in time starts a new window)."""
    out: list[float] = []
    current: list[float] = []
    start = prev = None
    for t, ms in per_frame:
        if start is None or prev is None or t < prev or t - start >= window_s:
            if current:
                out.append(statistics.fmean(current))
            current, start = [], t
        current.append(ms)
        prev = t
    if current:
        out.append(statistics.fmean(current))
    return out


class _Timer:
    """Calls a stage and records its (wall, CPU) seconds under the stage name.

    CPU is this thread's time with one inference thread (the stages run on the caller's
    thread; process time would also count a camera's or decoder's threads), and the process's
    time with more (the interpreter's pool threads do the work)."""

    def __init__(self, spent: dict[str, tuple[float, float]], threads: int = 1) -> None:
        self.spent = spent
        self._cpu = time.thread_time if threads == 1 else time.process_time

    def __call__(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        w0, c0 = time.perf_counter(), self._cpu()
        out = fn(*args)
        w, c = self.spent.get(stage, (0.0, 0.0))  # a stage run twice (two faces) adds up
        self.spent[stage] = (w + time.perf_counter() - w0, c + self._cpu() - c0)
        return out


class _TimedDetector:
    """The detector as the tracker calls it, timed as `detect`."""

    def __init__(self, inner: FaceDetector) -> None:
        self.inner, self.timer = inner, _Timer({})

    def detect(self, image: NDArray[np.uint8]) -> Any:
        return self.timer("detect", self.inner.detect, image)


class _TimedMesh:
    """FaceMesh as the tracker calls it: on a detected box (`landmarks`) or on the ROI carried
    from the last frame's landmarks (`track`)."""

    def __init__(self, inner: LandmarkModel) -> None:
        self.inner, self.timer = inner, _Timer({})

    def predict(self, image: NDArray[np.uint8], box: Any) -> Any:
        return self.timer("landmarks", self.inner.predict, image, box)

    def predict_roi(self, image: NDArray[np.uint8], m: Any) -> Any:
        return self.timer("track", self.inner.predict_roi, image, m)


def _tracker(cfg: Config, threads: int) -> tuple[FaceTracker, _TimedDetector, _TimedMesh]:
    """The kiosk's FaceTracker over timed detector and mesh (no embedder, no PAD: timed apart)."""
    v = cfg.vision
    det = _TimedDetector(
        FaceDetector(model_path(cfg.models_dir, DETECTOR), threads, v.detect_score, v.nms_iou)
    )
    mesh = _TimedMesh(LandmarkModel(model_path(cfg.models_dir, LANDMARKER), threads))
    pipe = VisionPipeline(det, mesh, cfg.quality, float(v.min_face_px))  # type: ignore[arg-type]
    return FaceTracker(pipe, v.detect_every), det, mesh


def run_bench(
    frames: Iterator[tuple[NDArray[np.uint8], float, int]],
    cfg: Config,
    n_frames: int,
    threads: int,
    embed_every: int = EMBED_EVERY,
) -> dict[str, object]:
    """Time every stage on `n_frames` frames (after a short warm-up); the bench JSON. Align and
    embed run on one frame with a face in `embed_every` (module doc)."""
    import cv2

    # OpenCV's own thread pool (resize, warp) would use other cores; "N threads" means N.
    cv2.setNumThreads(threads)
    tracker, det, mesh = _tracker(cfg, threads)
    st = optional_stages(cfg, threads)
    wall: dict[str, list[float]] = {s: [] for s in STAGES}
    cpu: dict[str, list[float]] = {s: [] for s in STAGES}
    dll: list[float] = []  # detect + landmarks + track + liveness per frame
    per_frame: list[tuple[float, float]] = []  # (t_s, VISION_STAGES wall ms)
    per_frame_cpu: list[tuple[float, float]] = []
    pad_last_t = -1e9
    pad_every = cfg.liveness.pad_every_s
    with_face = seen = embedded = 0
    size: tuple[int, int] | None = None
    for image, t_s, index in frames:
        if seen >= n_frames + WARMUP_FRAMES:
            break
        seen += 1
        warming = seen <= WARMUP_FRAMES  # every model runs (and packs its weights), untimed
        size = (int(image.shape[1]), int(image.shape[0]))
        spent: dict[str, tuple[float, float]] = {}
        timed = det.timer = mesh.timer = _Timer(spent, threads)

        marked = [o for o in tracker.observe(image) if o.landmarks is not None]
        if marked:
            face, marks = marked[0].box, marked[0].landmarks
            assert marks is not None
            if st.liveness is not None:
                timed("liveness", st.liveness, marks.points, t_s, index)
            if st.pad is not None and (warming or pad_due(t_s, pad_last_t, pad_every)):
                timed("pad", st.pad, image, face)
                pad_last_t = t_s
            if st.align is not None and (warming or with_face % embed_every == 0):
                chip = timed("align", st.align, image, marks)
                if st.embed is not None:
                    timed("embed", st.embed, chip)
        if warming:
            continue
        embedded += "embed" in spent
        with_face += bool(marked)
        for stage, (w, c) in spent.items():
            wall[stage].append(w * 1000)
            cpu[stage].append(c * 1000)
        wall["frame"].append(sum(w for w, _ in spent.values()) * 1000)
        cpu["frame"].append(sum(c for _, c in spent.values()) * 1000)
        dll.append(
            sum(spent[k][0] for k in ("detect", "landmarks", "track", "liveness") if k in spent)
            * 1000
        )
        per_frame.append((t_s, sum(spent[k][0] for k in VISION_STAGES if k in spent) * 1000))
        per_frame_cpu.append((t_s, sum(spent[k][1] for k in VISION_STAGES if k in spent) * 1000))
    timed_frames = max(0, seen - WARMUP_FRAMES)
    detected = len(wall["detect"])
    if timed_frames == 0:
        raise DataError("the bench source gave no frames to time; give a longer --source")
    current, peak = rss_mb()
    result: dict[str, object] = {s: _pct(wall[s], cpu[s]) for s in STAGES}
    result.update(
        {
            "fps": round(1000.0 / statistics.fmean(wall["frame"]), 1),
            "rss_mb": round(current, 1),
            "rss_peak_mb": round(peak, 1),
            "threads": threads,
            "embed_every": embed_every,
            "runtime": runtime_name(),
            "frames": timed_frames,
            "frames_with_face": with_face,
            "frames_embedded": embedded,
            "frame_size": list(size) if size else None,
            "detect_landmarks_liveness": _pct(dll),
            "vision_per_frame": _pct(
                session_means(per_frame, SESSION_S), session_means(per_frame_cpu, SESSION_S)
            ),
            "detect_every": tracker.detect_every,
            "embed_chips": st.embed_chips,
            "frames_detected": detected,
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
        }
    )
    notes = dict(st.notes)
    notes["fps"] = "1000 / mean frame ms: processing only, decoding excluded"
    notes["timing"] = (
        "p50_ms/p95_ms wall clock; min_ms the fastest frame; cpu_p50_ms CPU time of the "
        "stage (its thread's with --threads 1, else the process's), which other processes on "
        "a shared machine do not inflate; a video source is decoded on one thread between "
        "stages, not alongside them; `embed` embeds `embed_chips` chips (1: adaptive flip TTA "
        "adds the mirror, the same cost again, only near the threshold; `eval lfw --tta "
        "adaptive` reports how often)"
    )
    result["note"] = notes
    return result
