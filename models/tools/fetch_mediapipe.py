"""Re-create the MediaPipe models of models/MANIFEST.toml from the PyPI wheel, checking hashes.

    python models/tools/fetch_mediapipe.py [--models-dir models] [--check]

Downloads `mediapipe==0.10.21` with `pip download --no-deps` into a temporary folder (the wheel
for this platform, or the manylinux x86_64 one when there is none, e.g. on aarch64 Linux: the
model files are byte-identical in the x86_64 Linux and macOS universal2 wheels, checked),
extracts the two .tflite files and the Apache-2.0 license, and writes them only if their
sha256 matches the manifest. `--check` extracts and compares without writing.
Exit 0 when every file matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

VERSION = "0.10.21"
SOURCE = f"mediapipe=={VERSION}"
IN_WHEEL = {
    "face_detection_short_range.tflite": "mediapipe/modules/face_detection/"
    "face_detection_short_range.tflite",
    "face_landmark.tflite": "mediapipe/modules/face_landmark/face_landmark.tflite",
}
LICENSE = (f"mediapipe-{VERSION}.dist-info/LICENSE", "LICENSE-mediapipe.txt")
FALLBACK_PLATFORM = ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"]


def download_wheel(dest: Path) -> Path:
    """Path of the mediapipe wheel downloaded into `dest` (this platform's, else manylinux)."""
    base = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(dest),
    ]
    for extra in ([], FALLBACK_PLATFORM):
        proc = subprocess.run([*base, *extra, SOURCE], capture_output=True, text=True)
        wheels = sorted(dest.glob(f"mediapipe-{VERSION}-*.whl"))
        if proc.returncode == 0 and wheels:
            return wheels[0]
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise SystemExit(f"fetch_mediapipe: pip download {SOURCE} failed ({tail}); check network/pip")


def expected_hashes(models_dir: Path) -> dict[str, str]:
    manifest = tomllib.loads((models_dir / "MANIFEST.toml").read_text(encoding="utf-8"))
    return {m["file"]: m["sha256"] for m in manifest.get("model", []) if m.get("source") == SOURCE}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--check", action="store_true", help="compare only, write nothing")
    args = ap.parse_args(argv)
    want = expected_hashes(args.models_dir)
    missing = sorted(set(IN_WHEEL) - set(want))
    if missing:
        print(
            f"fetch_mediapipe: MANIFEST.toml lacks {missing} with source {SOURCE}", file=sys.stderr
        )
        return 1
    ok = True
    with tempfile.TemporaryDirectory(prefix="facegate-mp-") as tmp:
        wheel = download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            for name, member in IN_WHEEL.items():
                data = zf.read(member)
                digest = hashlib.sha256(data).hexdigest()
                if digest != want[name]:
                    print(f"MISMATCH {name}: wheel {digest} != manifest {want[name]}")
                    ok = False
                    continue
                print(f"ok       {name} {digest} (from {wheel.name})")
                if not args.check:
                    _atomic_write(args.models_dir / name, data)
            if not args.check:
                _atomic_write(args.models_dir / LICENSE[1], zf.read(LICENSE[0]))
    return 0 if ok else 1


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
