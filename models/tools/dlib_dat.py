"""Reader for dlib's binary `serialize()` format, enough for dlib_face_recognition_resnet_model_v1.

dlib writes a network outermost layer first, but every `add_layer` serialises its sub-network
before its own details, so after a prefix of version numbers the layer details come out in
execution order (input first).  We read them in that order and let `dlib_tf.py` rebuild the
graph.  Written from the format as observed in the file and dlib's documented layer semantics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# float_details exponents dlib uses for non-finite values
_SPECIAL_EXP = {32000: np.inf, 32001: -np.inf, 32002: np.nan}


class DatFormatError(ValueError):
    pass


@dataclass
class Layer:
    kind: str  # con, affine, relu, max_pool, avg_pool, add_prev, fc
    params: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    ints: dict[str, int] = field(default_factory=dict)
    offset: int = 0  # byte offset of the layer name, for error messages


@dataclass
class DlibNet:
    loss: str
    input_mean_rgb: tuple[float, float, float]
    input_size: tuple[int, int]
    layers: list[Layer]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.d = data
        self.i = 0

    def byte(self) -> int:
        if self.i >= len(self.d):
            raise DatFormatError(f"unexpected end of file at byte {self.i}")
        b = self.d[self.i]
        self.i += 1
        return b

    def int_(self) -> int:
        # dlib packs integers as: one control byte (low nibble = byte count, 0x80 = negative),
        # then that many little-endian magnitude bytes.
        ctl = self.byte()
        n = ctl & 0x0F
        if n > 8:
            raise DatFormatError(f"bad integer control byte {ctl:#x} at {self.i - 1}")
        v = int.from_bytes(self.d[self.i : self.i + n], "little")
        self.i += n
        return -v if ctl & 0x80 else v

    def str_(self) -> str:
        n = self.int_()
        s = self.d[self.i : self.i + n]
        self.i += n
        return s.decode("ascii")

    def float_(self) -> float:
        mantissa, exponent = self.int_(), self.int_()
        if exponent in _SPECIAL_EXP:
            return float(_SPECIAL_EXP[exponent])
        return float(mantissa) * 2.0**exponent

    def bool_(self) -> bool:
        c = self.byte()
        if c not in (ord("0"), ord("1")):
            raise DatFormatError(f"expected a bool ('0'/'1') at {self.i - 1}, got {c:#x}")
        return c == ord("1")

    def tensor(self) -> np.ndarray:
        ver = self.int_()
        if ver != 2:
            raise DatFormatError(f"tensor version {ver} at {self.i} (expected 2)")
        dims = [self.int_() for _ in range(4)]
        n = int(np.prod(dims))
        raw = self.d[self.i : self.i + 4 * n]
        self.i += 4 * n
        return np.frombuffer(raw, "<f4").astype(np.float32).reshape(dims)

    def alias(self) -> tuple[int, int, int, int]:
        ver = self.int_()
        if ver != 1:
            raise DatFormatError(f"alias_tensor version {ver} at {self.i}")
        a, b, c, d = (self.int_() for _ in range(4))
        return a, b, c, d


def _layer_details(r: _Reader, name: str, at: int) -> Layer:
    if name == "con_4":
        params = r.tensor()
        keys = ("num_filters", "nr", "nc", "stride_y", "stride_x", "pad_y", "pad_x")
        ints = {k: r.int_() for k in keys}
        ints["k"] = r.alias()[1]
        r.alias()  # biases
        for _ in range(4):  # learning-rate / weight-decay multipliers (training only)
            r.float_()
        return Layer("con", params.ravel(), ints, at)
    if name == "affine_":
        params = r.tensor()
        r.alias()
        r.alias()
        mode = r.int_()
        if mode != 0:
            raise DatFormatError(f"affine layer at {at}: only CONV_MODE (0) supported, got {mode}")
        return Layer("affine", params.ravel(), {}, at)
    if name == "relu_":
        return Layer("relu", offset=at)
    if name in ("max_pool_2", "avg_pool_2"):
        keys = ("nr", "nc", "stride_y", "stride_x", "pad_y", "pad_x")
        return Layer(name[:-2], ints={k: r.int_() for k in keys}, offset=at)
    if name == "add_prev_":
        return Layer("add_prev", offset=at)
    if name == "fc_2":
        ints = {"num_outputs": r.int_(), "num_inputs": r.int_()}
        params = r.tensor()
        r.alias()
        r.alias()  # biases: empty for fc_no_bias
        ints["bias"] = int(r.int_() == 0)  # dlib: FC_HAS_BIAS = 0, FC_NO_BIAS = 1
        for _ in range(4):
            r.float_()
        return Layer("fc", params.ravel(), ints, at)
    raise DatFormatError(f"unsupported layer {name!r} at byte {at}")


def read_dlib_net(path: Path) -> DlibNet:
    """Parse a dlib `anet_type`-style metric network file into input settings and layers."""
    r = _Reader(path.read_bytes())
    if r.int_() != 1:
        raise DatFormatError("not a dlib add_loss_layer (version 1) stream")
    loss = r.str_()
    if loss != "loss_metric_2":
        raise DatFormatError(f"expected loss_metric_2, found {loss!r}")
    r.float_()  # margin
    r.float_()  # distance threshold
    # Version prefix: 2 = add_layer, 1 = tag/skip (no trailing data), 3 = the input add_layer.
    n_layers = 0
    while True:
        v = r.int_()
        if v == 3:
            break
        if v == 2:
            n_layers += 1
        elif v != 1:
            raise DatFormatError(f"unexpected layer version {v} at byte {r.i}")
    inp = r.str_()
    if inp != "input_rgb_image_sized":
        raise DatFormatError(f"expected input_rgb_image_sized, found {inp!r}")
    mean = (r.float_(), r.float_(), r.float_())
    size = (r.int_(), r.int_())
    layers: list[Layer] = []
    for idx in range(n_layers + 1):
        at = r.i
        layers.append(_layer_details(r, r.str_(), at))
        for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, output disabled
            r.bool_()
        for _ in range(3):  # x_grad, cached_output, params_grad / grad_final: training state
            r.tensor()
        if idx == 0:
            r.int_()  # sample expansion factor of the input add_layer
    if r.i != len(r.d):
        raise DatFormatError(f"{len(r.d) - r.i} trailing bytes after the last layer")
    return DlibNet(loss, mean, size, layers)


def describe(net: DlibNet) -> str:
    kinds = [lay.kind for lay in net.layers]
    n_params = sum(lay.params.size for lay in net.layers)
    return (
        f"{len(kinds)} layers ({kinds.count('con')} con, {kinds.count('affine')} affine, "
        f"{kinds.count('add_prev')} add_prev), {n_params} parameters, "
        f"input {net.input_size} mean RGB {tuple(round(m, 3) for m in net.input_mean_rgb)}"
    )


if __name__ == "__main__":
    import sys

    print(describe(read_dlib_net(Path(sys.argv[1]))))
