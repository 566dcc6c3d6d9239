"""Verify every file listed in models/MANIFEST.toml (`make models`); re-fetch MediaPipe ones.

    python models/tools/verify.py [--models-dir models] [--no-fetch]

A MediaPipe model that is missing or whose sha256 differs is re-created from the PyPI wheel
(models/tools/fetch_mediapipe.py) unless --no-fetch; a project-converted model cannot be
downloaded, so its failure names the converter to re-run. Exit 0 when all files match.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tomllib
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

import fetch_mediapipe  # noqa: E402


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check(models_dir: Path) -> list[tuple[str, str, str]]:
    """(file, source, problem) for every manifest entry that does not verify."""
    manifest = tomllib.loads((models_dir / "MANIFEST.toml").read_text(encoding="utf-8"))
    bad = []
    for entry in manifest.get("model", []):
        for key in ("file", "sha256", "source", "license"):
            if key not in entry:
                bad.append((str(entry.get("file", "?")), "", f"manifest entry lacks {key}"))
        path = models_dir / entry.get("file", "")
        if not path.is_file():
            bad.append((entry["file"], entry.get("source", ""), "missing"))
        elif sha256(path) != entry.get("sha256"):
            bad.append((entry["file"], entry.get("source", ""), "sha256 mismatch"))
        else:
            print(f"ok   {entry['file']}  {entry['sha256'][:16]}…  {entry['source']}")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=TOOLS.parent)
    ap.add_argument("--no-fetch", action="store_true", help="verify only, never download")
    args = ap.parse_args(argv)
    if not (args.models_dir / "MANIFEST.toml").is_file():
        print(f"FAIL {args.models_dir}/MANIFEST.toml missing", file=sys.stderr)
        return 1
    bad = check(args.models_dir)
    if bad and not args.no_fetch and any(s == fetch_mediapipe.SOURCE for _, s, _ in bad):
        print(f"re-fetching {fetch_mediapipe.SOURCE} models from PyPI …")
        fetch_mediapipe.main(["--models-dir", str(args.models_dir)])
        bad = check(args.models_dir)
    for name, source, problem in bad:
        fix = (
            "run models/tools/fetch_mediapipe.py"
            if source == fetch_mediapipe.SOURCE
            else "re-run the converter in models/tools/ (see MANIFEST notes) or restore from git"
        )
        print(f"FAIL {name}: {problem}; {fix}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
