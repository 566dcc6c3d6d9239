"""Time the `face_recognition`/dlib pipeline against facegate's on the same frames, one core.

    python bench/peer_face_recognition.py [--source file:VIDEO] [--frames N] [--json OUT]
    python bench/peer_face_recognition.py --setup        # create the peer venv first

The peer (dlib HOG detector + 5-point pose + 128-d ResNet descriptor, `face_recognition`
defaults: 1x upsampling) runs in its own venv (default ../peer-venv, or $FACEGATE_PEER_PYTHON),
never in facegate's runtime dependencies. It is measured twice: at its default upsampling and
with upsampling 0 (its fastest setting, which still finds faces that fill the frame). Both
sides use one thread, skip the same warm-up frames and time the same decoded frames; decoding
is not timed. "Per verified frame" = everything from the decoded frame to the 128-d vector,
on frames where a face was found. Prints JSON with both sides' per-frame ms and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PEER_VENV = REPO.parent / "peer-venv"
PEER_PACKAGES = ["dlib-bin", "face-recognition-models", "numpy", "opencv-python-headless", "Pillow"]
WARMUP = 5
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def peer_python() -> Path:
    return Path(os.environ.get("FACEGATE_PEER_PYTHON") or PEER_VENV / "bin" / "python")


def setup_peer() -> None:
    """Create ../peer-venv with dlib-bin + face_recognition (no-deps: dlib-bin provides dlib)."""
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    pip = [str(PEER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, *PEER_PACKAGES], check=True)
    subprocess.run([*pip, "--no-deps", "face_recognition==1.3.0"], check=True)


def _p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def peer_worker(video: str, frames: int, upsample: int) -> dict[str, Any]:
    """Runs inside the peer venv: time HOG detection and descriptors on the first frames."""
    import cv2
    import face_recognition

    cap = cv2.VideoCapture(video)
    detect_ms: list[float] = []
    encode_ms: list[float] = []
    verified_ms: list[float] = []
    seen = 0
    while seen < frames + WARMUP:
        ok, bgr = cap.read()
        if not ok:  # loop the video, as facegate bench does
            cap.release()
            cap = cv2.VideoCapture(video)
            ok, bgr = cap.read()
            if not ok:
                break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        seen += 1
        t0 = time.perf_counter()
        locs = face_recognition.face_locations(rgb, number_of_times_to_upsample=upsample)
        t1 = time.perf_counter()
        enc = face_recognition.face_encodings(rgb, locs[:1], model="small") if locs else []
        t2 = time.perf_counter()
        if seen <= WARMUP:
            continue
        detect_ms.append((t1 - t0) * 1000)
        if enc:
            encode_ms.append((t2 - t1) * 1000)
            verified_ms.append((t2 - t0) * 1000)
    return {
        "upsample": upsample,
        "frames": len(detect_ms),
        "frames_with_face": len(verified_ms),
        "detect_p50_ms": _p50(detect_ms),
        "descriptor_p50_ms": _p50(encode_ms),
        "verified_frame_p50_ms": _p50(verified_ms),
    }


def run_peer(video: str, frames: int, upsample: int) -> dict[str, Any]:
    py = peer_python()
    if not py.exists():
        raise SystemExit(
            f"peer venv missing ({py}); run `python bench/peer_face_recognition.py --setup` "
            "or set FACEGATE_PEER_PYTHON"
        )
    cmd = [str(py), __file__, "--peer-worker", video, str(frames), str(upsample)]
    env = {**os.environ, **ONE_THREAD}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"peer benchmark failed: {proc.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def run_ours(uri: str, frames: int) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from edge.bench import run_bench
    from edge.commands.bench import looped_frames
    from edge.config import load_config

    cfg = load_config(None)
    return run_bench(looped_frames(uri, cfg), cfg, frames, threads=1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--peer-worker"]:
        print(json.dumps(peer_worker(argv[1], int(argv[2]), int(argv[3]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", help="file:<video> (default: facegate bench's default video)")
    ap.add_argument("--frames", type=int, default=30, help="timed frames (after 5 warm-up)")
    ap.add_argument("--json", dest="json_out", help="also write the JSON here")
    ap.add_argument("--setup", action="store_true", help="create the peer venv and exit")
    args = ap.parse_args(argv)
    if args.setup:
        setup_peer()
        return 0
    sys.path.insert(0, str(REPO))
    from edge.bench import default_source

    uri = args.source or default_source()
    video = uri.removeprefix("file:")
    if not Path(video).is_file():
        raise SystemExit(f"--source must be a video file (file:<video>), got {uri}")
    ours = run_ours(f"file:{video}", args.frames)
    peer_default = run_peer(video, args.frames, upsample=1)
    peer_fast = run_peer(video, args.frames, upsample=0)
    frame = ours["frame"]
    ours_ms = frame["p50_ms"] if isinstance(frame, dict) else None
    complete = ours.get("embed") is not None
    result: dict[str, Any] = {
        "source": uri,
        "frames": args.frames,
        "facegate": {
            k: ours[k] for k in ("detect", "landmarks", "align", "embed", "frame", "runtime")
        },
        "facegate_verified_frame_p50_ms": ours_ms,
        "facegate_complete": complete,
        "peer_default_upsample1": peer_default,
        "peer_fast_upsample0": peer_fast,
    }
    for name, peer in (("default", peer_default), ("fast", peer_fast)):
        pm = peer["verified_frame_p50_ms"]
        result[f"ratio_vs_peer_{name}"] = round(pm / ours_ms, 1) if pm and ours_ms else None
    if not complete:
        result["note"] = "embedder not available: facegate side lacks the embed stage"
    text = json.dumps(result, indent=2)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
