"""Compare facegate's BlazeFace + FaceMesh pre/post-processing with MediaPipe's own graphs.

    python models/tools/parity_mediapipe.py --mp-python /tmp/mpvenv/bin/python [VIDEO@FRAME ...]

MediaPipe is not a facegate dependency: make a throw-away venv for the reference side, e.g.
    python3.11 -m venv /tmp/mpvenv
    /tmp/mpvenv/bin/pip install --no-deps mediapipe==0.10.21
    /tmp/mpvenv/bin/pip install "numpy<2" "protobuf>=4.25,<5" absl-py attrs flatbuffers \
        opencv-python-headless matplotlib
Both sides run the same .tflite files on the same decoded frames (MediaPipe in static-image
mode, one face). Prints per frame the median/p95 landmark distance in pixels and in % of the
inter-ocular distance, and the largest box/keypoint difference; exits 1 if the median
landmark error over all frames exceeds --max-iod-pct.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FRAMES = [
    f"liveness/videos/{v}@{i}"
    for v in (
        "blink_webcam_7blinks_30fps.mp4",
        "blink_portrait_24fps.mp4",
        "live_headturns_30fps.mp4",
        "live_open_dim_30fps.mp4",
        "liveportrait_d10_30fps.mp4",
        "replay_phone_handheld_30fps.mp4",
        "blink_glasses_lowres_25fps.mp4",
    )
    for i in (0, 30, 60)
]


def read_frame(spec: str) -> Any:
    import cv2

    path, idx = spec.rsplit("@", 1)
    cap = cv2.VideoCapture(path)
    cap.set(cv2.CAP_PROP_POS_FRAMES, int(idx))
    ok, bgr = cap.read()
    cap.release()
    if not ok:
        raise SystemExit(f"cannot read frame {spec}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def reference(specs: list[str]) -> dict[str, Any]:
    """Runs in the MediaPipe venv: landmarks, box and keypoints in pixels per frame."""
    import mediapipe as mp

    mesh = mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, max_num_faces=1, refine_landmarks=False
    )
    det = mp.solutions.face_detection.FaceDetection(model_selection=0)
    out: dict[str, Any] = {}
    for spec in specs:
        rgb = read_frame(spec)
        h, w = rgb.shape[:2]
        rec: dict[str, Any] = {}
        m = mesh.process(rgb)
        if m.multi_face_landmarks:
            rec["mesh"] = [[p.x * w, p.y * h] for p in m.multi_face_landmarks[0].landmark]
        d = det.process(rgb)
        if d.detections:
            loc = d.detections[0].location_data
            bb = loc.relative_bounding_box
            rec["box"] = [
                bb.xmin * w,
                bb.ymin * h,
                (bb.xmin + bb.width) * w,
                (bb.ymin + bb.height) * h,
            ]
            rec["kp"] = [[k.x * w, k.y * h] for k in loc.relative_keypoints]
        out[spec] = rec
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--reference"]:
        print(json.dumps(reference(argv[1:])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mp-python", required=True, help="python of a venv with mediapipe")
    ap.add_argument("--max-iod-pct", type=float, default=2.0)
    ap.add_argument("frames", nargs="*", help="VIDEO@FRAME (default: liveness videos)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import numpy as np

    from edge.measure.bench import data_root
    from edge.vision.detect import FaceDetector
    from edge.vision.landmarks import LandmarkModel

    root = data_root()
    specs = args.frames or ([str(root / f) for f in DEFAULT_FRAMES] if root else [])
    if not specs:
        raise SystemExit("no frames: give VIDEO@FRAME arguments or set FACEGATE_DATA")
    proc = subprocess.run(
        [args.mp_python, __file__, "--reference", *specs], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"reference side failed: {proc.stderr.strip().splitlines()[-1:]}")
    ref = json.loads(proc.stdout)
    det = FaceDetector(REPO / "models/face_detection_short_range.tflite", score_threshold=0.5)
    mesh = LandmarkModel(REPO / "models/face_landmark.tflite")
    errs: list[float] = []
    for spec in specs:
        rgb = read_frame(spec)
        faces, r = det.detect(rgb), ref[spec]
        name = Path(spec).name
        if not faces or "mesh" not in r:
            print(f"{name:40s} ours {len(faces)} face(s), reference {sorted(r)}: skipped")
            continue
        ours = mesh.predict(rgb, faces[0]).points[:, :2]
        theirs = np.asarray(r["mesh"])
        iod = float(np.linalg.norm(theirs[263] - theirs[33]))
        e = np.linalg.norm(ours - theirs, axis=1)
        f = faces[0]
        box = float(np.abs(np.array([f.x1, f.y1, f.x2, f.y2]) - np.array(r["box"])).max())
        kp = float(np.linalg.norm(f.keypoints - np.asarray(r["kp"]), axis=1).max())
        errs.append(float(np.median(e)) / iod * 100)
        print(
            f"{name:40s} landmarks median {np.median(e):5.2f} px ({errs[-1]:4.2f} % IOD), "
            f"p95 {np.percentile(e, 95):5.2f} px; box max diff {box:5.1f} px, "
            f"keypoints {kp / iod * 100:4.1f} % IOD"
        )
    if not errs:
        raise SystemExit("no frame with a face on both sides")
    med = float(np.median(errs))
    print(f"frames {len(errs)}: landmark error median {med:.2f} % IOD, worst {max(errs):.2f} %")
    return 0 if med <= args.max_iod_pct else 1


if __name__ == "__main__":
    sys.exit(main())
