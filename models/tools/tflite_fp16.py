"""Store a float32 TFLite model's constant weights as float16, without TensorFlow.

    python models/tools/tflite_fp16.py IN.tflite OUT.tflite

The same graph shape TensorFlow's float16 post-training quantisation writes: every float32
constant tensor gets a float16 twin holding its data, and a DEQUANTIZE op at the head of the
graph turns the twin back into the original float32 tensor, so every other op is unchanged and
still computes in float32. The runtime (XNNPACK) folds those DEQUANTIZE ops at load time; the
file is about half the size. Needs only `ai-edge-litert` (its flatbuffer schema and utilities).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as fb
from ai_edge_litert.tools import flatbuffer_utils as fbu

DEQUANTIZE_FP16_VERSION = 3  # op version of DEQUANTIZE with a float16 input


def _opcode(model: fb.ModelT, builtin: int, version: int) -> int:
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            code.version = max(code.version, version)
            return i
    code = fb.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def to_fp16(model: fb.ModelT) -> int:
    """Rewrite `model` in place; the number of tensors moved to float16."""
    deq = _opcode(model, fb.BuiltinOperator.DEQUANTIZE, DEQUANTIZE_FP16_VERSION)
    moved = 0
    for sg in model.subgraphs:
        graph_io = set(sg.inputs) | set(sg.outputs)
        head: list[fb.OperatorT] = []
        for idx in range(len(sg.tensors)):
            t = sg.tensors[idx]
            buf = model.buffers[t.buffer]
            if t.type != fb.TensorType.FLOAT32 or buf.data is None or idx in graph_io:
                continue
            data = np.frombuffer(bytes(buf.data), dtype="<f4")
            half = data.astype("<f2")
            if not np.all(np.isfinite(half)):
                continue  # a constant outside float16's range stays float32
            new_buf = fb.BufferT()
            new_buf.data = np.frombuffer(half.tobytes(), dtype=np.uint8)
            model.buffers.append(new_buf)
            twin = fb.TensorT()
            twin.shape = list(t.shape) if t.shape is not None else []
            twin.type = fb.TensorType.FLOAT16
            twin.buffer = len(model.buffers) - 1
            twin.name = (t.name or b"") + b"_fp16"
            sg.tensors.append(twin)
            buf.data = None  # the float32 tensor is now produced by the DEQUANTIZE op
            op = fb.OperatorT()
            op.opcodeIndex = deq
            op.inputs = [len(sg.tensors) - 1]
            op.outputs = [idx]
            head.append(op)
            moved += 1
        sg.operators = head + list(sg.operators)
    return moved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    args = ap.parse_args(argv)
    model = fbu.read_model(args.src)
    n = to_fp16(model)
    fbu.write_model(model, args.dst)
    print(f"{args.dst}: {n} constant tensors stored as float16, {args.dst.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
