"""One TFLite interpreter shim: `ai_edge_litert` first, `tflite_runtime` as the fallback."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from collections.abc import Iterator
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


@contextlib.contextmanager
def _native_stderr(lines: list[str]) -> Iterator[None]:
    """Capture what the C++ runtime writes to fd 2 while loading (it prints an INFO line per
    interpreter and its real errors there); the caller decides what to show."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


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
    native: list[str] = []
    try:
        with _native_stderr(native):
            interp = mod.Interpreter(model_path=str(path), num_threads=max(1, int(threads)))
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        detail = next((ln for ln in native if not ln.startswith("INFO:")), "")
        detail = detail or (str(exc).splitlines()[0] if str(exc) else repr(exc))
        msg = f"cannot load model {path}: {detail}; run `make models` to restore it"
        raise ModelError(msg) from exc
    for line in native:
        if not line.startswith("INFO:"):
            print(line, file=sys.stderr)
    return cast(Interpreter, interp)
