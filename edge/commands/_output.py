"""Shared handling of `--json OUT` for the evaluation and benchmark commands."""

from __future__ import annotations

from pathlib import Path

from edge.errors import DataError


def check_json_target(json_out: str | None) -> None:
    """Refuse an unusable --json path before the (long) work starts."""
    if json_out and not Path(json_out).parent.is_dir():
        raise DataError(f"--json {json_out}: folder does not exist; create it first")


def write_json(path: Path, text: str) -> None:
    """Write the JSON result; an unwritable --json path is an input error, not a traceback."""
    try:
        path.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        msg = f"cannot write --json {path} ({exc.strerror}); give a writable path"
        raise DataError(msg) from exc
