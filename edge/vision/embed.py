"""Int8 face embedder (dlib ResNet converted by models/tools/convert_dlib.py) -> 128-d identity.

The model takes the 150x150 RGB chip in pixel units (dlib's mean subtraction is folded into its
first convolution), so a uint8 chip goes in as it is; the output is dlib's descriptor, which we
L2-normalise so that verification compares cosine similarities.

By default the chip and its mirror image are both embedded and averaged (flip test-time
augmentation): on LFW pairsDevTrain it raised best accuracy from 99.03 % to 99.15 % and TAR at
the lowest measurable FAR from 94.3 % to 96.9 %, for twice the embedding time (models/README.md).
The shipped thresholds were calibrated with it on.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from edge.errors import DataError, ModelError
from edge.vision.align import CHIP_SIZE
from edge.vision.runtime import load_interpreter
from edge.vision.types import Embedding

EMBEDDING_DIM = 128


class Embedder:
    """One TFLite interpreter running the embedding model on aligned chips."""

    def __init__(self, model_path: Path, threads: int = 1, flip_tta: bool = True) -> None:
        self._interp = load_interpreter(model_path, threads)
        inp = self._interp.get_input_details()[0]
        out = self._interp.get_output_details()[0]
        if tuple(inp["shape"]) != (1, CHIP_SIZE, CHIP_SIZE, 3) or int(np.prod(out["shape"])) != (
            EMBEDDING_DIM
        ):
            raise ModelError(
                f"{model_path} is not the face embedder (input {list(inp['shape'])}, output "
                f"{list(out['shape'])}); run `make models` to restore models/"
            )
        self._in, self._out = int(inp["index"]), int(out["index"])
        self._in_dtype = np.dtype(inp["dtype"])
        scale, zero = inp.get("quantization", (0.0, 0))
        # An integer input must carry the pixels unchanged (scale 1); the converter makes it so.
        if self._in_dtype.kind in "iu" and (scale, zero) not in ((1.0, 0), (1.0, -128)):
            raise ModelError(f"{model_path}: unexpected input quantisation {scale}, {zero}")
        self._in_zero = int(zero)
        self.flip_tta = flip_tta

    def _raw(self, chip: NDArray[np.uint8]) -> NDArray[np.float32]:
        if self._in_dtype == np.float32:
            x = chip.astype(np.float32)
        else:
            x = (chip.astype(np.int16) + self._in_zero).astype(self._in_dtype)
        self._interp.set_tensor(self._in, x[None])
        self._interp.invoke()
        return np.asarray(self._interp.get_tensor(self._out), dtype=np.float32).reshape(-1)

    def embed(self, chip: NDArray[np.uint8]) -> Embedding:
        """(128,) float32 L2-normalised embedding of a (150, 150, 3) uint8 RGB aligned chip."""
        v = self.raw(chip)
        if self.flip_tta:
            v = v + self.raw(mirror(chip))
        return unit(v)

    def raw(self, chip: NDArray[np.uint8]) -> NDArray[np.float32]:
        """dlib's unnormalised (128,) descriptor of one chip, no mirror. Full flip TTA is
        `unit(raw(chip) + raw(mirror(chip)))`, so a caller that embeds the chip first can add
        the mirror later, only when it matters (adaptive TTA, edge.vision.track)."""
        c = np.asarray(chip)
        if c.shape != (CHIP_SIZE, CHIP_SIZE, 3) or c.dtype != np.uint8:
            raise DataError(
                f"embedder needs a ({CHIP_SIZE}, {CHIP_SIZE}, 3) uint8 RGB chip, "
                f"got {c.shape} {c.dtype}"
            )
        return self._raw(c)


def mirror(chip: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The chip flipped left-right. The mirror image is the same person: averaging both
    descriptors cancels some of the left/right asymmetry of the alignment and the network."""
    return np.asarray(cv2.flip(np.asarray(chip), 1), dtype=np.uint8)  # = chip[:, ::-1]


def unit(v: NDArray[np.float32]) -> Embedding:
    """The L2-normalised float32 vector; DataError for a zero or non-finite one."""
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n <= 1e-12:
        raise DataError("embedder produced a zero or non-finite vector (corrupt model?)")
    return (v / n).astype(np.float32)
