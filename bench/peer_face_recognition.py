"""Time the `face_recognition`/dlib pipeline against facegate's on the same frames, one core.

    python bench/peer_face_recognition.py [--source file:VIDEO] [--frames N] [--json OUT]
        [--size 640x480]     # time on a copy resized to a webcam's frame (written to a temp dir)
    python bench/peer_face_recognition.py --setup        # create the peer venv first

The peer (dlib HOG detector + 5-point pose + 128-d ResNet descriptor) runs in its own venv
(default ../peer-venv, or $FACEGATE_PEER_PYTHON), never in facegate's runtime dependencies.
It is timed at `face_recognition`'s default upsampling (1) and at upsampling 0, its fastest
setting, which still finds faces that fill the frame. The two pipelines alternate frame by
frame (facegate on frame i, then the peer on frame i), so a busy shared machine slows both
alike. Both use one thread, skip the same warm-up frames and time the same decoded frames;
decoding is not timed. "Per verified frame" = everything from the decoded frame to the 128-d
vector, on frames where a face was found. Prints JSON with both sides' per-frame ms (wall clock
and process CPU time) and the ratios.

facegate's verified frame is the kiosk's: the face tracked from the last frame's landmarks (the
detector on one frame in `vision.detect_every`) and ONE chip embedded (adaptive flip TTA adds
the mirror only near the threshold: `facegate eval lfw --tta adaptive` reports how often). The
JSON also gives the ratio against facegate's worst case, composed from the same run's stage
p50s: detector on the frame + mesh + align + both chips (`..._worst_case`).

The peer's detector cost grows with the pixels, so the ratio depends on the frame size: `--size
640x480` times a copy of the video centre-cropped to 4:3 and resized to the common USB webcam's
frame, written to a temporary directory and deleted afterwards (never into the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PEER_VENV = REPO.parent / "peer-venv"
PEER_PACKAGES = ["dlib-bin", "face-recognition-models", "numpy", "opencv-python-headless", "Pillow"]
WARMUP = 5  # the same as edge.measure.bench.WARMUP_FRAMES
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
UPSAMPLE = {"default": 1, "fast": 0}


def peer_python() -> Path:
    return Path(os.environ.get("FACEGATE_PEER_PYTHON") or PEER_VENV / "bin" / "python")


def setup_peer() -> None:
    """Create ../peer-venv with dlib-bin + face_recognition (no-deps: dlib-bin provides dlib)."""
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    pip = [str(PEER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, *PEER_PACKAGES], check=True)
    subprocess.run([*pip, "--no-deps", "face_recognition==1.3.0"], check=True)


def peer_worker(video: str) -> None:
    """Runs inside the peer venv: for every line on stdin, time the next frame of the video
    (looping) at each upsampling setting and print one JSON line."""
    import cv2
    import face_recognition

    cap = cv2.VideoCapture(video)
    for _ in sys.stdin:
        ok, bgr = cap.read()
        if not ok:  # loop the video, as facegate bench does
            cap.release()
            cap = cv2.VideoCapture(video)
            ok, bgr = cap.read()
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        out: dict[str, Any] = {}
        for name, up in UPSAMPLE.items():
            c0, t0 = time.process_time(), time.perf_counter()
            locs = face_recognition.face_locations(rgb, number_of_times_to_upsample=up)
            t1 = time.perf_counter()
            enc = face_recognition.face_encodings(rgb, locs[:1], model="small") if locs else []
            t2, c2 = time.perf_counter(), time.process_time()
            out[name] = {
                "detect": (t1 - t0) * 1000,
                "descriptor": (t2 - t1) * 1000 if enc else None,
                "verified": (t2 - t0) * 1000 if enc else None,
                "verified_cpu": (c2 - c0) * 1000 if enc else None,
            }
        print(json.dumps(out), flush=True)


class Peer:
    """The peer worker subprocess, stepped one frame at a time."""

    def __init__(self, video: str) -> None:
        py = peer_python()
        if not py.exists():
            raise SystemExit(
                f"peer venv missing ({py}); run `python bench/peer_face_recognition.py --setup` "
                "or set FACEGATE_PEER_PYTHON"
            )
        self.proc = subprocess.Popen(
            [str(py), __file__, "--peer-worker", video],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **ONE_THREAD},
        )
        self.frames: list[dict[str, Any]] = []

    def step(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("next\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("peer worker died (see its stderr above)")
        self.frames.append(json.loads(line))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)

    def summary(self, name: str) -> dict[str, Any]:
        timed = [f[name] for f in self.frames[WARMUP:]]

        def p50(key: str) -> float | None:
            vals = [t[key] for t in timed if t[key] is not None]
            return round(statistics.median(vals), 2) if vals else None

        return {
            "upsample": UPSAMPLE[name],
            "frames": len(timed),
            "frames_with_face": sum(t["verified"] is not None for t in timed),
            "detect_p50_ms": p50("detect"),
            "descriptor_p50_ms": p50("descriptor"),
            "verified_frame_p50_ms": p50("verified"),
            "verified_frame_cpu_p50_ms": p50("verified_cpu"),
        }


def resized_copy(video: str, size: str, out_dir: Path) -> str:
    """The video centre-cropped to the aspect ratio of `size` ("WxH") and resized to it, as an
    .mp4 in `out_dir`; decoded and encoded with OpenCV (facegate's own dependency)."""
    import cv2

    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size {size!r}: give WIDTHxHEIGHT, e.g. 640x480") from None
    cap = cv2.VideoCapture(video)
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    out = out_dir / f"{Path(video).stem}_{w}x{h}.mp4"
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            fh, fw = bgr.shape[:2]
            cw, ch = min(fw, fh * w // h), min(fh, fw * h // w)
            x0, y0 = (fw - cw) // 2, (fh - ch) // 2
            crop = bgr[y0 : y0 + ch, x0 : x0 + cw]
            writer.write(cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA))
    finally:
        cap.release()
        writer.release()
    return str(out)


def _worst_case(ours: dict[str, Any]) -> tuple[float | None, float | None]:
    """facegate's dearest verified frame from the run's stage p50s (wall, CPU ms): detector
    and mesh on the frame, alignment, and both chips (the mirror added near the threshold)."""
    parts = [ours.get(k) for k in ("detect", "landmarks", "align", "embed", "embed")]
    if any(not isinstance(p, dict) for p in parts):
        return None, None
    wall = round(sum(p["p50_ms"] for p in parts), 2)
    cpu = [p.get("cpu_p50_ms") for p in parts]
    return wall, (round(sum(cpu), 2) if all(c is not None for c in cpu) else None)


def alternate(frames: Iterator[Any], peer: Peer) -> Iterator[Any]:
    """Yield facegate's frames; after facegate finishes frame i the peer times its frame i."""
    for item in frames:
        yield item
        peer.step()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--peer-worker"]:
        peer_worker(argv[1])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", help="file:<video> (default: facegate bench's default video)")
    ap.add_argument("--frames", type=int, default=30, help="timed frames (after 5 warm-up)")
    ap.add_argument("--json", dest="json_out", help="also write the JSON here")
    ap.add_argument("--setup", action="store_true", help="create the peer venv and exit")
    ap.add_argument("--size", help="WxH: time on a resized copy of the video (e.g. 640x480)")
    args = ap.parse_args(argv)
    if args.setup:
        setup_peer()
        return 0
    if args.size:
        with tempfile.TemporaryDirectory(prefix="facegate-peer-") as tmp:
            return _compare(args, Path(tmp))
    return _compare(args, None)


def _compare(args: argparse.Namespace, tmp: Path | None) -> int:
    sys.path.insert(0, str(REPO))
    from edge.commands.bench import looped_frames
    from edge.config import load_config
    from edge.measure.bench import WARMUP_FRAMES, default_source, run_bench

    assert WARMUP_FRAMES == WARMUP
    uri = args.source or default_source()
    video = uri.removeprefix("file:")
    if not Path(video).is_file():
        raise SystemExit(f"--source must be a video file (file:<video>), got {uri}")
    if tmp is not None:
        video = resized_copy(video, args.size, tmp)
    cfg = load_config(None)
    peer = Peer(video)
    try:
        # A verified frame is detect + landmarks + align + embed, like the peer's: embed each one.
        frames = alternate(looped_frames(f"file:{video}", cfg), peer)
        ours = run_bench(frames, cfg, args.frames, 1, embed_every=1)
    finally:
        peer.close()
    frame = ours["frame"]
    assert isinstance(frame, dict)
    worst, worst_cpu = _worst_case(ours)
    result: dict[str, Any] = {
        "source": uri,
        "frame_size": ours.get("frame_size"),
        "frames": args.frames,
        "facegate": {
            k: ours[k]
            for k in ("detect", "landmarks", "track", "align", "embed", "frame", "runtime",
                      "detect_every", "frames_detected")
        },  # fmt: skip
        "facegate_verified_frame_p50_ms": frame["p50_ms"],
        "facegate_verified_frame_cpu_p50_ms": frame.get("cpu_p50_ms"),
        "facegate_worst_case_p50_ms": worst,
        "facegate_worst_case_cpu_p50_ms": worst_cpu,
        "facegate_complete": ours.get("embed") is not None,
        "load_avg_1m": ours.get("load_avg_1m"),
    }
    for name in UPSAMPLE:
        s = peer.summary(name)
        result[f"peer_{name}"] = s
        pm, pc = s["verified_frame_p50_ms"], s["verified_frame_cpu_p50_ms"]
        ours_cpu = frame.get("cpu_p50_ms")
        result[f"ratio_vs_peer_{name}"] = round(pm / frame["p50_ms"], 1) if pm else None
        result[f"cpu_ratio_vs_peer_{name}"] = round(pc / ours_cpu, 1) if pc and ours_cpu else None
        result[f"ratio_vs_peer_{name}_worst_case"] = round(pm / worst, 1) if pm and worst else None
        result[f"cpu_ratio_vs_peer_{name}_worst_case"] = (
            round(pc / worst_cpu, 1) if pc and worst_cpu else None
        )
    if not result["facegate_complete"]:
        result["note"] = "embedder not available: facegate side lacks the embed stage"
    text = json.dumps(result, indent=2)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
