"""Model files and their manifest: every shipped model is refused unless its sha256 matches."""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edge.errors import ModelError

MANIFEST = "MANIFEST.toml"
DETECTOR = "face_detection_short_range.tflite"
LANDMARKER = "face_landmark.tflite"
EMBEDDER = "face_embedding_int8.tflite"

_FIX = "run `make models` to re-create and verify the models"


@dataclass(frozen=True)
class ModelEntry:
    """One `[[model]]` table of models/MANIFEST.toml."""

    file: str
    sha256: str
    source: str
    license: str
    notes: str = ""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(models_dir: Path) -> dict[str, ModelEntry]:
    """Entries of `models_dir/MANIFEST.toml` by file name; ModelError if missing or malformed."""
    mpath = Path(models_dir) / MANIFEST
    try:
        data = tomllib.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"model manifest missing: {mpath}; {_FIX}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"model manifest {mpath} is not valid TOML ({exc}); {_FIX}") from exc
    entries: dict[str, ModelEntry] = {}
    for i, raw in enumerate(data.get("model", [])):
        try:
            entry = ModelEntry(
                file=str(raw["file"]),
                sha256=str(raw["sha256"]).lower(),
                source=str(raw["source"]),
                license=str(raw["license"]),
                notes=str(raw.get("notes", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ModelError(
                f"model manifest {mpath}: [[model]] #{i + 1} lacks {exc}; {_FIX}"
            ) from exc
        entries[entry.file] = entry
    return entries


def _check(path: Path, entry: ModelEntry) -> None:
    if not path.is_file():
        raise ModelError(f"model file missing: {path}; {_FIX}")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ModelError(
            f"model file {path} does not match models/{MANIFEST} "
            f"(sha256 {actual[:12]}…, expected {entry.sha256[:12]}…): tampered or corrupted; {_FIX}"
        )


def model_path(models_dir: Path, name: str) -> Path:
    """Path of model `name` in `models_dir` after checking its sha256 against the manifest."""
    models_dir = Path(models_dir)
    entries = read_manifest(models_dir)
    entry = entries.get(name)
    if entry is None:
        raise ModelError(f"model {name} is not listed in {models_dir / MANIFEST}; {_FIX}")
    path = models_dir / name
    _check(path, entry)
    return path


def verify_if_listed(path: Path) -> None:
    """Check `path` against a MANIFEST.toml in its folder if that manifest lists it."""
    mpath = path.parent / MANIFEST
    if not mpath.is_file():
        return
    entry = read_manifest(path.parent).get(path.name)
    if entry is not None:
        _check(path, entry)
