"""The camera `Source` protocol and the `Frame` it yields."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import numpy as np
import numpy.typing as npt

ImageRGB = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Frame:
    """One camera frame: `image` is (H, W, 3) uint8 RGB; `t_monotonic` in seconds."""

    image: ImageRGB
    t_monotonic: float
    index: int


class Source(Protocol):
    """A configured camera or replay: a context manager and an iterator of frames."""

    uri: str

    def __enter__(self) -> Source: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...
