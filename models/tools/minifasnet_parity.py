"""Parity of the MiniFASNet TFLite files against the original PyTorch weights (offline).

    /work/convert-venv/bin/python models/tools/minifasnet_parity.py \
        --originals ../shared/models/minifasnet --data ../shared/data/liveness \
        [--fp16-dir /tmp/minifasnet_fp16] [--report /tmp/minifasnet_parity.json]

Needs the `[convert]` extra (torch, onnxruntime, ai-edge-litert). The reference is the `.pth`
state_dict loaded strictly into our own rebuild of the network (minifasnet_torch.py), in eval
mode. Compared against it: the shipped float32 TFLite copies in models/ (NHWC), the independent
ONNX export (NCHW) and, with --fp16-dir, float16-weight TFLite files made by tflite_fp16.py. Two
input sets: random pixels 0-255, and real 80x80 BGR crops cut by edge.vision.pad.crop_for_pad
around the project's BlazeFace boxes on the liveness videos and stills (live and attacks, so the
softmax spans its whole range). Reported per pair: max abs difference of the 3 logits and of the
class-1 (real) softmax. Exit 1 when a shipped file's softmax differs by 1e-3 or more.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch
from ai_edge_litert.interpreter import Interpreter
from numpy.typing import NDArray

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent.parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(REPO))

import tflite_fp16  # noqa: E402
from minifasnet_torch import load_minifasnet  # noqa: E402

from edge.vision.detect import FaceDetector  # noqa: E402
from edge.vision.models import DETECTOR, model_path  # noqa: E402
from edge.vision.pad import PAD_V1SE, PAD_V2, SCALE_V1SE, SCALE_V2, crop_for_pad  # noqa: E402

# name, scale, original .pth, ONNX export, shipped TFLite
NETS = (
    ("MiniFASNetV2", SCALE_V2, "2.7_80x80_MiniFASNetV2.pth", "onnx/MiniFASNetV2.onnx", PAD_V2),
    (
        "MiniFASNetV1SE",
        SCALE_V1SE,
        "4_0_0_80x80_MiniFASNetV1SE.pth",
        "onnx/MiniFASNetV1SE.onnx",
        PAD_V1SE,
    ),
)
TOLERANCE = 1e-3  # class-1 softmax
VIDEO_STEP = 15  # every 15th frame of every video
Batch = NDArray[np.float32]  # (N, 80, 80, 3) BGR 0-255, NHWC


def softmax(z: NDArray[np.float32]) -> NDArray[np.float64]:
    e = np.exp(z.astype(np.float64) - z.max(axis=1, keepdims=True))
    out: NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def run_torch(pth: Path) -> Callable[[Batch], NDArray[np.float32]]:
    net = load_minifasnet(pth)

    def f(x: Batch) -> NDArray[np.float32]:
        with torch.no_grad():
            out = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
        return np.asarray(out.numpy(), dtype=np.float32)

    return f


def run_onnx(path: Path) -> Callable[[Batch], NDArray[np.float32]]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def f(x: Batch) -> NDArray[np.float32]:
        nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        rows = [sess.run(None, {name: nchw[i : i + 1]})[0] for i in range(len(x))]
        return np.concatenate(rows).astype(np.float32)

    return f


def run_tflite(path: Path) -> Callable[[Batch], NDArray[np.float32]]:
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    i_in, i_out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

    def f(x: Batch) -> NDArray[np.float32]:
        rows = []
        for i in range(len(x)):
            it.set_tensor(i_in, np.ascontiguousarray(x[i : i + 1]))
            it.invoke()
            rows.append(it.get_tensor(i_out).copy())
        return np.concatenate(rows).astype(np.float32)

    return f


def _frames(path: Path, step: int) -> Iterator[NDArray[np.uint8]]:
    cap = cv2.VideoCapture(str(path))
    i = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if i % step == 0:
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        i += 1
    cap.release()


def real_crops(data: Path, models_dir: Path) -> dict[float, Batch]:
    """BGR crops at each scale around the best BlazeFace box of sampled frames and stills."""
    det = FaceDetector(model_path(models_dir, DETECTOR))
    images: list[NDArray[np.uint8]] = []
    with open(data / "videos.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["video"].startswith("videos/"):
                images.extend(_frames(data / row["video"], VIDEO_STEP))
    for folder in ("stills", "stills_live"):
        for p in sorted((data / folder).iterdir()):
            bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if bgr is not None:
                images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    crops: dict[float, list[NDArray[np.uint8]]] = {SCALE_V2: [], SCALE_V1SE: []}
    for img in images:
        faces = det.detect(img) or det.detect_tiled(img)
        if not faces:
            continue
        for scale in crops:
            crops[scale].append(crop_for_pad(img, faces[0], scale))
    return {s: np.stack(c).astype(np.float32) for s, c in crops.items()}


def compare(ref: NDArray[np.float32], other: NDArray[np.float32]) -> dict[str, float]:
    return {
        "logits_max_abs": float(np.abs(ref - other).max()),
        "real_softmax_max_abs": float(np.abs(softmax(ref)[:, 1] - softmax(other)[:, 1]).max()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--originals", type=Path, required=True, help="folder with the .pth files")
    ap.add_argument("--data", type=Path, required=True, help="liveness data folder")
    ap.add_argument("--models-dir", type=Path, default=REPO / "models")
    ap.add_argument("--fp16-dir", type=Path, help="also make and check float16-weight files")
    ap.add_argument("--random", type=int, default=256, help="random inputs per model")
    ap.add_argument("--report", type=Path)
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rand = rng.uniform(0, 255, (args.random, 80, 80, 3)).astype(np.float32)
    real = real_crops(args.data, args.models_dir)
    report: dict[str, object] = {"random_inputs": args.random, "real_crops": len(real[SCALE_V2])}
    failed = False
    print(f"{args.random} random inputs, {len(real[SCALE_V2])} real crops per model")
    print(
        f"{'model':16} {'pair':34} {'inputs':7} {'logits max|d|':>14} {'real softmax max|d|':>20}"
    )
    for name, scale, pth, onnx_rel, shipped in NETS:
        ref_f = run_torch(args.originals / pth)
        others: dict[str, Callable[[Batch], NDArray[np.float32]]] = {
            "tflite float32 (shipped)": run_tflite(model_path(args.models_dir, shipped)),
            "onnx": run_onnx(args.originals / onnx_rel),
        }
        if args.fp16_dir:
            args.fp16_dir.mkdir(parents=True, exist_ok=True)
            out = args.fp16_dir / shipped.replace("float32", "fp16")
            model = tflite_fp16.fbu.read_model(args.models_dir / shipped)
            tflite_fp16.to_fp16(model)
            tflite_fp16.fbu.write_model(model, out)
            others["tflite fp16 weights"] = run_tflite(out)
        entry: dict[str, object] = {"scale": scale, "pth": pth}
        for inputs_name, x in (("random", rand), ("real", real[scale])):
            ref = ref_f(x)
            entry[f"{inputs_name}_real_softmax_range"] = [
                float(softmax(ref)[:, 1].min()),
                float(softmax(ref)[:, 1].max()),
            ]
            for other_name, f in others.items():
                d = compare(ref, f(x))
                entry[f"{other_name} / {inputs_name}"] = d
                print(
                    f"{name:16} {'torch vs ' + other_name:34} {inputs_name:7} "
                    f"{d['logits_max_abs']:14.2e} {d['real_softmax_max_abs']:20.2e}"
                )
                if "shipped" in other_name and d["real_softmax_max_abs"] >= TOLERANCE:
                    failed = True
        report[name] = entry
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if failed:
        print(f"FAIL: a shipped file differs from the original by >= {TOLERANCE} (softmax)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
