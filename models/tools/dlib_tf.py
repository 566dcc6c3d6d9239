"""Rebuild a parsed dlib ResNet metric network as a TensorFlow function (NHWC, float32).

The model input is the raw 150x150 RGB chip as float32 in [0, 255]: dlib's input layer
normalisation ((x - mean) / 256) is folded into the first convolution, which is exact because
that convolution has no zero padding.  Keeping the input in pixel units lets the int8 model take
the uint8 chip with scale 1, i.e. without any quantisation error on the input.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf
from dlib_dat import DlibNet, Layer

Tensor = tf.Tensor


def _conv_weights(lay: Layer) -> tuple[np.ndarray, np.ndarray, str, int]:
    i = lay.ints
    nf, k, nr, nc = i["num_filters"], i["k"], i["nr"], i["nc"]
    n_w = nf * k * nr * nc
    # dlib stores filters as (num_filters, k, nr, nc) followed by the biases.
    w = lay.params[:n_w].reshape(nf, k, nr, nc).transpose(2, 3, 1, 0)
    b = lay.params[n_w : n_w + nf]
    if i["stride_y"] != i["stride_x"]:
        raise ValueError("anisotropic strides are not supported")
    if (i["pad_y"], i["pad_x"]) == (0, 0):
        padding = "VALID"
    elif i["stride_y"] == 1 and (i["pad_y"], i["pad_x"]) == (nr // 2, nc // 2):
        padding = "SAME"  # dlib pads nr/2 on both sides: identical to SAME for odd kernels
    else:
        raise ValueError(f"unsupported conv padding {i}")
    return w.astype(np.float32), b.astype(np.float32), padding, i["stride_y"]


def _pool(lay: Layer) -> tuple[list[int], list[int]]:
    i = lay.ints
    if (i["pad_y"], i["pad_x"]) != (0, 0):
        raise ValueError(f"unsupported pool padding {i}")
    return [i["nr"], i["nc"]], [i["stride_y"], i["stride_x"]]


def _add_zero_extended(a: Tensor, b: Tensor) -> Tensor:
    """dlib add_prev: shapes may differ; missing rows/cols/channels count as zero (bottom/right)."""
    sa, sb = a.shape, b.shape
    h, w, c = (max(int(sa[d]), int(sb[d])) for d in (1, 2, 3))

    def ext(t: Tensor) -> Tensor:
        s = t.shape
        pads = [[0, 0], [0, h - int(s[1])], [0, w - int(s[2])], [0, c - int(s[3])]]
        return tf.pad(t, pads) if any(p[1] for p in pads) else t

    return ext(a) + ext(b)


def build_forward(net: DlibNet) -> Callable[[Tensor], Tensor]:
    """Return f(chips: (N,150,150,3) float32 RGB in [0,255]) -> (N,128) float32 dlib descriptors."""
    mean = np.asarray(net.input_mean_rgb, np.float32)
    steps: list[tuple[str, tuple[object, ...]]] = []
    first_conv = True
    for lay in net.layers:
        if lay.kind == "con":
            w, b, padding, stride = _conv_weights(lay)
            if first_conv:
                if padding != "VALID":
                    raise ValueError("first conv is padded: cannot fold the input normalisation")
                # conv(w, (x - m)/256) + b == conv(w/256, x) + (b - sum(w * m)/256)
                b = b - np.einsum("hwio,i->o", w, mean) / 256.0
                w = w / 256.0
                first_conv = False
            steps.append(("con", (tf.constant(w), tf.constant(b), padding, stride)))
        elif lay.kind == "affine":
            n = lay.params.size // 2
            steps.append(("affine", (tf.constant(lay.params[:n]), tf.constant(lay.params[n:]))))
        elif lay.kind in ("relu", "add_prev"):
            steps.append((lay.kind, ()))
        elif lay.kind in ("max_pool", "avg_pool"):
            if lay.ints["nr"] == 0 and lay.ints["nc"] == 0:
                steps.append(("global_avg", ()))
            else:
                steps.append((lay.kind, _pool(lay)))
        elif lay.kind == "fc":
            i = lay.ints
            if i["bias"]:
                raise ValueError("fc with bias not expected in this network")
            wfc = lay.params[: i["num_inputs"] * i["num_outputs"]]
            steps.append(("fc", (tf.constant(wfc.reshape(i["num_inputs"], i["num_outputs"])),)))
        else:
            raise ValueError(f"unknown layer kind {lay.kind}")

    def forward(x: Tensor) -> Tensor:
        # Residual bookkeeping: a block starts at the first conv after max_pool or after the relu
        # that closes the previous block (relu following add_prev); an avg_pool
        # inside a block is the down-sampling shortcut applied to the block's input (dlib's
        # tag1/skip1), and add_prev adds the shortcut (or the block input) to the block output.
        block_in = x
        pending: Tensor | None = None
        prev, prev2 = "input", "input"
        for kind, a in steps:
            if kind == "con":
                if prev == "max_pool" or (prev == "relu" and prev2 == "add_prev"):
                    block_in = x
                    pending = None
                w, b, padding, stride = a
                x = tf.nn.conv2d(x, w, strides=stride, padding=padding) + b
            elif kind == "affine":
                x = x * a[0] + a[1]
            elif kind == "relu":
                x = tf.nn.relu(x)
            elif kind == "max_pool":
                x = tf.nn.max_pool2d(x, a[0], a[1], "VALID")
            elif kind == "avg_pool":
                pending = x
                x = tf.nn.avg_pool2d(block_in, a[0], a[1], "VALID")
            elif kind == "add_prev":
                x = _add_zero_extended(x, pending if pending is not None else block_in)
                pending = None
            elif kind == "global_avg":
                x = tf.reduce_mean(x, axis=[1, 2])
            elif kind == "fc":
                x = tf.matmul(x, a[0])
            prev, prev2 = kind, prev
        return x

    return forward
