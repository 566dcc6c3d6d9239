"""One TFLite interpreter shim: `ai_edge_litert` first, `tflite_runtime` as the fallback."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
from numpy.typing import NDArray

from edge.errors import ModelError


class Interpreter(Protocol):
    """The subset of the TFLite Python interpreter the vision stages use."""

    def allocate_tensors(self) -> None: ...
    def get_input_details(self) -> list[dict[str, Any]]: ...
    def get_output_details(self) -> list[dict[str, Any]]: ...
    def set_tensor(self, index: int, value: NDArray[Any]) -> None: ...
    def invoke(self) -> None: ...
    def get_tensor(self, index: int) -> NDArray[np.float32]: ...


_BACKENDS = (
    ("ai_edge_litert", "ai_edge_litert.interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter"),
)


def _backend() -> tuple[str, Any]:
    for dist, modname in _BACKENDS:
        try:
            return dist, importlib.import_module(modname)
        except ImportError:
            continue
    raise ModelError(
        "no TFLite runtime installed; install ai-edge-litert (pip install ai-edge-litert) "
        "or tflite-runtime (pip install 'facegate[tflite-runtime]')"
    )


def runtime_name() -> str:
    """Name and version of the interpreter package in use, e.g. "ai_edge_litert 2.3.0"."""
    dist, _ = _backend()
    try:
        from importlib.metadata import version

        ver = version(dist.replace("_", "-"))
    except Exception:  # metadata missing in odd installs; the name alone is still useful
        ver = "?"
    return f"{dist} {ver}"


def load_interpreter(path: Path, threads: int = 1) -> Interpreter:
    """A ready (tensors allocated) interpreter for the .tflite file at `path`.

    If a MANIFEST.toml next to the file lists it, the sha256 is checked first, so a tampered
    or truncated model is refused with ModelError instead of producing garbage.
    """
    from edge.vision.models import verify_if_listed

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file missing: {path}; run `make models` to fetch and verify it")
    verify_if_listed(path)
    _, mod = _backend()
    try:
        interp = mod.Interpreter(model_path=str(path), num_threads=max(1, int(threads)))
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(
            f"cannot load model {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}; "
            "run `make models` to restore it"
        ) from exc
    return cast(Interpreter, interp)
