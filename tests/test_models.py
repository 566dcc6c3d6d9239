"""Model files are only used when their sha256 matches models/MANIFEST.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.errors import ModelError
from edge.vision.detect import FaceDetector
from edge.vision.landmarks import LandmarkModel
from edge.vision.models import (
    DETECTOR,
    LANDMARKER,
    MANIFEST,
    model_path,
    read_manifest,
    sha256_file,
)
from edge.vision.runtime import load_interpreter, runtime_name

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture
def models_copy(tmp_path: Path) -> Path:
    """A private copy of the models folder (manifest + MediaPipe models) to tamper with."""
    d = tmp_path / "models"
    d.mkdir()
    for name in (MANIFEST, DETECTOR, LANDMARKER):
        shutil.copy(MODELS / name, d / name)
    return d


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_manifest_lists_mediapipe_models_with_source_and_license() -> None:
    entries = read_manifest(MODELS)
    for name in (DETECTOR, LANDMARKER):
        assert entries[name].source == "mediapipe==0.10.21"
        assert entries[name].license.startswith("Apache-2.0")
        assert len(entries[name].sha256) == 64
    assert (MODELS / "LICENSE-mediapipe.txt").read_text().lstrip().startswith("Apache License")


def test_shipped_models_pass_the_hash_check() -> None:
    for name in (DETECTOR, LANDMARKER):
        path = model_path(MODELS, name)
        assert sha256_file(path) == read_manifest(MODELS)[name].sha256


@pytest.mark.parametrize("name", [DETECTOR, LANDMARKER])
def test_model_with_one_flipped_byte_is_refused_with_the_fix(models_copy: Path, name: str) -> None:
    flip_byte(models_copy / name, (models_copy / name).stat().st_size // 2)
    with pytest.raises(ModelError, match="make models") as info:
        model_path(models_copy, name)
    assert "tampered or corrupted" in str(info.value)


def test_loading_a_tampered_model_directly_is_refused(models_copy: Path) -> None:
    flip_byte(models_copy / DETECTOR, 100)
    with pytest.raises(ModelError):
        FaceDetector(models_copy / DETECTOR)
    flip_byte(models_copy / LANDMARKER, 5000)
    with pytest.raises(ModelError):
        LandmarkModel(models_copy / LANDMARKER)


def test_missing_model_and_missing_manifest_name_the_fix(models_copy: Path) -> None:
    (models_copy / LANDMARKER).unlink()
    with pytest.raises(ModelError, match="missing.*make models"):
        model_path(models_copy, LANDMARKER)
    with pytest.raises(ModelError, match="not listed"):
        model_path(models_copy, "face_embedding_unknown.tflite")
    (models_copy / MANIFEST).unlink()
    with pytest.raises(ModelError, match="manifest missing"):
        model_path(models_copy, DETECTOR)


def test_unlisted_garbage_file_gives_model_error_not_a_crash(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="cannot load model"):
        load_interpreter(junk)


def test_runtime_name_reports_the_interpreter_package() -> None:
    assert runtime_name().split()[0] in ("ai_edge_litert", "tflite_runtime")


def run_verify(models_dir: Path) -> subprocess.CompletedProcess[str]:
    script = MODELS / "tools" / "verify.py"
    return subprocess.run(
        [sys.executable, str(script), "--models-dir", str(models_dir), "--no-fetch"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_models_verifier_passes_the_shipped_models() -> None:
    proc = run_verify(MODELS)
    assert proc.returncode == 0, proc.stderr
    for name in read_manifest(MODELS):
        assert f"ok   {name}" in proc.stdout


def test_make_models_verifier_names_a_tampered_file_and_its_fix(models_copy: Path) -> None:
    flip_byte(models_copy / LANDMARKER, 1234)
    proc = run_verify(models_copy)
    assert proc.returncode == 1
    assert f"FAIL {LANDMARKER}: sha256 mismatch" in proc.stderr
    assert "fetch_mediapipe.py" in proc.stderr
    assert f"ok   {DETECTOR}" in proc.stdout
