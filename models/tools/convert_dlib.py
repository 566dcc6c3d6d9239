"""Convert dlib's face-recognition ResNet to the int8 TFLite embedder the kiosk ships.

Offline tool (extra `[convert]`: TensorFlow, dlib-bin, face-recognition-models); its output
`models/face_embedding_int8.tflite` is committed and `make models` only verifies its hash.

    python models/tools/convert_dlib.py --lfw ../shared/data/lfw \
        --out models/face_embedding_int8.tflite --report /tmp/convert_report.json \
        [--float-out /tmp/face_embedding_float32.tflite] [--keep-dir /tmp]

Steps: parse the .dat (dlib_dat.py), rebuild it in TensorFlow (dlib_tf.py), prove float parity
against dlib's own compute_face_descriptor on real LFW chips, quantise to full int8 with LFW
chips of people absent from pairs_dev.txt (and not named in pairsDevTrain.txt, which calibrates
the thresholds), then compare int8 with float on held-out chips and time it on one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dlib
import face_recognition_models as frm
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dlib_dat import describe, read_dlib_net  # noqa: E402
from dlib_tf import build_forward  # noqa: E402
from lfw_chips import DlibChipper, chips, images_of_people_outside, pair_people  # noqa: E402


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _pair_images(pairs_file: Path) -> set[str]:
    names: set[str] = set()
    for line in pairs_file.read_text().splitlines()[1:]:
        f = line.split("\t")
        if len(f) == 3:
            names.update((f"{f[0]}_{int(f[1]):04d}", f"{f[0]}_{int(f[2]):04d}"))
        elif len(f) == 4:
            names.update((f"{f[0]}_{int(f[1]):04d}", f"{f[2]}_{int(f[3]):04d}"))
    return names


def _convert(concrete: tf.types.experimental.ConcreteFunction, int8: bool,
             calib: np.ndarray, uint8_input: bool) -> bytes:
    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    if int8:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]

        def rep() -> Iterator[list[np.ndarray]]:
            for c in calib:
                yield [c[None].astype(np.float32)]

        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if uint8_input:
            conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.float32
    return bytes(conv.convert())


class _Lite:
    def __init__(self, model: bytes, threads: int = 1) -> None:
        self.it = Interpreter(model_content=model, num_threads=threads)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]

    def __call__(self, chip: np.ndarray) -> np.ndarray:
        x = chip[None].astype(self.inp["dtype"])
        self.it.set_tensor(self.inp["index"], x)
        self.it.invoke()
        return np.array(self.it.get_tensor(self.out["index"])[0], np.float32)


def _time_ms(lites: dict[str, _Lite], chip: np.ndarray, n: int) -> dict[str, dict[str, float]]:
    """Per-invoke ms of each model, interleaved in rounds so that load from other processes on
    a shared machine hits every variant alike; min and p10 approximate an idle core."""
    times: dict[str, list[float]] = {k: [] for k in lites}
    for lite in lites.values():
        for _ in range(10):
            lite(chip)
    for _ in range(max(1, n // 20)):
        for k, lite in lites.items():
            for _ in range(20):
                t0 = time.perf_counter()
                lite(chip)
                times[k].append((time.perf_counter() - t0) * 1000.0)
    return {k: {q: round(float(np.percentile(t, p)), 3) for q, p in
                (("min_ms", 0), ("p10_ms", 10), ("p50_ms", 50), ("p95_ms", 95))}
            for k, t in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lfw", type=Path, required=True, help="LFW folder (images/, pair lists)")
    ap.add_argument("--out", type=Path, required=True, help="int8 .tflite to write")
    ap.add_argument("--float-out", type=Path, help="also write the float32 .tflite (evaluation)")
    ap.add_argument("--report", type=Path, help="JSON report of the measurements")
    ap.add_argument("--calib", type=int, default=300, help="calibration chips")
    ap.add_argument("--heldout", type=int, default=240, help="held-out chips for parity")
    ap.add_argument("--timing-runs", type=int, default=300)
    ap.add_argument("--keep-dir", type=Path, help="also write every int8 variant here")
    args = ap.parse_args()

    dat = Path(frm.face_recognition_model_location())
    net = read_dlib_net(dat)
    print("parsed:", describe(net), flush=True)
    forward = build_forward(net)
    concrete = tf.function(forward).get_concrete_function(
        tf.TensorSpec([1, 150, 150, 3], tf.float32, name="chip_rgb"))

    exclude_people = pair_people(args.lfw / "pairs_dev.txt")
    train_images = _pair_images(args.lfw / "pairsDevTrain.txt")
    pool = images_of_people_outside(args.lfw / "images", exclude_people)
    calib_paths = [p for p in pool if p.stem not in train_images]
    chipper = DlibChipper()
    calib_list = list(chips(calib_paths, args.calib, chipper))
    used = {p for p, _ in calib_list}
    held_list = list(chips([p for p in pool if p not in used], args.heldout, chipper))
    calib = np.stack([c for _, c in calib_list])
    held = np.stack([c for _, c in held_list])
    print(f"chips: {len(calib)} calibration, {len(held)} held-out "
          f"(people outside pairs_dev.txt: {len(pool)} images)", flush=True)

    rec = dlib.face_recognition_model_v1(str(dat))
    ref = np.array([np.array(rec.compute_face_descriptor(c)) for c in held], np.float32)
    ours_tf = np.concatenate([forward(tf.constant(held[i:i + 16], tf.float32)).numpy()
                              for i in range(0, len(held), 16)])
    parity = _cos(ours_tf, ref)
    print(f"float TF vs dlib: cosine min {parity.min():.7f} mean {parity.mean():.7f}", flush=True)

    report: dict[str, object] = {
        "source": "face-recognition-models==0.3.0 dlib_face_recognition_resnet_model_v1.dat",
        "dlib": dlib.__version__, "tensorflow": tf.__version__,
        "network": describe(net), "calibration_chips": len(calib), "heldout_chips": len(held),
        "float_tf_vs_dlib_cosine": {"min": float(parity.min()), "mean": float(parity.mean()),
                                    "max_abs_diff": float(np.abs(ours_tf - ref).max())},
    }
    float_model = _convert(concrete, False, calib, False)
    lite_f = _Lite(float_model)
    emb_f = np.array([lite_f(c) for c in held])
    c_fd = _cos(emb_f, ref)
    report["float_tflite_vs_dlib_cosine"] = {"min": float(c_fd.min()), "mean": float(c_fd.mean())}
    if args.float_out:
        args.float_out.write_bytes(float_model)

    variants: dict[str, dict[str, object]] = {}
    lites: dict[str, _Lite] = {}
    for name, u8 in (("int8_float_io", False), ("int8_uint8_in", True)):
        model = _convert(concrete, True, calib, u8)
        lite = _Lite(model)
        emb = np.array([lite(c) for c in held])
        cf, cd = _cos(emb, emb_f), _cos(emb, ref)
        variants[name] = {
            "bytes": len(model),
            "input": str(lite.inp["dtype"].__name__), "input_quant": list(lite.inp["quantization"]),
            "cosine_to_float": {"min": float(cf.min()), "mean": float(cf.mean())},
            "cosine_to_dlib": {"min": float(cd.min()), "mean": float(cd.mean())},
            "model": model,
        }
        lites[name] = lite
        if args.keep_dir:
            (args.keep_dir / f"face_embedding_{name}.tflite").write_bytes(model)
    lites["float32"] = lite_f
    timing = _time_ms(lites, held[0], args.timing_runs)
    report["timing_1thread"] = timing
    best = min(variants, key=lambda k: timing[k]["p10_ms"])
    args.out.write_bytes(variants[best]["model"])  # type: ignore[arg-type]
    report["int8_variants"] = {k: {kk: vv for kk, vv in v.items() if kk != "model"}
                               for k, v in variants.items()}
    report["chosen"] = best
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    if parity.min() < 0.9999:
        print("FAIL: float parity below 0.9999", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
